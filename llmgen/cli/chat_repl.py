"""The chat REPL: read a message or a /command, stream the reply, keep going.

Line editing is Python's `input()` with the standard `readline` module (Emacs keys, history with the
arrow keys, kept in the cache dir across sessions): no dependency, and the REPL reads lines through one
function (`LineReader`), so tests script it in-process. Where `readline` is missing (Windows) `input()`
still works, without editing. When stdin is not a terminal, each line is read as it is.

Output: replies on stdout (Rich on a terminal, plain text plus an empty line in a pipe, one JSON row per
turn with --json); statistics, notices, errors and what /commands print go to stderr, so that stdout holds
only the conversation.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from rich.table import Table

from llmgen.cli import common
from llmgen.cli.options import OutputOptions, ProbsOptions
from llmgen.cli.output import Renderer, format_stats, stderr_console
from llmgen.decoding import constraints
from llmgen.decoding.chat import ChatSession, Conversation
from llmgen.decoding.config import FIELDS, Resolved
from llmgen.decoding.logprobs import LogprobSpec
from llmgen.decoding.sequence import SequenceResult
from llmgen.errors import LlmgenError, UsageError
from llmgen.loading.hfutil import first_line


class Settings(Protocol):
    """What the REPL needs of a chat's settings (`chat.Settings`): the resolved ones, /set and /preset."""

    resolved: Resolved

    def set(self, key: str, text: str) -> str: ...

    def use_preset(self, ref: str) -> str: ...


LineReader = Callable[[str], str]  # returns a line without its newline; raises EOFError, KeyboardInterrupt
FENCE = '"""'
PROMPT, MORE = ">>> ", "... "

HELP = [
    ("/help", "this list"),
    ("/reset", "forget the conversation (the system message stays)"),
    ("/system TEXT", "set the system message (no TEXT: none)"),
    ("/set KEY VALUE", "change a decoding option, e.g. /set temperature 0.7 (as its flag; /show lists them)"),
    ("/preset NAME", "apply a preset (flags and /set values still win)"),
    ("/show", "the settings, with where each came from"),
    ("/stats", "the last turn's statistics and the session's totals"),
    ("/save FILE.json", "write the transcript (OpenAI-style messages)"),
    ("/load FILE.json", "replace the conversation with a saved transcript"),
    ("/retry", "generate the last reply again"),
    ("/exit", "leave (also Ctrl-D, or Ctrl-C at an empty prompt)"),
    ('"""', "on a line of its own: start or end a message of several lines"),
    ("//text", "send a message that starts with '/'"),
]


def line_reader(interactive: bool) -> LineReader:
    """`input()` with readline on a terminal; stdin's lines otherwise."""
    if not interactive:
        def read_line(prompt: str) -> str:
            line = sys.stdin.readline() if sys.stdin is not None else ""
            if not line:
                raise EOFError
            return line.rstrip("\n").rstrip("\r")

        return read_line
    try:
        import readline  # noqa: F401  (importing it gives input() line editing and history)

        from llmgen.userdirs import cache_dir

        history = cache_dir() / "chat_history"
        try:
            readline.read_history_file(history)
        except OSError:
            pass
        import atexit

        def save() -> None:
            try:
                history.parent.mkdir(parents=True, exist_ok=True)
                readline.set_history_length(1000)
                readline.write_history_file(history)
            except OSError:
                pass

        atexit.register(save)
    except ImportError:  # pragma: no cover - no readline on this platform
        pass
    return input


def _typed_so_far() -> str:
    """The text on the prompt line when Ctrl-C came ('' when unknown)."""
    try:
        import readline

        return readline.get_line_buffer()
    except ImportError:  # pragma: no cover
        return ""


class Repl:
    def __init__(self, session: ChatSession, settings: Settings, output: OutputOptions, probs: ProbsOptions,
                 logprobs: LogprobSpec | None, read: LineReader, interactive: bool, about: dict[str, object]) -> None:
        self.session = session
        self.settings = settings
        self.output = output
        self.probs = probs
        self.logprobs = logprobs
        self.read = read
        self.interactive = interactive
        self.about = about  # model, draft, gamma: shown by /show
        self.err = stderr_console()
        self.last_stats: dict[str, object] | None = None
        self.totals: dict[str, float] = {"turns": 0, "prompt_tokens": 0, "cached_tokens": 0, "generated_tokens": 0,
                       "prefill_seconds": 0.0}

    # --- the loop -------------------------------------------------------------------------------

    def run(self) -> int:
        """Until /exit, end of input, or Ctrl-C at an empty prompt: 0."""
        if self.interactive:
            self.err.print("llmgen chat: /help for the commands, /exit or Ctrl-D to leave.", style="dim")
        while True:
            try:
                text = self.read_message()
            except EOFError:
                break
            except KeyboardInterrupt:
                if self.interactive and _typed_so_far():
                    print()
                    continue  # Ctrl-C on a half-typed line drops the line, as a shell does
                break
            if text is None or not text.strip():
                continue
            if text.startswith("/") and not text.startswith("//"):
                try:
                    if self.command(text):
                        break
                except LlmgenError as err:
                    self.error(str(err))
                continue
            self.user_turn(text[1:] if text.startswith("//") else text)
        if self.interactive:
            print()
        return 0

    def read_message(self) -> str | None:
        line = self.read(PROMPT if self.interactive else "")
        if line.strip() != FENCE:
            return line
        lines: list[str] = []
        while True:
            try:
                line = self.read(MORE if self.interactive else "")
            except EOFError:
                break  # an unclosed block ends with the input
            if line.strip() == FENCE:
                break
            lines.append(line)
        return "\n".join(lines)

    def error(self, message: str) -> None:
        print(f"llmgen: error: {message}", file=sys.stderr, flush=True)

    def note(self, message: str) -> None:
        print(f"llmgen: note: {message}", file=sys.stderr, flush=True)

    # --- a turn ---------------------------------------------------------------------------------

    def user_turn(self, text: str) -> None:
        config = self.settings.resolved.config
        self.answer(lambda on_text, on_drop: self.session.send(text, config, on_text, self.logprobs, on_drop=on_drop))

    def answer(self, turn: Callable[[Any, Any], SequenceResult]) -> bool:
        """Run one turn of the session (a message or a retry) and show its reply; False if it failed
        (the session has left the conversation as it was)."""
        config = self.settings.resolved.config
        renderer = self.renderer()

        def on_drop(count: int) -> None:
            self.note(f"the conversation outgrew the context; dropped the oldest {count} turn(s), "
                      "keeping the system message")

        renderer.begin(0, 1)
        try:
            result = turn(renderer.text, on_drop)
        except LlmgenError as err:
            self.error(str(err))
            return False
        except Exception as err:  # noqa: BLE001 - a library's own error in one turn (a grammar engine's, say)
            # NOTE: one line and the chat goes on; the session has cleared its caches, so the next turn
            # prefills from scratch.
            self.error(f"this turn failed: {type(err).__name__}: {first_line(err)}")
            return False
        except KeyboardInterrupt:
            text = self.session.conversation.messages[-1]["content"]  # the partial reply, kept by the session
            if self.output.json:
                self.write_row(text, {"finish_reason": "interrupted"})
            else:
                sys.stdout.write("\n")
                sys.stdout.flush()
            self.note(f"reply interrupted; its {len(text)} characters so far are kept")
            return True
        self.record(result.stats)
        constraints.warn_incomplete(config, result.finish_reason)
        if self.output.json:
            self.write_row(result.text, {**result.stats, "finish_reason": result.finish_reason}, result.logprobs)
        else:
            renderer.end(result)
            if not self.interactive:
                sys.stdout.write("\n")  # one empty line after each reply
                sys.stdout.flush()
        return True

    def write_row(self, text: str, stats: dict[str, object], logprobs: list[dict[str, object]] | None = None) -> None:
        row: dict[str, object] = {"turn": self.session.turns, "role": "assistant", "content": text, "stats": stats}
        if logprobs is not None:
            row["logprobs"] = logprobs
        sys.stdout.write(json.dumps(row, ensure_ascii=False) + "\n")
        sys.stdout.flush()

    def renderer(self) -> Renderer:
        if self.output.json:
            return Renderer(True)
        legend = self.session.speculative is not None and self.totals["turns"] == 0
        return common.make_renderer(self.output, self.probs, self.logprobs, self.session.target.tokenizer, legend)

    def record(self, stats: dict[str, object]) -> None:
        self.last_stats = stats
        self.totals["turns"] += 1
        for key in ("prompt_tokens", "cached_tokens", "generated_tokens", "prefill_seconds"):
            value = stats.get(key)
            self.totals[key] += value if isinstance(value, (int, float)) else 0

    # --- /commands ------------------------------------------------------------------------------

    def command(self, line: str) -> bool:
        """Run one /command; True to leave."""
        name, _, arg = line.strip().partition(" ")
        arg = arg.strip()
        handlers: dict[str, Callable[[str], bool | None]] = {
            "/help": self.cmd_help, "/reset": self.cmd_reset, "/system": self.cmd_system, "/set": self.cmd_set,
            "/preset": self.cmd_preset, "/show": self.cmd_show, "/stats": self.cmd_stats, "/save": self.cmd_save,
            "/load": self.cmd_load, "/retry": self.cmd_retry,
        }
        if name in ("/exit", "/quit"):
            return True
        handler = handlers.get(name)
        if handler is None:
            raise UsageError(f"unknown command {name!r}; /help lists them")
        return bool(handler(arg))

    def cmd_help(self, arg: str) -> None:
        table = Table.grid(padding=(0, 2))
        for command, what in HELP:
            table.add_row(command, what)
        self.err.print(table)

    def cmd_reset(self, arg: str) -> None:
        self.session.conversation.messages.clear()
        self.note("the conversation was reset")

    def cmd_system(self, arg: str) -> None:
        self.session.conversation.system = arg or None
        self.note("system message set" if arg else "no system message")

    def cmd_set(self, arg: str) -> None:
        key, _, value = arg.partition(" ")
        if not key or not value.strip():
            raise UsageError("usage: /set KEY VALUE, e.g. /set temperature 0.7")
        name = self.settings.set(key, value)
        self.note(f"{name} = {getattr(self.settings.resolved.config, name)!r}")

    def cmd_preset(self, arg: str) -> None:
        if not arg:
            raise UsageError("usage: /preset NAME (see 'llmgen presets list')")
        self.note(f"preset {self.settings.use_preset(arg)} applied")

    def cmd_show(self, arg: str) -> None:
        resolved = self.settings.resolved
        table = Table.grid(padding=(0, 2))
        for name in FIELDS:
            table.add_row(name, repr(getattr(resolved.config, name)), resolved.sources[name])
        for name, value in self.about.items():
            if value is not None:
                table.add_row(name, str(value), "flag or default")
        table.add_row("system", repr(self.session.conversation.system), "")
        self.err.print(table)

    def cmd_stats(self, arg: str) -> None:
        table = Table.grid(padding=(0, 2))
        if self.last_stats:
            for label, value in format_stats(self.last_stats):
                table.add_row(label, value)
        for key, total in self.totals.items():
            table.add_row(f"session {key.replace('_', ' ')}", f"{total:.3f}" if isinstance(total, float) else str(total))
        self.err.print(table)

    def cmd_save(self, arg: str) -> None:
        if not arg:
            raise UsageError("usage: /save FILE.json")
        self.session.conversation.save(Path(arg))
        self.note(f"saved {len(self.session.conversation.to_json())} messages to {arg}")

    def cmd_load(self, arg: str) -> None:
        if not arg:
            raise UsageError("usage: /load FILE.json")
        self.session.conversation = Conversation.load(Path(arg))
        self.note(f"loaded {len(self.session.conversation.to_json())} messages from {arg}")

    def cmd_retry(self, arg: str) -> None:
        config = self.settings.resolved.config
        if not self.session.turns or self.session.conversation.messages[-1]["role"] != "assistant":
            raise UsageError("/retry: there is no reply to generate again")
        self.answer(lambda on_text, on_drop: self.session.retry(config, on_text, self.logprobs, on_drop=on_drop))

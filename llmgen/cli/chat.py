"""`llmgen chat`: a conversation that keeps the KV cache between turns (`llmgen/decoding/chat.py`); the REPL is
`cli/chat_repl.py`. Every sampling, penalty, preset and logprobs option of `generate`, and the draft
options of `speculate`; --raw and beam search are refused."""

from __future__ import annotations

import copy
import dataclasses
import inspect
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer

from llmgen import presets
from llmgen.cli import common
from llmgen.cli.options import (
    LOGPROBS,
    MODEL,
    OUTPUT,
    PROMPT_CACHE,
    SAMPLING,
    DecodingFlags,
    ModelOptions,
    OutputOptions,
    ProbsOptions,
    PromptCacheOptions,
    group,
    with_options,
)
from llmgen.cli.speculate import SPECULATIVE, SpeculativeOptions, _load_draft, suffix_store
from llmgen.decoding.config import DEFAULTS, Resolved, canonical_key, resolve
from llmgen.decoding.plan import SUFFIX, check_drafting
from llmgen.errors import ConfigError, UsageError

CLEAR = object()  # `/set KEY none`: forget the flag
DRAFT_OPTIONS = ("draft", "gamma", "ngram_max", "ngram_min", "draft_dtype", "draft_quant", "draft_engine")


def _plain_by_default(param: inspect.Parameter) -> inspect.Parameter:
    """speculate's --draft, whose default here is plain decoding rather than 'required'."""
    if param.name != "draft":
        return param
    option = copy.copy(param.annotation.__metadata__[0])  # a copy: speculate's own stays as it is
    option.show_default = "none (plain decoding)"
    return param.replace(annotation=Annotated[str | None, option])


# The same option objects as speculate's (one flag, one definition); --compare and --trace stay there.
DRAFT = SPECULATIVE.only(*DRAFT_OPTIONS)
DRAFT = DRAFT.swap(_plain_by_default(DRAFT.params[0]))


@dataclass(frozen=True)
class ChatOptions:
    history: Path | None = None


CHAT = group(ChatOptions, [
    inspect.Parameter("history", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=Annotated[
        Path | None, typer.Option(
            "--history", metavar="FILE.json", show_default="none", rich_help_panel="Prompt and output",
            help="Start from a saved transcript (OpenAI-style messages, as /save writes them).")]),
])


class Settings:
    """The decoding settings of a chat: a preset and the flags, merged again whenever either changes
    (/set, /preset), through the same `config.resolve` as the command line."""

    def __init__(self, preset: presets.Preset | None, flags: dict[str, object]) -> None:
        self.preset = preset
        self.flags = flags
        self.resolved = self._resolve(preset, flags)

    @staticmethod
    def _resolve(preset: presets.Preset | None, flags: dict[str, object]) -> Resolved:
        from llmgen.decoding import constraints

        resolved = resolve(preset.values if preset else None, preset.name if preset else None, flags)
        check_chat(resolved)
        constraints.check_options(resolved.config)
        return resolved

    def set(self, key: str, text: str) -> str:
        """`/set KEY VALUE`: VALUE parsed as the flag's type; returns the name of the field set."""
        name: str | None
        if key.replace("-", "_") == "greedy":
            flags = {k: v for k, v in self.flags.items() if k != "temperature"}
            flags["greedy"] = parse_value("greedy", text, bool)
            name = "temperature"
        else:
            name = canonical_key(key)
            if name is None:
                raise ConfigError(f"unknown key {key!r} (see /show for the names)")
            flags = {k: v for k, v in self.flags.items() if not (name == "temperature" and k == "greedy")}
            value = parse_value(name, text, type(getattr(DEFAULTS, name)))
            if value is CLEAR:
                flags.pop(name, None)
            else:
                flags[name] = value
        self.resolved = self._resolve(self.preset, flags)
        self.flags = flags
        return name

    def use_preset(self, ref: str) -> str:
        preset = presets.load(ref)
        self.resolved = self._resolve(preset, self.flags)
        self.preset = preset
        return preset.name


def parse_value(name: str, text: str, kind: type) -> Any:
    """A value typed on the REPL, read as its flag would read it; 'none' (CLEAR) drops an option that can
    be off (seed, stop, the constraints) back to the preset's value or the default. A list (stop, choice) is split like a shell line: /set choice yes no."""
    text = text.strip()
    default = getattr(DEFAULTS, name, False)  # greedy is no field: a flag, false by default
    if text.lower() == "none" and (default is None or isinstance(default, tuple)):
        return CLEAR
    if isinstance(default, tuple):
        try:
            return shlex.split(text)
        except ValueError as err:
            raise ConfigError.invalid(name, f"{text!r}: {err}") from None
    try:
        if kind is bool:
            if text.lower() in ("true", "on", "yes", "1"):
                return True
            if text.lower() in ("false", "off", "no", "0"):
                return False
            raise ValueError
        if name == "seed" or kind is int:
            return int(text)
        if kind is float:
            return float(text)
    except ValueError:
        what = {bool: "true or false", int: "an integer", float: "a number"}.get(int if name == "seed" else kind)
        raise ConfigError.invalid(name, f"{text!r} must be {what}") from None
    return text


def check_chat(resolved: Resolved) -> None:
    """What a chat cannot do: beam search, and more than one reply per turn."""
    from llmgen.decoding import beam

    config, sources = resolved.config, resolved.sources
    if config.num_beams > 1:
        raise UsageError(f"chat does not do beam search: num_beams must be 1 (it is {config.num_beams}, "
                         f"from {sources['num_beams']}); use 'llmgen generate --num-beams'")
    if config.n > 1:
        raise UsageError(f"chat gives one reply per turn: n must be 1 (it is {config.n}, from {sources['n']})")
    beam.check_combination(resolved)  # beam-only values from a flag or /set are refused


@with_options(chat_opts=CHAT, spec=DRAFT, sampling=SAMPLING, model_opts=MODEL, output=OUTPUT, cache=PROMPT_CACHE,
              probs=LOGPROBS)
def chat(*, chat_opts: ChatOptions, spec: SpeculativeOptions, sampling: DecodingFlags, model_opts: ModelOptions,
         output: OutputOptions, cache: PromptCacheOptions, probs: ProbsOptions) -> int:
    """Talk with the model; the KV cache of earlier turns is kept, so each turn prefills only what is new.

    Type /help for the commands. A message between two lines of \"\"\" spans several lines.

    When stdin is not a terminal, each line is one message (or a /command); each reply goes to stdout, followed by an empty line, and its statistics to stderr (one JSON row per turn with --json).

    With --draft, each reply is decoded speculatively (the same output as plain decoding).

    Examples:

      llmgen chat --preset balanced --system "You answer in one sentence."

      printf 'Hi\\nWhat did I just say?\\n' | llmgen chat --greedy

      llmgen chat --draft small --gamma 4 --seed 1 --history talk.json

      llmgen chat --history talk.json --prompt-cache talk.kv   (the saved conversation is not prefilled again)
    """
    from llmgen.cli.chat_repl import Repl, line_reader
    from llmgen.decoding.chat import ChatSession, Conversation, Speculative
    from llmgen.decoding.speculative import check_compatible

    if output.chat is False:
        raise UsageError("chat always applies the chat template; --raw is for 'llmgen generate'")
    preset = presets.load(sampling.preset) if sampling.preset else None
    settings = Settings(preset, sampling.flags())
    if model_opts.threads is None and preset is not None and preset.threads is not None:
        model_opts = dataclasses.replace(model_opts, threads=preset.threads, threads_source=f"preset {preset.name}")
    draft_ref = spec.draft
    gamma = check_drafting(spec.gamma if draft_ref else "auto", spec.ngram_max, spec.ngram_min)
    logprobs = common.logprob_spec(probs, output.json)
    conversation = Conversation.load(chat_opts.history) if chat_opts.history else Conversation()
    if output.system is not None:
        conversation.system = output.system or None
    if sampling.dump_config:
        common.dump_config(settings.resolved, {"model": (model_opts.model, "flag or default"),
                                               **common.model_settings(model_opts),
                                               "draft": (draft_ref, "flag or default")})
        return 0
    target = common.load_model(model_opts.model, model_opts)
    speculative = None
    if draft_ref:
        draft = _load_draft(draft_ref, spec.draft_dtype, spec.draft_quant, model_opts, spec.draft_engine)
        if draft is not None:
            check_compatible(target, draft)
        speculative = Speculative(draft, gamma, spec.ngram_max, spec.ngram_min,
                                  suffix_store(target, None) if draft_ref == SUFFIX else None)
    session = ChatSession(target, conversation, speculative)
    interactive = sys.stdin is not None and sys.stdin.isatty()
    repl = Repl(session, settings, output, probs, logprobs, line_reader(interactive), interactive,
                {"model": model_opts.model, "draft": draft_ref, "gamma": gamma if draft_ref else None})
    if cache.prompt_cache is None:
        return repl.run()
    saved = _load_prompt_cache(cache.prompt_cache, session)
    try:
        return repl.run()
    finally:
        held = session.cache.tokens
        if held and held != saved[:len(held)]:  # the conversation went past what the file holds
            from llmgen.loading import prompt_cache as files

            files.keep(cache.prompt_cache, target, held, session.cache.lm)


def _load_prompt_cache(path: Path, session: Any) -> list[int]:
    """Start the chat's cache from the cells in `path` (`--prompt-cache`); the tokens they hold."""
    from llmgen.loading import prompt_cache as files

    if not path.exists():
        return []
    found = files.load(path, session.target)
    if isinstance(found, str):
        print(f"llmgen: note: {found}; not used, and replaced when this chat ends", file=sys.stderr)
        return []
    tokens = found.tokens[:found.cells.length]
    session.cache.lm.load(found.cells, len(tokens))
    session.cache.tokens = list(tokens)
    return tokens


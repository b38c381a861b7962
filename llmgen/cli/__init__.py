"""The `llmgen` command line. Library code lives outside this package; this is the boundary where
typed errors become one line on stderr and an exit code."""

from __future__ import annotations

import functools
import importlib
import os
import signal
import sys
from collections.abc import Callable
from typing import Annotated, Any

import typer

try:  # typer >= 0.25 vendors click
    from typer._click.exceptions import ClickException
except ImportError:  # pragma: no cover - older typer uses click itself
    from click import ClickException  # type: ignore[assignment]

from llmgen import __version__
from llmgen.cli.helpfmt import Command, Group
from llmgen.errors import LlmgenError

app = typer.Typer(
    name="llmgen",
    cls=Group,
    help="Generate text with local causal language models, with control over how it is decoded.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        print(f"llmgen {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: Annotated[bool, typer.Option(
        "--version", callback=_version, is_eager=True, help="Print the version and exit.")] = False) -> None:
    """Generate text with local causal language models, with control over how it is decoded."""


_registered = False


def _register() -> None:
    global _registered
    if _registered:
        return
    _registered = True
    from llmgen.cli import generate, models_cmd, presets_cmd

    app.command("generate", cls=Command)(_guard(generate.generate))
    for sub in (models_cmd.app, presets_cmd.app):
        for info in sub.registered_commands:
            assert info.callback is not None
            info.callback = _guard(info.callback)
            info.cls = Command
    app.add_typer(models_cmd.app, name="models", cls=Group)
    app.add_typer(presets_cmd.app, name="presets", cls=Group)
    # Commands built in their own modules; each registers itself if present.
    for module_name, command in (("speculate", "speculate"), ("bench_cmd", "bench"), ("inspect_cmd", "inspect"),
                                ("chat", "chat"), ("score_cmd", "score"), ("audit_cmd", "audit"),
                                ("serve_cmd", "serve")):
        try:
            module = importlib.import_module(f"llmgen.cli.{module_name}")
        except ModuleNotFoundError as err:
            if err.name != f"llmgen.cli.{module_name}":
                raise
            continue
        app.command(command, cls=Command)(_guard(getattr(module, command)))


class PipeClosed(Exception):
    """stdout's reader went away (`| head`). Not an OSError, so that click does not turn it into exit 1."""


def _guard(func: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(func)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except BrokenPipeError:
            raise PipeClosed() from None

    return guarded


class _PipeGuard:
    """sys.stdout while a command runs: a write or flush to a closed pipe raises PipeClosed.

    NOTE: Rich turns a BrokenPipeError into SystemExit(1) (`Console.on_broken_pipe`), and typer turns
    one raised while parsing (--version, --help) into exit 1; neither catches PipeClosed, so every
    command reaches the quiet exit 0 in `main`. Everything else is the real stream's.
    """

    def __init__(self, stream: Any) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except BrokenPipeError:
            raise PipeClosed() from None

    def flush(self) -> None:
        try:
            self._stream.flush()
        except BrokenPipeError:
            raise PipeClosed() from None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


class Terminated(BaseException):
    """SIGTERM, raised like Ctrl-C so that `finally` blocks flush what was produced."""


def _on_sigterm(signum: int, frame: object) -> None:
    raise Terminated()


def _error(message: str) -> None:
    print(f"llmgen: error: {message}", file=sys.stderr, flush=True)


def _quiet_stdout() -> None:
    """After a broken pipe, point stdout at /dev/null so the interpreter's final flush stays silent."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())


# Options whose value may be left out, and what they mean then (click's `flag_value`, which typer drops).
_OPTIONAL_VALUES = {"--ray": "local"}


def _optional_values(argv: list[str]) -> list[str]:
    """`--ray` alone (last, or before another option) means `--ray local`."""
    out: list[str] = []
    for i, arg in enumerate(argv):
        out.append(arg)
        if arg == "--":
            return out + argv[i + 1:]
        if arg in _OPTIONAL_VALUES and (i + 1 == len(argv) or argv[i + 1].startswith("-")):
            out.append(_OPTIONAL_VALUES[arg])
    return out


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns (and, as a script, exits with) the exit code."""
    _register()
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    # NOTE: a shell starts background jobs with SIGINT ignored; Ctrl-C must always stop generation.
    previous_int = signal.signal(signal.SIGINT, signal.default_int_handler)
    code = 0
    stdout = sys.stdout
    if stdout is not None:
        sys.stdout = _PipeGuard(stdout)
    try:
        # NOTE: without standalone mode, typer returns the code of an Exit (Ctrl-C arrives as Exit(130)).
        returned = app(args=_optional_values(sys.argv[1:] if argv is None else argv), prog_name="llmgen",
                       standalone_mode=False)
        code = returned if isinstance(returned, int) else 0
    except LlmgenError as err:
        _error(str(err))
        code = err.exit_code
    except typer.Exit as exit_:
        code = exit_.exit_code
    except typer.Abort:
        code = 130
    except ClickException as err:
        message = err.format_message().replace("\n", " ").strip()
        if message:  # empty for "no arguments: help was shown"
            _error(message)
        code = err.exit_code
    except (BrokenPipeError, PipeClosed):
        _quiet_stdout()
        code = 0
    except KeyboardInterrupt:
        _flush_quietly()
        code = 130
    except Terminated:
        _flush_quietly()
        code = 143
    finally:
        if isinstance(sys.stdout, _PipeGuard):
            sys.stdout = stdout
        signal.signal(signal.SIGTERM, previous)
        signal.signal(signal.SIGINT, previous_int)
    if argv is None:
        sys.exit(code)
    return code


def _flush_quietly() -> None:
    try:
        sys.stdout.flush()
    except (BrokenPipeError, PipeClosed, ValueError, OSError):
        pass

"""Where text and statistics go.

- A terminal: tokens stream live through Rich, then a statistics panel on stderr.
- A pipe or file: only the plain generated text on stdout; one statistics line on stderr.
- --json: one JSON object per sequence on stdout (JSON Lines), nothing streamed.

`--quiet` drops the statistics. Rich honours NO_COLOR.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

if TYPE_CHECKING:
    from llmgen.decoding.logprobs import TokenLogprob
    from llmgen.decoding.sequence import SequenceResult

# How each token origin is shown on a terminal (speculative decoding colours them).
ORIGIN_STYLES = {"target": "", "accepted": "green", "resampled": "bold red", "bonus": "cyan"}
ORIGIN_LEGEND = (("accepted", "draft token accepted"), ("resampled", "target's correction at a rejection"),
                 ("bonus", "bonus token from the target"))


def stderr_console() -> Console:
    return Console(stderr=True, highlight=False)


def format_stats(stats: dict[str, object]) -> list[tuple[str, str]]:
    """Human-readable (label, value) rows for the statistics we know how to describe."""
    rows: list[tuple[str, str]] = []
    fmt = {
        "prompt_tokens": ("prompt tokens", "{}"),
        "cached_tokens": ("of which cached", "{}"),
        "generated_tokens": ("generated tokens", "{}"),
        "prefill_seconds": ("time to first token", "{:.3f} s"),
        "tokens_per_second": ("decode speed", "{:.1f} tok/s"),
        "target_forwards": ("target forwards", "{}"),
        "draft_tokens": ("draft tokens proposed", "{}"),
        "accepted_tokens": ("draft tokens accepted", "{}"),
        "acceptance_rate": ("acceptance rate", "{:.1%}"),
        "alpha": ("alpha (accepted / tested)", "{:.3f}"),
        "tokens_per_target_forward": ("tokens per target forward", "{:.2f}"),
        "expected_tokens_per_forward": ("expected from alpha", "{:.2f}"),
        "mean_gamma": ("mean gamma", "{:.2f}"),
        "expected_speedup": ("gamma auto: expected speedup", "{:.2f}x"),
        "realised_speedup": ("gamma auto: realised speedup", "{:.2f}x"),
        "baseline_tokens_per_second": ("plain decoding speed", "{:.1f} tok/s"),
        "speedup": ("speedup over plain decoding", "{:.2f}x"),
        "num_beams": ("beams", "{}"),
        "beam_steps": ("beam steps", "{}"),
        "engine": ("engine", "{}"),
    }
    for key, (label, pattern) in fmt.items():
        if stats.get(key) is not None:
            rows.append((label, pattern.format(stats[key])))
    histogram = stats.get("acceptance_histogram")
    if isinstance(histogram, (list, tuple)) and histogram:
        rows.append(("accepted per round (0..gamma)", " ".join(str(c) for c in histogram)))
    gammas = stats.get("gamma_histogram")
    if isinstance(gammas, (list, tuple)) and gammas:
        rows.append(("rounds per chosen gamma (0..)", " ".join(str(c) for c in gammas)))
    return rows


class Renderer:
    """Base: quiet plain text. Subclasses override what they show."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet

    def begin(self, index: int, total: int) -> None: ...

    def text(self, piece: str, origin: str, logprob: TokenLogprob | None = None) -> None: ...

    def end(self, result: SequenceResult) -> None: ...


class PlainRenderer(Renderer):
    """stdout is a pipe or a file: the text only, flushed as it comes; statistics on stderr."""

    def __init__(self, quiet: bool) -> None:
        super().__init__(quiet)
        self.last = "\n"

    def begin(self, index: int, total: int) -> None:
        if index > 0:
            sys.stdout.write("\n")

    def text(self, piece: str, origin: str, logprob: TokenLogprob | None = None) -> None:
        sys.stdout.write(piece)
        sys.stdout.flush()
        self.last = piece[-1]

    def end(self, result: SequenceResult) -> None:
        if self.last != "\n":
            sys.stdout.write("\n")
            self.last = "\n"
        sys.stdout.flush()
        if not self.quiet:
            line = ", ".join(f"{label} {value}" for label, value in format_stats(result.stats))
            score = "" if result.score is None else f", beam score {result.score:.4f}"
            print(f"llmgen: {line}, finish {result.finish_reason}{score}", file=sys.stderr, flush=True)


class TerminalRenderer(Renderer):
    """stdout is a terminal: live tokens through Rich, a statistics panel on stderr."""

    def __init__(self, quiet: bool, legend: bool = False) -> None:
        super().__init__(quiet)
        self.out = Console(highlight=False)
        self.err = stderr_console()
        self.legend = legend

    def begin(self, index: int, total: int) -> None:
        if self.legend and index == 0:
            legend = Text("legend: ")
            for origin, label in ORIGIN_LEGEND:
                legend.append(label, style=ORIGIN_STYLES[origin]).append("  ")
            self.err.print(legend)
        if total > 1:
            self.out.rule(f"sequence {index + 1} of {total}")

    def text(self, piece: str, origin: str, logprob: TokenLogprob | None = None) -> None:
        self.out.print(Text(piece, style=ORIGIN_STYLES.get(origin, "")), end="")
        self.out.file.flush()

    def end(self, result: SequenceResult) -> None:
        self.out.print()
        self.statistics(result)

    def statistics(self, result: SequenceResult) -> None:
        if self.quiet:
            return
        table = Table.grid(padding=(0, 2))
        for label, value in format_stats(result.stats):
            table.add_row(label, value)
        table.add_row("finish reason", result.finish_reason)
        if result.score is not None:
            table.add_row("beam score", f"{result.score:.4f}")
        self.err.print(Panel(table, title="llmgen", expand=False))


class JsonRenderer(Renderer):
    def end(self, result: SequenceResult) -> None:
        sys.stdout.write(json.dumps(result.as_json(), ensure_ascii=False) + "\n")
        sys.stdout.flush()


def make_renderer(json_mode: bool, quiet: bool, legend: bool = False) -> Renderer:
    if json_mode:
        return JsonRenderer(quiet)
    if sys.stdout.isatty():
        return TerminalRenderer(quiet, legend)
    return PlainRenderer(quiet)


# Called after each beam step with (step, hypotheses finished so far, best running beam's tokens).
BeamProgressHook = Callable[[int, int, list[int]], None]


@contextlib.contextmanager
def beam_progress(tokenizer: Any, enabled: bool) -> Iterator[BeamProgressHook | None]:
    """Live progress of a beam search on stderr: the step and the best partial hypothesis.

    Beams are reselected every step, so text cannot stream; this display is transient and the
    final texts are printed afterwards. Disabled (None) unless stderr is a terminal.
    """
    console = stderr_console()
    if not enabled or not console.is_terminal:
        yield None
        return
    with Live(console=console, transient=True, refresh_per_second=8) as live:
        last = 0.0

        def show(step: int, finished: int, best: list[int]) -> None:
            nonlocal last
            now = time.perf_counter()
            if now - last < 0.1:  # NOTE: decoding the best beam every step would cost more than the step
                return
            last = now
            text = tokenizer.decode(best, skip_special_tokens=True).replace("\n", " ")
            line = Text(f"step {step} · {finished} finished · best: ", style="dim")
            live.update(line.append(text[-300:]))

        yield show

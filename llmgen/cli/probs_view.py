"""`--show-probs` and `--show-alternatives`: the probability of each streamed token, on a terminal.

Each piece of text is coloured by the probability of the token that completed it, in four bands
(legend on stderr). `--show-alternatives` adds, after the text, a table of the tokens drawn with
p < 0.5 and their most likely alternatives: a terminal cannot show them on hover, and a dim line under
every uncertain token would break the text apart. Pipes get the plain text (`output.make_renderer`),
and NO_COLOR (honoured by Rich) drops the colours and the legend, keeping the table.

Why two flags and not `--show-probs=alternatives`: an option whose value is optional swallows the
next word, so `--show-probs "Write a haiku"` would take the prompt as its value.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from rich.table import Table
from rich.text import Text

from llmgen.cli.output import TerminalRenderer

if TYPE_CHECKING:
    from llmgen.decoding.logprobs import TokenLogprob
    from llmgen.decoding.sequence import SequenceResult

# (lowest p of the band, style, label), most likely first.
BANDS = ((0.9, "", "p ≥ 0.9"), (0.5, "cyan", "0.5–0.9"), (0.2, "yellow", "0.2–0.5"), (0.0, "red", "< 0.2"))
UNCERTAIN = 0.5
ALTERNATIVES = 4  # shown per uncertain token
MODE_NOTE = {"processed": "the distribution each token was drawn from",
             "raw": "the model's distribution, before any processor"}


def band_style(p: float) -> str:
    for lowest, style, _ in BANDS:
        if p >= lowest:
            return style
    return BANDS[-1][1]


def legend(mode: str) -> Text:
    text = Text("p: ")
    for _, style, label in BANDS:
        text.append(label, style=style or "bold").append("  ")
    return text.append(f"({mode}: {MODE_NOTE[mode]})", style="dim")


def quoted(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"') + '"'


class ProbsRenderer(TerminalRenderer):
    """A terminal renderer whose pieces carry their token's logprobs."""

    def __init__(self, quiet: bool, tokenizer: Any, mode: str, alternatives: bool) -> None:
        super().__init__(quiet)
        self.tokenizer, self.mode, self.alternatives = tokenizer, mode, alternatives
        self.uncertain: list[tuple[str, TokenLogprob]] = []

    def begin(self, index: int, total: int) -> None:
        if index == 0 and not self.out.no_color:
            self.err.print(legend(self.mode))
        self.uncertain = []
        super().begin(index, total)

    def text(self, piece: str, origin: str, logprob: TokenLogprob | None = None) -> None:
        style = ""
        if logprob is not None and logprob.logprob is not None:
            p = math.exp(logprob.logprob)
            style = "" if self.out.no_color else band_style(p)
            if p < UNCERTAIN:
                self.uncertain.append((piece, logprob))
        self.out.print(Text(piece, style=style), end="")
        self.out.file.flush()

    def end(self, result: SequenceResult) -> None:
        self.out.print()
        if self.alternatives and self.uncertain:
            self.out.print(self.table())
        self.statistics(result)

    def table(self) -> Table:
        table = Table(title=f"uncertain tokens (p < {UNCERTAIN})", title_justify="left", box=None,
                      padding=(0, 2), header_style="bold")
        table.add_column("text", no_wrap=True, max_width=20, overflow="ellipsis")
        table.add_column("p", justify="right", no_wrap=True, min_width=4)
        table.add_column("alternatives", no_wrap=True, overflow="ellipsis")
        for piece, entry in self.uncertain:
            others = [(i, lp) for i, lp in entry.top if i != entry.id and lp != -math.inf][:ALTERNATIVES]
            shown = "  ".join(f"{quoted(self.tokenizer.decode([i]))} {math.exp(lp):.2f}" for i, lp in others)
            table.add_row(quoted(piece), f"{math.exp(entry.logprob):.2f}", shown)
        return table

"""`llmgen score`: per-token logprobs, NLL and perplexity of a text (`evaluate/scoring.py`), and with a
reference configuration the KL divergence between the two (`evaluate/divergence.py`)."""

from __future__ import annotations

import copy
import dataclasses
import inspect as pyinspect
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich import box
from rich.console import Console
from rich.table import Table

from llmgen.cli import common
from llmgen.cli.options import MODEL, OUTPUT, SAMPLING, DecodingFlags, ModelOptions, OutputOptions, group, with_options
from llmgen.decoding.config import DecodingConfig
from llmgen.errors import PromptError, UsageError
from llmgen.evaluate import corpus

if TYPE_CHECKING:
    from llmgen.evaluate.divergence import Divergence, GreedyDiff
    from llmgen.evaluate.scoring import Score
    from llmgen.loading.models import LoadedModel

PANEL = "Score"
REFERENCE_PANEL = "Reference (KL divergence)"
ENGINES = ("torch",)  # NOTE: the one place --reference-engine is wired; `llamacpp` joins when the loader takes --engine


@dataclass(frozen=True)
class ScoreOptions:
    file: Path | None = None
    input: Path | None = None
    corpus_name: str | None = None
    top: int = 0
    window: int | None = None
    stride: int | None = None
    reference: str | None = None
    reference_quant: str | None = None
    reference_engine: str | None = None
    greedy_diff: str | None = None


def _option(name: str, annotation: Any, default: object) -> pyinspect.Parameter:
    return pyinspect.Parameter(name, pyinspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation)


def _raw_by_default(param: pyinspect.Parameter) -> pyinspect.Parameter:
    """OUTPUT's --chat/--raw, shown with score's own default (raw: a text is scored as it stands)."""
    annotation = copy.deepcopy(param.annotation)
    info = annotation.__metadata__[0]
    info.show_default = "raw"
    info.help = "raw scores the text's own tokens; chat scores the text as one user turn of the chat template."
    return param.replace(annotation=annotation)


OUTPUT_SCORE = OUTPUT.swap(_raw_by_default(next(p for p in OUTPUT.params if p.name == "chat")))
LENGTH = SAMPLING.only("max_new_tokens")  # the greedy continuation's length, for --greedy-diff

SCORE = group(ScoreOptions, [
    _option("file", Annotated[Path | None, typer.Option(
        "--file", metavar="F", rich_help_panel=PANEL, show_default="none",
        help="Score the whole of file F as one text.")], None),
    _option("input", Annotated[Path | None, typer.Option(
        "--input", metavar="F", rich_help_panel=PANEL, show_default="none",
        help="Score every text of F, one row each: one per line, or JSON Lines with \"prompt\" (and \"id\", "
             "\"system\"), as generate --input reads them.")], None),
    _option("corpus_name", Annotated[str | None, typer.Option(
        "--corpus", metavar="NAME", rich_help_panel=PANEL, show_default="kjv-genesis when no text is given",
        help=f"Score a built-in public-domain corpus: {', '.join(corpus.NAMES)} (docs/evaluate.md).")], None),
    _option("top", Annotated[int, typer.Option(
        "--top", metavar="N", min=0, max=100, rich_help_panel=PANEL,
        help="Also give each position's N most likely tokens; on a terminal, a table of every token.")], 0),
    _option("window", Annotated[int | None, typer.Option(
        "--window", metavar="L", rich_help_panel=PANEL, show_default="the model's context",
        help="Tokens per forward; longer texts are read with a sliding window (HF's perplexity guide).")], None),
    _option("stride", Annotated[int | None, typer.Option(
        "--stride", metavar="S", rich_help_panel=PANEL, show_default="half the window",
        help="How far the window moves; each token is scored once, with at least L - S tokens of context.")],
        None),
    _option("reference", Annotated[str | None, typer.Option(
        "--reference", metavar="MODEL", rich_help_panel=REFERENCE_PANEL, show_default="--model",
        help="Score the same tokens with this model too and report KL(reference || model), top-1 agreement and "
             "the largest drop of a token's probability.")], None),
    _option("reference_quant", Annotated[str | None, typer.Option(
        "--reference-quant", metavar="auto|none|int4", rich_help_panel=REFERENCE_PANEL, show_default="--quant",
        help="The reference's weights (as --quant); e.g. --quant int4 --reference-quant none.")], None),
    _option("reference_engine", Annotated[str | None, typer.Option(
        "--reference-engine", metavar="torch", rich_help_panel=REFERENCE_PANEL, show_default="torch",
        help="The reference's engine. Only torch for now.")], None),
    _option("greedy_diff", Annotated[str | None, typer.Option(
        "--greedy-diff", metavar="PROMPT", rich_help_panel=REFERENCE_PANEL, show_default="off",
        help="Also decode PROMPT greedily with both (--max-new-tokens tokens) and report where they part, the "
             "top-1/top-2 logit margin there, and the positions whose margin is below the measured noise.")], None),
])

TextArg = Annotated[str | None, typer.Argument(
    help="The text to score; '-' reads stdin (as does no argument when stdin is not a terminal).",
    show_default=False)]


@with_options(own=SCORE, length=LENGTH, model_opts=MODEL, output=OUTPUT_SCORE)
def score(text: TextArg = None, *, own: ScoreOptions, length: DecodingFlags, model_opts: ModelOptions,
          output: OutputOptions) -> None:
    """Score a text: each token's log-probability, the negative log-likelihood and the perplexity. With a
    reference, the KL divergence between the two configurations on every token.

    With no text and stdin a terminal, the built-in corpus kjv-genesis (public domain) is scored.

    Examples:

      llmgen score --top 3 "The capital of France is Paris."

      llmgen score --corpus kjv-genesis --quant int4 --reference-quant none

      llmgen score --input texts.txt --json --stride 256
    """
    from llmgen.evaluate.divergence import Divergence, divergence, greedy_diff
    from llmgen.evaluate.scoring import score_ids

    reference_on = any(getattr(own, k) is not None for k in ("reference", "reference_quant", "reference_engine"))
    if own.greedy_diff is not None and not reference_on:
        raise UsageError("--greedy-diff compares two configurations: give --reference, --reference-quant or "
                         "--reference-engine")
    if own.reference_engine not in (None, *ENGINES):
        raise UsageError(f"--reference-engine must be one of {', '.join(ENGINES)}, not {own.reference_engine!r}")
    if own.window is not None and own.window < 2:
        raise UsageError(f"--window must be at least 2 tokens, not {own.window}")
    if own.stride is not None and own.stride < 1:
        raise UsageError(f"--stride must be at least 1, not {own.stride}")
    texts = _texts(text, own)  # [(id or None, text, system or None)], checked before any model is loaded
    loaded = common.load_model(model_opts.model, model_opts)
    reference = _load_reference(own, model_opts) if reference_on else None
    window = min(own.window or loaded.context_length, loaded.context_length,
                 reference.context_length if reference else loaded.context_length)
    stride = own.stride or max(1, window // 2)
    if stride >= window:
        raise UsageError(f"--stride must be less than the window ({window} tokens), not {stride}")
    console = Console(highlight=False)
    for index, (row_id, body, system) in enumerate(texts):
        ids = _encode(loaded, body, output, system)
        if reference is not None:
            _check_same_tokens(loaded, reference, body, output, system, ids)
            compared = divergence(reference.engine.sequence, loaded.engine.sequence, ids, window, stride)
            result: Score | Divergence = compared
            scored = compared.candidate
        else:
            result = scored = score_ids(loaded.engine.sequence, ids, window, stride, own.top)
        if own.top and reference is not None:
            scored = score_ids(loaded.engine.sequence, ids, window, stride, own.top)
        if output.json:
            row = {"index": index, **({"id": row_id} if row_id is not None else {}),
                   **score_json(scored, loaded.tokenizer)}
            if isinstance(result, Divergence):
                row["reference"] = divergence_json(result, loaded.tokenizer)
            sys.stdout.write(json.dumps(row, ensure_ascii=False) + "\n")
            sys.stdout.flush()
        else:
            if own.top:
                console.print(token_table(scored, loaded.tokenizer))
            console.print(summary_table(index if len(texts) > 1 else None, scored,
                                        result if isinstance(result, Divergence) else None))
    if own.greedy_diff is not None and reference is not None:
        prompt = _encode(loaded, own.greedy_diff, output, None)
        given = length.given.get("max_new_tokens")
        steps = given if isinstance(given, int) and given else DecodingConfig().max_new_tokens
        diff = greedy_diff(reference.engine.sequence, loaded.engine.sequence, prompt, steps,
                           loaded.eos_token_ids)
        if output.json:
            sys.stdout.write(json.dumps({"greedy_diff": greedy_json(diff, loaded.tokenizer)}, ensure_ascii=False)
                             + "\n")
        else:
            console.print(greedy_text(diff, loaded.tokenizer))


def _texts(text: str | None, own: ScoreOptions) -> list[tuple[Any, str, str | None]]:
    sources = [name for name, given in (("TEXT", text is not None), ("--file", own.file is not None),
                                        ("--input", own.input is not None),
                                        ("--corpus", own.corpus_name is not None)) if given]
    if len(sources) > 1:
        raise UsageError(f"give one text to score: {' and '.join(sources)} were both given")
    if own.file is not None:
        body = _read(own.file, "--file")
        if not body.strip():
            raise PromptError(f"--file {own.file}: the text is empty")
        return [(None, body, None)]
    if own.input is not None:
        from llmgen import prompt_file

        jobs = prompt_file.parse(_read(own.input, "--input"), DecodingConfig())
        bad = next((job for job in jobs if job.error), None)
        if bad is not None:
            raise UsageError(f"--input {own.input}, line {bad.index + 1}: {bad.error}")
        if not jobs:
            raise PromptError(f"--input {own.input}: the file holds no text")
        return [(job.id, job.prompt, job.system) for job in jobs]
    if own.corpus_name is not None or (text is None and sys.stdin is not None and sys.stdin.isatty()):
        return [(own.corpus_name or corpus.DEFAULT, corpus.load(own.corpus_name or corpus.DEFAULT), None)]
    return [(None, common.read_prompt(text), None)]


def _read(path: Path, flag: str) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError as err:
        raise UsageError(f"{flag}: cannot read {path}: {err.strerror}") from None


def _encode(loaded: LoadedModel, text: str, output: OutputOptions, system: str | None) -> list[int]:
    """Raw: the text's own tokens (any length: the window slides). Chat: one user turn, as generate sends it."""
    if output.chat:
        return common.prompt_ids(loaded, text, dataclasses.replace(output, system=system or output.system))
    if system or output.system:
        raise UsageError("--system needs --chat")
    return [int(i) for i in loaded.tokenizer(text)["input_ids"]]


def _load_reference(own: ScoreOptions, model_opts: ModelOptions) -> LoadedModel:
    """The reference configuration: --reference (default --model), --reference-quant (default --quant), and
    --reference-engine (torch: the only engine the loader builds today)."""
    options = dataclasses.replace(model_opts, quant=own.reference_quant or model_opts.quant)
    return common.load_model(own.reference or model_opts.model, options)


def _check_same_tokens(loaded: LoadedModel, reference: LoadedModel, text: str, output: OutputOptions,
                       system: str | None, ids: list[int]) -> None:
    if _encode(reference, text, output, system) != ids:
        raise UsageError(f"{reference.ref!r} and {loaded.ref!r} tokenize the text differently: "
                         "KL divergence needs one tokenizer")


def _piece(tokenizer: Any, token: int) -> str:
    return tokenizer.decode([token])


def score_json(scored: Score, tokenizer: Any) -> dict[str, object]:
    """OpenAI's echo layout: every token, the first one's logprob null (nothing predicts it)."""
    row: dict[str, object] = {
        "ids": scored.ids, "tokens": [_piece(tokenizer, t) for t in scored.ids],
        "logprobs": [None, *(round(t.logprob, 6) for t in scored.tokens)],
        "count": len(scored.tokens), "nll": round(scored.nll, 6), "mean_nll": round(scored.mean_nll, 6),
        "perplexity": round(scored.perplexity, 6)}
    if any(t.top for t in scored.tokens):
        row["top_logprobs"] = [None, *([{"id": i, "token": _piece(tokenizer, i), "logprob": round(lp, 6)}
                                        for i, lp in t.top] for t in scored.tokens)]
    return row


def divergence_json(result: Divergence, tokenizer: Any) -> dict[str, object]:
    position, p_ref, p_cand = result.largest_drop
    return {"nll": round(result.reference.nll, 6), "perplexity": round(result.reference.perplexity, 6),
            "kl_mean": result.mean_kl, "kl_max": result.max_kl, "top1_agreement": result.top1_agreement,
            "largest_drop": {"position": position, "token": _piece(tokenizer, result.reference.ids[position]),
                             "p_reference": p_ref, "p_candidate": p_cand},
            "kl": [None, *(t.kl for t in result.tokens)]}


def greedy_json(diff: GreedyDiff, tokenizer: Any) -> dict[str, object]:
    return {"reference": tokenizer.decode(diff.reference), "candidate": tokenizer.decode(diff.candidate),
            "reference_ids": diff.reference, "candidate_ids": diff.candidate, "first_divergence": diff.first,
            "margin_reference": diff.margin_reference, "margin_candidate": diff.margin_candidate,
            "noise": diff.noise, "fragile": diff.fragile}


def summary_table(index: int | None, scored: Score, result: Divergence | None) -> Table:
    """One input's numbers, one per line (narrow enough for any terminal)."""
    table = Table(title=None if index is None else f"text {index}", title_justify="left", box=None,
                  show_header=False, padding=(0, 1), pad_edge=False)
    table.add_column("")
    table.add_column("", justify="right")
    table.add_row("tokens scored", str(len(scored.tokens)))
    table.add_row("NLL (nats)", f"{scored.nll:.3f}")
    table.add_row("mean NLL", f"{scored.mean_nll:.4f}")
    table.add_row("perplexity", f"{scored.perplexity:.4f}")
    if result is not None:
        position, p_ref, p_cand = result.largest_drop
        table.add_row("reference perplexity", f"{result.reference.perplexity:.4f}")
        table.add_row("mean KL(reference || model)", f"{result.mean_kl:.4g}")
        table.add_row("max KL", f"{result.max_kl:.4g}")
        table.add_row("top-1 agreement", f"{result.top1_agreement:.2%}")
        table.add_row("largest drop of p(token)", f"{p_ref:.4f} → {p_cand:.4f} at token {position}")
    return table


def token_table(scored: Score, tokenizer: Any) -> Table:
    table = Table(box=box.SIMPLE_HEAD, padding=(0, 1), pad_edge=False)
    for column, justify in (("pos", "right"), ("token", "left"), ("logprob", "right"), ("top", "left")):
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    for position, token in enumerate(scored.tokens, start=1):
        top = "  ".join(f"{json.dumps(_piece(tokenizer, i), ensure_ascii=False)} {lp:.2f}" for i, lp in token.top)
        table.add_row(str(position), json.dumps(_piece(tokenizer, token.id), ensure_ascii=False),
                      f"{token.logprob:.4f}", top)
    return table


def greedy_text(diff: GreedyDiff, tokenizer: Any) -> str:
    lines = [f"greedy, reference: {json.dumps(tokenizer.decode(diff.reference), ensure_ascii=False)}",
             f"greedy, candidate: {json.dumps(tokenizer.decode(diff.candidate), ensure_ascii=False)}"]
    if diff.first is None:
        lines.append(f"identical for {len(diff.reference)} tokens")
    else:
        lines.append(f"first divergence at generated token {diff.first}")
        if diff.margin_reference is not None:
            lines.append(f"  top-1/top-2 logit margin there: {diff.margin_reference:.4g} (reference), "
                         f"{diff.margin_candidate:.4g} (candidate)")
    lines.append(f"measured noise of the margin before it: {diff.noise:.3g}; positions with a smaller margin: "
                 f"{', '.join(map(str, diff.fragile)) or 'none'}")
    return "\n".join(lines)

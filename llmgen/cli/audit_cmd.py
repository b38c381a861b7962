"""`llmgen audit`: does a server (or llmgen itself) sample from the distribution its settings define?
The test and the explainer are `evaluate/audit.py`; the requests `evaluate/client.py` and `remote.py`."""

from __future__ import annotations

import copy
import inspect as pyinspect
import json
import math
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from llmgen.cli import common
from llmgen.cli.options import (
    MODEL,
    OUTPUT,
    SAMPLING,
    DecodingFlags,
    ModelOptions,
    OutputOptions,
    PromptArg,
    group,
    with_options,
)
from llmgen.decoding.config import DecodingConfig
from llmgen.errors import UsageError

if TYPE_CHECKING:
    from llmgen.evaluate import remote
    from llmgen.loading.models import LoadedModel

PANEL = "Audit"
DEFAULT_N = 400
ORACLES = ("torch", "llamacpp")  # NOTE: the one place the oracle's engine is wired; MODEL's --engine replaces it
SELF_PATHS = ("plain", "batched", "ngram", "draft", "int4")  # as evaluate.selfaudit.PATHS, which imports torch
REFUSED = {"stop": "--stop", "schema": "--schema", "json_object": "--json-object", "regex": "--regex",
           "choice": "--choice", "grammar": "--grammar", "ignore_eos": "--ignore-eos",
           "max_new_tokens": "--max-new-tokens (use -k)"}


@dataclass(frozen=True)
class AuditOptions:
    url: str | None = None
    determinism: str | None = None
    self_audit: bool = False
    served_model: str | None = None
    tokens: int | None = None
    alpha: float = 0.001
    paths: str | None = None
    draft: str | None = None
    oracle_engine: str = "torch"


def _option(name: str, annotation: Any, default: object) -> pyinspect.Parameter:
    return pyinspect.Parameter(name, pyinspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation)


AUDIT = group(AuditOptions, [
    _option("url", Annotated[str | None, typer.Option(
        "--url", metavar="URL", rich_help_panel=PANEL, show_default="none",
        help="The OpenAI-compatible server: its base (http://host:port or .../v1) or the completions endpoint.")],
        None),
    _option("determinism", Annotated[str | None, typer.Option(
        "--determinism", metavar="URL", rich_help_panel=PANEL, show_default="none",
        help="Instead of the chi-square test: send a set of prompts to this OpenAI-compatible server alone, then "
             "inside -n concurrent requests (default 16; staggered, of mixed lengths), greedy and seeded, and count "
             "the answers that differ (exit 1 if any do). PROMPT, if given, joins the set.")], None),
    _option("self_audit", Annotated[bool, typer.Option(
        "--self", rich_help_panel=PANEL,
        help="Audit llmgen's own paths in this process instead: plain, batched, ngram (speculative), draft "
             "(with --draft) and int4.")], False),
    _option("served_model", Annotated[str | None, typer.Option(
        "--served-model", metavar="NAME", rich_help_panel=PANEL, show_default="not sent",
        help="The \"model\" field of each request (the server's name for its model).")], None),
    _option("tokens", Annotated[int | None, typer.Option(
        "-k", "--tokens", metavar="K", min=1, max=16, rich_help_panel=PANEL, show_default="1 (--self: 3)",
        help="Tokens per sample (max_tokens); positions after the first are tested on the sampled prefixes.")],
        None),
    _option("alpha", Annotated[float, typer.Option(
        "--alpha", min=1e-12, max=0.5, rich_help_panel=PANEL,
        help="Reject when the p-value is below this (exit 1).")], 1e-3),
    _option("paths", Annotated[str | None, typer.Option(
        "--paths", metavar="LIST", rich_help_panel=PANEL, show_default="plain,batched,ngram (+draft, int4)",
        help=f"--self: the paths to audit, comma-separated, of {', '.join(SELF_PATHS)}.")], None),
    _option("draft", Annotated[str | None, typer.Option(
        "--draft", metavar="MODEL", rich_help_panel=PANEL, show_default="none",
        help="--self: the draft model of the 'draft' path.")], None),
    _option("oracle_engine", Annotated[str, typer.Option(
        "--oracle-engine", metavar="torch|llamacpp", rich_help_panel=PANEL,
        help="Whose logits define the exact distribution: llmgen's torch engine, or llama.cpp's own forward of the "
             "--model GGUF file (to audit a llama.cpp server, whose logits differ slightly from torch's).")],
        "torch"),
])
OUTPUT_AUDIT = OUTPUT.only("json", "quiet")


def _samples_option(param: pyinspect.Parameter) -> pyinspect.Parameter:
    """SAMPLING's -n, which counts the audit's samples here."""
    annotation = copy.deepcopy(param.annotation)
    info = annotation.__metadata__[0]
    info.show_default = str(DEFAULT_N)
    info.help = "Samples (requests) to test; too few for the claim is refused, with how many are needed."
    return param.replace(annotation=annotation)


SAMPLING_AUDIT = SAMPLING.swap(_samples_option(next(p for p in SAMPLING.params if p.name == "n")))


@with_options(own=AUDIT, sampling=SAMPLING_AUDIT, model_opts=MODEL, output=OUTPUT_AUDIT)
def audit(prompt: PromptArg = None, *, own: AuditOptions, sampling: DecodingFlags, model_opts: ModelOptions,
          output: OutputOptions) -> int:
    """Send N completion requests to an OpenAI-compatible server with the settings you claim (the sampling
    options you give, nothing else), compute with --model's weights the exact distribution those settings
    define, and test the samples with a chi-square test. -n is the number of samples.

    Exit 0: consistent; 1: rejected at --alpha; 2: usage, or a server that cannot be audited (unreachable, not OpenAI-compatible, another vocabulary). A rejection names the hidden setting (top-k 40, min-p 0.05, another temperature, ...) that best explains it.

    Examples:

      llmgen audit --url http://127.0.0.1:8080 --temperature 1 "The capital of France is"

      llmgen audit --url http://127.0.0.1:8080 --oracle-engine llamacpp -n 400 --temperature 1 --top-k 40 --top-p 0.95 --min-p 0.05 "Once upon a time"

      llmgen audit --self -n 400 --top-p 0.9 "Once upon a time"

      llmgen audit --determinism http://127.0.0.1:8080 -n 16
    """
    if own.determinism is not None:
        given_n = sampling.given.get("n")
        return _determinism(own.determinism, own.served_model, prompt, given_n if isinstance(given_n, int) else None,
                            output)
    if (own.url is None) == (not own.self_audit):
        raise UsageError("give --url URL (a server to audit) or --self (llmgen's own paths), one of them")
    if own.oracle_engine not in ORACLES:
        raise UsageError(f"--oracle-engine must be one of {', '.join(ORACLES)}, not {own.oracle_engine!r}")
    for name, flag in REFUSED.items():
        if sampling.given.get(name) not in (None, False):
            raise UsageError(f"audit does not test {flag}: drop it")
    given_n = sampling.given.get("n")
    n = given_n if isinstance(given_n, int) else DEFAULT_N
    claimed = {k: v for k, v in sampling.without("n").flags().items() if k != "seed"}
    resolved = common.resolve_settings(sampling.without("n"))
    config = resolved.config
    if config.num_beams > 1:
        raise UsageError("audit tests sampling; beam search is not sampling")
    k = own.tokens or (3 if own.self_audit else 1)
    paths = _paths(own)
    if sampling.dump_config:
        common.dump_config(resolved, {"model": (model_opts.model, "flag or default"), "n": (n, "audit")})
        return 0
    text = common.read_prompt(prompt)
    loaded = common.load_model(model_opts.model, model_opts)
    prompt_ids = [int(i) for i in loaded.tokenizer(text)["input_ids"]]
    if not prompt_ids:
        raise UsageError("the prompt has no tokens")
    if len(prompt_ids) + k > loaded.context_length:
        raise UsageError(f"the prompt ({len(prompt_ids)} tokens) and -k {k} do not fit the model's context "
                         f"({loaded.context_length})")
    if own.self_audit:
        return _self(loaded, own, paths, prompt_ids, config, n, k, output)
    from llmgen.evaluate import remote
    from llmgen.evaluate.distribution import ContextLogits

    url = own.url
    assert url is not None  # checked above: --url or --self
    logits_of = ContextLogits(_oracle(loaded, own.oracle_engine, model_opts.model))
    with common.spinner(f"auditing {own.url}: {n} requests") if not output.quiet else _nothing():
        report = remote.audit_server(url, own.served_model, text, prompt_ids, loaded.tokenizer,
                                     loaded.eos_token_ids, logits_of, config, claimed, n, k, own.alpha,
                                     config.seed, loaded.ref)
    _show(report, url, k, output, loaded.tokenizer, by_text=k == 1)
    return 1 if report.verdict.rejected else 0


def _determinism(url: str, model: str | None, prompt: str | None, n: int | None, output: OutputOptions) -> int:
    """`--determinism URL`: the same requests alone and under load (`evaluate/determinism.py`)."""
    from llmgen.evaluate import determinism
    from llmgen.evaluate.client import completions_url

    endpoint = completions_url(url)
    prompts = ((prompt,) if prompt else ()) + determinism.PROMPTS
    concurrency = n or 16
    with common.spinner(f"determinism of {url}: {len(prompts)} prompts alone, then {concurrency} at once") \
            if not output.quiet else _nothing():
        report = determinism.audit(endpoint, model, prompts=prompts, concurrency=concurrency)
    if output.json:
        sys.stdout.write(json.dumps(report.to_json(), ensure_ascii=False) + "\n")
        return 0 if report.ok else 1
    verdict = "[green]deterministic[/green]" if report.ok else "[red]not deterministic[/red]"
    console = Console(highlight=False)
    console.print(f"{url}: {verdict}: {len(report.differences)} of {report.compared} answers differ between alone "
                  f"and {report.concurrency} concurrent requests ({report.max_tokens} tokens, greedy and seeded)")
    for d in report.differences:
        console.print(f"  {d.mode} prompt {d.prompt}: parts at {d.unit} {d.at}: alone {d.alone!r} / "
                      f"batched {d.batched!r}", markup=False)
    return 0 if report.ok else 1


class _nothing:
    def __enter__(self) -> None: ...

    def __exit__(self, *exc: object) -> None: ...


def _paths(own: AuditOptions) -> list[str]:
    if own.paths is None:
        return ["plain", "batched", "ngram", *(["draft"] if own.draft else [])]
    paths = [p.strip() for p in own.paths.split(",") if p.strip()]
    unknown = [p for p in paths if p not in SELF_PATHS]
    if unknown or not paths:
        raise UsageError(f"--paths: {', '.join(unknown) or 'none given'}; choose from {', '.join(SELF_PATHS)}")
    if "draft" in paths and not own.draft:
        raise UsageError("--paths draft needs --draft MODEL")
    return paths


def _oracle(loaded: LoadedModel, engine: str, ref: str) -> Any:
    """The cache whose logits define the exact distribution (torch: `loaded`'s own engine)."""
    if engine == "torch":
        return loaded.engine.sequence()
    from llmgen.evaluate.llamacpp_logits import LlamaCppSequence
    from llmgen.loading.registry import resolve

    resolved = resolve(ref)
    if resolved.kind != "gguf":
        raise UsageError(f"--oracle-engine llamacpp reads a GGUF file, and {ref!r} is not one")
    return LlamaCppSequence(resolved.location, context=min(loaded.context_length, 2048))


def _self(loaded: LoadedModel, own: AuditOptions, paths: list[str], prompt_ids: list[int], config: DecodingConfig,
          n: int, k: int, output: OutputOptions) -> int:
    from llmgen.evaluate import selfaudit

    draft = common.load_model(own.draft, ModelOptions()) if own.draft else None  # the defaults, not --model's
    code = 0
    for path in paths:
        model = loaded
        if path == "int4":
            model = common.load_model(loaded.ref, ModelOptions(device="cpu", quant="int4", offline=True))
        report = selfaudit.audit_path(path, model, draft, prompt_ids, config, n, k, own.alpha, config.seed)
        _show(report, f"llmgen {path}", k, output, loaded.tokenizer, by_text=False)
        code = max(code, 1 if report.verdict.rejected else 0)
    return code


def _label(key: Any, tokenizer: Any, by_text: bool) -> str:
    from llmgen.evaluate import remote

    if key == remote.EOS or key == "<pooled>":
        return str(key)
    return json.dumps(key if by_text else tokenizer.decode([key]), ensure_ascii=False)


def _show(report: remote.Report, target: str, k: int, output: OutputOptions, tokenizer: Any, by_text: bool) -> None:
    verdict = report.verdict
    first = verdict.positions[0].test if verdict.positions else None
    over = first.over() if first else []
    under = first.under() if first else []
    if output.json:
        row = {"target": target, "n": verdict.n, "k": k, "alpha": verdict.alpha, "p_value": verdict.p_value,
               "rejected": verdict.rejected, "request": report.fields,
               "positions": [{"position": p.position, "p_value": p.test.p_value, "statistic": p.test.statistic,
                              "dof": p.test.dof, "groups": p.groups, "skipped": p.skipped} for p in verdict.positions],
               "over": [{"token": _label(c.key, tokenizer, by_text), "observed": c.observed,
                         "expected": round(c.expected, 3)} for c in over],
               "under": [{"token": _label(c.key, tokenizer, by_text), "observed": c.observed,
                          "expected": round(c.expected, 3)} for c in under],
               "explanation": None}
        found = report.explanation
        if found is not None:
            row["explanation"] = {"name": found.name,
                                  "log_likelihood_gain": None if math.isinf(found.gain) else found.gain,
                                  "p_value": found.p_value}
        sys.stdout.write(json.dumps(row, ensure_ascii=False) + "\n")
        sys.stdout.flush()
        return
    console = Console(highlight=False)
    result = "[red]rejected[/red]" if verdict.rejected else "[green]consistent[/green]"
    table = Table(title=f"{target}: {result} (p = {verdict.p_value:.3g}, alpha {verdict.alpha:g}, N = {verdict.n}, "
                        f"k = {k})", title_justify="left", box=None, show_header=False, padding=(0, 1), pad_edge=False)
    table.add_column("")
    table.add_column("", overflow="fold")
    table.add_row("request", json.dumps(report.fields) if report.fields else "(no sampling fields)")
    for p in verdict.positions:
        table.add_row(f"position {p.position}", f"p = {p.test.p_value:.3g} (chi2 {p.test.statistic:.1f}, "
                      f"{p.test.dof} dof, {p.groups} prefix{'es' if p.groups != 1 else ''}"
                      f"{f', {p.skipped} samples in rarer prefixes untested' if p.skipped else ''})")
    table.add_row("over-drawn", ", ".join(f"{_label(c.key, tokenizer, by_text)} {c.observed} vs {c.expected:.1f}"
                                          for c in over) or "-")
    table.add_row("under-drawn", ", ".join(f"{_label(c.key, tokenizer, by_text)} {c.observed} vs {c.expected:.1f}"
                                           for c in under) or "-")
    if verdict.rejected:
        e = report.explanation
        table.add_row("explained by", "none of the common hidden defaults" if e is None else
                      f"{e.name}: log-likelihood {'+inf' if math.isinf(e.gain) else f'+{e.gain:.1f}'} nats over the "
                      f"claim; p = {e.p_value:.3g} under it")
    console.print(table)

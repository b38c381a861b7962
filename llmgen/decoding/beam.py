"""Beam search in log-probability space: its own loop, over the engine's batched rows (one row a beam).

The semantics are those of HF `generate(num_beams=B, do_sample=False)`; the code is ours. One step:

1. One forward of the B running beams (`RowsCache.step`); the cache holds one row per beam.  logits [B, V]
2. log_probs = log_softmax(logits), then, for each beam on that beam's own tokens:
   - the penalties of `processors/penalties.py` (repetition, then frequency/presence), counted over the beam's
     generated tokens (or prompt + generated, with `penalty_scope = "all"`), last `penalty_window` only;
   - n-gram blocking: every token that would complete an n-gram already present in the beam
     (prompt included, as in HF) gets -inf.
   NOTE: as in HF's beam search, the penalties act on log-probabilities and nothing is renormalised
   afterwards. A log-prob is never positive, so the repetition penalty always multiplies it by R.
3. Each candidate (beam b, token v) scores s_b + log_probs[b, v], where s_b is the beam's running sum.
   We keep the top K = max(2, 1 + #eos) * B candidates of all B * V: enough that at least B of them
   do not end in EOS.
4. A candidate *finishes* when its token is an end-of-sequence token (unless `ignore_eos`), its text
   contains a stop string, or it uses up the token budget. Only the top B of the K may finish; a
   finished hypothesis scores  sum of log-probs / generated_length ** length_penalty  (EOS counted)
   and enters the finished set, which keeps the best B.
5. The B best unfinished candidates become the running beams; the cache rows follow their parents
   (`RowsCache.select`, a row repeated where a beam has two children).
6. The search stops when
   - every candidate finished (the budget is used up), or
   - early_stopping = "true" and B hypotheses finished, or
   - B hypotheses finished and no running beam can beat the worst of them. A running beam's best
     possible score is  s_best / L ** length_penalty  with L = the current length for "false", and,
     for "never" with a positive length penalty, L = the full budget (a bound that holds, so "never"
     stops only when nothing better can come). For "false" this is HF's heuristic, not a bound.

The first step has one distinct row: beams 1..B-1 start at -1e9, so only beam 0's tokens are taken.

Logprobs (`--logprobs`): each token's entry is read from the step that chose it, from step 2's
log_probs ("processed") or the plain log_softmax ("raw"; the same numbers without penalties and
n-gram blocking). In "processed" mode they are exactly the terms of the beam's running sum, so a
hypothesis's logprobs add up to its unnormalised score.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from llmgen.decoding.config import DEFAULTS, DecodingConfig, Resolved
from llmgen.decoding.counts import penalty_counts
from llmgen.decoding.logprobs import LogprobSpec, TokenLogprob, entries, to_json
from llmgen.decoding.processors import NEG_INF, apply_mask, apply_penalties
from llmgen.decoding.sequence import SequenceResult
from llmgen.decoding.textstream import TextStream
from llmgen.errors import UsageError
from llmgen.loading.engines.base import Engine

DEAD = -1.0e9  # NOTE: HF's score for a beam that must not be chosen; kept in float32, as HF does

# Sampling filters that beam search does not use: there is no beam sampling.
SAMPLING_ONLY = ("temperature", "top_k", "top_p", "min_p", "typical_p", "epsilon_cutoff", "eta_cutoff", "top_n_sigma",
                 "xtc_probability", "mirostat", "dynatemp_range")
# Stages of the chain that beam search does not run (yet): refused as flags, ignored from a preset.
NOT_IN_BEAMS = ("logit_bias", "min_tokens", "stop_token_ids", "bad_words", "allowed_token_ids", "dry_multiplier",
                "reasoning_budget", "samplers")
# Options that mean something only with beams.
BEAM_ONLY = ("length_penalty", "early_stopping", "no_repeat_ngram_size")


@dataclass(frozen=True)
class Hypothesis:
    token_ids: list[int]  # the generated tokens, with the final EOS if it ended on one
    score: float  # sum of log-probs / len(token_ids) ** length_penalty
    finish_reason: str  # "eos", "stop" or "length"
    logprobs: list[TokenLogprob] | None = None  # with --logprobs: one entry per token


@dataclass(frozen=True)
class BeamStep:
    """What the progress display shows after each step."""

    step: int  # tokens generated so far by every running beam
    best_token_ids: list[int]  # the best running beam's tokens
    best_log_prob: float  # its running sum of log-probs
    finished: int  # hypotheses in the finished set


@dataclass
class BeamOutput:
    hypotheses: list[Hypothesis]  # best first, at most B
    steps: int
    stats: dict[str, Any] = field(default_factory=dict)


class FinishedSet:
    """The best `size` finished hypotheses, best first. Ties keep the earlier one first."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.items: list[Hypothesis] = []

    @property
    def full(self) -> bool:
        return len(self.items) == self.size

    def worst(self) -> float:
        return self.items[-1].score if self.full else DEAD

    def add(self, hypothesis: Hypothesis) -> None:
        self.items.append(hypothesis)
        self.items.sort(key=lambda h: -h.score)  # stable
        del self.items[self.size:]


# ---------------------------------------------------------------------------------------------
# Pure pieces: per-beam logits processing and the stopping rule.


def block_repeated_ngrams(log_probs: Tensor, seqs: Tensor, n: int) -> Tensor:
    """-inf for every token that would complete an n-gram already present in the same row.

    The next n-gram starts with the row's last n-1 tokens; every window whose first n-1 tokens equal
    them bans its own last token. (For n = 1 every seen token is banned.)
    """
    rows, length = seqs.shape
    vocab = log_probs.shape[-1]
    if n <= 0 or length < n:
        return log_probs
    prefix = seqs[:, length - n + 1:]  # [B, n-1]
    windows = seqs.unfold(1, n, 1)  # [B, length-n+1, n]
    matches = (windows[..., :-1] == prefix[:, None, :]).all(dim=-1)  # [B, length-n+1]
    # Non-matching windows write to a spare column past the vocabulary.
    targets = torch.where(matches, windows[..., -1].clamp(max=vocab), vocab)
    banned = torch.zeros(rows, vocab + 1, dtype=torch.bool, device=seqs.device).scatter_(1, targets, True)
    return log_probs.masked_fill(banned[:, :vocab], NEG_INF)


def needs_context(config: DecodingConfig) -> bool:
    """Whether step 2 reads the beams' tokens (penalties or n-gram blocking)."""
    return config.uses_penalties or config.no_repeat_ngram_size > 0


def beam_log_probs(logits: Tensor, seqs: Tensor | None, prompt_len: int, config: DecodingConfig,
                   allowed: Tensor | None = None) -> Tensor:
    """Step 2: logits [B, V] -> processed log-probs [B, V], each row on its own beam's tokens.

    `seqs` [B, prompt + generated] may be None when `needs_context(config)` is false. With a constraint,
    `allowed` [B, V] (each beam's own matcher's mask) comes first, as in the sampling chain."""
    log_probs = apply_mask(logits.to(torch.float32), allowed).log_softmax(dim=-1)
    if seqs is None:
        return log_probs
    if config.uses_penalties:  # NOTE: n-gram blocking alone reads `seqs` on the device, not these host rows
        beams = [(row[:prompt_len], row[prompt_len:]) for row in seqs.tolist()]  # each beam's own tokens
        counts = penalty_counts(beams, config, log_probs.shape[-1], log_probs.device)
        assert counts is not None  # uses_penalties
        log_probs = apply_penalties(log_probs, counts, config)
    if config.no_repeat_ngram_size:
        log_probs = block_repeated_ngrams(log_probs, seqs, config.no_repeat_ngram_size)
    return log_probs


def can_improve(best_running: float, finished: FinishedSet, generated: int, budget: int,
                config: DecodingConfig) -> bool:
    """Step 6: could the best running beam (running sum `best_running`) still enter the finished set?"""
    if not finished.full:
        return True
    penalty = config.length_penalty
    length = budget if config.early_stopping == "never" and penalty > 0 else generated
    bound = torch.tensor(best_running, dtype=torch.float32) / (length ** penalty)  # NOTE: float32, as HF
    return bool(bound > finished.worst())


def finished_score(log_prob_sum: float, length: int, length_penalty: float) -> float:
    return float(torch.tensor(log_prob_sum, dtype=torch.float32) / (length ** length_penalty))


# ---------------------------------------------------------------------------------------------
# The loop.

OnStep = Callable[[BeamStep], None]


def candidates(log_probs: Tensor, scores: Tensor, keep: int) -> tuple[Tensor, Tensor, Tensor]:
    """Step 3, pure: the `keep` best (beam, token) candidates of all B * V, best first.

    log_probs [B, V] (processed), scores [B] (running sums) -> (candidate scores [K], parent beams [K],
    tokens [K]). Ties go to the lower flat index (beam-major), as `torch.topk` orders them."""
    vocab = log_probs.shape[-1]
    totals = (log_probs + scores[:, None]).view(-1)  # [B * V]
    top_scores, top_index = torch.topk(totals, min(keep, totals.numel()))  # [K], best first
    return top_scores, top_index // vocab, top_index % vocab


def _fork(stream: TextStream | None, token: int) -> TextStream | None:
    """A copy of a beam's text stream with one more token: the stop check of one candidate."""
    if stream is None:
        return None
    child = stream.copy()
    child.push(token)
    return child


@torch.inference_mode()
def beam_search(engine: Engine, prompt_ids: Sequence[int], config: DecodingConfig, eos_token_ids: frozenset[int],
                budget: int, tokenizer: Any = None, on_step: OnStep | None = None,
                logprobs: LogprobSpec | None = None, matcher: Any = None) -> BeamOutput:
    """Run beam search over `budget` new tokens at most; return the finished hypotheses, best first.

    The beams are rows of the engine's `RowsCache`: the prompt is prefilled once and its row repeated,
    and after each step the rows follow their parents (`select`). With stop strings (`config.stop`,
    which need `tokenizer`), each beam keeps a `TextStream`; a candidate's check pushes one token onto
    a copy of its parent's, so no text is decoded twice.

    With a constraint, `matcher` (`constraints.GrammarMatcher`) is forked into one matcher per beam: a
    beam's mask comes from its own, and a chosen candidate continues with a copy of its parent's,
    advanced by its token. A candidate of score -inf (a forbidden token) gets none: it is dead."""
    beams = config.num_beams
    eos = frozenset() if config.ignore_eos else eos_token_ids
    keep = max(2, 1 + len(eos)) * beams
    prompt_len = len(prompt_ids)
    device = engine.device
    started = time.perf_counter()

    cache = engine.rows(config.num_beams)
    logits = cache.add([list(prompt_ids)]).expand(beams, -1)  # [B, V]: prefill once, then copy the row
    cache.select([0] * beams)
    first_token_at = time.perf_counter()
    # The beams' tokens live on the host; on the device only when penalties or n-gram blocking read them.
    generated: list[list[int]] = [[] for _ in range(beams)]
    beam_entries: list[list[TokenLogprob]] = [[] for _ in range(beams)]  # with logprobs: each beam's, per token
    prompt = torch.tensor([list(prompt_ids)], dtype=torch.long, device=device)  # [1, P]
    seqs = prompt.expand(beams, -1) if needs_context(config) else None  # [B, P + step]
    scores = torch.full((beams,), DEAD, dtype=torch.float32, device=device)  # running sums [B]
    scores[0] = 0.0  # NOTE: only beam 0 is live at first; the others are copies of it
    finished = FinishedSet(beams)
    identity = list(range(beams))
    matchers = None if matcher is None else [matcher.copy() for _ in range(beams)]
    streams: list[TextStream | None] = [TextStream(tokenizer, config.stop) if config.stop else None] * beams
    steps = 0

    for step in range(budget):
        steps = step + 1
        allowed = None
        if matchers is not None:
            allowed = torch.stack([m.allowed() if m is not None else torch.ones(logits.shape[-1], dtype=torch.bool)
                                   for m in matchers]).to(logits.device)  # [B, V]
        log_probs = beam_log_probs(logits, seqs, prompt_len, config, allowed)  # [B, V]
        top_scores, parents_t, tokens_t = candidates(log_probs, scores, keep)  # [K] each

        # Which candidates finish, and why. NOTE: the one device-to-host transfer of the step.
        host = torch.stack([top_scores.double(), parents_t.double(), tokens_t.double()]).tolist()
        host_scores = host[0]
        host_parents = [int(i) for i in host[1]]
        host_tokens = [int(i) for i in host[2]]
        step_entries = (_candidate_logprobs(logits, log_probs, host_parents, host_tokens, logprobs)
                        if logprobs is not None else None)
        reasons: list[str | None] = []
        forks: list[TextStream | None] = []
        for parent, token in zip(host_parents, host_tokens):
            fork = _fork(streams[parent], token) if token not in eos else None
            forks.append(fork)
            if token in eos:
                reasons.append("eos")
            elif fork is not None and fork.stopped:
                reasons.append("stop")
            elif steps == budget:
                reasons.append("length")
            else:
                reasons.append(None)

        # Step 4: only the top B candidates may enter the finished set.
        for i in range(min(beams, len(reasons))):
            reason = reasons[i]
            if reason is not None and host_scores[i] > DEAD / 2:  # NOTE: skip descendants of dead rows
                score = finished_score(host_scores[i], steps, config.length_penalty)
                parent = host_parents[i]
                found = None if step_entries is None else beam_entries[parent] + [step_entries[i]]
                finished.add(Hypothesis(generated[parent] + [host_tokens[i]], score, reason, found))
        if all(r is not None for r in reasons):
            break

        # Step 5: the B best unfinished candidates go on (finished ones, as dead rows, only if too few).
        chosen = [i for i, r in enumerate(reasons) if r is None]
        chosen += [i for i, r in enumerate(reasons) if r is not None][:beams - len(chosen)]
        chosen = chosen[:beams]
        rows = [host_parents[i] for i in chosen]
        next_tokens = [host_tokens[i] for i in chosen]
        generated = [generated[row] + [token] for row, token in zip(rows, next_tokens)]
        streams = [forks[i] for i in chosen]
        if matchers is not None:
            matchers = [_forked(matchers[row], token, host_scores[i]) for row, token, i in zip(rows, next_tokens, chosen)]
        if step_entries is not None:
            beam_entries = [beam_entries[row] + [step_entries[i]] for row, i in zip(rows, chosen)]
        picked = torch.tensor(chosen, device=device)
        scores = top_scores[picked]  # [B]
        best = host_scores[chosen[0]]
        if reasons[chosen[-1]] is not None:
            dead = torch.tensor([reasons[i] is not None for i in chosen], device=device)
            scores = scores.masked_fill(dead, DEAD)
            best = best if reasons[chosen[0]] is None else DEAD
        next_t = tokens_t[picked]  # [B]
        if seqs is not None:
            seqs = torch.cat([seqs[parents_t[picked]], next_t[:, None]], dim=1)

        if on_step is not None:
            on_step(BeamStep(steps, generated[0], best, len(finished.items)))
        if config.early_stopping == "true" and finished.full:
            break
        if not can_improve(best, finished, steps, budget, config):
            break

        if rows != identity:  # NOTE: beams often keep their rows; skip the copy of every layer then
            cache.select(rows)
        logits = cache.step(next_t)  # [B, V]

    ended = time.perf_counter()
    decode_seconds = ended - first_token_at
    stats = {
        "num_beams": beams,
        "beam_steps": steps,
        "prefill_seconds": round(first_token_at - started, 6),
        "decode_seconds": round(decode_seconds, 6),
        # NOTE: steps per second after the first: each step adds one token to every beam.
        "tokens_per_second": round((steps - 1) / decode_seconds, 3) if steps > 1 and decode_seconds > 0 else 0.0,
    }
    return BeamOutput(list(finished.items), steps, stats)


def _candidate_logprobs(logits: Tensor, log_probs: Tensor, parents: list[int], tokens: list[int],
                        spec: LogprobSpec) -> list[TokenLogprob]:
    """The entry of each of the K candidates: its token's logprob under its parent row, and that row's top N."""
    source = log_probs if spec.mode == "processed" else logits.to(torch.float32).log_softmax(dim=-1)  # [B, V]
    return entries(source[torch.as_tensor(parents, device=source.device)], tokens, spec.top)


# ---------------------------------------------------------------------------------------------
# From hypotheses to results, and which option combinations make sense.


def _forked(parent: Any, token: int, score: float) -> Any:
    """A chosen candidate's matcher: a copy of its parent's, advanced by its token; None if it is dead."""
    if parent is None or score == float("-inf"):
        return None
    child = parent.copy()
    child.advance(token)
    return child


def to_result(hypothesis: Hypothesis, tokenizer: Any, prompt_ids: Sequence[int], config: DecodingConfig,
              stats: dict[str, Any]) -> SequenceResult:
    """The text as `generate` would print it: EOS not shown, cut before a stop string."""
    stream = TextStream(tokenizer, config.stop)
    shown = hypothesis.token_ids[:-1] if hypothesis.finish_reason == "eos" else hypothesis.token_ids
    for token in shown:
        stream.push(token)
    stream.finish()
    result_stats = {"prompt_tokens": len(prompt_ids), "generated_tokens": len(hypothesis.token_ids), **stats}
    reason = "stop" if config.constrained and hypothesis.finish_reason == "eos" else hypothesis.finish_reason
    return SequenceResult(stream.text, list(hypothesis.token_ids), list(prompt_ids), reason,
                          result_stats, score=hypothesis.score,
                          logprobs=None if hypothesis.logprobs is None else to_json(hypothesis.logprobs, tokenizer))


def check_combination(resolved: Resolved) -> list[str]:
    """Raise UsageError for option combinations that make no sense; return notes on preset values
    that are ignored. Explicit flags are refused; values from a preset are ignored with a note."""
    config, sources = resolved.config, resolved.sources
    notes: list[str] = []

    def changed(name: str) -> bool:
        return getattr(config, name) != getattr(DEFAULTS, name)

    if config.num_beams == 1:
        for name in BEAM_ONLY:
            if changed(name) and sources[name] == "flag":
                raise UsageError(f"--{name.replace('_', '-')} needs beam search (--num-beams 2 or more)")
            if changed(name):
                notes.append(f"{name} = {getattr(config, name)!r} from {sources[name]} is ignored without beams")
        return notes
    if config.n > config.num_beams:
        raise UsageError(f"-n/--num-return-sequences ({config.n}) cannot exceed --num-beams ({config.num_beams}): "
                         "beam search returns at most one hypothesis per beam")
    for name in SAMPLING_ONLY:
        value = getattr(config, name)
        if not changed(name) or (name == "temperature" and value == 0):
            continue
        if sources[name] == "flag":
            raise UsageError(f"--{name.replace('_', '-')} cannot be combined with --num-beams: beam search is "
                             "deterministic (there is no beam sampling)")
        notes.append(f"beam search ignores {name} = {value!r} from {sources[name]} (there is no beam sampling)")
    for name in NOT_IN_BEAMS:
        if not changed(name):
            continue
        if sources[name] == "flag":
            raise UsageError(f"--{name.replace('_', '-')} cannot be combined with --num-beams: beam search does not "
                             "run that stage")
        notes.append(f"beam search ignores {name} from {sources[name]}")
    return notes


def refuse_beams(command: str, config: DecodingConfig) -> None:
    """For commands without beam search (speculate): refuse num_beams > 1 with a clear message."""
    if config.num_beams > 1:
        raise UsageError(f"--num-beams cannot be combined with {command}; use 'llmgen generate --num-beams'")

"""`llmgen audit --self`: samples from llmgen's own decoding paths, in this process, for the audit's test.

Each path draws N samples of up to k tokens from the prompt with the claimed settings; the exact
distribution is computed from the same weights' logits (`distribution.py`), so a path that does not
sample from its chain is rejected:

- plain: `generation.stream`, one sequence at a time on one cache (rolled back between samples);
- batched: `batch.sample_rows`, the N samples as rows of one batch (`generate -n N`);
- ngram: speculative decoding with the n-gram draft (γ = 2);
- draft: speculative decoding with a draft model (`--draft`; γ = 2);
- int4: plain decoding on the model's int4 weights, tested against the int4 forward's own logits.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from llmgen.decoding.batch import sample_rows
from llmgen.decoding.config import DecodingConfig
from llmgen.decoding.generation import Speculation, stream
from llmgen.decoding.sampling import make_generator
from llmgen.evaluate.distribution import ContextLogits
from llmgen.evaluate.remote import Report, test_and_explain, token_keys
from llmgen.loading.models import LoadedModel

PATHS = ("plain", "batched", "ngram", "draft", "int4")


def _cut(tokens: Iterable[int], k: int, eos_ids: frozenset[int]) -> tuple[int, ...]:
    """The first k tokens, ending after an end-of-sequence token."""
    out: list[int] = []
    for token in tokens:
        out.append(int(token))
        if token in eos_ids or len(out) >= k:
            break
    return tuple(out)


def sample_path(path: str, loaded: LoadedModel, draft: LoadedModel | None, prompt_ids: Sequence[int],
                config: DecodingConfig, n: int, k: int, seed: int | None) -> list[tuple[int, ...]]:
    prompt = list(prompt_ids)
    config = config.replace(max_new_tokens=k, n=1, seed=seed)
    eos = loaded.eos_token_ids
    generator = make_generator(seed, loaded.device)
    if path in ("plain", "int4"):
        lm = loaded.engine.sequence()
        samples = []
        for _ in range(n):
            lm.rollback(len(prompt) - 1)  # keep the prompt's cache; its last token is read again for the logits
            samples.append(_cut((t.id for t in stream(loaded, prompt, config, generator, lm=lm)), k, eos))
        return samples
    if path == "batched":
        results = sample_rows(loaded.engine.rows(), prompt, config.replace(n=n), loaded.info)
        return [_cut(r.token_ids, k, eos) for r in results]
    speculation = Speculation(draft if path == "draft" else None, gamma=2, ngram_max=2, ngram_min=1)
    samples = []
    for _ in range(n):
        samples.append(_cut((t.id for t in stream(loaded, prompt, config, generator, speculation=speculation)), k, eos))
    return samples


def audit_path(path: str, loaded: LoadedModel, draft: LoadedModel | None, prompt_ids: Sequence[int],
               config: DecodingConfig, n: int, k: int, alpha: float, seed: int | None) -> Report:
    """Sample `path` and test it against the exact distribution of `loaded`'s own logits."""
    oracle = ContextLogits(loaded.engine.sequence(), remember=256)
    keys = token_keys(loaded.tokenizer, prompt_ids, int(oracle(prompt_ids).shape[-1]), loaded.eos_token_ids,
                      by_text=False)
    samples = [tuple(keys[t] for t in sample) for sample in sample_path(path, loaded, draft, prompt_ids, config, n, k, seed)]
    return test_and_explain(samples, oracle, prompt_ids, config, keys, alpha)

"""Measure a model and audit a sampler: `llmgen score` and `llmgen audit` (docs/evaluate.md).

- `scoring.py`: per-token logprobs, NLL and perplexity over a sliding window (HF's perplexity guide).
- `divergence.py`: KL(reference || candidate), top-1 agreement, the largest probability drop; `greedy_diff`.
- `distribution.py`: THE exact next-token distribution of a decoding configuration's chain for a context.
- `audit.py`: the chi-square test of samples against it, per position, and the hidden-default explainer.
- `client.py`: N completions from an OpenAI-compatible server, mapped back to cells (tokens or texts).
- `selfaudit.py`: samples from llmgen's own paths (plain, batched, speculative, int4), for `audit --self`.
- `llamacpp_logits.py`: llama.cpp's own logits for a GGUF file, as a `SequenceCache` (until the llama.cpp
  engine lands).
- `corpus.py`: the public-domain texts scored by default.
"""

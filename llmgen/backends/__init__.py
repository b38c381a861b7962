"""Backends: what runs a resolved llmgen configuration.

- `hf` (the default) is llmgen itself: its own loop, processors, sampler and verifier over a
  transformers model (or the int4 path). It needs no module here.
- `vllm.py`: `translate`, one pure function from llmgen's resolved settings to vLLM's engine arguments
  and sampling parameters, refusing what vLLM cannot do exactly; and `generate`, which runs them and
  maps vLLM's outputs and speculative metrics onto llmgen's own result and statistics names.

One resolved config in, the same JSON rows out, whatever runs it.
"""

BACKENDS = ("hf", "vllm")

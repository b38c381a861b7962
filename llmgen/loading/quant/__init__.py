"""4-bit weights: GGUF blocks, the int4 linear layer, the lean Llama forward, packing and its disk cache.

- `blocks.py`  GGUF Q4_0 / Q4_1 / Q8_0 blocks and group-32 quantization, in the int4 kernel's convention
- `linear.py`  `Int4Linear`, over torch's CPU kernel `_weight_int4pack_mm_for_cpu`
- `llama.py`   `LeanLlama`: the Llama forward with a position-indexed cache, called like a transformers model
- `pack.py`    from a GGUF file or a transformers checkpoint to packed tensors, and from those to a model
- `cache.py`   the packed tensors cached on disk, checked and rebuilt like the GGUF cache

The loader that uses them is `loading/int4.py`.
"""

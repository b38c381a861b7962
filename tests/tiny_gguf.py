"""A tiny random Llama written as a GGUF file with gguf-py, for the llama.cpp engine's exact tests.

36 tokens: 3 specials, the SentencePiece space "▁" and 32 characters (enough for small JSON), with a
'llama' (SentencePiece) tokenizer and a small chat template, so that llama.cpp loads it like any Llama
GGUF. The weights are
float32 and wide, so that next-token distributions are peaked (no greedy near-ties) yet sampling has
several likely outcomes. Small enough that every context of a few tokens can be enumerated.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

SPECIALS = ["<unk>", "<s>", "</s>"]
CHARS = ["▁", *"abcdefghijklmnopqrstuvwxyz", ".", '"', "{", "}", ":", ","]
TOKENS = SPECIALS + CHARS  # 36
VOCAB = len(TOKENS)
BOS, EOS = 1, 2
CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'][0] }} {{ m['content'] }}.{% endfor %}"
    "{% if add_generation_prompt %}a {% endif %}"
)


def write_tiny_llama(path: Path, seed: int, *, hidden: int = 32, layers: int = 2, heads: int = 4,
                     kv_heads: int = 2, context: int = 256, scale: float = 0.35, noise: float = 0.0,
                     noise_seed: int = 0, order: Sequence[int] | None = None) -> Path:
    """The model of `seed`; with `noise`, each weight moved by noise * N(0, 1) (a draft that resembles
    its target, so that speculative decoding both accepts and rejects). With `order` (new id -> id, the
    specials in place), the same model under another vocabulary: tokens, embedding and output rows permuted."""
    import gguf

    order = list(range(VOCAB)) if order is None else list(order)
    assert sorted(order) == list(range(VOCAB)) and order[:len(SPECIALS)] == list(range(len(SPECIALS)))

    rng = np.random.default_rng(seed)
    jitter = np.random.default_rng(noise_seed)
    ffn = 2 * hidden
    head_dim = hidden // heads

    def weight(*shape: int) -> np.ndarray:
        values = rng.standard_normal(shape) * scale + jitter.standard_normal(shape) * noise
        return values.astype(np.float32)

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("tiny-llama")
    writer.add_context_length(context)
    writer.add_embedding_length(hidden)
    writer.add_block_count(layers)
    writer.add_feed_forward_length(ffn)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_rope_dimension_count(head_dim)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(VOCAB)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_tokenizer_model("llama")
    writer.add_token_list([TOKENS[i] for i in order])
    scores = [0.0] * len(SPECIALS) + [-float(i) for i in range(len(CHARS))]
    writer.add_token_scores([scores[i] for i in order])
    types = [gguf.TokenType.UNKNOWN, gguf.TokenType.CONTROL, gguf.TokenType.CONTROL]
    writer.add_token_types(types + [gguf.TokenType.NORMAL] * len(CHARS))
    writer.add_unk_token_id(0)
    writer.add_bos_token_id(BOS)
    writer.add_eos_token_id(EOS)
    writer.add_add_bos_token(True)
    writer.add_add_space_prefix(False)  # (llguidance looks for a token that tokenizes as itself)
    writer.add_chat_template(CHAT_TEMPLATE)
    # numpy shapes are [out, in]; gguf stores them reversed, as llama.cpp reads them
    writer.add_tensor("token_embd.weight", weight(VOCAB, hidden)[order])
    writer.add_tensor("output_norm.weight", np.ones(hidden, dtype=np.float32))
    writer.add_tensor("output.weight", weight(VOCAB, hidden)[order])
    for i in range(layers):
        writer.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(hidden, dtype=np.float32))
        writer.add_tensor(f"blk.{i}.attn_q.weight", weight(hidden, hidden))
        writer.add_tensor(f"blk.{i}.attn_k.weight", weight(kv_heads * head_dim, hidden))
        writer.add_tensor(f"blk.{i}.attn_v.weight", weight(kv_heads * head_dim, hidden))
        writer.add_tensor(f"blk.{i}.attn_output.weight", weight(hidden, hidden))
        writer.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(hidden, dtype=np.float32))
        writer.add_tensor(f"blk.{i}.ffn_gate.weight", weight(ffn, hidden))
        writer.add_tensor(f"blk.{i}.ffn_up.weight", weight(ffn, hidden))
        writer.add_tensor(f"blk.{i}.ffn_down.weight", weight(hidden, ffn))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


# --- fixtures shared by the llama.cpp engine's tests (imported by them) ----------------------------------

GEMMA = Path(__file__).resolve().parent / ".cache" / "gemma" / "gemma-3-270m-q4_k_m.gguf"


def gemma_path() -> Path:
    """The Gemma-3-270M Q4_K_M file fetched by `make gemma` (scripts/fetch_gemma.py); skip without it."""
    import os

    import pytest

    path = Path(os.environ.get("LLMGEN_GEMMA_GGUF", GEMMA))
    if not path.is_file():
        pytest.skip(f"no Gemma GGUF at {path} (make gemma fetches it)")
    return path

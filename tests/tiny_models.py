"""The tiny models' builders, shared by tests/conftest.py's fixtures and the tests that build variants."""

from __future__ import annotations

from pathlib import Path

import torch

CHARS = list("abcdefgh .")  # 10 characters
SPECIALS = ["<s>", "</s>", "<unk>"]
VOCAB = len(SPECIALS) + len(CHARS)  # 13
CHAT_TEMPLATE = (
    "{% for m in messages %}{% if m['role'] == 'system' %}g {% else %}h {% endif %}{{ m['content'] }}."
    "{% endfor %}{% if add_generation_prompt %}a {% endif %}"
)


def build_char_tokenizer(path: Path, chat: bool = True):
    """A character-level tokenizer: 3 specials + 10 characters = 13 tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(SPECIALS + CHARS)}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Split(pattern="", behavior="isolated")
    core.decoder = decoders.Fuse()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<s>", eos_token="</s>",
                                        unk_token="<unk>", pad_token="</s>")
    if chat:
        tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(path)
    return tokenizer


def build_llama(path: Path, vocab_size: int, seed: int, *, hidden: int = 32, layers: int = 2,
                heads: int = 4, kv_heads: int = 2, context: int = 256, init_range: float = 0.2,
                bos: int = 0, eos: int = 1, tied: bool = False) -> None:
    """A random llama-like model saved as safetensors. A wide init makes its next-token
    distributions peaked enough that greedy has no near-ties and rejections really happen."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden,
                         num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
                         max_position_embeddings=context, initializer_range=init_range,
                         tie_word_embeddings=tied, bos_token_id=bos, eos_token_id=eos, pad_token_id=eos)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).eval()
    model.generation_config.eos_token_id = eos
    model.generation_config.pad_token_id = eos
    model.save_pretrained(path)

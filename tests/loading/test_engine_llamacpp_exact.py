"""The llama.cpp engine under llmgen's decoding, against llama.cpp itself and against exact distributions.

- greedy decoding gives llama.cpp's own greedy tokens (llama-cpp-python's `Llama.generate` with top-k 1),
  on the embedded SmolLM2 Q4_1 file and on Gemma-3-270M Q4_K_M;
- the ids fed are llama.cpp's tokenization of the same text, chat template included (and HF's, for the
  embedded file, whose template transformers renders too);
- speculative greedy equals plain greedy (n-gram and model drafts), on the tiny GGUF and the real Q4_1 file,
  and its logprobs equal plain decoding's;
- speculative sampling with every option on, and a JSON schema through llguidance on the file's own
  vocabulary, follow the exact distribution enumerated from the same engine's logits (chi-square, 10^4
  samples, on the tiny GGUF of `tiny_gguf.py`).
"""

from __future__ import annotations

import ctypes
import itertools
import json
from collections import Counter
from pathlib import Path

import pytest
import torch

llama_cpp = pytest.importorskip("llama_cpp")

from tables import chi_square_p_value  # noqa: E402
from tiny_gguf import EOS, VOCAB, gemma_path, write_tiny_llama  # noqa: E402

from llmgen.decoding.config import DecodingConfig  # noqa: E402
from llmgen.decoding.logprobs import LogprobSpec  # noqa: E402
from llmgen.decoding.plain import plain_tokens  # noqa: E402
from llmgen.decoding.processors import distribution, penalty_context, token_counts  # noqa: E402
from llmgen.decoding.sampling import make_generator  # noqa: E402
from llmgen.decoding.sequence import run_sequence  # noqa: E402
from llmgen.decoding.speculative import DraftModelProposer, FixedGamma, NgramProposer, speculative_tokens  # noqa: E402
from llmgen.decoding.speculative.runner import speculate  # noqa: E402
from llmgen.loading import models  # noqa: E402

LENGTH = 3
SAMPLES = 10_000


def load(ref: str):
    return models.load(ref, engine="llamacpp", threads=1)


@pytest.fixture(scope="module")
def tiny_pair(tmp_path_factory: pytest.TempPathFactory):
    directory = tmp_path_factory.mktemp("tiny-gguf-pair")
    target = load(str(write_tiny_llama(directory / "target.gguf", seed=1)))
    draft = load(str(write_tiny_llama(directory / "draft.gguf", seed=1, noise=0.1, noise_seed=2)))
    return target, draft


@pytest.fixture(scope="module")
def embedded():
    return load(models.DEFAULT_MODEL)


def engine_params(monkeypatch: pytest.MonkeyPatch) -> None:
    """`llama_cpp.Llama` with the engine's model settings: weights not repacked (no extra buffer types), as
    `loading/llamacpp.py` loads them (the tiled K-quant matmul is off in this process already)."""
    import llama_cpp.llama as high_level

    original = high_level.llama_cpp.llama_model_default_params

    def params():
        p = original()
        p.use_extra_bufts = False
        return p

    monkeypatch.setattr(high_level.llama_cpp, "llama_model_default_params", params)


def llama_greedy(path: Path, ids: list[int], count: int) -> list[int]:
    """llama.cpp's own greedy decoding (its sampler chain with top-k 1), through llama-cpp-python, with the
    engine's float32 KV cache (type 0) and its model settings (`engine_params`)."""
    with pytest.MonkeyPatch.context() as monkeypatch:
        engine_params(monkeypatch)
        llm = llama_cpp.Llama(model_path=str(path), n_ctx=1024, n_threads=1, n_threads_batch=1, type_k=0, type_v=0,
                              verbose=False)
    out = []
    for token in llm.generate(ids, top_k=1, top_p=1.0, min_p=0.0, temp=0.0, repeat_penalty=1.0):
        out.append(int(token))
        if len(out) == count:
            break
    llm.close()
    return out


def ours_greedy(loaded, ids: list[int], count: int) -> list[int]:
    config = DecodingConfig(temperature=0.0, max_new_tokens=count, ignore_eos=True)
    tokens = (t.id for t in plain_tokens(loaded.engine.sequence(), ids, config, make_generator(0)))
    return [next(tokens) for _ in range(count)]


MESSAGES = [{"role": "system", "content": "You answer in one line."},
            {"role": "user", "content": "Name three colours, then say why the sky is blue. Ünïcode: 東京 🍵"}]


def llama_chat_ids(loaded, template: bytes) -> list[int]:
    """llama.cpp's own chat rendering (llama_chat_apply_template) and tokenization (BOS as the vocabulary says)."""
    chat = (llama_cpp.llama_chat_message * len(MESSAGES))(
        *[llama_cpp.llama_chat_message(role=m["role"].encode(), content=m["content"].encode()) for m in MESSAGES])
    buffer = ctypes.create_string_buffer(8192)
    n = llama_cpp.llama_chat_apply_template(template, chat, len(MESSAGES), True, buffer, 8192)
    text = buffer.raw[:n].decode()
    tokenizer = loaded.tokenizer
    return tokenizer.encode(text, add_special_tokens=True)


def test_embedded_greedy_equals_llama_cpp(embedded) -> None:
    ids = embedded.tokenizer.apply_chat_template(MESSAGES, add_generation_prompt=True)
    assert ours_greedy(embedded, ids, 32) == llama_greedy(embedded.path, ids, 32)


def test_gemma_greedy_equals_llama_cpp() -> None:
    gemma = load(str(gemma_path()))
    ids = gemma.tokenizer.apply_chat_template(MESSAGES, add_generation_prompt=True)
    assert ours_greedy(gemma, ids, 24) == llama_greedy(gemma.path, ids, 24)


@pytest.mark.parametrize("text", ["Hello world", "  two spaces\nand a newline\t tab", "<|im_start|>user\nhi",
                                  "Ünïcode: 東京 🍵 naïve café"])
def test_raw_ids_are_llama_cpps_tokenization(embedded, text: str) -> None:
    llm = llama_cpp.Llama(model_path=str(embedded.path), vocab_only=True, verbose=False)
    assert embedded.tokenizer(text)["input_ids"] == llm.tokenize(text.encode(), add_bos=True, special=True)


def test_embedded_chat_ids_are_llama_cpps_and_hfs(embedded, embedded_dir: Path) -> None:
    from transformers import AutoTokenizer

    ours = embedded.tokenizer.apply_chat_template(MESSAGES, add_generation_prompt=True)
    template = embedded.tokenizer.chat_template.encode()  # llama.cpp recognises its format (chatml)
    assert ours == llama_chat_ids(embedded, template)
    hf = AutoTokenizer.from_pretrained(embedded_dir)
    for messages in (MESSAGES, MESSAGES[1:]):  # without a system message the template writes its own
        assert (embedded.tokenizer.apply_chat_template(messages, add_generation_prompt=True)
                == list(hf.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False)))


def test_gemma_chat_ids_are_llama_cpps() -> None:
    gemma = load(str(gemma_path()))
    ours = gemma.tokenizer.apply_chat_template(MESSAGES, add_generation_prompt=True)
    assert ours[0] == gemma.tokenizer.bos_token_id and ours == llama_chat_ids(gemma, b"gemma")
    assert gemma.tokenizer("Hello world")["input_ids"] == [2, *gemma.tokenizer.encode("Hello world", False)]


# --- speculative decoding on the engine ------------------------------------------------------------


def test_speculative_greedy_equals_plain_greedy_with_a_model_draft(tiny_pair) -> None:
    target, draft = tiny_pair
    prompt = target.tokenizer("hello there")["input_ids"]
    config = DecodingConfig(temperature=0.0, max_new_tokens=40, ignore_eos=True)
    plain = ours_greedy(target, prompt, 40)
    rounds = []
    result = speculate(target, draft, prompt, config, gamma=3, on_round=rounds.append)
    assert result.token_ids == plain
    assert 0 < sum(r.accepted for r in rounds) < sum(len(r.proposed) for r in rounds)  # accepts and rejects


def test_speculative_greedy_equals_plain_greedy_with_the_ngram_draft(tiny_pair) -> None:
    target, _ = tiny_pair
    prompt = target.tokenizer("abc abc abc abc ab")["input_ids"]
    config = DecodingConfig(temperature=0.0, max_new_tokens=40, ignore_eos=True)
    result = speculate(target, None, prompt, config, gamma=4)
    assert result.token_ids == ours_greedy(target, prompt, 40)


def test_speculative_greedy_on_a_real_file_equals_plain_greedy(embedded) -> None:
    """On the Q4_1 file itself, not only on a float32 GGUF: the engine is batch-invariant (docs/engines.md), so a
    verify's logits are plain decoding's, bit for bit (every γ and both real files: test_batch_invariance.py)."""
    text = "Repeat this line twice: the quick brown fox jumps over the lazy dog near the river bank."
    prompt = embedded.tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True)
    config = DecodingConfig(temperature=0.0, max_new_tokens=48, ignore_eos=True)
    plain = ours_greedy(embedded, prompt, 48)
    ngram = speculate(embedded, None, prompt, config, gamma=4)
    assert ngram.stats["accepted_tokens"] > 0
    assert ngram.token_ids == plain
    small = load("small")  # the built-in draft: the same Q4_1 file, on llama.cpp
    assert speculate(embedded, small, prompt, config, gamma=4).token_ids == plain


def test_speculative_logprobs_equal_plain_logprobs(tiny_pair) -> None:
    target, draft = tiny_pair
    prompt = target.tokenizer("abc def")["input_ids"]
    config = DecodingConfig(temperature=0.0, max_new_tokens=24, ignore_eos=True)
    spec = LogprobSpec(5, "raw")
    source = plain_tokens(target.engine.sequence(), prompt, config, make_generator(0), spec)
    plain = run_sequence(source, target.tokenizer, prompt, config, target.eos_token_ids, target.context_length)
    fast = speculate(target, draft, prompt, config, gamma=3, logprobs=spec)
    assert fast.token_ids == plain.token_ids
    for a, b in zip(fast.logprobs, plain.logprobs, strict=True):
        assert abs(a["logprob"] - b["logprob"]) < 1e-4
        assert [t["token"] for t in a["top_logprobs"]] == [t["token"] for t in b["top_logprobs"]]
        assert all(abs(x["logprob"] - y["logprob"]) < 1e-4 for x, y in zip(a["top_logprobs"], b["top_logprobs"]))


# --- the exact distribution, on the tiny GGUF ------------------------------------------------------


def logits_table(loaded, prompt: list[int], depth: int) -> dict[tuple[int, ...], torch.Tensor]:
    """The engine's next-token logits after prompt + s, for every s of length 0..depth."""
    lm = loaded.engine.sequence()
    table = {tuple(prompt): lm.forward(prompt)[0]}
    base = lm.length
    for suffix in itertools.product(range(VOCAB), repeat=depth):
        lm.rollback(base)
        rows = lm.forward(list(suffix), all_logits=True)  # [depth, vocab]
        for end in range(1, depth + 1):
            table.setdefault((*prompt, *suffix[:end]), rows[end - 1])
    return table


def exact_joint(table, prompt: list[int], config: DecodingConfig, new_matcher=None) -> dict[tuple[int, ...], float]:
    """P(t_1..t_LENGTH) of plain sampling from the table, by enumeration (mask, then the chain)."""
    joint = {(): 1.0}
    for _ in range(LENGTH):
        following = {}
        for prefix, mass in joint.items():
            mask = None
            if new_matcher is not None:
                matcher = new_matcher()
                for token in prefix:
                    matcher.advance(token)
                mask = matcher.allowed()[None]
            counts = token_counts(penalty_context(prompt, prefix, config), VOCAB)[None]
            probs = distribution(table[(*prompt, *prefix)][None], counts, config, mask)[0].double()
            for token in torch.nonzero(probs).flatten().tolist():
                following[(*prefix, token)] = mass * float(probs[token])
        joint = following
    return joint


def sample_speculatively(target, draft, prompt: list[int], config: DecodingConfig, new_matcher=None,
                         seed: int = 1234) -> tuple[Counter, int, int]:
    """SAMPLES runs of the real loop on the engine; one target and one draft cache, rolled back between runs."""
    generator = make_generator(seed)
    target_lm, draft_lm = target.engine.sequence(), draft.engine.sequence() if draft else None
    observed: Counter = Counter()
    proposed = accepted = 0
    for _ in range(SAMPLES):
        target_lm.rollback(len(prompt) - 1)
        matcher = new_matcher() if new_matcher else None
        if draft_lm is not None:
            draft_lm.rollback(len(prompt) - 1)
            proposer = DraftModelProposer(draft_lm, config, context_length=256, matcher=matcher)
        else:
            proposer = NgramProposer(ngram_max=2, ngram_min=1)
        rounds = []
        tokens = speculative_tokens(target_lm, proposer, prompt, config, generator, FixedGamma(2), LENGTH,
                                    on_round=rounds.append, matcher=matcher)
        observed[tuple(token.id for token in tokens)] += 1
        proposed += sum(len(r.proposed) for r in rounds)
        accepted += sum(r.accepted for r in rounds)
    return observed, proposed, accepted


EVERY_OPTION = DecodingConfig(temperature=0.9, top_k=12, top_p=0.95, min_p=0.01, presence_penalty=0.6,
                              frequency_penalty=0.4, repetition_penalty=1.3, max_new_tokens=LENGTH)


# NOTE: one run of 10^4 samples with the model draft (~30 s on 2 busy cores); the n-gram draft's verifier is the
# same code (tests/test_speculative_distribution.py runs it on tables), and its greedy runs are checked above.
def test_speculative_sampling_follows_the_engines_exact_distribution(tiny_pair) -> None:
    target, draft = tiny_pair
    prompt = target.tokenizer("hello")["input_ids"]
    table = logits_table(target, prompt, LENGTH - 1)
    observed, proposed, accepted = sample_speculatively(target, draft, prompt, EVERY_OPTION)
    assert 0.05 < accepted / proposed < 0.95, (accepted, proposed)  # the verifier accepts and rejects
    p_value = chi_square_p_value(observed, exact_joint(table, prompt, EVERY_OPTION), SAMPLES)
    assert p_value > 1e-3, p_value


def test_a_schema_on_the_files_own_vocabulary_follows_the_exact_constrained_distribution(tiny_pair) -> None:
    """--schema through llguidance over the GGUF vocabulary (llguidance.llamacpp): speculative samples of
    a JSON string enum follow the masked distribution, enumerated with the same matcher."""
    pytest.importorskip("llguidance")
    from llmgen.decoding.constraints import compile_constraint

    target, draft = tiny_pair
    schema = {"enum": ["a", "ab", "ba", "b"]}
    config = DecodingConfig(temperature=1.0, top_p=0.98, presence_penalty=0.3, max_new_tokens=LENGTH,
                            schema=json.dumps(schema))
    constraint = compile_constraint(config, target.tokenizer, target.eos_token_ids, target.vocab_size)
    prompt = target.tokenizer("hello")["input_ids"]
    table = logits_table(target, prompt, LENGTH - 1)
    observed, proposed, accepted = sample_speculatively(target, draft, prompt, config, constraint.matcher, seed=7)
    assert proposed > 0 and 0 < accepted < proposed, (accepted, proposed)
    for cell in observed:  # every sample is a prefix of one of the schema's strings
        text = target.tokenizer.decode(list(cell), skip_special_tokens=True)
        assert any(f'"{word}"'.startswith(text) for word in schema["enum"]), text
    p_value = chi_square_p_value(observed, exact_joint(table, prompt, config, constraint.matcher), SAMPLES)
    assert p_value > 1e-3, p_value


def test_the_tiny_target_ends_with_eos() -> None:
    assert EOS == 2

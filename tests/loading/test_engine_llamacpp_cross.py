"""A draft with another tokenizer on the llama.cpp engine (`proposers/cross.py`).

- the tiny GGUF target, drafted by the same model under another vocabulary (`write_tiny_llama(order=...)`):
  greedy equals plain greedy, with most proposals accepted; with a regex too;
- sampling with every option follows the engine's exact distribution (χ², 10^4 samples);
- the real files, each drafting for the other: SmolLM2-135M (BPE, 49k tokens) and Gemma-3-270M
  (SentencePiece, 262k tokens): greedy equals plain greedy, and proposals are accepted.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

import pytest
import torch

llama_cpp = pytest.importorskip("llama_cpp")

from tables import MemoLM, chi_square_p_value  # noqa: E402
from test_engine_llamacpp_exact import EVERY_OPTION, LENGTH, SAMPLES, exact_joint, logits_table  # noqa: E402
from tiny_gguf import SPECIALS, VOCAB, gemma_path, write_tiny_llama  # noqa: E402

from llmgen.decoding.config import DecodingConfig  # noqa: E402
from llmgen.decoding.generation import generate  # noqa: E402
from llmgen.decoding.sampling import make_generator  # noqa: E402
from llmgen.decoding.speculative import FixedGamma, speculative_tokens  # noqa: E402
from llmgen.decoding.speculative.proposers import CrossTokenizerProposer  # noqa: E402
from llmgen.decoding.speculative.runner import shares_vocabulary, speculate  # noqa: E402
from llmgen.loading import models  # noqa: E402

GREEDY = DecodingConfig(temperature=0.0, max_new_tokens=40, ignore_eos=True)
REVERSED = [*range(len(SPECIALS)), *range(VOCAB - 1, len(SPECIALS) - 1, -1)]  # the characters' ids reversed


def load(ref: str) -> models.LoadedModel:
    return models.load(ref, engine="llamacpp", threads=1)


@pytest.fixture(scope="module")
def tiny_cross(tmp_path_factory: pytest.TempPathFactory):
    directory = tmp_path_factory.mktemp("tiny-gguf-cross")
    target = load(str(write_tiny_llama(directory / "target.gguf", seed=1)))
    draft = load(str(write_tiny_llama(directory / "reversed.gguf", seed=1, order=REVERSED)))
    return target, draft


def test_the_reversed_file_has_another_vocabulary(tiny_cross) -> None:
    target, draft = tiny_cross
    assert not shares_vocabulary(target, draft)
    assert target.tokenizer("hello")["input_ids"] != draft.tokenizer("hello")["input_ids"]


@pytest.mark.parametrize("gamma", [2, 4, "auto"])
def test_greedy_equals_plain_greedy(tiny_cross, gamma) -> None:
    target, draft = tiny_cross
    prompt = target.tokenizer("hello there")["input_ids"]
    result = speculate(target, draft, prompt, GREEDY, gamma=gamma)
    assert result.token_ids == generate(target, prompt, GREEDY).token_ids
    assert result.stats["acceptance_rate"] > 0.5  # the same model: its text is the target's


def test_greedy_with_a_regex_equals_plain_greedy(tiny_cross) -> None:
    pytest.importorskip("llguidance")
    target, draft = tiny_cross
    config = GREEDY.replace(regex=r"[a-h]{2,5}( [a-z]{1,4})+\.", max_new_tokens=24, ignore_eos=False)
    prompt = target.tokenizer("hello there")["input_ids"]
    result = speculate(target, draft, prompt, config, gamma=3)
    assert result.token_ids == generate(target, prompt, config).token_ids
    assert result.stats["draft_tokens"] > 0


def engine_logits(loaded: models.LoadedModel) -> Callable[[tuple[int, ...]], torch.Tensor]:
    """A whole context read afresh on one llama.cpp sequence: its next-token logits [vocab]."""
    lm = loaded.engine.sequence()

    def logits_of(context: tuple[int, ...]) -> torch.Tensor:
        lm.rollback(0)
        return lm.forward(list(context))[0]

    return logits_of


# NOTE: 10^4 samples: the target runs on the engine (rolled back between samples), the draft's contexts
# are memoized (~20 s on 2 busy cores).
def test_sampling_with_every_option_follows_the_engines_exact_distribution(tiny_cross) -> None:
    target, draft = tiny_cross
    prompt = target.tokenizer("hello")["input_ids"]
    table = logits_table(target, prompt, LENGTH - 1)
    generator = make_generator(4321)
    target_lm = target.engine.sequence()
    memo: dict[tuple[int, ...], torch.Tensor] = {}
    observed: Counter = Counter()
    proposed = accepted = 0
    for _ in range(SAMPLES):
        target_lm.rollback(len(prompt) - 1)
        proposer = CrossTokenizerProposer(MemoLM(engine_logits(draft), memo), draft.tokenizer, target.tokenizer,
                                          draft.eos_token_ids, draft.context_length)
        rounds: list = []
        tokens = speculative_tokens(target_lm, proposer, prompt, EVERY_OPTION, generator, FixedGamma(2), LENGTH,
                                    on_round=rounds.append)
        observed[tuple(token.id for token in tokens)] += 1
        proposed += sum(len(r.proposed) for r in rounds)
        accepted += sum(r.accepted for r in rounds)
    assert 0.05 < accepted / proposed < 0.95, (accepted, proposed)  # the verifier accepts and rejects
    p_value = chi_square_p_value(observed, exact_joint(table, prompt, EVERY_OPTION), SAMPLES)
    assert p_value > 1e-3, p_value


# --- the real files ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def real_pair():
    return load(models.DEFAULT_MODEL), load(str(gemma_path()))


@pytest.mark.parametrize("direction", ["smollm2-for-gemma", "gemma-for-smollm2"])
def test_the_real_files_draft_for_each_other(real_pair, direction: str) -> None:
    smollm2, gemma = real_pair
    target, draft = (gemma, smollm2) if direction == "smollm2-for-gemma" else (smollm2, gemma)
    assert not shares_vocabulary(target, draft)
    text = "List the days of the week, one per line, from Monday to Sunday."
    prompt = target.tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True)
    config = GREEDY.replace(max_new_tokens=32)
    result = speculate(target, draft, prompt, config, gamma=4)
    assert result.token_ids == generate(target, prompt, config).token_ids
    assert result.stats["accepted_tokens"] > 0

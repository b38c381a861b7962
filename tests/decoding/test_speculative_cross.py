"""A draft with another tokenizer (`proposers/cross.py`).

- the boundary re-tokenization, on hand-made byte tokenizers (greedy longest match): a stable window,
  a tail that would merge with the new text, an unfinished UTF-8 character;
- the proposer over a scripted draft: its proposal is the target's tokens of the draft's text, each kept
  once one more draft token left it unchanged, and its cache keeps the common prefix of draft tokens;
- the tiny torch models with two vocabularies: greedy equals plain greedy (γ fixed and auto, with a
  regex too), and a 13-token target sampled with every option follows its exact distribution (χ²);
- the front-ends (tests/cli/test_speculative_cli.py, tests/bench/test_bench_cross.py) and the llama.cpp
  engine (tests/loading/test_engine_llamacpp_cross.py) have their own.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
import torch
from tables import CONFIGS, LENGTH, SAMPLES, MemoLM, TableLM, chi_square_p_value, exact_joint, logits_table

from llmgen.decoding.config import DecodingConfig
from llmgen.decoding.generation import generate
from llmgen.decoding.sampling import make_generator
from llmgen.decoding.speculative import FixedGamma, speculate, speculative_tokens
from llmgen.decoding.speculative.proposers import CrossTokenizerProposer
from llmgen.decoding.speculative.proposers.cross import new_text, retokenize, target_tokens
from llmgen.decoding.speculative.runner import make_proposer, shares_vocabulary
from llmgen.loading import models

# --- hand-made tokenizers ------------------------------------------------------------------------------


class Toy:
    """A byte tokenizer: greedy longest match over `pieces` (id = index); id 0 is BOS, a special token."""

    eos_token_id: int | None = None
    chat_template: str | None = None

    def __init__(self, pieces: Sequence[str | bytes]) -> None:
        self.pieces = [b"<s>"] + [p.encode() if isinstance(p, str) else p for p in pieces]
        self.longest = max(len(p) for p in self.pieces)

    def __call__(self, text: str, add_special_tokens: bool = True) -> Mapping[str, list[int]]:
        data, ids, i = text.encode(), [0] if add_special_tokens else [], 0
        while i < len(data):
            for n in range(min(self.longest, len(data) - i), 0, -1):
                if data[i:i + n] in self.pieces[1:]:
                    ids.append(self.pieces.index(data[i:i + n], 1))
                    i += n
                    break
            else:
                raise AssertionError(f"cannot spell {data[i:]!r}")
        return {"input_ids": ids}

    def decode(self, ids: Sequence[int] | int, skip_special_tokens: bool = False) -> str:
        ids = [ids] if isinstance(ids, int) else list(ids)
        return b"".join(self.pieces[i] for i in ids if i or not skip_special_tokens).decode(errors="replace")

    def batch_decode(self, rows: Sequence[Sequence[int]], skip_special_tokens: bool = False) -> list[str]:
        return [self.decode(row, skip_special_tokens) for row in rows]

    def apply_chat_template(self, messages: list[dict[str, Any]], add_generation_prompt: bool = False,
                            tokenize: bool = True, **template_kwargs: Any) -> Any:
        raise NotImplementedError

    def get_vocab(self) -> dict[str, int]:
        return {p.decode(errors="replace"): i for i, p in enumerate(self.pieces)}


CHARS = list("abcdefghijklmnopqrstuvwxyz .<>")
TARGET = Toy([*CHARS, "the", " cat", " sat", " on", " mat", "at"])  # words
DRAFT = Toy([*CHARS, "th", "e ", "ca", "t ", "sa", "on", "ma"])  # other pieces


def ids_of(tokenizer: Toy, *pieces: str) -> list[int]:
    return [tokenizer.pieces.index(p.encode(), 1) for p in pieces]


def test_a_stable_window_gives_the_tokens_after_it() -> None:
    tail = ids_of(TARGET, "the", " cat")
    assert retokenize(TARGET, tail, " sat on the") == ids_of(TARGET, " sat", " on", " ", "the")


def test_a_tail_that_merges_with_the_new_text_is_not_a_boundary() -> None:
    tail = ids_of(TARGET, "the", " ", "c")  # " c" + "at" re-reads as " cat": no boundary after these three
    assert retokenize(TARGET, tail, "at sat") is None
    # the largest window that reads back as itself is "c" alone: "at" follows it
    assert target_tokens(TARGET, [0, *tail], "at sat") == ids_of(TARGET, "at", " sat")
    # " " + "cat" re-reads as " cat" whatever the window: the target wrote " " alone, so "cat" is read alone
    assert target_tokens(TARGET, [0, *ids_of(TARGET, "the", " ")], "cat") == ids_of(TARGET, "c", "at")


def test_the_largest_stable_window_is_used() -> None:
    sequence = [0, *ids_of(TARGET, "the", " cat")]  # BOS, a special token, re-reads as "<s>" text: not stable
    assert target_tokens(TARGET, sequence, " sat on") == ids_of(TARGET, " sat", " on")
    assert retokenize(TARGET, sequence, " sat") is None


def test_new_text_is_decoded_in_context_and_holds_back_an_unfinished_character() -> None:
    tok = Toy([*CHARS, "\u00e9".encode()[:1], "\u00e9".encode()[1:]])  # é as two byte tokens
    first, second = tok.pieces.index("\u00e9".encode()[:1]), tok.pieces.index("\u00e9".encode()[1:])
    context = ids_of(tok, "c", "a", "f")
    assert new_text(tok, context, [first]) == ""  # half of é: nothing yet
    assert new_text(tok, context, [first, second, *ids_of(tok, " ")]) == "\u00e9 "


class ScriptLM:
    """A draft `SequenceCache` whose argmax writes SCRIPT: after text t (its tokens, decoded), the longest
    draft piece that SCRIPT goes on with. Keeps what each forward read."""

    SCRIPT = "the cat sat on the mat. the cat sat on the mat."

    def __init__(self, tokenizer: Toy) -> None:
        self.tokenizer = tokenizer
        self.tokens: list[int] = []
        self.calls: list[list[int]] = []  # the tokens of each forward

    @property
    def length(self) -> int:
        return len(self.tokens)

    def forward(self, token_ids: Sequence[int], all_logits: bool = False) -> torch.Tensor:
        self.tokens.extend(token_ids)
        self.calls.append(list(token_ids))
        text = self.tokenizer.decode(self.tokens, skip_special_tokens=True)
        assert self.SCRIPT.startswith(text), text
        logits = torch.zeros(1, len(self.tokenizer.pieces))
        rest = self.SCRIPT[len(text):].encode()
        best = max(range(1, len(self.tokenizer.pieces)),
                   key=lambda i: len(self.tokenizer.pieces[i]) if rest.startswith(self.tokenizer.pieces[i]) else -1)
        logits[0, best] = 1.0
        return logits

    def rollback(self, length: int) -> None:
        del self.tokens[length:]


def test_the_proposal_is_the_targets_reading_of_the_drafts_text() -> None:
    lm = ScriptLM(DRAFT)
    proposer = CrossTokenizerProposer(lm, DRAFT, TARGET, draft_eos=(), context_length=256)
    prompt = [0, *ids_of(TARGET, "the")]
    proposer.prefill(prompt)
    proposal = proposer.propose(prompt, [], 3, make_generator(0))
    assert proposal.q is None
    assert proposal.tokens == ids_of(TARGET, " cat", " sat", " on")
    # the target accepted " cat", then wrote " s" in two tokens: the draft's cache keeps the common prefix
    # of its tokens ("<s>", "th"; "the cat s" is now read "e ", "ca", ...) and reads only the rest
    lm.calls.clear()
    generated = ids_of(TARGET, " cat", " ", "s")
    proposal = proposer.propose(prompt, generated, 2, make_generator(0))
    assert proposal.tokens == ids_of(TARGET, "at", " on")
    assert lm.calls[0] == DRAFT("the cat s")["input_ids"][2:]


def test_no_proposal_when_the_draft_ends_at_once() -> None:
    lm = ScriptLM(DRAFT)
    eos = {DRAFT.pieces.index(b" ", 1)}  # the draft's "end of sequence" is the next character here
    proposer = CrossTokenizerProposer(lm, DRAFT, TARGET, draft_eos=eos, context_length=256)
    prompt = [0, *ids_of(TARGET, "the")]
    proposer.prefill(prompt)
    assert proposer.propose(prompt, [], 4, make_generator(0)).tokens == []


# --- tiny torch models with two vocabularies ---------------------------------------------------------------

PAIRS = ["ab", "ba", "cd", "a ", "h.", "ee"]


def build_pair_tokenizer(path: Path) -> int:
    """A BPE tokenizer over the char models' characters plus a few pairs, in another order: another vocabulary."""
    from tokenizers import Tokenizer, decoders
    from tokenizers import models as tok_models
    from transformers import PreTrainedTokenizerFast

    chars = list(". hgfedcba")
    vocab = {tok: i for i, tok in enumerate(["<unk>", "<s>", "</s>", *chars, *PAIRS])}
    merges = [(pair[0], pair[1]) for pair in PAIRS]
    core = Tokenizer(tok_models.BPE(vocab=vocab, merges=merges, unk_token="<unk>"))
    core.decoder = decoders.Fuse()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    tokenizer.save_pretrained(path)
    return len(vocab)


@pytest.fixture(scope="module")
def pair_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tiny_models import build_llama

    path = tmp_path_factory.mktemp("pair-draft")
    build_llama(path, build_pair_tokenizer(path), seed=3, bos=1, eos=2)
    return path


def build_permuted(source: Path, path: Path) -> None:
    """The char model under another vocabulary: its characters' ids reversed, the embedding and output rows
    with them. The same model, so its greedy draft is the target's mode: proposals are often accepted."""
    from tiny_models import CHARS, SPECIALS
    from tokenizers import Tokenizer, decoders, pre_tokenizers
    from tokenizers import models as tok_models
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

    order = [*SPECIALS, *CHARS[::-1]]  # new id -> token
    core = Tokenizer(tok_models.WordLevel(vocab={tok: i for i, tok in enumerate(order)}, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Split(pattern="", behavior="isolated")
    core.decoder = decoders.Fuse()
    PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                            pad_token="</s>").save_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(source)
    old = [[*SPECIALS, *CHARS].index(tok) for tok in order]  # new id -> old id
    with torch.no_grad():
        model.model.embed_tokens.weight.copy_(model.model.embed_tokens.weight[old].clone())
        model.lm_head.weight.copy_(model.lm_head.weight[old].clone())
    model.save_pretrained(path)


@pytest.fixture(scope="module")
def permuted(char_model: Path, tmp_path_factory: pytest.TempPathFactory) -> models.LoadedModel:
    path = tmp_path_factory.mktemp("char-permuted")
    build_permuted(char_model, path)
    return models.load(str(path))


@pytest.fixture(scope="module")
def target(char_model: Path) -> models.LoadedModel:
    return models.load(str(char_model))


@pytest.fixture(scope="module")
def pair(pair_model: Path) -> models.LoadedModel:
    return models.load(str(pair_model))


GREEDY = DecodingConfig(temperature=0, max_new_tokens=32, ignore_eos=True)


def test_the_pair_draft_has_another_vocabulary(target, pair, permuted) -> None:
    assert not shares_vocabulary(target, pair)
    assert not shares_vocabulary(target, permuted)
    assert shares_vocabulary(target, target)
    assert isinstance(make_proposer(pair, GREEDY, 4, 2, target=target), CrossTokenizerProposer)


@pytest.mark.parametrize("gamma", [1, 3, "auto"])
@pytest.mark.parametrize("kind", ["pair", "permuted"])
def test_greedy_equals_plain_greedy(target, pair, permuted, kind: str, gamma) -> None:
    prompt = target.tokenizer("h abba ab")["input_ids"]
    expected = generate(target, prompt, GREEDY).token_ids
    result = speculate(target, pair if kind == "pair" else permuted, prompt, GREEDY, gamma=gamma)
    assert result.token_ids == expected
    assert result.stats["draft_tokens"] > 0
    if kind == "permuted":  # the target itself, under other ids: most proposals are accepted
        assert result.stats["acceptance_rate"] > 0.5


def test_greedy_with_a_regex_equals_plain_greedy(wide_model: Path, pair) -> None:
    """A regex on the target (the tiny llama over SmolLM2's tokenizer; llguidance needs a real tokenizer):
    the grammar's forced tokens come first (`ForcedFirst`), the verifier masks p."""
    pytest.importorskip("llguidance")
    wide = models.load(str(wide_model))
    config = GREEDY.replace(regex=r"(ab|ba|cd)+ [a-h]{1,6}\.", max_new_tokens=16, ignore_eos=False)
    prompt = wide.tokenizer("h abba ab")["input_ids"]
    expected = generate(wide, prompt, config).token_ids
    result = speculate(wide, pair, prompt, config, gamma=3)
    assert result.token_ids == expected
    assert result.stats["draft_tokens"] > 0


def test_the_target_as_its_own_cross_draft_is_accepted(target) -> None:
    """Through the text path, a draft that is the target itself proposes the target's greedy text: every
    proposal is accepted (the char tokenizer reads its own text back unchanged; this prompt's greedy
    continuation has no special token, which the draft's text would leave out)."""
    prompt = target.tokenizer("abc abc ab")["input_ids"]
    proposer = CrossTokenizerProposer(target.engine.sequence(), target.tokenizer, target.tokenizer,
                                      target.eos_token_ids, target.context_length)
    rounds: list = []
    tokens = [t.id for t in speculative_tokens(target.engine.sequence(), proposer, prompt, GREEDY, make_generator(0),
                                               FixedGamma(4), 24, on_round=rounds.append)]
    assert tokens == generate(target, prompt, GREEDY.replace(max_new_tokens=24)).token_ids
    proposed = sum(len(r.proposed) for r in rounds)
    assert proposed >= 12 and sum(r.accepted for r in rounds) == proposed


def torch_logits(model: Any) -> Callable[[tuple[int, ...]], torch.Tensor]:
    """A whole context through a torch model without a cache: its next-token logits [vocab]."""
    def logits_of(context: tuple[int, ...]) -> torch.Tensor:
        with torch.inference_mode():
            return model(input_ids=torch.tensor([context])).logits[0, -1].float()

    return logits_of


EVERY_OPTION = DecodingConfig(temperature=0.9, top_k=8, top_p=0.95, min_p=0.01, presence_penalty=0.6,
                              frequency_penalty=0.4, repetition_penalty=1.3, max_new_tokens=LENGTH)


@pytest.mark.parametrize("config", [EVERY_OPTION, CONFIGS["minp-repetition-scope-all-window"]],
                         ids=["every-option", "minp-repetition-window"])
def test_sampling_with_a_cross_draft_follows_the_target_distribution(char_model: Path, target, permuted,
                                                                    config) -> None:
    prompt = target.tokenizer("h ab")["input_ids"]
    table = logits_table(char_model, prompt, LENGTH - 1)
    memo: dict[tuple[int, ...], torch.Tensor] = {}
    generator = make_generator(99)
    observed: Counter = Counter()
    proposed = accepted = 0
    for _ in range(SAMPLES):
        proposer = CrossTokenizerProposer(MemoLM(torch_logits(permuted.model), memo), permuted.tokenizer, target.tokenizer,
                                          permuted.eos_token_ids, permuted.context_length)
        rounds: list = []
        tokens = speculative_tokens(TableLM(table), proposer, prompt, config, generator, FixedGamma(2), LENGTH,
                                    on_round=rounds.append)
        observed[tuple(token.id for token in tokens)] += 1
        proposed += sum(len(r.proposed) for r in rounds)
        accepted += sum(r.accepted for r in rounds)
    assert 0.05 < accepted / proposed < 0.95, (accepted, proposed)  # the verifier accepts and rejects
    p_value = chi_square_p_value(observed, exact_joint(table, prompt, config), SAMPLES)
    assert p_value > 1e-3, p_value

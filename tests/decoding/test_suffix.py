"""The suffix draft: its trie (longest match, most frequent then most recent continuation, bounded
memory), its proposer (one-hot, across sequences of one store), and the `--draft-cache` file."""

from __future__ import annotations

import gc
from pathlib import Path

import pytest

from llmgen.decoding.sampling import make_generator
from llmgen.decoding.speculative.proposers import SuffixProposer, SuffixStore, lookup_cache
from llmgen.errors import UsageError


def test_proposes_the_continuation_of_the_longest_match() -> None:
    store = SuffixStore(depth=8)
    # [2, 3] is followed by 4 after [1, 2, 3] and by 7 after [5, 2, 3]; the context ends in [1, 2, 3].
    store.add([1, 2, 3, 4, 4, 0, 5, 2, 3, 7, 7])
    assert store.propose([9, 1, 2, 3], 2, match_min=1) == [4, 4]
    assert store.propose([9, 5, 2, 3], 2, match_min=1) == [7, 7]


def test_the_most_frequent_continuation_wins_then_the_most_recent() -> None:
    store = SuffixStore(depth=8)
    store.add([1, 2, 8])
    store.add([1, 2, 9])
    store.add([1, 2, 9])
    assert store.propose([1, 2], 1, match_min=2) == [9]  # 2 of 3
    store.add([1, 2, 8])
    assert store.propose([1, 2], 1, match_min=2) == [8]  # 2 and 2: 8 came last


def test_match_min_and_no_match() -> None:
    store = SuffixStore(depth=8)
    store.add([1, 2, 3, 9, 3])
    assert store.propose([7, 3], 2, match_min=2) == []  # only [3] matches
    assert store.propose([7, 3], 2, match_min=1) == [9, 3]
    assert store.propose([6, 6], 2, match_min=1) == []


def test_proposals_are_not_bounded_by_the_depth() -> None:
    """At depth D the walk re-matches the context extended by what it proposed."""
    store = SuffixStore(depth=3)
    store.add(list(range(20)))
    assert store.propose([0, 1], 10, match_min=2) == list(range(2, 12))


def test_a_doubtful_chain_is_cut_at_min_prob() -> None:
    store = SuffixStore(depth=8)
    for tail in range(5):  # [1, 2] is followed by 5 different tokens once each: 1/5 < 0.3
        store.add([1, 2, 10 + tail])
    assert store.propose([1, 2], 3, match_min=2, min_prob=0.3) == []
    assert store.propose([1, 2], 3, match_min=2, min_prob=0.1) == [14]


def test_the_budget_evicts_the_oldest_sequences_and_frees_their_nodes() -> None:
    store = SuffixStore(budget=10, depth=4)
    store.add([1, 2, 3, 4, 5, 6])
    store.add([7, 8, 9])
    assert store.propose([1, 2], 2, match_min=2) == [3, 4]
    nodes = store.nodes()
    store.add([11, 12, 13])  # 12 tokens > 10: the oldest goes
    assert store.sequences() == [[7, 8, 9], [11, 12, 13]]
    assert store.held == 6
    assert store.propose([1, 2], 2, match_min=2) == []
    assert store.propose([7, 8], 1, match_min=2) == [9]
    assert store.nodes() < nodes  # [1..6]'s 18 nodes gone, [11, 12, 13]'s 6 added
    assert store.nodes() == sum(min(4, n - i) for s in store.sequences() for n in [len(s)] for i in range(n))


def test_the_store_stays_bounded_over_many_sequences() -> None:
    store = SuffixStore(budget=50, depth=4)
    for i in range(200):
        store.add([i % 7, i % 5, i % 3, i])
    assert store.held <= 50
    assert store.nodes() <= 50 * 4


def test_a_sequence_longer_than_the_budget_keeps_itself() -> None:
    store = SuffixStore(budget=4, depth=3)
    store.add([1, 2])
    key = store.open()
    store.extend(key, [5, 6, 7, 8, 5, 6])
    assert store.sequences() == [[5, 6, 7, 8, 5, 6]]
    assert store.propose([5, 6], 2, match_min=2) == [7, 8]


def test_an_evicted_open_sequence_takes_no_more_tokens() -> None:
    store = SuffixStore(budget=4, depth=3)
    old = store.open()
    store.extend(old, [1, 2, 3])
    store.add([4, 5, 6])  # evicts `old`
    store.extend(old, [1, 2, 9])
    assert store.sequences() == [[4, 5, 6]]
    assert store.propose([1, 2], 1, match_min=2) == []


def test_the_proposer_drafts_from_its_own_sequence_and_from_longer_matches_in_others() -> None:
    store = SuffixStore()
    generator = make_generator(0)
    first = SuffixProposer(store, match_min=2, shared_min=3)
    first.prefill([1, 2, 3])
    first.propose([1, 2, 3], [4, 5, 6, 7, 8], 0, generator)  # its output joins the store
    second = SuffixProposer(store, match_min=2, shared_min=3)
    second.prefill([9, 4, 5, 6, 0])
    # [4, 5, 6] is followed by 0 in its own prompt, by 7 in the first sequence: a tie, its own wins.
    proposal = second.propose([9, 4, 5, 6, 0], [4, 5, 6], 2, generator)
    assert proposal.tokens == [0, 4]
    assert proposal.q is None
    # [3, 4, 5, 6] is known only from the first sequence: the longer match wins.
    assert second.propose([9, 4, 5, 6, 0], [4, 5, 6, 3, 4, 5, 6], 2, generator).tokens == [7, 8]
    # Shorter than shared_min, the first sequence's [5, 6] -> 7 is not used.
    third = SuffixProposer(store, match_min=2, shared_min=4)
    third.prefill([0, 2, 3])
    assert third.propose([0, 2, 3], [], 2, generator).tokens == []
    assert SuffixProposer(store, match_min=2, shared_min=2).propose([0, 2, 3], [], 2, generator).tokens == [4, 5]


def test_a_dropped_proposer_closes_its_sequence() -> None:
    store = SuffixStore()
    proposer = SuffixProposer(store)
    proposer.prefill([1, 2, 3])
    entry = store.entries[proposer.key]
    assert entry.active
    del proposer
    gc.collect()
    assert not entry.active and entry.tokens == [1, 2, 3]


def test_bad_settings() -> None:
    with pytest.raises(UsageError):
        SuffixProposer(SuffixStore(), match_min=0)
    with pytest.raises(UsageError):
        SuffixStore(budget=0)


# --- the cache file --------------------------------------------------------------------------------

VOCAB = {f"t{i}": i for i in range(20)}
DIGEST = lookup_cache.tokenizer_digest(VOCAB, 20)


def test_the_cache_round_trips(tmp_path: Path) -> None:
    store = SuffixStore()
    store.add([1, 2, 3])
    store.add([4, 5, 6, 19])
    path = tmp_path / "c.sfx"
    lookup_cache.save(path, store, DIGEST, 20)
    again = SuffixStore()
    assert lookup_cache.load(path, again, DIGEST, 20) is None
    assert again.sequences() == [[1, 2, 3], [4, 5, 6, 19]]
    assert again.propose([4, 5], 2, match_min=2) == [6, 19]


def test_a_missing_file_is_a_first_run(tmp_path: Path) -> None:
    store = SuffixStore()
    assert lookup_cache.load(tmp_path / "none.sfx", store, DIGEST, 20) is None
    assert store.sequences() == []


def test_another_tokenizer_is_ignored(tmp_path: Path) -> None:
    store = SuffixStore()
    store.add([1, 2, 3])
    path = tmp_path / "c.sfx"
    lookup_cache.save(path, store, DIGEST, 20)
    other = lookup_cache.tokenizer_digest({**VOCAB, "t3": 4, "t4": 3}, 20)
    assert other != DIGEST
    fresh = SuffixStore()
    note = lookup_cache.load(path, fresh, other, 20)
    assert note is not None and "another tokenizer" in note and "\n" not in note
    assert fresh.sequences() == []


@pytest.mark.parametrize("damage", [
    lambda b: b[:-3],  # cut short
    lambda b: b"garbage" + b,  # not ours
    lambda b: b.replace(b'"lengths"', b'"lenghts"'),  # header
    lambda b: b[:len(lookup_cache.MAGIC)],  # no header line
    lambda b: b[:-4] + (99).to_bytes(4, "little"),  # a token outside the vocabulary
    lambda b: b.replace(b'"version": 1', b'"version": 7'),
])
def test_a_damaged_file_is_ignored_in_one_line(tmp_path: Path, damage) -> None:
    store = SuffixStore()
    store.add([1, 2, 3])
    path = tmp_path / "c.sfx"
    lookup_cache.save(path, store, DIGEST, 20)
    path.write_bytes(damage(path.read_bytes()))
    fresh = SuffixStore()
    note = lookup_cache.load(path, fresh, DIGEST, 20)
    assert note is not None and "\n" not in note and "ignored" in note
    assert fresh.sequences() == []


def test_a_corpus_is_read_by_paragraphs() -> None:
    def encode(text: str) -> list[int]:
        return [ord(c) - ord("a") for c in text if c.isalpha()]

    assert lookup_cache.corpus_sequences("ab c\n\n\n  \n\nde\r\n\r\nf", encode) == [[0, 1, 2], [3, 4], [5]]

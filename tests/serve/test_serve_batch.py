"""The hooks `decode_rows` has for a long-running server: rows that arrive while the batch runs (None: nothing
waiting now), rows cancelled mid-way, and rows that arrive with tokens already decided."""

from __future__ import annotations

from llmgen.decoding.batch import Row, decode_rows, row_generator
from llmgen.decoding.config import DecodingConfig
from llmgen.decoding.sequence import SequenceState

GREEDY = DecodingConfig(temperature=0, max_new_tokens=12, ignore_eos=True)
PROMPTS = ["abc", "hello.", "a bad cafe", "h", "dead beef"]


def ids(loaded, text: str) -> list[int]:
    return loaded.tokenizer(text)["input_ids"]


def rows_of(loaded, config: DecodingConfig = GREEDY) -> list[Row]:
    return [Row(i, ids(loaded, p), config, row_generator(7, i)) for i, p in enumerate(PROMPTS)]


def decode(loaded, pending, **kwargs) -> dict[int, object]:
    out: dict[int, object] = {}
    decode_rows(loaded.engine.rows(), pending, loaded.info, on_done=lambda r, res: out.__setitem__(r.key, res),
                **kwargs)
    return out


def test_rows_arriving_while_the_batch_runs_join_it_and_decode_as_in_one_batch(char_lm) -> None:
    together = decode(char_lm, rows_of(char_lm))
    rows = rows_of(char_lm)
    steps = []

    def arrivals():
        yield rows[0]
        for row in rows[1:]:  # one new row every other step, with None ("nothing now") between
            steps.append(len(steps))
            yield None
            yield row
            yield None

    late = decode(char_lm, arrivals())
    assert {k: r.token_ids for k, r in late.items()} == {k: r.token_ids for k, r in together.items()}


def test_none_with_no_row_running_ends_decode_rows(char_lm) -> None:
    assert decode(char_lm, iter([None, rows_of(char_lm)[0]])) == {}


def test_a_cancelled_row_leaves_at_the_next_step_and_the_others_go_on(char_lm) -> None:
    together = decode(char_lm, rows_of(char_lm))
    rows = rows_of(char_lm)
    cache = char_lm.engine.rows()
    seen: dict[int, int] = {}
    sizes = []
    out: dict[int, object] = {}

    def on_text(row: Row, piece: str) -> None:
        seen[row.key] = seen.get(row.key, 0) + 1
        sizes.append(cache.rows)
        if row.key == 1 and seen[1] == 4:
            row.cancelled = True

    decode_rows(cache, rows, char_lm.info, on_text=on_text, on_done=lambda r, res: out.__setitem__(r.key, res))
    assert out[1].finish_reason == "cancelled"
    assert out[1].token_ids == together[1].token_ids[:4]  # cancelled after its 4th token: no 5th is taken
    for key in (0, 2, 3, 4):
        assert out[key].token_ids == together[key].token_ids
    assert cache.rows == 0


def test_a_row_arriving_with_tokens_goes_on_from_them(char_lm) -> None:
    whole = decode(char_lm, rows_of(char_lm)[:1])[0]
    row = rows_of(char_lm)[0]
    limits = char_lm.info
    row.state = SequenceState(limits.tokenizer, row.prompt_ids, row.config, limits.eos_token_ids, limits.context_length)
    for token in whole.token_ids[:5]:
        row.state.push(token)
    resumed = decode(char_lm, [row])[0]
    assert resumed.token_ids == whole.token_ids
    assert resumed.text == whole.text

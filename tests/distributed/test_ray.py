"""`generate --input --ray`: the prompts sharded over real Ray actors on this machine (2 CPUs), each
running llmgen's own batched decoding. Same rows, same order and same greedy texts as one process;
an actor killed mid-run loses nothing and duplicates nothing."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")

from llmgen.cli import main  # noqa: E402
from llmgen.decoding.batch import Row, decode_rows  # noqa: E402
from llmgen.decoding.config import DecodingConfig  # noqa: E402
from llmgen.decoding.sampling import make_generator  # noqa: E402
from llmgen.distributed.ray import decode_on_ray  # noqa: E402
from llmgen.loading import models  # noqa: E402
from llmgen.loading.engines.torch import row_cache  # noqa: E402
from llmgen.loading.loaded import ModelInfo  # noqa: E402

LOAD = {"device": "cpu", "dtype": "auto", "quant": "auto", "offline": True, "allow_pickle": False,
        "trust_remote_code": False}


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


def rows_of(prompts: list[list[int]], config: DecodingConfig) -> list[Row]:
    return [Row(i, p, config, make_generator(100 + i)) for i, p in enumerate(prompts)]


PROMPTS = [[0, 5, 6], [0, 7, 3, 4], [0, 8], [0, 9, 9, 10], [0, 3, 5, 7, 9, 11], [0, 12, 4], [0, 6, 6], [0, 10]]


def local_results(path: Path, config: DecodingConfig) -> dict[int, list[int]]:
    loaded = models.load(str(path))
    out: dict[int, list[int]] = {}
    decode_rows(row_cache(loaded.model), rows_of(PROMPTS, config), ModelInfo(loaded.tokenizer, loaded.eos_token_ids,
                loaded.context_length), batch_size=3, on_done=lambda row, r: out.__setitem__(row.key, r.token_ids))
    return out


@pytest.mark.parametrize("config", [DecodingConfig(temperature=0.0, max_new_tokens=6, ignore_eos=True),
                                    DecodingConfig(temperature=1.0, top_p=0.9, max_new_tokens=6, ignore_eos=True)])
def test_ray_rows_equal_one_process(local_ray, char_model: Path, config: DecodingConfig) -> None:
    """Greedy and sampled: each row travels with its generator's state, so it draws the same stream."""
    got: dict[int, list[int]] = {}
    decode_on_ray(rows_of(PROMPTS, config), model=str(char_model), load_options=LOAD, actors=2, batch_size=3,
                  chunk_size=3, on_done=lambda row, r: got.__setitem__(row.key, r.token_ids),
                  on_error=lambda row, why: pytest.fail(why))
    assert got == local_results(char_model, config)


@pytest.mark.parametrize("retries", [2, 0])
def test_an_actor_killed_mid_run_loses_and_duplicates_nothing(local_ray, char_model: Path, retries: int) -> None:
    config = DecodingConfig(temperature=0.0, max_new_tokens=40, ignore_eos=True)
    pids: list[int] = []
    done: list[int] = []
    errors: list[tuple[int, str]] = []

    def on_done(row: Row, result) -> None:
        if not done:  # the first result: kill an actor, busy or about to be
            os.kill(pids[0], signal.SIGKILL)
        done.append(row.key)

    decode_on_ray(rows_of(PROMPTS, config), model=str(char_model), load_options=LOAD, actors=2, batch_size=1,
                  chunk_size=1, retries=retries, on_done=on_done, on_error=lambda row, why: errors.append((row.key, why)),
                  on_actors=pids.extend)
    answered = done + [key for key, _ in errors]
    assert sorted(answered) == list(range(len(PROMPTS)))  # every prompt exactly once
    if retries:
        assert not errors and sorted(done) == list(range(len(PROMPTS)))
    else:
        assert errors and all("failed on 1 actors" in why for _, why in errors)


def test_generate_input_ray_from_the_command_line(local_ray, capsys, tmp_path: Path, char_model: Path) -> None:
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "abc", "id": "a"}\n{"prompt": ""}\n{"prompt": "head bed"}\nfade\n')
    args = ["generate", "-m", str(char_model), "--raw", "--greedy", "-N", "5", "--json", "--input", str(prompts)]
    assert main(args) == 1  # the empty prompt's row failed
    local = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert main([*args, "--ray", "auto"]) == 1
    distributed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["index"] for r in distributed] == [0, 1, 2, 3]
    assert [(r.get("id"), r.get("token_ids"), "error" in r) for r in distributed] == \
        [(r.get("id"), r.get("token_ids"), "error" in r) for r in local]


def test_ray_needs_input(capsys, char_model: Path) -> None:
    assert main(["generate", "-m", str(char_model), "--ray", "local", "ab"]) == 2
    assert "--ray shards the prompts of --input" in capsys.readouterr().err


def test_bad_ray_address_is_one_line(capsys, tmp_path: Path, char_model: Path) -> None:
    prompts = tmp_path / "p.txt"
    prompts.write_text("ab\n")
    assert main(["generate", "-m", str(char_model), "--raw", "--input", str(prompts), "--ray", "tcp://x"]) == 2
    assert "use local, auto or ray://HOST:PORT" in capsys.readouterr().err


def test_ray_without_an_address_means_local() -> None:
    from llmgen.cli import _optional_values

    assert _optional_values(["generate", "--input", "f", "--ray"]) == ["generate", "--input", "f", "--ray", "local"]
    assert _optional_values(["generate", "--ray", "--input", "f"]) == ["generate", "--ray", "local", "--input", "f"]
    assert _optional_values(["generate", "--ray", "auto", "-i", "f"]) == ["generate", "--ray", "auto", "-i", "f"]
    assert _optional_values(["generate", "--", "--ray"]) == ["generate", "--", "--ray"]  # a prompt, after --


def test_ray_without_an_address_still_needs_input(capsys, char_model: Path) -> None:
    assert main(["generate", "-m", str(char_model), "--ray"]) == 2
    assert "--ray shards the prompts of --input" in capsys.readouterr().err

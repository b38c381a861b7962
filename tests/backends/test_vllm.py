"""`--backend vllm`: the translator's contract, table-driven, and the CLI through a fake `vllm` module."""

from __future__ import annotations

import json
from pathlib import Path

import fake_vllm
import pytest
from helpers import run

from llmgen.backends import vllm as vb
from llmgen.decoding.config import DecodingConfig
from llmgen.errors import UsageError

# --- the translator --------------------------------------------------------------------------------

def test_greedy_maps_to_vllm_greedy_with_our_own_budget() -> None:
    request = vb.translate(DecodingConfig(temperature=0.0), "/m", budget=40)
    assert request.engine == {"model": "/m", "tokenizer": "/m", "dtype": "auto", "generation_config": "vllm",
                              "trust_remote_code": False}
    p = request.params
    assert (p["temperature"], p["top_k"], p["top_p"], p["min_p"]) == (0.0, -1, 1.0, 0.0)
    assert p["max_tokens"] == 40  # never vLLM's default of 16
    assert not request.beam


def test_sampling_options_map_one_to_one() -> None:
    config = DecodingConfig(temperature=0.7, top_k=40, top_p=0.9, min_p=0.05, frequency_penalty=0.5,
                            presence_penalty=-0.5, stop=("\n\n",), ignore_eos=True, seed=3, n=2)
    request = vb.translate(config, "/m", budget=128)
    assert request.params == {"n": 2, "max_tokens": 128, "ignore_eos": True, "stop": ["\n\n"],
                              "frequency_penalty": 0.5, "presence_penalty": -0.5, "repetition_penalty": 1.0,
                              "seed": 3, "temperature": 0.7, "top_k": 40, "top_p": 0.9, "min_p": 0.05}
    assert request.engine["seed"] == 3
    assert vb.translate(DecodingConfig(top_k=0), "/m", budget=8).params["top_k"] == -1  # off


def test_repetition_penalty_is_exact_only_over_prompt_and_output() -> None:
    ok = vb.translate(DecodingConfig(repetition_penalty=1.3, penalty_scope="all"), "/m", budget=8)
    assert ok.params["repetition_penalty"] == 1.3


REFUSED = [
    (DecodingConfig(frequency_penalty=0.5, penalty_scope="all"), {}, "--penalty-scope all"),
    (DecodingConfig(presence_penalty=0.5, penalty_window=8), {}, "--penalty-window"),
    (DecodingConfig(repetition_penalty=1.3), {}, "--repetition-penalty"),
    (DecodingConfig(repetition_penalty=1.3, penalty_scope="all", penalty_window=4), {}, "--repetition-penalty"),
    (DecodingConfig(min_p=0.1), {"draft": vb.Draft("ngram", 4)}, "--min-p"),
    (DecodingConfig(), {"draft": vb.Draft("ngram", "auto")}, "--gamma auto"),
    (DecodingConfig(num_beams=4, temperature=0.0), {}, "--length-penalty 1"),
    (DecodingConfig(num_beams=4, temperature=0.0, length_penalty=0.0, stop=("x",)), {}, "--stop"),
    (DecodingConfig(num_beams=4, temperature=0.0, length_penalty=0.0, repetition_penalty=1.2), {}, "penalties"),
    (DecodingConfig(num_beams=4, temperature=0.0, length_penalty=0.0, early_stopping="true"), {}, "--early-stopping"),
    (DecodingConfig(num_beams=2, temperature=0.0, length_penalty=0.0), {"draft": vb.Draft("ngram", 3)}, "speculative"),
    (DecodingConfig(no_repeat_ngram_size=3), {}, "--no-repeat-ngram-size"),
    (DecodingConfig(), {"quant": "int4"}, "--quant int4"),
    (DecodingConfig(), {"engine_options": {"tensor_parallel": 2}}, "unknown vLLM engine key"),
    (DecodingConfig(), {"engine_options": {"gpu_memory_utilization": 1.5}}, "gpu_memory_utilization"),
]


@pytest.mark.parametrize("config,extra,needle", REFUSED)
def test_what_vllm_cannot_do_exactly_is_refused_by_name(config: DecodingConfig, extra: dict, needle: str) -> None:
    with pytest.raises(UsageError, match=None) as caught:
        vb.translate(config, "/m", budget=8, **extra)
    assert needle in str(caught.value)
    assert "\n" not in str(caught.value)


def test_speculative_configs() -> None:
    ngram = vb.translate(DecodingConfig(temperature=0.0), "/m", budget=8,
                         draft=vb.Draft("ngram", 5, ngram_max=4, ngram_min=2))
    assert ngram.engine["speculative_config"] == {"num_speculative_tokens": 5, "method": "ngram",
                                                  "prompt_lookup_max": 4, "prompt_lookup_min": 2}
    assert ngram.engine["disable_log_stats"] is False
    model = vb.translate(DecodingConfig(temperature=0.0), "/m", budget=8, draft=vb.Draft("model", 3, model="/d"))
    assert model.engine["speculative_config"] == {"num_speculative_tokens": 3, "model": "/d"}


def test_beam_search_at_length_penalty_zero() -> None:
    request = vb.translate(DecodingConfig(num_beams=3, temperature=0.0, length_penalty=0.0), "/m", budget=20,
                           engine_options={"tensor_parallel_size": 2, "max_model_len": 4096})
    assert request.beam and request.params == {"beam_width": 3, "max_tokens": 20, "ignore_eos": False,
                                               "length_penalty": 0.0}
    assert request.engine["tensor_parallel_size"] == 2 and request.engine["max_model_len"] == 4096


def test_speculative_metrics_become_llmgen_statistics() -> None:
    class M:
        def __init__(self, name, value=None, values=None):
            self.name, self.value, self.values = name, value, values

    def snapshot(drafts, draft_tokens, accepted, per_pos):
        return vb.spec_counts([M("vllm:spec_decode_num_drafts", drafts), M("vllm:spec_decode_num_draft_tokens", draft_tokens),
                               M("vllm:spec_decode_num_accepted_tokens", accepted),
                               M("vllm:spec_decode_num_accepted_tokens_per_pos", values=per_pos)])

    # 10 rounds of 3 tokens: 6 accepted the first, 4 the first two, 2 all three -> 12 accepted
    stats = vb.spec_stats(snapshot(5, 15, 4, [3, 1, 0]), snapshot(15, 45, 16, [9, 5, 2]))
    assert stats == {"target_forwards": 10, "draft_tokens": 30, "accepted_tokens": 12, "acceptance_rate": 0.4,
                     "mean_gamma": 3.0, "acceptance_histogram": [4, 2, 2, 2]}
    assert sum(stats["acceptance_histogram"]) == stats["target_forwards"]


@pytest.mark.parametrize("reason,stop_reason,expected", [("length", None, "length"), ("stop", None, "eos"),
                                                         ("stop", "\n\n", "stop")])
def test_finish_reasons(reason: str, stop_reason, expected: str) -> None:
    assert vb.finish_reason(reason, stop_reason) == expected


# --- the command line, through the fake module ----------------------------------------------------

def test_generate_json_rows_look_the_same_on_both_backends(monkeypatch, capsys, char_model: Path) -> None:
    args = ("-m", str(char_model), "--raw", "--json", "--seed", "1", "-N", "5", "-n", "2", "ab")
    code, hf_out, _ = run(capsys, "generate", *args)
    assert code == 0
    record = fake_vllm.install(monkeypatch, tokens=[5, 6, 7], text="abc", finish_reason="stop", stop_reason=None)
    code, out, err = run(capsys, "generate", "--backend", "vllm", *args)
    assert code == 0, err
    rows, hf_rows = [json.loads(line) for line in out.splitlines()], [json.loads(line) for line in hf_out.splitlines()]
    assert len(rows) == 2 and set(rows[0]) == set(hf_rows[0])
    assert rows[0]["token_ids"] == [5, 6, 7] and rows[0]["finish_reason"] == "eos"
    assert rows[0]["prompt_token_ids"] == hf_rows[0]["prompt_token_ids"]
    assert record.prompts == [{"prompt_token_ids": hf_rows[0]["prompt_token_ids"]}]
    assert record.engine["model"] == str(char_model) and record.engine["generation_config"] == "vllm"
    assert record.params["max_tokens"] == 5 and record.params["n"] == 2 and record.params["seed"] == 1


def test_speculate_ngram_reads_vllm_metrics(monkeypatch, capsys, char_model: Path) -> None:
    record = fake_vllm.install(monkeypatch, tokens=[5, 6], text="ab", spec={
        "vllm:spec_decode_num_drafts": 4, "vllm:spec_decode_num_draft_tokens": 12,
        "vllm:spec_decode_num_accepted_tokens": 6, "per_pos": [3, 2, 1]})
    code, out, err = run(capsys, "speculate", "--backend", "vllm", "-m", str(char_model), "--draft", "ngram",
                         "--gamma", "3", "--raw", "--greedy", "--json", "-N", "8", "ab")
    assert code == 0, err
    stats = json.loads(out)["stats"]
    assert record.engine["speculative_config"]["method"] == "ngram"
    assert (stats["draft_tokens"], stats["accepted_tokens"], stats["target_forwards"]) == (12, 6, 4)
    assert stats["acceptance_histogram"] == [1, 1, 1, 1] and stats["backend"] == "vllm"


def test_preset_backend_table_and_flag_override(monkeypatch, capsys, tmp_path: Path, char_model: Path) -> None:
    preset = tmp_path / "big.toml"
    preset.write_text('temperature = 0\n[backend]\nname = "vllm"\n[backend.vllm]\ntensor_parallel_size = 2\n'
                      'gpu_memory_utilization = 0.8\n')
    record = fake_vllm.install(monkeypatch, tokens=[5], text="a")
    code, _, err = run(capsys, "generate", "-m", str(char_model), "--preset", str(preset), "--raw", "-N", "3",
                       "--vllm-option", "tensor_parallel_size=4", "ab")
    assert code == 0, err
    assert record.engine["tensor_parallel_size"] == 4 and record.engine["gpu_memory_utilization"] == 0.8
    assert record.params["temperature"] == 0.0


@pytest.mark.parametrize("args,needle", [
    (["--backend", "tpu"], "--backend must be one of hf, vllm"),
    (["--vllm-option", "tensor_parallel_size=2"], "need --backend vllm"),
    (["--backend", "vllm", "--vllm-option", "tp=2"], "unknown vLLM engine key 'tp'"),
    (["--backend", "vllm", "--repetition-penalty", "1.2"], "--repetition-penalty"),
])
def test_bad_backend_input_is_one_line(monkeypatch, capsys, char_model: Path, args: list[str], needle: str) -> None:
    fake_vllm.install(monkeypatch, tokens=[5], text="a")
    code, _, err = run(capsys, "generate", "-m", str(char_model), "--raw", *args, "ab")
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and needle in lines[0], err


def test_without_vllm_one_line_says_how_to_install(monkeypatch, capsys, char_model: Path) -> None:
    monkeypatch.setitem(__import__("sys").modules, "vllm", None)
    code, _, err = run(capsys, "generate", "-m", str(char_model), "--raw", "--backend", "vllm", "ab")
    assert code == 2 and "llmgen[vllm]" in err and len(err.strip().splitlines()) == 1


def test_bad_preset_backend_table_names_the_file(capsys, tmp_path: Path, char_model: Path) -> None:
    preset = tmp_path / "bad.toml"
    preset.write_text('[backend]\nname = "vllm"\n[backend.vllm]\ntensor_parallel_size = 0\n')
    code, _, err = run(capsys, "generate", "-m", str(char_model), "--preset", str(preset), "--raw", "ab")
    assert code == 2 and "bad.toml" in err and "tensor_parallel_size" in err


def test_input_rows_on_vllm_keep_order_errors_and_per_row_keys(monkeypatch, capsys, tmp_path: Path,
                                                               char_model: Path) -> None:
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "abc", "id": "x"}\n{"prompt": "ab", "temperature": 0.5, "max_new_tokens": 3}\n'
                       'not json\n{"prompt": "ab", "repetition_penalty": 1.5}\n')
    record = fake_vllm.install(monkeypatch, tokens=[5, 6], text="ab", finish_reason="length")
    code, out, err = run(capsys, "generate", "--backend", "vllm", "-m", str(char_model), "--raw", "--json",
                         "--seed", "10", "-N", "4", "--input", str(prompts))
    rows = [json.loads(line) for line in out.splitlines()]
    assert code == 1  # rows 2 (not JSON) and 3 (a key vLLM cannot run) failed; the others were decoded
    assert [r["index"] for r in rows] == [0, 1, 2, 3] and rows[0]["id"] == "x"
    assert rows[0]["token_ids"] == [5, 6] and "error" in rows[2] and "--repetition-penalty" in rows[3]["error"]
    first, second = record.all_params
    assert (first["temperature"], first["max_tokens"], first["seed"]) == (1.0, 4, 10)
    assert (second["temperature"], second["max_tokens"], second["seed"]) == (0.5, 3, 11)

"""Every sampler field through the HTTP API, on both engines: a request with the field returns exactly what
`generation.generate` returns with the same settings as a DecodingConfig (greedy, or seeded where the stage
samples), and each field changes the output against the same request without it (a test that cannot fail
proves nothing). Then requests that name tokens the vocabulary lacks, or settings the model cannot serve:
400s naming the field, never a 500."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from serving import MODEL_ID, need_server

from llmgen.decoding.chat import render
from llmgen.decoding.config import REQUEST_NAMES, DecodingConfig
from llmgen.decoding.generation import generate
from llmgen.decoding.processors.registry import LLAMACPP_ORDER, STAGES
from llmgen.serve.protocol import CHAT_FIELDS, COMPLETION_FIELDS, APIError, to_config

need_server()
httpx = pytest.importorskip("httpx")

PROMPT = "bad cafe"
TOKENS = 16


def test_every_setting_of_every_stage_is_a_request_field_of_both_endpoints() -> None:
    settings = {REQUEST_NAMES.get(f, f) for stage in STAGES for f in (*stage.switches, *stage.params)}
    assert settings <= CHAT_FIELDS & COMPLETION_FIELDS
    assert {"logit_bias", "min_tokens", "stop_token_ids", "bad_words", "allowed_token_ids", "reasoning_budget",
            "samplers", "repeat_penalty", "repeat_last_n"} <= CHAT_FIELDS & COMPLETION_FIELDS
    assert "chat_template_kwargs" in CHAT_FIELDS - COMPLETION_FIELDS


def test_docs_serve_md_lists_every_request_field() -> None:
    from pathlib import Path

    docs = (Path(__file__).resolve().parents[2] / "docs" / "serve.md").read_text()
    table = docs[docs.index("## Request fields"):docs.index("Refused with a 400")]
    missing = [f for f in sorted(CHAT_FIELDS | COMPLETION_FIELDS) if f"`{f}`" not in table]
    assert not missing, f"docs/serve.md's field table lacks {missing}"


def test_llama_servers_spellings_and_samplers_map_onto_the_config() -> None:
    base = DecodingConfig()
    assert to_config({"repeat_penalty": 1.3, "repeat_last_n": 64}, base, 8) == base.replace(
        repetition_penalty=1.3, penalty_window=64)
    assert to_config({"repeat_last_n": -1}, base.replace(penalty_window=5), 8).penalty_window == 0
    assert to_config({"repeat_penalty": 1.3, "repetition_penalty": 1.3}, base, 8).repetition_penalty == 1.3
    assert to_config({"top_n_sigma": -1, "top_k": -1}, base.replace(top_n_sigma=2.0, top_k=3), 8) == base
    assert to_config({"samplers": ["penalties", "dry", "top_k", "typ_p", "top_p", "min_p", "xtc", "temperature"]},
                     base, 8).samplers == ("penalties", "dry", "top_k", "typical_p", "top_p", "min_p", "xtc",
                                           "temperature")
    assert to_config({"samplers": "llama.cpp"}, base, 8).samplers == LLAMACPP_ORDER
    assert to_config({"samplers": "edkypmxt"}, base, 8).samplers == ("penalties", "dry", "top_k", "typical_p",
                                                                    "top_p", "min_p", "xtc", "temperature")
    assert to_config({"samplers": "top_k;temperature"}, base, 8).samplers == ("top_k", "temperature")
    assert to_config({"samplers": ["top_k", "temperature"], "mirostat": 2}, base, 8).samplers == (
        "top_k", "temperature", "mirostat")  # llama-server runs Mirostat whatever the list says
    kwargs = {"enable_thinking": False, "n": "3", "depth": 2}
    assert to_config({"chat_template_kwargs": kwargs}, base, 8).template_kwargs() == kwargs  # "3" stays a string
    with pytest.raises(APIError) as info:
        to_config({"dry_sequence_breakers": [""]}, base, 8)
    assert info.value.param == "dry_sequence_breakers"


@dataclass(frozen=True)
class Case:
    fields: dict  # the request's sampler fields
    config: dict  # the same settings as DecodingConfig fields
    off: dict = field(default_factory=dict)  # the settings the field is compared against (absent: none)
    seed: int | None = None  # sampled (temperature 1 unless set) with this seed; None: greedy

    def settings(self, changes: dict) -> DecodingConfig:
        sampled = {"temperature": 1.0, "seed": self.seed} if self.seed is not None else {"temperature": 0.0}
        return DecodingConfig(max_new_tokens=TOKENS, **{**sampled, **changes})

    def body(self) -> dict:
        sampled = {"temperature": 1.0, "seed": self.seed} if self.seed is not None else {"temperature": 0}
        return {"max_tokens": TOKENS, **sampled, **_request(self.off), **self.fields}


def _request(config: dict) -> dict:
    """An `off` baseline's settings as request fields (the same names, but dynatemp_exp)."""
    return {{"dynatemp_exp": "dynatemp_exponent"}.get(k, k): v for k, v in config.items()}


PRESENCE = {"presence_penalty": 1.5}
DRY = {"dry_multiplier": 0.2, "dry_allowed_length": 1}
XTC = {"xtc_probability": 1.0, "xtc_threshold": 0.05}
MIROSTAT = {"mirostat": 2, "mirostat_tau": 1.0}
DYNATEMP = {"dynatemp_range": 0.9}
HOT = {"temperature": 3.0, "min_p": 0.3}
CASES = {
    "repetition_penalty": Case({"repetition_penalty": 1.8}, {"repetition_penalty": 1.8}),
    "repeat_penalty": Case({"repeat_penalty": 1.8}, {"repetition_penalty": 1.8}),
    "frequency_penalty": Case({"frequency_penalty": 1.5}, {"frequency_penalty": 1.5}),
    "presence_penalty": Case(PRESENCE, PRESENCE),
    "penalty_scope": Case({"penalty_scope": "all"}, {**PRESENCE, "penalty_scope": "all"}, PRESENCE),
    "penalty_window": Case({"penalty_window": 2}, {**PRESENCE, "penalty_window": 2}, PRESENCE),
    "repeat_last_n": Case({"repeat_last_n": 2}, {**PRESENCE, "penalty_window": 2}, PRESENCE),
    "dry_multiplier": Case(DRY, DRY),
    "dry_base": Case({"dry_base": 4.0}, {**DRY, "dry_base": 4.0}, DRY),
    "dry_allowed_length": Case({"dry_allowed_length": 3}, {**DRY, "dry_allowed_length": 3}, DRY),
    "dry_penalty_last_n": Case({"dry_penalty_last_n": 3}, {**DRY, "dry_penalty_last_n": 3}, DRY),
    "dry_sequence_breakers": Case({"dry_sequence_breakers": ["e", "f", "h", "b"]},
                                  {**DRY, "dry_sequence_breakers": ("e", "f", "h", "b")}, DRY),
    "temperature": Case({"temperature": 0.5}, {"temperature": 0.5}, seed=3),
    "top_k": Case({"top_k": 2}, {"top_k": 2}, seed=3),
    "top_p": Case({"top_p": 0.5}, {"top_p": 0.5}, seed=3),
    "min_p": Case({"min_p": 0.3}, {"min_p": 0.3}, seed=3),
    "typical_p": Case({"typical_p": 0.3}, {"typical_p": 0.3}, seed=3),
    "top_n_sigma": Case({"top_n_sigma": 0.5}, {"top_n_sigma": 0.5}, seed=3),
    "epsilon_cutoff": Case({"epsilon_cutoff": 0.1}, {"epsilon_cutoff": 0.1}, seed=3),
    "eta_cutoff": Case({"eta_cutoff": 0.1}, {"eta_cutoff": 0.1}, seed=3),
    "dynatemp_range": Case(DYNATEMP, DYNATEMP, seed=5),
    "dynatemp_exponent": Case({"dynatemp_exponent": 4.0}, {**DYNATEMP, "dynatemp_exp": 4.0}, DYNATEMP, seed=5),
    "xtc_probability": Case(XTC, XTC, seed=3),
    "xtc_threshold": Case({"xtc_threshold": 0.3}, {**XTC, "xtc_threshold": 0.3}, XTC, seed=3),
    "mirostat": Case(MIROSTAT, MIROSTAT, seed=3),
    "mirostat_tau": Case({"mirostat_tau": 3.0}, {**MIROSTAT, "mirostat_tau": 3.0}, MIROSTAT, seed=3),
    "mirostat_eta": Case({"mirostat_eta": 0.9}, {**MIROSTAT, "mirostat_eta": 0.9}, MIROSTAT, seed=3),
    "samplers": Case({"samplers": ["min_p", "temperature"]}, {**HOT, "samplers": ("min_p", "temperature")}, HOT,
                     seed=3),
}


def completion(url: str, body: dict) -> dict:
    response = httpx.post(url + "/v1/completions", json={"model": MODEL_ID, "prompt": PROMPT, **body}, timeout=120)
    assert response.status_code == 200, response.text
    choice = response.json()
    return {"text": choice["choices"][0]["text"], "tokens": choice["usage"]["completion_tokens"]}


def library(loaded, prompt_ids: list[int], config: DecodingConfig) -> dict:
    result = generate(loaded, prompt_ids, config)
    return {"text": result.text, "tokens": len(result.token_ids)}


@pytest.mark.parametrize("name", list(CASES))
def test_each_sampler_field_is_the_library_with_that_setting(served, name: str) -> None:
    loaded, url = served
    case = CASES[name]
    ids = [int(i) for i in loaded.tokenizer(PROMPT)["input_ids"]]
    want = library(loaded, ids, case.settings(case.config))
    assert completion(url, case.body()) == want
    assert want != library(loaded, ids, case.settings(case.off)), f"{name} changes nothing here: choose a stronger value"


def test_the_mask_fields_are_the_library_with_those_settings(served) -> None:
    """logit_bias, stop_token_ids, min_tokens, bad_words, allowed_token_ids: each bans or favours tokens the
    plain greedy output has, so that each changes it."""
    loaded, url = served
    ids = [int(i) for i in loaded.tokenizer(PROMPT)["input_ids"]]
    plain = generate(loaded, ids, DecodingConfig(temperature=0.0, max_new_tokens=TOKENS))
    out = plain.token_ids
    stop = out[3]
    word = next(c for c in plain.text[2:] if c.isalpha())
    letters = [int(t) for t in loaded.tokenizer("fade", add_special_tokens=False)["input_ids"]]
    cases = [({"logit_bias": {str(out[0]): -100, str(out[2]): 5}}, {"logit_bias": ((out[0], -100.0), (out[2], 5.0))}),
             ({"stop_token_ids": [stop]}, {"stop_token_ids": (stop,)}),
             ({"stop_token_ids": [stop], "min_tokens": 8}, {"stop_token_ids": (stop,), "min_tokens": 8}),
             ({"bad_words": [word]}, {"bad_words": (word,)}),
             ({"allowed_token_ids": letters}, {"allowed_token_ids": tuple(letters)})]
    for fields, changes in cases:
        config = DecodingConfig(temperature=0.0, max_new_tokens=TOKENS, **changes)
        want = library(loaded, ids, config)
        assert completion(url, {"temperature": 0, "max_tokens": TOKENS, **fields}) == want, fields
        assert want != {"text": plain.text, "tokens": len(out)}, fields
    with_stop = library(loaded, ids, DecodingConfig(temperature=0.0, max_new_tokens=TOKENS, stop_token_ids=(stop,)))
    assert with_stop["tokens"] < len(out)  # the stop id ends the output: min_tokens's case above defers it


def test_repeat_last_n_zero_turns_the_penalties_off_as_llama_server_counts_no_tokens(served) -> None:
    _, url = served
    plain = completion(url, {"temperature": 0, "max_tokens": TOKENS})
    assert completion(url, {"temperature": 0, "max_tokens": TOKENS, "repeat_penalty": 1.8, "repeat_last_n": 0}) == plain
    assert completion(url, {"temperature": 0, "max_tokens": TOKENS, "repeat_penalty": 1.8}) != plain


def test_chat_template_kwargs_are_the_templates_variables(served) -> None:
    loaded, url = served
    messages = [{"role": "user", "content": "abc"}]
    config = DecodingConfig(temperature=0.0, max_new_tokens=TOKENS)
    ids = render(loaded.tokenizer, messages, {"lead": "fed"})
    assert ids != render(loaded.tokenizer, messages)
    want = generate(loaded, ids, config)
    body = httpx.post(url + "/v1/chat/completions", timeout=120, json={
        "model": MODEL_ID, "messages": messages, "temperature": 0, "max_tokens": TOKENS,
        "chat_template_kwargs": {"lead": "fed"}}).json()
    assert body["choices"][0]["message"]["content"] == want.text
    assert body["usage"]["prompt_tokens"] == len(ids)
    counted = httpx.post(url + "/tokenize", json={"messages": messages, "chat_template_kwargs": {"lead": "fed"}}).json()
    assert counted["tokens"] == ids and counted["count"] == body["usage"]["prompt_tokens"]


@pytest.mark.parametrize("path, body, param", [
    ("/v1/completions", {"logit_bias": {"99999999": 5}}, "logit_bias"),
    ("/v1/completions", {"logit_bias": {"-1": 5}}, "logit_bias"),
    ("/v1/completions", {"logit_bias": {"x": 5}}, "logit_bias"),
    ("/v1/completions", {"stop_token_ids": [99999999]}, "stop_token_ids"),
    ("/v1/completions", {"allowed_token_ids": [0, 99999999]}, "allowed_token_ids"),
    ("/v1/completions", {"allowed_token_ids": ["a"]}, "allowed_token_ids"),
    ("/v1/completions", {"bad_words": [""]}, "bad_words"),
    ("/v1/completions", {"bad_words": [3]}, "bad_words"),
    ("/v1/completions", {"prompt": [1, 99999999]}, "prompt"),
    ("/v1/completions", {"mirostat": 1}, "mirostat"),
    ("/v1/completions", {"temperature": 0.5, "samplers": ["top_k"]}, "samplers"),
    ("/v1/completions", {"samplers": ["top_k", "infill"]}, "samplers"),
    ("/v1/completions", {"dynatemp_exponent": 0}, "dynatemp_exponent"),
    ("/v1/completions", {"dry_sequence_breakers": [""], "dry_multiplier": 1}, "dry_sequence_breakers"),
    ("/v1/completions", {"repeat_penalty": 1.2, "repetition_penalty": 1.3}, "repeat_penalty"),
    ("/v1/completions", {"repeat_last_n": -2}, "repeat_last_n"),
    ("/v1/completions", {"typical_p": 0}, "typical_p"),
    ("/v1/completions", {"xtc_threshold": 2}, "xtc_threshold"),
    ("/v1/completions", {"top_k": 10**30}, None),
    ("/v1/completions", {"chat_template_kwargs": {"lead": "x"}}, "chat_template_kwargs"),
    ("/v1/chat/completions", {"chat_template_kwargs": ["lead=x"]}, "chat_template_kwargs"),
    ("/tokenize", {"content": "ab", "add_special": "yes"}, "add_special"),
    ("/tokenize", {"prompt": "ab", "content": "ab"}, "content"),
    ("/detokenize", {"tokens": [1, 99999999]}, "tokens"),
    ("/detokenize", {"tokens": [-1]}, "tokens"),
    ("/detokenize", {"tokens": "ab"}, "tokens"),
])
def test_malformed_requests_are_400_naming_the_field(served, path: str, body: dict, param: str | None) -> None:
    _, url = served
    base = {"model": MODEL_ID}
    if path == "/v1/completions":
        base.update(prompt="abc", max_tokens=2)
    elif path == "/v1/chat/completions":
        base.update(messages=[{"role": "user", "content": "abc"}], max_tokens=2)
    response = httpx.post(url + path, json={**base, **body}, timeout=60)
    if param is None:  # an absurd top_k is no error: it keeps every token
        assert response.status_code == 200, response.text
        return
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param, response.text


def test_nan_and_infinity_are_not_json(served) -> None:
    _, url = served
    for raw in (b'{"model": "tiny", "prompt": "a", "temperature": NaN}',
                b'{"model": "tiny", "prompt": "a", "top_n_sigma": Infinity}'):
        response = httpx.post(url + "/v1/completions", content=raw, headers={"content-type": "application/json"})
        assert response.status_code == 400 and response.json()["error"]["code"] == "invalid_json"


@pytest.mark.parametrize("claim", [["--typical-p", "0.6"], ["--top-n-sigma", "0.7"]])
def test_the_audit_sends_the_sampler_fields_and_finds_them_honoured(served, capsys, monkeypatch, claim) -> None:
    """`llmgen audit --url` sends a claimed llama-server setting as its request field: the server's samples
    follow the exact distribution of the claim; without the field sent, the audit rejects it."""
    import json

    from llmgen.cli import main
    from llmgen.evaluate import client

    loaded, url = served
    argv = ["audit", "--url", url, "--served-model", MODEL_ID, "-m", loaded.ref, "--engine", loaded.engine.name,
            "--oracle-engine", loaded.engine.name, "-n", "300", "--seed", "1", "--json", "--temperature", "1.5",
            *claim, PROMPT]
    assert main(argv) == 0, capsys.readouterr()
    assert not json.loads(capsys.readouterr().out)["rejected"]
    claimed = {flag[2:].replace("-", "_") for flag in claim if flag.startswith("--")}
    monkeypatch.setattr(client, "FIELDS", {k: v for k, v in client.FIELDS.items() if k not in claimed})
    assert main(argv) == 1
    assert json.loads(capsys.readouterr().out)["rejected"]


@pytest.fixture(scope="module", params=["torch", "llamacpp"])
def smol_served(request):
    """(loaded, url) over SmolLM2's vocabulary, which writes <think> and </think>: the tiny Llama of
    tests/conftest.py (torch), the embedded GGUF itself (llamacpp)."""
    from serving import start

    from llmgen.loading import models

    if request.param == "torch":
        loaded = request.getfixturevalue("wide_lm")
    else:
        pytest.importorskip("llama_cpp")
        loaded = models.load(models.DEFAULT_MODEL, engine="llamacpp", threads=1)
    _, context = start(loaded)
    with context as url:
        yield loaded, url


def test_reasoning_budget_forces_the_closing_tag_as_the_library_does(smol_served) -> None:
    loaded, url = smol_served
    prompt = "Why is the sky blue?\n<think>"
    ids = [int(i) for i in loaded.tokenizer(prompt)["input_ids"]]
    config = DecodingConfig(temperature=0.0, max_new_tokens=10, reasoning_budget=2)
    want = generate(loaded, ids, config)
    body = {"model": MODEL_ID, "prompt": prompt, "temperature": 0, "max_tokens": 10, "reasoning_budget": 2}
    got = httpx.post(url + "/v1/completions", json=body, timeout=120).json()
    assert got["choices"][0]["text"] == want.text and got["usage"]["completion_tokens"] == len(want.token_ids)
    assert "</think>" in want.text and want.text != generate(loaded, ids, config.replace(reasoning_budget=-1)).text


def test_reasoning_budget_is_refused_where_the_vocabulary_cannot_write_think_tags(served) -> None:
    loaded, url = served
    if loaded.engine.name == "torch":
        pytest.skip("the char tokenizer writes any text, as unknown tokens")
    response = httpx.post(url + "/v1/completions", timeout=60, json={"model": MODEL_ID, "prompt": "abc",
                                                                     "reasoning_budget": 4})
    assert response.status_code == 400 and response.json()["error"]["param"] == "reasoning_budget", response.text

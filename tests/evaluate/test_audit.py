"""`llmgen audit`: the chi-square test has its nominal size on llmgen's own sampler and power against a
wrong claim; the explainer names a hidden setting; llmgen's own paths pass; bad input is one line."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import torch
from scipy import stats

from llmgen.cli import main
from llmgen.decoding.config import DecodingConfig
from llmgen.decoding.processors import process
from llmgen.decoding.sampling import make_generator, pick
from llmgen.evaluate.audit import audit_samples, chi_square, explain, hidden_defaults, needed_samples
from llmgen.evaluate.distribution import ContextLogits
from llmgen.evaluate.remote import expected_under, token_keys
from llmgen.evaluate.selfaudit import audit_path
from llmgen.loading import models

PROMPT = "habhdahab"
CLAIM = DecodingConfig(temperature=0.9, top_k=8)


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def setup(char_model: Path) -> dict[str, Any]:
    loaded = models.load(str(char_model))
    prompt = loaded.tokenizer(PROMPT)["input_ids"]
    oracle = ContextLogits(loaded.engine.sequence())
    keys = token_keys(loaded.tokenizer, prompt, loaded.vocab_size, loaded.eos_token_ids, by_text=False)
    return {"loaded": loaded, "prompt": prompt, "oracle": oracle, "keys": keys}


def draws(setup: dict[str, Any], config: DecodingConfig, n: int, seed: int) -> list[tuple]:
    """N first tokens from llmgen's own chain and pick (processors, then the exponential race), one row each."""
    logits = setup["oracle"](setup["prompt"])[None].expand(n, -1)  # [n, vocab]
    tokens = pick(process(logits, None, config), config.greedy, [make_generator(seed)] * n)
    return [(setup["keys"][t],) for t in tokens.tolist()]


def test_pooling_and_impossible_cells() -> None:
    expected = {"a": 0.5, "b": 0.3, "c": 0.15, "d": 0.04, "e": 0.01}
    result = chi_square({"a": 50, "b": 30, "c": 15, "d": 4, "e": 1}, expected)
    assert result.p_value == pytest.approx(1.0) and result.dof == 3  # d and e pooled into one cell
    assert chi_square({"a": 99, "z": 1}, expected).p_value == 0.0  # z has probability 0
    assert needed_samples({"a": 0.9, "b": 0.1}) == 50 and needed_samples({"a": 1.0}) == 1


def test_the_test_has_its_nominal_size_on_llmgens_own_sampler(setup) -> None:
    """200 seeded audits of a correct sampler: about 0.1% reject at alpha 1e-3, and the p-values are
    uniform enough that about 5% fall below 0.05."""
    expected_of = expected_under(setup["oracle"], setup["prompt"], CLAIM, setup["keys"])
    p_values = [audit_samples(draws(setup, CLAIM, 300, seed), expected_of, 1e-3).p_value for seed in range(200)]
    rejected = sum(p < 1e-3 for p in p_values)
    # Binomial(200, 1e-3): P(X >= 3) = 0.0011
    assert rejected <= 2, rejected
    # Binomial(200, 0.05): 10 expected, P(X <= 2) + P(X >= 20) < 0.005
    assert 2 < sum(p < 0.05 for p in p_values) < 20
    assert stats.kstest(p_values, "uniform").pvalue > 1e-3


def test_the_test_rejects_a_wrong_claim(setup) -> None:
    truth = CLAIM.replace(temperature=0.5)
    expected_of = expected_under(setup["oracle"], setup["prompt"], CLAIM, setup["keys"])
    verdicts = [audit_samples(draws(setup, truth, 400, seed), expected_of, 1e-3) for seed in range(10)]
    assert sum(v.rejected for v in verdicts) >= 9


def test_the_explainer_names_the_hidden_temperature(setup) -> None:
    first: dict = {}
    for (key,) in draws(setup, CLAIM.replace(temperature=0.6), 1000, 5):
        first[key] = first.get(key, 0) + 1
    of = lambda config: expected_under(setup["oracle"], setup["prompt"], config, setup["keys"])(())  # noqa: E731
    candidates = [(name, config, of(config)) for name, config in hidden_defaults(CLAIM)]
    explanation = explain(first, of(CLAIM), candidates)
    assert explanation is not None and explanation.name == "temperature 0.6"
    assert explanation.p_value > 1e-3


@pytest.mark.parametrize("path", ["plain", "batched", "ngram", "draft", "int4"])
def test_llmgens_own_paths_pass_the_audit(char_model: Path, draft_model: Path, path: str) -> None:
    loaded = models.load(str(char_model), quant="int4" if path == "int4" else "none")
    draft = models.load(str(draft_model)) if path == "draft" else None
    prompt = loaded.tokenizer(PROMPT)["input_ids"]
    config = DecodingConfig(temperature=0.9, top_k=8, presence_penalty=0.5)
    report = audit_path(path, loaded, draft, prompt, config, 200, 3, 1e-3, seed=11)
    assert not report.verdict.rejected, report.verdict
    assert [p.position for p in report.verdict.positions] == [1, 2, 3]


def test_self_audit_from_the_command_line(capsys, char_model: Path) -> None:
    code, out, err = run(capsys, "audit", "--self", "-m", str(char_model), "--paths", "plain,batched", "-n", "200",
                         "-k", "2", "--seed", "3", "--temperature", "0.9", "--top-k", "8", "--json", PROMPT)
    assert code == 0, err
    rows = [json.loads(line) for line in out.splitlines()]
    assert [r["target"] for r in rows] == ["llmgen plain", "llmgen batched"]
    assert all(not r["rejected"] and r["k"] == 2 and r["n"] == 200 for r in rows)


# ---- a fake OpenAI-compatible server ------------------------------------------------------------------------

Reply = Callable[[dict[str, Any]], tuple[int, bytes]]


@pytest.fixture
def server():
    """Start a local HTTP server whose answer to POST /v1/completions is `reply(body)`; yields its base URL."""
    servers = []

    def start(reply: Reply) -> str:
        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                status, payload = reply(body)
                self.send_response(status)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args: Any) -> None: ...

        httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
        servers.append(httpd)
        return f"http://127.0.0.1:{httpd.server_address[1]}"

    yield start
    for httpd in servers:
        httpd.shutdown()
        httpd.server_close()


def sampling_server(setup: dict[str, Any], hidden: DecodingConfig, prompt_tokens: int | None = None) -> Reply:
    """A server that samples the first token with `hidden` (llmgen's own chain) whatever it is asked."""
    generator = make_generator(17)
    logits = setup["oracle"](setup["prompt"])[None]
    tokenizer = setup["loaded"].tokenizer

    def reply(body: dict[str, Any]) -> tuple[int, bytes]:
        token = int(pick(process(logits, None, hidden), hidden.greedy, [generator])[0])
        usage = {"prompt_tokens": prompt_tokens or len(setup["prompt"]), "completion_tokens": 1}
        choice = {"text": tokenizer.decode([token], skip_special_tokens=True), "index": 0,
                  "finish_reason": "stop" if token in setup["loaded"].eos_token_ids else "length"}
        return 200, json.dumps({"choices": [choice], "usage": usage}).encode()

    return reply


def test_a_server_that_samples_as_claimed_is_consistent(capsys, setup, server, char_model: Path) -> None:
    url = server(sampling_server(setup, CLAIM))
    code, out, err = run(capsys, "audit", "--url", url, "-m", str(char_model), "-n", "300", "--temperature", "0.9",
                         "--top-k", "8", "--json", PROMPT)
    assert code == 0, err
    row = json.loads(out)
    assert row["request"] == {"temperature": 0.9, "top_k": 8} and not row["rejected"]


def test_a_server_with_a_hidden_temperature_is_rejected_and_explained(capsys, setup, server, char_model: Path) -> None:
    url = server(sampling_server(setup, CLAIM.replace(temperature=0.6)))
    code, out, err = run(capsys, "audit", "--url", url, "-m", str(char_model), "-n", "800", "--temperature", "0.9",
                         "--top-k", "8", PROMPT)
    assert code == 1, err
    assert "rejected" in out and "temperature 0.6" in out


def _answer(text: str, **usage: int) -> Reply:
    return lambda body: (200, json.dumps({"choices": [{"text": text, "finish_reason": "length"}],
                                          "usage": usage}).encode())


@pytest.mark.parametrize("reply,message", [
    (lambda body: (200, b"<html>hello</html>"), "did not answer JSON"),
    (lambda body: (200, b'{"object": "list"}'), "without choices[0].text"),
    (lambda body: (404, b"Not Found"), "answered HTTP 404"),
    (_answer("xyz"), "is no single token"),
    (_answer("a", prompt_tokens=3), "read the prompt as 3 tokens"),
])
def test_a_server_that_cannot_be_audited_is_one_line(capsys, server, char_model: Path, reply: Reply,
                                                      message: str) -> None:
    code, out, err = run(capsys, "audit", "--url", server(reply), "-m", str(char_model), "-n", "200", PROMPT)
    assert code == 2
    assert message in err and len(err.strip().splitlines()) == 1, err


@pytest.mark.parametrize("argv,message", [
    ([PROMPT], "give --url URL"),
    (["--url", "http://127.0.0.1:9", "--self", PROMPT], "give --url URL"),
    (["--url", "http://127.0.0.1:9", PROMPT], "cannot reach"),
    (["--url", "http://127.0.0.1:9", "-n", "3", PROMPT], "-n 3 is too few"),
    (["--url", "ftp://x", PROMPT], "--url must start with"),
    (["--self", "--paths", "plain,warp", PROMPT], "--paths"),
    (["--self", "--paths", "draft", PROMPT], "needs --draft"),
    (["--url", "http://127.0.0.1:9", "--stop", "x", PROMPT], "does not test --stop"),
    (["--url", "http://127.0.0.1:9", "--oracle-engine", "vllm", PROMPT], "--oracle-engine must be one of"),
])
def test_bad_input_is_one_line(capsys, char_model: Path, argv: list[str], message: str) -> None:
    code, out, err = run(capsys, "audit", "-m", str(char_model), *argv)
    assert code == 2
    assert message in err and len(err.strip().splitlines()) == 1, err
    assert torch.get_num_threads() >= 1


def test_a_character_split_across_byte_tokens_is_mapped_back(wide_model: Path) -> None:
    """A server prints a completion that ends inside a character as U+FFFD; it does not re-tokenize, and the
    audit finds the token sequence among the claim's likeliest tokens instead."""
    from llmgen.evaluate.client import Completion
    from llmgen.evaluate.remote import map_completion

    tokenizer = models.load(str(wide_model)).tokenizer
    prompt = "My favourite colour is"
    prompt_ids = tokenizer(prompt)["input_ids"]
    emoji = tokenizer(" 🟦", add_special_tokens=False)["input_ids"]
    assert len(emoji) >= 2 and "\ufffd" in tokenizer.decode(emoji[:1])
    truth = emoji[:2]
    text = tokenizer.decode(truth)
    keys = list(range(len(tokenizer)))
    others = [260, 253, 2382]
    candidates = lambda prefix: [*others, truth[len(prefix)]] if len(prefix) < 2 else others  # noqa: E731
    mapped = map_completion(Completion(text, "length", None, len(prompt_ids), 2), tokenizer, prompt, prompt_ids, 2,
                            keys, None, frozenset(), "wide", candidates)
    assert list(mapped) == truth

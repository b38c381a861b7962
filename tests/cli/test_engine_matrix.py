"""Every decoding option and every command on each engine that can run it.

The same tiny GGUF file (`tiny_gguf.py`: a Llama with a SentencePiece vocabulary and a chat template) runs on
the torch engine (dequantized, transformers' tokenizer) and on the llama.cpp engine (the file's own
tokenizer, through llama.cpp), so each case also exercises both tokenizers (`loading/tokenizer.py`).

A case passes when it runs cleanly (exit 0, no traceback) or is refused in one line that says why (exit 2,
`llmgen: error: ...`). Three options once crashed on llama.cpp only (DRY, --chat-template-kwarg, audit by
text), because their tests ran on torch only.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
from helpers import one_line_error, run
from tiny_gguf import write_tiny_llama

ENGINES = ["torch", pytest.param("llamacpp", marks=pytest.mark.skipif(
    importlib.util.find_spec("llama_cpp") is None, reason="the llamacpp extra is not installed"))]
CONSTRAINED = importlib.util.find_spec("llguidance") is not None

# (name, flags): every decoding option of generate and speculate, each on its own (with what it needs)
OPTIONS = [
    ("greedy", ["--greedy"]),
    ("temperature", ["--temperature", "0.7"]),
    ("top-k", ["--top-k", "5"]),
    ("top-p", ["--top-p", "0.9"]),
    ("min-p", ["--min-p", "0.1"]),
    ("penalties", ["--frequency-penalty", "0.5", "--presence-penalty", "0.5", "--repetition-penalty", "1.2",
                   "--penalty-scope", "all", "--penalty-window", "8"]),
    ("stop", ["--stop", "e"]),
    ("ignore-eos", ["--ignore-eos"]),
    ("logit-bias", ["--logit-bias", "5=-100", "--logit-bias", "6=3"]),
    ("min-tokens", ["--min-tokens", "3"]),
    ("stop-token-id", ["--stop-token-id", "7"]),
    ("bad-word", ["--bad-word", "ab"]),
    ("allowed-token-id", ["--allowed-token-id", "5", "--allowed-token-id", "6", "--allowed-token-id", "7"]),
    ("samplers", ["--samplers", "llama.cpp", "--top-k", "8", "--temperature", "0.9"]),
    ("typical-p", ["--typical-p", "0.9"]),
    ("epsilon-eta", ["--epsilon-cutoff", "0.001", "--eta-cutoff", "0.001"]),
    ("top-n-sigma", ["--top-n-sigma", "1.5"]),
    ("dry", ["--dry-multiplier", "0.8", "--dry-base", "1.75", "--dry-allowed-length", "2",
             "--dry-penalty-last-n", "16", "--dry-sequence-breaker", "x"]),
    ("xtc", ["--xtc-probability", "0.5", "--xtc-threshold", "0.1"]),
    ("mirostat", ["--mirostat", "2", "--mirostat-tau", "5", "--mirostat-eta", "0.1"]),
    ("dynatemp", ["--dynatemp-range", "0.5", "--dynatemp-exp", "1.5"]),
    ("chat-template-kwarg", ["--chat", "--chat-template-kwarg", "enable_thinking=false"]),
    ("system", ["--chat", "--system", "ab ab"]),  # (the tiny vocabulary has no bytes for other letters)
    ("reasoning-budget", ["--reasoning-budget", "2"]),
    ("beams", ["--num-beams", "2", "--length-penalty", "0.8", "--no-repeat-ngram-size", "2", "--early-stopping"]),
    ("n", ["-n", "2"]),
    ("logprobs", ["--logprobs", "2", "--json"]),
    ("show-probs", ["--show-probs"]),
    ("preset", ["--preset", "precise"]),
    ("json-object", ["--json-object"]),
    ("regex", ["--regex", "[ab]+"]),
    ("choice", ["--choice", "ab", "--choice", "ba"]),
]


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    directory = tmp_path_factory.mktemp("matrix")
    rows = directory / "rows.jsonl"
    rows.write_text("\n".join(json.dumps({"id": i, "prompt": p}) for i, p in enumerate(["ab", "ba ab", "a"])) + "\n")
    prompts = directory / "prompts.txt"
    prompts.write_text("ab ba ab\nba ab\n")  # bench's built-in prompts are outside the tiny vocabulary
    return {"model": write_tiny_llama(directory / "tiny.gguf", seed=1), "prompts": prompts,
            "draft": write_tiny_llama(directory / "draft.gguf", seed=1, noise=0.1, noise_seed=2), "rows": rows}


def clean_or_refused(code: int, out: str, err: str) -> None:
    """Ran cleanly, or refused in one line that says why."""
    assert "Traceback" not in err and "Traceback" not in out, err
    if code == 0:
        return
    assert code == 2, (code, err)
    one_line_error(err)


def needs(flags: list[str]) -> None:
    if not CONSTRAINED and any(f in flags for f in ("--json-object", "--regex", "--choice")):
        pytest.skip("the constrained extra (llguidance) is not installed")


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("name,flags", OPTIONS, ids=[name for name, _ in OPTIONS])
def test_generate(capfd, files, engine: str, name: str, flags: list[str]) -> None:
    needs(flags)
    code, out, err = run(capfd, "generate", "-m", str(files["model"]), "--engine", engine, "--threads", "1",
                         "--seed", "1", "-N", "6", *flags, "ab ba")
    clean_or_refused(code, out, err)
    if name in ("dry", "chat-template-kwarg", "greedy", "temperature", "mirostat", "xtc"):
        assert code == 0, err  # these run on every engine: none may be refused


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("name,flags", OPTIONS, ids=[name for name, _ in OPTIONS])
def test_speculate(capfd, files, engine: str, name: str, flags: list[str]) -> None:
    needs(flags)
    draft = "ngram" if name != "greedy" else str(files["draft"])
    code, out, err = run(capfd, "speculate", "-m", str(files["model"]), "--engine", engine, "--draft-engine", engine,
                         "--threads", "1", "--draft", draft, "--gamma", "3", "--seed", "1", "-N", "6", *flags,
                         "ab ba ab ba")
    clean_or_refused(code, out, err)
    if name in ("dry", "chat-template-kwarg", "greedy", "temperature", "mirostat", "xtc"):
        assert code == 0, err


@pytest.mark.parametrize("engine", ENGINES)
def test_input_rows(capfd, files, engine: str) -> None:
    code, out, err = run(capfd, "generate", "-m", str(files["model"]), "--engine", engine, "--threads", "1",
                         "--input", str(files["rows"]), "--batch-size", "2", "--json", "--greedy", "-N", "4")
    clean_or_refused(code, out, err)
    assert code == 0 and len(out.splitlines()) == 3


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("argv", [
    ["inspect", "--top-k", "5", "--dry-multiplier", "0.8", "ab ba"],
    ["score", "ab ba ab"],
    ["audit", "--self", "-n", "60", "-k", "1", "--paths", "plain,batched", "--temperature", "1", "--top-p", "0.9",
     "ab ba"],
    ["bench", "-s", "plain,ngram", "-N", "4", "--runs", "1", "--prompts", "PROMPTS"],
], ids=["inspect", "score", "audit-self", "bench"])
def test_other_commands(capfd, files, engine: str, argv: list[str]) -> None:
    argv = [str(files["prompts"]) if a == "PROMPTS" else a for a in argv]
    code, out, err = run(capfd, argv[0], "-m", str(files["model"]), "--engine", engine, "--threads", "1", *argv[1:])
    clean_or_refused(code, out, err)
    assert code in (0, 1), err  # audit's 1 is a rejection, not a refusal


@pytest.mark.parametrize("engine", ENGINES)
def test_chat(capfd, files, engine: str, monkeypatch) -> None:
    code, out, err = run(capfd, "chat", "-m", str(files["model"]), "--engine", engine, "--threads", "1", "--greedy",
                         "-N", "4", "--chat-template-kwarg", "enable_thinking=false", "--dry-multiplier", "0.5",
                         stdin=b"ab\nba\n", monkeypatch=monkeypatch)
    clean_or_refused(code, out, err)
    assert code == 0, err


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("command", ["generate", "chat"])
def test_prompt_cache(capfd, files, engine: str, command: str, tmp_path: Path, monkeypatch) -> None:
    """--prompt-cache runs on each engine, and the second run reads the file (cached tokens in its stats)."""
    argv = [command, "-m", str(files["model"]), "--engine", engine, "--threads", "1", "--greedy", "-N", "4",
            "--json", "--prompt-cache", str(tmp_path / "p.kv")]
    for turn in range(2):
        if command == "chat":
            code, out, err = run(capfd, *argv, "--system", "ab ab ba", stdin=b"ab\n", monkeypatch=monkeypatch)
        else:
            code, out, err = run(capfd, *argv, "--raw", "ab ba ab ba ab ba")
        assert code == 0, err
        assert (json.loads(out.splitlines()[0])["stats"]["cached_tokens"] > 0) == (turn == 1)


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("draft", ["suffix", "cross"])
def test_new_drafts(capfd, files, engine: str, draft: str, tmp_path: Path) -> None:
    """--draft suffix (with its --draft-cache file) and a draft with another vocabulary (`small`, SmolLM2's)
    run on each engine and give generate --greedy's text."""
    flags = ["--draft", "suffix", "--draft-cache", str(tmp_path / "d.bin")] if draft == "suffix" else \
        ["--draft", "small", "--draft-engine", engine]
    common = ["-m", str(files["model"]), "--engine", engine, "--threads", "1", "--greedy", "-N", "6", "--raw"]
    code, want, err = run(capfd, "generate", *common, "ab ba ab ba")
    assert code == 0, err
    code, got, err = run(capfd, "speculate", *common, *flags, "ab ba ab ba")
    assert code == 0 and "Traceback" not in err, err
    assert got == want

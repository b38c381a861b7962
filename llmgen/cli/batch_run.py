"""`generate -n N` and `generate --input FILE`: batched decoding at the command line.

- `-n N` decodes the N samples as rows of one batch. On a terminal or a pipe they are shown in order:
  the first unfinished sample streams, the others wait in memory until their turn.
- `--input FILE` decodes many prompts, `--batch-size` at a time; a finished row's slot goes to the next
  prompt at once. Each row is written and flushed as soon as it (and, unless `--unordered`, every row
  before it) is done, so an interruption loses nothing already finished. A bad row becomes an error
  row; the others go on, and the exit code is 1 at the end.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Annotated, Any

import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

from llmgen.cli.options import OutputOptions, group, option
from llmgen.cli.output import Renderer, stderr_console
from llmgen.decoding.config import Resolved
from llmgen.errors import LlmgenError, UsageError
from llmgen.loading.hfutil import first_line

if TYPE_CHECKING:
    from llmgen import prompt_file
    from llmgen.decoding.batch import Decoder, Row
    from llmgen.decoding.logprobs import LogprobSpec, TokenLogprob
    from llmgen.decoding.sequence import SequenceResult
    from llmgen.loading.models import LoadedModel

PANEL = "Many prompts (--input)"
RECORD_SEPARATOR = "\x1e"
DEFAULT_BATCH_SIZE = 8  # as decoding.batch.DEFAULT_BATCH_SIZE, which imports torch (test_lazy_imports.py)


@dataclass(frozen=True)
class BatchOptions:
    input: str | None = None
    batch_size: int = DEFAULT_BATCH_SIZE
    unordered: bool = False
    null: bool = False
    resume: Path | None = None



BATCH = group(BatchOptions, [
    option("input", Annotated[str | None, typer.Option(
        "--input", "-i", metavar="FILE", rich_help_panel=PANEL, show_default="off",
        help="Decode every prompt of FILE ('-' = stdin): one prompt per line, or JSON Lines with \"prompt\" "
             "and optional \"id\", \"system\" and decoding keys as in presets (they override the command line "
             "for that row). Output: one row per prompt, in input order.")], None),
    option("batch_size", Annotated[int, typer.Option(
        "--batch-size", "-B", metavar="B", rich_help_panel=PANEL, min=1,
        help="Prompts decoded together; when one finishes, the next prompt takes its slot.")], DEFAULT_BATCH_SIZE),
    option("unordered", Annotated[bool, typer.Option(
        "--unordered", rich_help_panel=PANEL,
        help="Write each row as soon as it finishes, not in input order (rows carry their index with --json).")],
        False),
    option("null", Annotated[bool, typer.Option(
        "-0", "--null", rich_help_panel=PANEL,
        help="Text output: end each text with a NUL byte, instead of separating texts by a line holding "
             "only the record separator \\x1e.")], False),
    option("resume", Annotated[Path | None, typer.Option(
        "--resume", metavar="FILE", rich_help_panel=PANEL, show_default="off", dir_okay=False,
        help="Append JSON rows to FILE (JSON Lines) instead of stdout, skipping the prompts whose index is already "
             "there (an error row counts as done: delete it to retry).")], None),
])


class RowsFailed(LlmgenError):
    """Some rows of --input failed; their rows hold the error."""


# --- -n N ----------------------------------------------------------------------------------------

def sample_n(loaded: LoadedModel, ids: list[int], resolved: Resolved, renderer: Renderer,
             logprobs: LogprobSpec | None = None) -> list[SequenceResult]:
    """The `n` samples as one batch, rendered in sample order."""
    from llmgen.decoding import constraints
    from llmgen.decoding.batch import sample_rows

    config = resolved.config
    shown = InOrder(renderer, config.n)

    def done(row: Row, result: SequenceResult) -> None:
        result.stats["engine"] = loaded.engine.name
        shown.done(row, result)

    return sample_rows(loaded.engine.rows(config.n), ids, config, loaded.info, on_text=shown.text, on_done=done,
                       logprobs=logprobs, constraint=constraints.for_model(config, loaded))


class InOrder:
    """Shows rows that decode together one after another: the lowest unfinished row streams live."""

    def __init__(self, renderer: Renderer, total: int) -> None:
        self.renderer, self.total = renderer, total
        self.live = 0
        self.waiting: dict[int, list[tuple[str, TokenLogprob | None]]] = {}
        self.finished: dict[int, SequenceResult] = {}
        renderer.begin(0, total)

    def text(self, row: Row, piece: str) -> None:
        logprob = row.state.logprobs[-1] if row.state and row.state.logprobs else None  # the token that completed it
        if row.key == self.live:
            self.renderer.text(piece, "target", logprob)
        else:
            self.waiting.setdefault(row.key, []).append((piece, logprob))

    def done(self, row: Row, result: SequenceResult) -> None:
        from llmgen.decoding.constraints import warn_incomplete

        self.finished[row.key] = result
        while self.live in self.finished:
            self.renderer.end(self.finished.pop(self.live))
            self.live += 1
            if self.live < self.total:
                self.renderer.begin(self.live, self.total)
                for piece, logprob in self.waiting.pop(self.live, []):
                    self.renderer.text(piece, "target", logprob)
        warn_incomplete(row.config, result.finish_reason)


# --- --input FILE --------------------------------------------------------------------------------

def read_input(source: str) -> str:
    if source == "-":
        raw = sys.stdin.buffer.read() if hasattr(sys.stdin, "buffer") else sys.stdin.read().encode()
    else:
        try:
            raw = Path(source).read_bytes()
        except OSError as err:
            raise UsageError(f"--input {source}: {err.strerror or first_line(err)}") from None
    text = raw.decode("utf-8", errors="replace")
    if "\ufffd" in text and b"\xef\xbf\xbd" not in raw:
        print("llmgen: warning: --input is not valid UTF-8; invalid bytes were replaced with U+FFFD", file=sys.stderr)
    return text


def done_indices(path: Path) -> set[int]:
    """Indices of the rows already in a --resume file (lines that do not parse are ignored)."""
    if not path.exists():
        return set()
    done = set()
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        with contextlib.suppress(json.JSONDecodeError):
            obj = json.loads(line)
            if isinstance(obj, dict) and isinstance(obj.get("index"), int):
                done.add(obj["index"])
    return done


class RowWriter:
    """Writes finished rows to `stream`, flushed one by one: JSON lines, or text records."""

    def __init__(self, stream: IO[str] | None, json_mode: bool, null: bool, order: list[int] | None) -> None:
        self.file, self.json_mode, self.null = stream, json_mode, null  # None: sys.stdout at each write
        self.order, self.position = order, 0  # order: the indices in output order (None: as they come)
        self.held: dict[int, dict[str, object]] = {}
        self.written = 0

    def put(self, index: int, record: dict[str, object]) -> None:
        if self.order is None:
            self._write(record)
            return
        self.held[index] = record
        while self.position < len(self.order) and self.order[self.position] in self.held:
            self._write(self.held.pop(self.order[self.position]))
            self.position += 1

    def drain(self) -> None:
        """After an interruption: JSON rows finished out of turn are written too (they carry their index)."""
        if self.json_mode:
            for index in sorted(self.held):
                self._write(self.held.pop(index))

    @property
    def stream(self) -> IO[str]:
        # NOTE: looked up at each write: the progress bar redirects sys.stdout so that rows print above it.
        return sys.stdout if self.file is None else self.file

    def _write(self, record: dict[str, object]) -> None:
        if self.json_mode:
            self.stream.write(json.dumps(record, ensure_ascii=False) + "\n")
        else:
            text = str(record.get("text", ""))
            if self.null:
                self.stream.write(text + "\0")
            else:
                separator = f"{RECORD_SEPARATOR}\n" if self.written else ""
                self.stream.write(separator + text + ("" if text.endswith("\n") else "\n"))
        self.stream.flush()
        self.written += 1


Progressed = Callable[[int], None]  # called with the generated tokens of each finished row


@contextlib.contextmanager
def progress_bar(total: int) -> Iterator[Progressed]:
    """Prompts done/total, tokens/s and ETA on stderr; nothing unless stderr is a terminal."""
    console = stderr_console()
    if not console.is_terminal:
        yield lambda tokens: None
        return
    columns = (TextColumn("{task.completed}/{task.total} prompts"), BarColumn(),
               TextColumn("{task.fields[rate]} tok/s"), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task("prompts", total=total, rate="-")
        started, tokens_so_far = time.perf_counter(), 0

        def advance(tokens: int) -> None:
            nonlocal tokens_so_far
            tokens_so_far += tokens
            rate = tokens_so_far / max(time.perf_counter() - started, 1e-9)
            progress.update(task, advance=1, rate=f"{rate:.1f}")

        yield advance


# Decodes rows elsewhere (Ray actors, vLLM): reports each finished row to on_done, each failed one to on_error.


class InputRun:
    """One --input run's bookkeeping: rows written as they finish, the progress bar, the counts."""

    def __init__(self, jobs: list[prompt_file.Job], writer: RowWriter, advance: Progressed, quiet: bool) -> None:
        self.by_index = {job.index: job for job in jobs}
        self.writer, self.advance, self.quiet = writer, advance, quiet
        self.failed = 0
        self.tokens = 0

    def _head(self, index: int) -> dict[str, object]:
        job = self.by_index[index]
        return {"index": index} if job.id is None else {"index": index, "id": job.id}

    def fail(self, index: int, message: str) -> None:
        self.failed += 1
        if not self.quiet:
            print(f"llmgen: error: prompt {index} (line {index + 1}): {message}", file=sys.stderr, flush=True)
        self.writer.put(index, {**self._head(index), "error": message})
        self.advance(0)

    def done(self, row: Row, result: SequenceResult) -> None:
        from llmgen.decoding.constraints import warn_incomplete

        self.tokens += len(result.token_ids)
        self.writer.put(row.key, {**self._head(row.key), **result.as_json()})
        warn_incomplete(row.config, result.finish_reason)
        self.advance(len(result.token_ids))


INPUT_PREFIX_CACHE_BYTES = 512 * 2**20  # --input's prefix cache: KV copies of finished rows


def run_input(loaded: Any, resolved: Resolved, batch: BatchOptions, output: OutputOptions,
              logprobs: LogprobSpec | None = None, decoder: Decoder | None = None) -> None:
    """Decode every prompt of --input; raises RowsFailed at the end if any row failed.

    With a `decoder` (Ray actors, vLLM), the rows are decoded there instead of in this process, and
    `loaded` is the model's `ModelInfo`; reading, ordering, resuming and writing rows stay the same."""
    from llmgen import prompt_file
    from llmgen.decoding.admission import Prefill
    from llmgen.decoding.batch import decode_rows
    from llmgen.decoding.sequence import encode_prompt
    from llmgen.loading.engines.prefix import PrefixCache

    assert batch.input is not None, "run_input runs --input FILE"
    jobs = prompt_file.parse(read_input(batch.input), resolved.config)
    chat, system = output.chat, output.system
    encode_prompt(loaded, "x", chat, system)  # --chat without a template, --system without chat: exit 2 now
    resume: Path | None = batch.resume
    skip = done_indices(resume) if resume else set()
    jobs = [job for job in jobs if job.index not in skip]
    order = None if batch.unordered else [job.index for job in jobs]
    started = time.perf_counter()
    with contextlib.ExitStack() as stack:
        stream: IO[str] | None = None
        if resume:
            stream = stack.enter_context(_append(resume))
        writer = RowWriter(stream, json_mode=output.json or resume is not None, null=batch.null, order=order)
        run = InputRun(jobs, writer, stack.enter_context(progress_bar(len(jobs))), output.quiet)
        rows = prompt_file.job_rows(jobs, loaded, chat, system, logprobs, run.fail)
        try:
            if decoder is not None:
                decoder(rows, run.done, lambda row, why: run.fail(row.key, why))
            else:
                def local_done(row: Row, result: SequenceResult) -> None:
                    result.stats["engine"] = loaded.engine.name
                    run.done(row, result)

                # NOTE: prompts that share a beginning (a system prompt, a document) prefill it once: later rows
                # start from the cells of earlier or running ones (`decoding/admission.py`), exactly.
                prefill = Prefill(PrefixCache(INPUT_PREFIX_CACHE_BYTES), 0, loaded.engine)
                decode_rows(loaded.engine.rows(batch.batch_size), rows, loaded.info, batch_size=batch.batch_size,
                            on_done=local_done, prefill=prefill)
        finally:
            writer.drain()
    if not output.quiet:
        seconds = time.perf_counter() - started
        print(f"llmgen: {len(jobs)} prompts ({run.failed} failed), {run.tokens} tokens in {seconds:.1f} s, "
              f"{run.tokens / max(seconds, 1e-9):.1f} tok/s", file=sys.stderr, flush=True)
    if run.failed:
        raise RowsFailed(f"{run.failed} of {len(jobs)} prompts failed; their rows hold an \"error\" field")


@contextlib.contextmanager
def _append(path: Path) -> Iterator[IO[str]]:
    try:
        with open(path, "ab+") as raw:  # NOTE: a run killed mid-line left half a row; start on a fresh line
            if raw.seek(0, 2) > 0 and raw.seek(-1, 2) >= 0 and raw.read(1) != b"\n":
                raw.write(b"\n")
        handle = open(path, "a", encoding="utf-8")
    except OSError as err:
        raise UsageError(f"--resume {path}: {err.strerror or first_line(err)}") from None
    with handle:
        yield handle

"""`generate --input FILE --ray ADDRESS`: the prompts of a file sharded over Ray actors.

Each actor (`RowDecoder`) loads the model once and runs llmgen's own batched decoding on the chunks it
is given, with the same settings; nothing about decoding is new here. The driver keeps the file's
order, writes a row only when it is complete, and owns the retries:

- a chunk goes to an idle actor; its rows come back together when the chunk is done, so a row is
  reported exactly once or not at all;
- when an actor dies (its process killed, its node lost), its chunk goes back to the queue and a fresh
  actor takes its place; a chunk that has failed `retries + 1` times gets an `error` row per prompt.

A row travels as a `Task`: its prompt ids, its resolved settings and the *state* of its random
generator, so that a sampled row draws the same stream on any actor as it would locally. Constraint
matchers are rebuilt on the actor from the row's settings.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from llmgen.decoding.batch import Row, decode_rows
from llmgen.decoding.config import DecodingConfig
from llmgen.decoding.logprobs import LogprobSpec
from llmgen.decoding.sequence import SequenceResult
from llmgen.errors import UsageError

INSTALL = "pip install 'llmgen[ray]'"


@dataclass(frozen=True)
class Task:
    """One row, as it travels to an actor."""

    key: int
    prompt_ids: list[int]
    config: DecodingConfig
    generator_state: Tensor
    logprobs: LogprobSpec | None
    constrained: bool


def to_task(row: Row) -> Task:
    return Task(row.key, list(row.prompt_ids), row.config, row.generator.get_state(), row.logprobs,
                row.matcher is not None)


class RowDecoder:
    """The body of a Ray actor: one loaded model, llmgen's batched decoding over chunks of tasks."""

    def __init__(self, model: str, load_options: dict[str, Any], threads: int) -> None:
        from llmgen.loading import models

        torch.set_num_threads(threads)
        self.loaded = models.load(model, **load_options)

    def pid(self) -> int:
        return os.getpid()

    def decode(self, tasks: list[Task], batch_size: int) -> list[tuple[int, SequenceResult]]:
        from llmgen.decoding import constraints

        loaded = self.loaded
        rows = []
        for task in tasks:
            generator = torch.Generator(device=loaded.device)
            generator.set_state(task.generator_state)
            matcher = constraints.new_matcher(task.config, loaded) if task.constrained else None
            rows.append(Row(task.key, task.prompt_ids, task.config, generator, logprobs=task.logprobs,
                            matcher=matcher))
        done: list[tuple[int, SequenceResult]] = []
        decode_rows(loaded.engine.rows(), rows, loaded.info,
                    batch_size=batch_size, on_done=lambda row, result: done.append((row.key, result)))
        return done


def import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise UsageError(f"--ray needs Ray: {INSTALL}") from None
    return ray


def connect(ray: Any, address: str, actors: int) -> bool:
    """Start a local Ray instance ('local') or join one ('auto', 'ray://host:port'); True if we started it."""
    if address not in ("local", "auto") and not address.startswith("ray://"):
        raise UsageError(f"--ray {address!r}: use local, auto or ray://HOST:PORT")
    if ray.is_initialized():
        return False
    if address == "local":
        ray.init(num_cpus=actors, include_dashboard=False, log_to_driver=False, configure_logging=False)
        return True
    ray.init(address=address, log_to_driver=False, configure_logging=False)
    return True


def decode_on_ray(rows: Iterable[Row], *, model: str, load_options: dict[str, Any], address: str = "local",
                  actors: int = 2, threads: int = 1, batch_size: int = 8, chunk_size: int | None = None,
                  retries: int = 2, on_done: Callable[[Row, SequenceResult], None],
                  on_error: Callable[[Row, str], None], on_actors: Callable[[list[int]], None] | None = None) -> None:
    """Decode `rows` on `actors` Ray actors; report each finished row to `on_done` (exactly once), and
    each row of a chunk that failed `retries + 1` times to `on_error`."""
    ray = import_ray()
    if actors < 1 or threads < 1 or retries < 0:
        raise UsageError("--ray-actors and --ray-threads must be >= 1, --ray-retries >= 0")
    started = connect(ray, address, actors)
    chunk_size = chunk_size or batch_size
    try:
        actor_class = ray.remote(num_cpus=1 if address == "local" else threads)(RowDecoder)

        def new_actor() -> Any:
            return actor_class.remote(model, load_options, threads)

        pool = [new_actor() for _ in range(actors)]
        if on_actors is not None:
            on_actors(ray.get([actor.pid.remote() for actor in pool]))
        by_key: dict[int, Row] = {}
        queue: deque[tuple[list[Task], int]] = deque()
        chunk: list[Task] = []
        for row in rows:
            by_key[row.key] = row
            chunk.append(to_task(row))
            if len(chunk) == chunk_size:
                queue.append((chunk, 0))
                chunk = []
        if chunk:
            queue.append((chunk, 0))
        idle = list(range(actors))
        running: dict[Any, tuple[int, list[Task], int]] = {}  # result ref -> (actor slot, chunk, failures)
        while queue or running:
            while queue and idle:
                slot = idle.pop()
                tasks, failures = queue.popleft()
                running[pool[slot].decode.remote(tasks, batch_size)] = (slot, tasks, failures)
            ready, _ = ray.wait(list(running), num_returns=1)
            slot, tasks, failures = running.pop(ready[0])
            try:
                results = ray.get(ready[0])
            except (ray.exceptions.RayActorError, ray.exceptions.RayTaskError) as err:
                ray.kill(pool[slot], no_restart=True)
                pool[slot] = new_actor()  # NOTE: a dead actor is replaced; the chunk is retried elsewhere
                if failures + 1 > retries:
                    reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
                    for task in tasks:
                        on_error(by_key[task.key], f"failed on {failures + 1} actors: {reason}")
                else:
                    queue.append((tasks, failures + 1))
            else:
                for key, result in results:
                    on_done(by_key[key], result)
            idle.append(slot)
    finally:
        if started:
            ray.shutdown()

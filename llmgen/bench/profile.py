"""Where plain decoding's time goes: torch.profiler over a few decode steps.

The split that matters for a memory-bound decoder is

    wall time per step = time in the matrix kernels (aten::mm / addmm / linear / matmul)
                       + time in the other kernels (norms, rotary, attention, softmax, copies)
                       + the rest: Python, module dispatch, the cache, our processors and pick

`profile_plain` decodes `steps` tokens after a prompt (prefill excluded), and returns the per-step
wall time, the three shares above, and the top operators by self CPU time as a text table.
"""

from __future__ import annotations

import time
from typing import Any

from llmgen.decoding.config import DecodingConfig
from llmgen.decoding.generation import stream
from llmgen.decoding.sampling import make_generator
from llmgen.loading.models import LoadedModel

MATMUL_OPS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::matmul", "aten::linear", "aten::baddbmm")


def profile_plain(loaded: LoadedModel, prompt_ids: list[int], config: DecodingConfig, steps: int = 48,
                  rows: int = 20) -> dict[str, Any]:
    from torch.profiler import ProfilerActivity, profile

    tokens = iter(stream(loaded, prompt_ids, config, make_generator(0, loaded.device)))
    for _ in range(4):  # prefill and a few steps outside the profile
        next(tokens)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if loaded.device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        started = time.perf_counter()
        for _ in range(steps):
            next(tokens)
        wall = time.perf_counter() - started
    events = prof.key_averages()
    # Self times of top-level-ish ops sum to the time spent inside ATen; matmuls are leaves (mkl/blas).
    self_total = sum(e.self_cpu_time_total for e in events) / 1e6
    matmul = sum(e.self_cpu_time_total for e in events if e.key in MATMUL_OPS) / 1e6
    # NOTE: aten::linear/matmul are thin wrappers; their self time is small, their children carry it.
    table = events.table(sort_by="self_cpu_time_total", row_limit=rows, max_name_column_width=40)
    return {
        "steps": steps,
        "ms_per_step": 1000 * wall / steps,
        "tokens_per_second": steps / wall,
        "matmul_share": matmul / wall,
        "other_ops_share": (self_total - matmul) / wall,
        "outside_ops_share": max(0.0, 1 - self_total / wall),
        "table": table,
    }

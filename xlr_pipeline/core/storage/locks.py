"""One writer per lane: a lock file per dataset, held by a command for as long as it materializes that lane."""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path


@contextmanager
def exclusive_lanes(folder: Path, lanes: Sequence[str], announce: Callable[[str], None]) -> Iterator[None]:
    """Hold `folder/<lane>.lock` for each lane, waiting (and saying so) while another process holds one.

    Locks are taken in name order, so two commands over overlapping lanes queue instead of deadlocking; the
    operating system releases them when the holder exits, even on SIGKILL.
    """
    folder.mkdir(parents=True, exist_ok=True)
    with ExitStack() as stack:
        for lane in sorted(set(lanes)):
            handle = stack.enter_context(open(folder / f"{lane}.lock", "a+", encoding="utf-8"))
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.seek(0)
                announce(
                    f"waiting for another run on {lane} ({handle.read().strip() or 'unknown process'}) to finish ..."
                )
                fcntl.flock(handle, fcntl.LOCK_EX)
            handle.seek(0)
            handle.truncate()
            handle.write(f"pid {os.getpid()} since {time.strftime('%Y-%m-%d %H:%M:%S')}")
            handle.flush()
        yield

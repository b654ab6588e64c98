"""Many heads trained at once: one worker process per core given, one torch thread each.

A head is small: one training with two threads uses two cores poorly (measured on 2 cores: m3 6.0 s with two
threads, 8.4 s with one; InfoNCE 5.9 s either way), so single-threaded processes train more heads per second, and
a step given n cores never starts more than n threads.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import torch

from xlr_pipeline.core.experiments.grid import TrainingData, TrainingJob, train_job
from xlr_pipeline.core.training.head import ProjectionHead, TrainingResult

_Payload = tuple[dict[str, np.ndarray], list[float], int, int]
_worker_data: Mapping[tuple[str, str], TrainingData] = {}
_worker_alpha = 0.0


def _start_worker(data: Mapping[tuple[str, str], TrainingData], mixup_alpha: float) -> None:
    global _worker_data, _worker_alpha
    torch.set_num_threads(1)
    _worker_data, _worker_alpha = data, mixup_alpha


def _train_in_worker(job: TrainingJob) -> _Payload:
    result, rows = train_job(job, _worker_data[job.encoders], _worker_alpha)
    return (
        {name: tensor.numpy() for name, tensor in result.head.state_dict().items()},
        result.loss_history,
        result.steps,
        rows,
    )


def _rebuilt(job: TrainingJob, payload: _Payload) -> tuple[TrainingResult, int]:
    state, history, steps, rows = payload
    head = ProjectionHead(state["text_mean"].shape[0], state["image_mean"].shape[0], job.config)
    head.load_weights({name: torch.from_numpy(array) for name, array in state.items()})
    return TrainingResult(head.eval(), history, steps), rows


def train_heads(
    jobs: Sequence[TrainingJob], data: Mapping[tuple[str, str], TrainingData], mixup_alpha: float, processes: int
) -> Iterator[tuple[TrainingResult, int]]:
    """Each job's trained head and training rows, yielded in job order as they finish. With `processes` > 1 the
    jobs run in that many spawned workers (the data is sent once per worker), so the caller can evaluate one head
    while the next train; with 1, here, one after another. Training always uses one torch thread, so a job's
    result does not depend on `processes`."""
    if processes < 1:
        raise ValueError(f"processes must be >= 1, got {processes}")
    missing = sorted({job.encoders for job in jobs} - set(data))
    if missing:
        raise ValueError(f"no training data for encoder pairs {missing}; have {sorted(data)}")
    if processes == 1 or len(jobs) < 2:
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # as in a worker: the numbers do not depend on `processes`
        try:
            yield from (train_job(job, data[job.encoders], mixup_alpha) for job in jobs)
        finally:
            torch.set_num_threads(threads)
        return
    context = multiprocessing.get_context("spawn")  # fork after torch's thread pools have started can deadlock
    with ProcessPoolExecutor(
        min(processes, len(jobs)), mp_context=context, initializer=_start_worker, initargs=(data, mixup_alpha)
    ) as pool:
        for job, payload in zip(jobs, pool.map(_train_in_worker, jobs)):
            yield _rebuilt(job, payload)

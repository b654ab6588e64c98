"""Which Dagster executor runs a run's steps: chosen by XLR_EXECUTOR when the code location loads.

- `in_process` (default): the steps of a run one after another in the run's process (torch loads once; two
  heavy steps never compete for a laptop's cores; runs are limited by the instance's run queue).
- `multiprocess`: each step in its own process, up to the run config's `max_concurrent` (default: the cores).
- `dask`: each step as a task on a `dask.distributed` cluster (`dagster-dask`): a LocalCluster, or an existing
  scheduler's address, from the run config (`deploy/dask.yaml`).
- `celery` / `k8s`: each step as a Celery task or a Kubernetes Job (`dagster-celery`, `dagster-k8s`; install them
  beside this package; `deploy/celery.yaml`, `deploy/k8s.yaml`).
Every executor runs the same code location: nothing here is specific to one engine.
"""

from __future__ import annotations

import os

import dagster as dg

EXECUTOR_VARIABLE = "XLR_EXECUTOR"
EXECUTORS = {
    "in_process": ("dagster", "in_process_executor"),
    "multiprocess": ("dagster", "multiprocess_executor"),
    "dask": ("dagster_dask", "dask_executor"),
    "celery": ("dagster_celery", "celery_executor"),
    "k8s": ("dagster_k8s", "k8s_job_executor"),
}


def executor_named(name: str) -> dg.ExecutorDefinition:
    if name not in EXECUTORS:
        raise ValueError(f"{EXECUTOR_VARIABLE}={name!r} is not an executor; choose one of {sorted(EXECUTORS)}")
    module_name, attribute = EXECUTORS[name]
    try:
        module = __import__(module_name)
    except ImportError as error:
        package = module_name.replace("_", "-")
        raise ValueError(
            f"{EXECUTOR_VARIABLE}={name} needs the `{package}` package (pip install {package}=={_integration_version()})"
        ) from error
    return getattr(module, attribute)


def executor_from_environment() -> dg.ExecutorDefinition:
    return executor_named(os.environ.get(EXECUTOR_VARIABLE) or "in_process")


def _integration_version() -> str:
    """Dagster's integration libraries are versioned 0.<minor+16>.<patch> beside dagster 1.<minor>.<patch>."""
    major, minor, patch = dg.__version__.split(".")[:3]
    return f"0.{int(minor) + 16}.{patch}"

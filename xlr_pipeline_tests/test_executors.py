"""The same code location on another executor: steps as tasks of a real `dask.distributed` LocalCluster."""

import os
import shutil
import sys
from pathlib import Path

import dagster as dg
import numpy as np
import polars as pl
import pytest
import yaml

from xlr_pipeline.defs.executors import executor_named
from xlr_pipeline.runner import run_pipeline
from xlr_pipeline_tests.conftest import DATASET, location_job, outputs_for, pipeline_for

pytestmark = pytest.mark.slow  # runs on a Dask cluster

STAGES = ("images", "image_embedding_shards", "image_embeddings")
SHARDS, UNION = dg.AssetKey([DATASET, "image_embedding_shards"]), dg.AssetKey([DATASET, "image_embeddings"])


def dask_shards_job() -> dg.JobDefinition:
    return location_job("image_shards", SHARDS)


def dask_union_job() -> dg.JobDefinition:
    return location_job("image_union", UNION)


def test_image_shards_run_on_a_dask_local_cluster_with_the_vectors_of_an_in_process_run(
    tmp_path, subset_data_dir, monkeypatch
):
    in_process, on_dask = tmp_path / "in_process", tmp_path / "dask"
    for data_dir in (in_process, on_dask):
        shutil.copytree(subset_data_dir / DATASET, data_dir / DATASET)
        with open(data_dir / DATASET / "dataset.toml", "a", encoding="utf-8") as spec:
            spec.write("image_shards = 2\n")
    with dg.instance_for_test() as instance:
        run_pipeline(instance, pipeline_for(in_process), [DATASET], {}, stages=frozenset(STAGES), log=lambda _: None)

    monkeypatch.setenv("XLR_DATA_DIR", str(on_dask))
    monkeypatch.setenv("XLR_EXECUTOR", "dask")
    cluster = {"local": {"n_workers": 2, "threads_per_worker": 1, "processes": True, "dashboard_address": None}}
    run_config = {"execution": {"config": {"cluster": cluster}}}
    (tmp_path / "dagster_home").mkdir()  # Dask workers reach the run through a persistent instance
    environ = os.environ.copy()
    with dg.instance_for_test(temp_dir=str(tmp_path / "dagster_home")) as instance:
        run_pipeline(instance, pipeline_for(on_dask), [DATASET], {}, stages=frozenset({"images"}), log=lambda _: None)
        shards = pipeline_for(on_dask).lane(DATASET).shard_keys()
        try:
            results = [
                dg.execute_job(
                    dg.reconstructable(dask_shards_job),
                    instance,
                    run_config=run_config,
                    tags={"dagster/partition": shard},
                    raise_on_error=False,
                )
                for shard in shards
            ]
            results.append(
                dg.execute_job(
                    dg.reconstructable(dask_union_job), instance, run_config=run_config, raise_on_error=False
                )
            )
        finally:  # dask's nanny sets OMP_NUM_THREADS=1 & co in this process for its workers: later subprocesses must not inherit them
            os.environ.clear()
            os.environ.update(environ)
        for result in results:
            assert result.success, [event.message for event in result.all_events if event.is_failure]
        executed = [
            (event.asset_key.path[-1], event.partition)
            for result in results
            for event in result.get_asset_materialization_events()
        ]
        step_processes = {
            event.pid
            for result in results
            for event in result.all_events
            if event.event_type == dg.DagsterEventType.STEP_START
        }
    assert (
        executed == [("image_embedding_shards", shard) for shard in shards] + [("image_embeddings", None)]
        and len(shards) == 2
    )
    assert step_processes and os.getpid() not in step_processes  # the steps ran in the cluster's worker processes

    expected, actual = (pl.read_parquet(outputs_for(root).image_embeddings_path) for root in (in_process, on_dask))
    assert actual.height > 100 and actual.drop("vector").equals(expected.drop("vector"))
    assert np.array_equal(
        np.stack(actual["vector"].to_numpy()), np.stack(expected["vector"].to_numpy())
    )  # same shards, same batches


def test_an_unknown_or_missing_executor_is_refused_with_the_fix(monkeypatch):
    assert executor_named("multiprocess") is dg.multiprocess_executor
    with pytest.raises(
        ValueError,
        match=r"XLR_EXECUTOR='spark' is not an executor; choose one of \['celery', 'dask', 'in_process', 'k8s', 'multiprocess'\]",
    ):
        executor_named("spark")
    monkeypatch.setitem(sys.modules, "dagster_celery", None)  # as if it were not installed: import fails
    with pytest.raises(
        ValueError, match=r"needs the `dagster-celery` package \(pip install dagster-celery==0\.\d+\.\d+\)"
    ):
        executor_named("celery")


@pytest.mark.parametrize("executor", ["dask", "celery", "k8s"])
def test_the_shipped_executor_configurations_are_valid_run_config(executor, monkeypatch):
    """deploy/<executor>.yaml checked against the executor library's own config schema."""
    monkeypatch.setenv("XLR_CELERY_BROKER", "pyamqp://guest@localhost//")
    pytest.importorskip({"dask": "dagster_dask", "celery": "dagster_celery", "k8s": "dagster_k8s"}[executor])
    config = yaml.safe_load((Path(__file__).resolve().parents[1] / "deploy" / f"{executor}.yaml").read_text("utf-8"))

    @dg.op
    def step() -> None: ...

    @dg.job(executor_def=executor_named(executor))
    def one_step() -> None:
        step()

    dg.validate_run_config(one_step, config)
    broken = {"execution": {"config": {**config["execution"]["config"], "no_such_option": 1}}}
    with pytest.raises(dg.DagsterInvalidConfigError, match="no_such_option"):
        dg.validate_run_config(one_step, broken)

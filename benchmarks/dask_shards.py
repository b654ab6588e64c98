"""Benchmark: image shards as concurrent Dagster runs whose steps execute on a dask.distributed cluster
(`XLR_EXECUTOR=dask`, the `existing` cluster of deploy/dask.yaml), against one process on one core.

On the first N emoji_cldr images declared with two shards, an empty cache each time: the baseline embeds every
image as one shard in this process with one torch thread; then a 2-worker LocalCluster (one thread per worker)
runs the two shard runs, launched at once from two processes as a run queue would, and their union. Writes
benchmarks/results/dask_shards.{json,md}.

Usage: .venv/bin/python benchmarks/dask_shards.py [--images 800]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import dagster as dg
from embedding_stages import DATASET, copy_dataset, stage_seconds
from results_io import header, write_results

SHARD_KEY = dg.AssetKey([DATASET, "image_embedding_shards"])
UNION_KEY = dg.AssetKey([DATASET, "image_embeddings"])


def _location_job(name: str, key: dg.AssetKey) -> dg.JobDefinition:
    """The code location as `dagster` loads it (XLR_* variables) with a job of one asset; Dask workers rebuild it
    from this file's path and the function's name."""
    from xlr_pipeline.definitions import defs

    return dg.Definitions.merge(
        defs(), dg.Definitions(jobs=[dg.define_asset_job(name, selection=[key])])
    ).resolve_job_def(name)


def shard_job(shard: str) -> dg.JobDefinition:
    """A job named after its shard: dagster-dask keys a step's task by job name and step key, so two concurrent
    runs of one job on one cluster would share a task (the second run's step never executes)."""
    return _location_job(f"image_shard_{shard.replace('-', '_')}", SHARD_KEY)


def union_job() -> dg.JobDefinition:
    return _location_job("image_union", UNION_KEY)


def launch(job: str, address: str, shard: str | None) -> None:
    """One run on the cluster at `address` (this file run as a subprocess: one process per run, as a launcher does)."""
    run_config = {"execution": {"config": {"cluster": {"existing": {"address": address}}}}}
    here = Path(__file__).resolve()
    tags = {"dagster/partition": shard} if shard else {}
    function, arguments = ("shard_job", (shard,)) if job == "shards" else ("union_job", ())
    recon = dg.build_reconstructable_job(
        here.stem, function, arguments, reconstructor_working_directory=str(here.parent)
    )
    with dg.DagsterInstance.get() as instance:
        result = dg.execute_job(recon, instance, run_config=run_config, tags=tags, raise_on_error=False)
    if not result.success:
        raise SystemExit(
            f"{job} {shard or ''} failed: {[event.message for event in result.all_events if event.is_failure][:3]}"
        )


def on_dask(data_dir: Path) -> float:
    from dask.distributed import LocalCluster

    from xlr_pipeline.core.models.threads import available_cores
    from xlr_pipeline.defs.pipeline import build_pipeline
    from xlr_pipeline.defs.resources import XlrSettings
    from xlr_pipeline.runner import materialize_target, register_languages
    from xlr_pipeline.staleness import Target

    home = data_dir / "home"
    home.mkdir()
    # Each worker's steps get its share of the cores (XLR_STEP_THREADS), as `xlr run --workers 2` gives its runs.
    threads = str(max(1, available_cores() // 2))
    os.environ |= {
        "DAGSTER_HOME": str(home),
        "XLR_DATA_DIR": str(data_dir),
        "XLR_EXECUTOR": "dask",
        "XLR_STEP_THREADS": threads,
    }
    pipeline = build_pipeline(XlrSettings(data_dir=str(data_dir)))
    lane = pipeline.lane(DATASET)
    with dg.DagsterInstance.get() as instance:
        register_languages(instance, lane)
        materialize_target(instance, pipeline, Target(lane.key("images"), None), {}, "ERROR")
    environ = os.environ.copy()
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        os.environ.clear()
        os.environ.update(environ)  # the nanny sets OMP_NUM_THREADS=1 here for its workers; the runs set their own
        command = [sys.executable, __file__, "--launch"]
        began = time.perf_counter()
        runs = [subprocess.Popen([*command, "shards", cluster.scheduler_address, shard]) for shard in lane.shard_keys()]
        if any(run.wait() for run in runs):
            raise SystemExit("a shard run failed")
        subprocess.run([*command, "union", cluster.scheduler_address], check=True)
        return time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=800)
    parser.add_argument("--launch", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.launch:
        launch(*args.launch) if len(args.launch) == 3 else launch(args.launch[0], args.launch[1], None)
        return
    baseline = stage_seconds(
        copy_dataset(Path(tempfile.mkdtemp(prefix="xlr-bench-")), args.images, 1), "image", step_threads=1
    )
    print(f"baseline {baseline:.1f} s", flush=True)
    dask = on_dask(copy_dataset(Path(tempfile.mkdtemp(prefix="xlr-bench-")), args.images, 2))
    print(f"dask {dask:.1f} s", flush=True)
    rows = [
        {"measurement": "1 shard, 1 thread, in process", "seconds": round(baseline, 2)},
        {
            "measurement": "2 shards as 2 concurrent runs on a 2-worker Dask LocalCluster (1 thread each) + union",
            "seconds": round(dask, 2),
            "speed_vs_baseline": round(baseline / dask, 3),
        },
    ]
    result = {**header("dask_shards", DATASET), "images": args.images, "rows": rows}
    lines = [
        f"# Image shards on a Dask LocalCluster, first {args.images} emoji_cldr images ({result['date']}, {os.cpu_count()} CPUs, empty cache each)",
        "",
        "| measurement | wall time (s) | speed vs baseline |",
        "|---|---|---|",
        *[
            f"| {r['measurement']} | {r['seconds']:.1f} | "
            + (f"{r['speed_vs_baseline']:.2f}×" if "speed_vs_baseline" in r else "baseline")
            + " |"
            for r in rows
        ],
        "",
    ]
    write_results(result, lines)


if __name__ == "__main__":
    main()

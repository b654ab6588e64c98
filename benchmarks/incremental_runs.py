"""Benchmark: what incremental materialization saves on the shipped emoji_cldr dataset.

Measures, in one invocation on a temporary copy of the data (empty embedding cache, fresh Dagster
instance): a cold full run (10 languages), a no-op `--stale` run, the run after a new language's caption
file is dropped in, and the run after a head hyperparameter changes — as wall times and as ratios to the
cold run. Writes benchmarks/results/incremental_runs.{json,md}.

Usage: .venv/bin/python benchmarks/incremental_runs.py
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import dagster as dg
from results_io import emoji_copy_holding_back, header, write_results

from xlr_pipeline.defs.pipeline import build_pipeline
from xlr_pipeline.defs.resources import XlrSettings
from xlr_pipeline.defs.train import HeadTrainingConfig
from xlr_pipeline.runner import run_pipeline

NEW_LANGUAGE = "pl"


def timed(label: str, instance, pipeline, configs, include_stale: bool) -> dict:
    started = time.perf_counter()
    report = run_pipeline(
        instance,
        pipeline,
        ["emoji_cldr"],
        configs,
        include_stale=include_stale,
        log=lambda _: None,
        console_log_level="ERROR",
    )
    seconds = time.perf_counter() - started
    executed = [f"{asset}[{partition}]" if partition else asset for asset, partition, _ in report.executed]
    print(f"{label}: {seconds:.1f} s, {len(executed)} materializations")
    return {"step": label, "seconds": round(seconds, 2), "materializations": len(executed), "executed": executed}


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        data_dir, held_back, parked = emoji_copy_holding_back(Path(tmp), NEW_LANGUAGE)
        (Path(tmp) / "home").mkdir()
        pipeline = build_pipeline(XlrSettings(data_dir=str(data_dir)))
        default = {"projection_head": HeadTrainingConfig()}
        with dg.DagsterInstance.local_temp(tempdir=str(Path(tmp) / "home")) as instance:
            steps = [timed("cold full run (10 languages)", instance, pipeline, default, include_stale=False)]
            steps.append(timed("no-op run (--stale, nothing changed)", instance, pipeline, default, include_stale=True))
            parked.rename(held_back)
            steps.append(timed(f"new language file ({NEW_LANGUAGE})", instance, pipeline, default, include_stale=True))
            retrain = {"projection_head": HeadTrainingConfig(epochs=61)}
            steps.append(timed("head config change (epochs 60 → 61)", instance, pipeline, retrain, include_stale=True))
    cold = steps[0]["seconds"]
    for step in steps:
        step["ratio_to_cold"] = round(step["seconds"] / cold, 4)
    result = {**header("incremental_runs", "emoji_cldr"), "steps": steps}
    lines = [
        f"# Incremental runs on emoji_cldr ({result['date']}, {os.cpu_count()} CPUs)",
        "",
        "| step | wall time (s) | materializations | ratio to cold run |",
        "|---|---|---|---|",
        *[f"| {s['step']} | {s['seconds']:.1f} | {s['materializations']} | {s['ratio_to_cold']:.3f} |" for s in steps],
        "",
    ]
    write_results(result, lines)


if __name__ == "__main__":
    main()

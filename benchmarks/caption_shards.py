"""Benchmark: one language's caption embeddings as one step vs as caption shards run side by side by the
multiprocess executor (`caption_shards = 2`), each step given one core.

The language is a large English caption set made from every shipped emoji_cldr caption file (all 11 languages'
names as English rows, the first N kept), embedded from an empty cache in each measurement, in one invocation:
- one step, one thread (the baseline: one process given one core);
- one step, every core (torch's and BLAS's own threads);
- 2 caption shards, 2 step processes of one thread each (multiprocess executor), and their union.
Each is a whole `text_embeddings[en]` run through the code location as `dagster` loads it (XLR_* variables), in
a fresh interpreter (Dagster caches a reconstructed job per process), so the shard processes' start-up
(imports, encoder load) is counted. Writes benchmarks/results/caption_shards.{json,md}.

Usage: .venv/bin/python benchmarks/caption_shards.py [--captions 6000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import dagster as dg
import polars as pl
from results_io import header, write_results

from xlr_pipeline.core.models.threads import available_cores
from xlr_pipeline.core.training.choices import DEFAULT_TEXT_MODEL
from xlr_pipeline.defs.pipeline import build_pipeline
from xlr_pipeline.defs.resources import DEFAULT_DATA_DIR, XlrSettings
from xlr_pipeline.runner import materialize_target, register_languages
from xlr_pipeline.staleness import Target

DATASET = "emoji_cldr"
TEXT_EMBEDDINGS = dg.AssetKey([DATASET, "text_embeddings"])


def text_embeddings_job() -> dg.JobDefinition:
    """The code location's `text_embeddings`, as the executor's step processes reconstruct it."""
    from xlr_pipeline.definitions import defs

    job = dg.define_asset_job("text_embeddings", selection=[TEXT_EMBEDDINGS])
    return dg.Definitions.merge(defs(), dg.Definitions(jobs=[job])).resolve_job_def("text_embeddings")


def large_english_dataset(target: Path, captions: int, shards: int) -> Path:
    """emoji_cldr with one English file of `captions` rows: every language's names, as English captions."""
    source = DEFAULT_DATA_DIR / DATASET
    dataset = target / DATASET
    shutil.copytree(source, dataset, ignore=shutil.ignore_patterns("images", "captions"))
    (dataset / "captions").mkdir()
    frames = [
        pl.read_csv(path, separator="\t", quote_char=None, infer_schema=False)
        for path in sorted((source / "captions").glob("*.tsv"))
    ]
    pl.concat(frames).head(captions).write_csv(dataset / "captions" / "en.tsv", separator="\t", quote_style="never")
    with open(dataset / "dataset.toml", "a", encoding="utf-8") as spec:
        spec.write(f"caption_shards = {shards}\n")
    return target


def step_timeline(instance: dg.DagsterInstance, run_id: str) -> list[dict]:
    """Per step, from the run's event log: seconds from the executor launching its process (STEP_WORKER_STARTING;
    in-process: its start) to its start (process start-up, imports, loading the code location) and from its start
    to its success (the step's work)."""
    launched, started, succeeded = {}, {}, {}
    for entry in instance.all_logs(run_id):
        event = entry.dagster_event
        if event is None or event.step_key is None:
            continue
        if event.event_type == dg.DagsterEventType.STEP_WORKER_STARTING:
            launched[event.step_key] = entry.timestamp
        elif event.is_step_start:
            started[event.step_key] = entry.timestamp
        elif event.is_step_success:
            succeeded[event.step_key] = entry.timestamp
    return [
        {
            "step": step.split(".", 1)[-1],
            "before_start_s": round(started[step] - launched.get(step, started[step]), 2),
            "step_s": round(succeeded[step] - started[step], 2),
        }
        for step in sorted(started, key=started.get)
    ]


def stage_seconds(captions: int, shards: int, executor: str, step_threads: int) -> tuple[float, int, list[dict]]:
    """Wall time of one `text_embeddings[en]` run (captions materialized first, not timed), how many captions it
    wrote, and its steps' timeline."""
    data_dir = large_english_dataset(Path(tempfile.mkdtemp(prefix="xlr-bench-")), captions, shards)
    os.environ |= {"XLR_DATA_DIR": str(data_dir), "XLR_EXECUTOR": executor, "XLR_STEP_THREADS": str(step_threads)}
    pipeline = build_pipeline(XlrSettings(data_dir=str(data_dir), step_threads=step_threads))
    lane = pipeline.lane(DATASET)
    (data_dir / "home").mkdir()
    with dg.DagsterInstance.local_temp(tempdir=str(data_dir / "home")) as instance:
        register_languages(instance, lane)
        materialize_target(instance, pipeline, Target(lane.key("captions"), "en"), {}, "ERROR")
        began = time.perf_counter()
        result = dg.execute_job(dg.reconstructable(text_embeddings_job), instance, tags={"dagster/partition": "en"})
        seconds = time.perf_counter() - began
        assert result.success
        timeline = step_timeline(instance, result.run_id)
    return seconds, pl.read_parquet(pipeline.settings.outputs(DATASET).text_embeddings_path("en")).height, timeline


def measured_in_fresh_interpreter(
    captions: int, shards: int, executor: str, step_threads: int
) -> tuple[float, int, list[dict]]:
    command = [sys.executable, __file__, "--measure", str(captions), str(shards), executor, str(step_threads)]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    seconds, count, timeline = json.loads(done.stdout.strip().splitlines()[-1])
    return seconds, count, timeline


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--captions", type=int, default=6000, help="English captions to embed (default 6000)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of every configuration (default 3)")
    parser.add_argument(
        "--measure", nargs=4, metavar=("CAPTIONS", "SHARDS", "EXECUTOR", "THREADS"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.measure:  # one measurement, in this fresh interpreter
        captions, shards, executor, threads = args.measure
        print(json.dumps(stage_seconds(int(captions), int(shards), executor, int(threads))))
        return
    cores = available_cores()
    measured_in_fresh_interpreter(200, 1, "in_process", 1)  # untimed warm-up: the encoder's weights read once from disk
    baseline = "1 step, 1 thread (one process given one core)"
    configurations = [
        (baseline, 1, "in_process", 1),
        ("1 step, every core", 1, "in_process", 0),
        ("2 caption shards, 2 step processes of 1 thread (multiprocess executor) + union", 2, "multiprocess", 1),
    ]
    # Rounds of every configuration in turn, so a slow spell of this shared machine hits each one alike; the
    # table gives the median and each round's ratio to that round's baseline.
    runs: dict[str, list[tuple[float, int, list[dict]]]] = {name: [] for name, *_ in configurations}
    for _ in range(args.rounds):
        for name, shards, executor, threads in configurations:
            runs[name].append(measured_in_fresh_interpreter(args.captions, shards, executor, threads))
            print(name, runs[name][-1][:2], flush=True)
    rows = []
    for name, *_ in configurations:
        seconds = [run[0] for run in runs[name]]
        ratios = [base[0] / run[0] for base, run in zip(runs[baseline], runs[name])]
        rows.append(
            {
                "measurement": name,
                "seconds": round(statistics.median(seconds), 2),
                "seconds_each_round": [round(x, 2) for x in seconds],
                "captions": runs[name][0][1],
                "captions_per_s": round(runs[name][0][1] / statistics.median(seconds), 1),
                "speed_vs_baseline": round(
                    statistics.median(runs[baseline][i][0] for i in range(args.rounds)) / statistics.median(seconds), 3
                ),
                "speed_each_round": [round(x, 3) for x in ratios],
                "steps": runs[name][-1][2],
            }
        )
    result = {
        **header("caption_shards", DATASET),
        "text_model": DEFAULT_TEXT_MODEL,
        "cores": cores,
        "captions": args.captions,
        "rounds": args.rounds,
        "rows": rows,
    }
    lines = [
        f"# Caption shards: text_embeddings[en] of {args.captions} captions ({result['date']}, {cores} cores, {DEFAULT_TEXT_MODEL}, empty cache each)",
        "",
        f"| measurement | median wall time (s) of {args.rounds} rounds | each round (s) | captions/s | speed vs baseline (each round's) |",
        "|---|---|---|---|---|",
        *[
            f"| {r['measurement']} | {r['seconds']:.1f} | {', '.join(f'{x:.1f}' for x in r['seconds_each_round'])} | {r['captions_per_s']:.1f} | "
            + (
                f"{r['speed_vs_baseline']:.2f}× ({', '.join(f'{x:.2f}' for x in r['speed_each_round'])})"
                if r["measurement"] != baseline
                else "baseline"
            )
            + " |"
            for r in rows
        ],
        "",
        "Steps of each configuration's last run (from its event log): seconds from the executor launching a step to its start (for a step",
        "process: interpreter start-up, imports, loading the code location), and the step's own time (loading the",
        "encoder, reading, encoding, writing).",
        "",
        "| measurement | step | before start (s) | step (s) |",
        "|---|---|---|---|",
        *[
            f"| {r['measurement']} | {step['step']} | {step['before_start_s']:.1f} | {step['step_s']:.1f} |"
            for r in rows
            for step in r["steps"]
        ],
        "",
    ]
    write_results(result, lines)


if __name__ == "__main__":
    main()

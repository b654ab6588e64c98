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

Usage: .venv/bin/python benchmarks/caption_shards.py [--captions 6000]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import dagster as dg
import polars as pl

from xlr_pipeline.core.choices import DEFAULT_TEXT_MODEL
from xlr_pipeline.core.threads import available_cores
from xlr_pipeline.defs.resources import DEFAULT_DATA_DIR, XlrSettings
from xlr_pipeline.defs.lanes import build_pipeline
from xlr_pipeline.runner import materialize_target, register_languages
from xlr_pipeline.staleness import Target
from results_io import header, write_results

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


def stage_seconds(captions: int, shards: int, executor: str, step_threads: int) -> tuple[float, int]:
    """Wall time of one `text_embeddings[en]` run (captions materialized first, not timed) and how many captions it wrote."""
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
    return seconds, pl.read_parquet(pipeline.settings.outputs(DATASET).text_embeddings_path("en")).height


def measured_in_fresh_interpreter(captions: int, shards: int, executor: str, step_threads: int) -> tuple[float, int]:
    command = [sys.executable, __file__, "--measure", str(captions), str(shards), executor, str(step_threads)]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    seconds, count = json.loads(done.stdout.strip().splitlines()[-1])
    return seconds, count


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--captions", type=int, default=6000, help="English captions to embed (default 6000)")
    parser.add_argument("--measure", nargs=4, metavar=("CAPTIONS", "SHARDS", "EXECUTOR", "THREADS"), help=argparse.SUPPRESS)
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
    rows = []
    for name, shards, executor, threads in configurations:
        seconds, count = measured_in_fresh_interpreter(args.captions, shards, executor, threads)
        row = {"measurement": name, "seconds": round(seconds, 2), "captions": count, "captions_per_s": round(count / seconds, 1)}
        row["speed_vs_baseline"] = round(rows[0]["seconds"] / seconds, 3) if rows else 1.0
        rows.append(row)
        print(row, flush=True)
    result = {**header("caption_shards", DATASET), "text_model": DEFAULT_TEXT_MODEL, "cores": cores, "captions": args.captions, "rows": rows}
    lines = [
        f"# Caption shards: text_embeddings[en] of {args.captions} captions ({result['date']}, {cores} cores, {DEFAULT_TEXT_MODEL}, empty cache each)",
        "",
        "| measurement | wall time (s) | captions/s | speed vs baseline |",
        "|---|---|---|---|",
        *[
            f"| {r['measurement']} | {r['seconds']:.1f} | {r['captions_per_s']:.1f} | "
            + (f"{r['speed_vs_baseline']:.2f}×" if r["measurement"] != baseline else "baseline") + " |"
            for r in rows
        ],
        "",
    ]
    write_results(result, lines)


if __name__ == "__main__":
    main()

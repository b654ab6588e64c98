"""Benchmark: peak memory of `xlr tag` as the number of images grows (it decodes and encodes a batch at a time).

Builds a tagger on a copy of 190 emoji_cldr images (chain + `tags`, seed 0), then runs `xlr tag` as a fresh
process on 50 and on 500 shipped PNGs (English tags) and reads each process's peak RSS. The 50-image run is the
baseline in the same invocation: flat memory means a ratio near 1 (the previous command held every decoded
image and the whole batch's activations at once: 9.2 GB for 500 PNGs, issue 28).
Writes benchmarks/results/tag_memory.{json,md}.

Usage: .venv/bin/python benchmarks/tag_memory.py
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import dagster as dg
from results_io import header, write_results

from xlr_pipeline.core.storage.outputs import DEFAULT_DATA_DIR
from xlr_pipeline.defs.pipeline import build_pipeline
from xlr_pipeline.defs.resources import XlrSettings
from xlr_pipeline.runner import run_pipeline
from xlr_pipeline_tests.conftest import DATASET, make_emoji_subset

COUNTS = (50, 500)


def tag_run(data_dir: Path, images: list[str], scratch: Path) -> dict:
    """`xlr tag` in a child process, waited for with wait4 so that its own peak RSS is read (KiB on Linux)."""
    command = [sys.executable, "-m", "xlr_pipeline.cli", "tag", *images, "--lang", "en", "--top", "5"]
    command += ["--data-dir", str(data_dir), "--dataset", DATASET]
    out, err = scratch / "tag.out", scratch / "tag.err"
    started = time.perf_counter()
    with out.open("w") as stdout, err.open("w") as stderr:
        child = subprocess.Popen(command, stdout=stdout, stderr=stderr)
        _, status, usage = os.wait4(child.pid, 0)
    seconds = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"xlr tag failed: {err.read_text()[-2000:]}")
    assert len(out.read_text().strip().splitlines()) == len(images)
    return {"images": len(images), "seconds": round(seconds, 1), "peak_rss_mib": round(usage.ru_maxrss / 1024, 1)}


def main() -> None:
    images = sorted(str(path) for path in (DEFAULT_DATA_DIR / "emoji_cldr" / "images").glob("*.png"))[: max(COUNTS)]
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp) / "data"
        make_emoji_subset(data_dir, n_train=120, n_test=40, n_val=30)
        with dg.instance_for_test() as instance:
            pipeline = build_pipeline(XlrSettings(data_dir=str(data_dir)))
            run_pipeline(
                instance,
                pipeline,
                [DATASET],
                {},
                stages=pipeline.stage_assets("run") | {"tags"},
                log=lambda _: None,
            )
        rows = [tag_run(data_dir, images[:count], Path(tmp)) for count in COUNTS]
    rows[1]["rss_vs_50_images"] = round(rows[1]["peak_rss_mib"] / rows[0]["peak_rss_mib"], 2)
    result = {**header("tag_memory", "emoji_cldr"), "rows": rows}
    lines = [
        f"# `xlr tag` peak memory ({result['date']}, {result['machine']['cpus']} CPUs)",
        "",
        "Each run a fresh process on N shipped 64-px PNGs, English tags, batches of 32 (`image_batch_size`). "
        "Goal: memory that does not grow with N.",
        "",
        "| images | wall time (s) | peak RSS (MiB) | vs 50 images |",
        "|---|---|---|---|",
        *(
            f"| {row['images']} | {row['seconds']} | {row['peak_rss_mib']} | {row.get('rss_vs_50_images', 'baseline')} |"
            for row in rows
        ),
        "",
    ]
    write_results(result, lines)


if __name__ == "__main__":
    main()

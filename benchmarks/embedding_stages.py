"""Benchmark: the embedding stages against a bare loop over the same encoder, shards in one vs two processes,
and what 1M images × 100 languages would cost from the measured per-item costs.

Each measurement starts from an empty embedding cache on a temporary copy of the first N images of the shipped
emoji_cldr dataset (every caption language kept), in one invocation, on this machine:
- bare image loop: load the encoder, decode + encode every image in batches of 32 (the stage's batch size);
- image stage: `image_embedding_shards` (one shard) + `image_embeddings` through Dagster, as `xlr run` runs them,
  with and without the decode pool;
- shards: two shards as one process after the other (each with every core) vs two concurrent processes
  (`--workers 2`, half the cores each);
- bare text loop vs `text_embeddings[en]` (the training language: every split's captions).
Writes benchmarks/results/embedding_stages.{json,md}.

Usage: .venv/bin/python benchmarks/embedding_stages.py [--images 800] [--profile-text]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import dagster as dg
import polars as pl
from results_io import RESULTS, header, write_results

from xlr_pipeline.core.models.encoders import load_image, load_image_encoder, load_text_encoder
from xlr_pipeline.core.models.threads import available_cores, limited_threads
from xlr_pipeline.defs.pipeline import build_pipeline
from xlr_pipeline.defs.resources import DEFAULT_DATA_DIR, XlrSettings
from xlr_pipeline.runner import materialize_concurrently, materialize_target, register_languages
from xlr_pipeline.staleness import Target

DATASET = "emoji_cldr"
# A named cluster for the estimate: 16 on-demand AWS c7i.4xlarge nodes (16 vCPU each), us-east-1 list price.
CLUSTER = {
    "name": "16 × AWS c7i.4xlarge (16 vCPU, 32 GiB)",
    "nodes": 16,
    "cores_per_node": 16,
    "usd_per_node_hour": 0.714,
}


def copy_dataset(target: Path, images: int, shards: int) -> Path:
    """The first `images` images of emoji_cldr's image list, every caption file, declared with `shards` shards."""
    source = DEFAULT_DATA_DIR / DATASET
    dataset = target / DATASET
    shutil.copytree(source, dataset, ignore=shutil.ignore_patterns("images"))
    split = pl.read_csv(source / "split.csv", infer_schema=False).head(images)
    split.write_csv(dataset / "split.csv")
    (dataset / "images").mkdir()
    for image_id in split["image_id"]:
        shutil.copyfile(source / "images" / f"{image_id}.png", dataset / "images" / f"{image_id}.png")
    declaration = dataset / "dataset.toml"
    keys, table_start, tables = declaration.read_text("utf-8").partition("\n[")  # a top-level key goes before tables
    declaration.write_text(f"{keys.rstrip()}\nimage_shards = {shards}\n{table_start}{tables}", "utf-8")
    return target


def lane_models(data_dir: Path) -> tuple[str, str]:
    """The (text, image) models the lane's stages embed with: its `[defaults]`, else the project's defaults; the
    bare loops must run the same models for the ratios to mean anything."""
    settings = XlrSettings(data_dir=str(data_dir))
    lane_settings = build_pipeline(settings).lane(DATASET).settings(settings)
    return lane_settings.text_model, lane_settings.image_model


def bare_image_loop(data_dir: Path, image_model: str) -> tuple[float, int]:
    paths = sorted((data_dir / DATASET / "images").glob("*.png"))
    started = time.perf_counter()
    encoder = load_image_encoder(image_model)
    with limited_threads(0):
        for start in range(0, len(paths), 32):
            encoder.encode([load_image(path) for path in paths[start : start + 32]])
    return time.perf_counter() - started, len(paths)


def bare_text_loop(data_dir: Path, text_model: str) -> tuple[float, int]:
    """The captions the stage embeds: English (the training language: every split) of the listed images."""
    listed = pl.read_csv(data_dir / DATASET / "split.csv", infer_schema=False)["image_id"]
    captions = pl.read_csv(
        data_dir / DATASET / "captions" / "en.tsv", separator="\t", quote_char=None, infer_schema=False
    )
    captions = captions.filter(pl.col("image_id").is_in(listed.implode()))["caption"].to_list()
    started = time.perf_counter()
    encoder = load_text_encoder(text_model)
    with limited_threads(0):
        for start in range(0, len(captions), 64):
            encoder.encode(captions[start : start + 64])
    return time.perf_counter() - started, len(captions)


def stage_seconds(data_dir: Path, side: str, workers: int = 1, **settings) -> float:
    """Wall time of one side's embedding stage through Dagster (its inputs materialized first, not timed): the
    image shards (concurrently with `workers` > 1) and their union, or `text_embeddings[en]`."""
    pipeline = build_pipeline(XlrSettings(data_dir=str(data_dir), **settings))
    lane = pipeline.lane(DATASET)
    (data_dir / "home").mkdir()
    with dg.DagsterInstance.local_temp(tempdir=str(data_dir / "home")) as instance:
        register_languages(instance, lane)
        if side == "text":
            materialize_target(instance, pipeline, Target(lane.key("captions"), "en"), {}, "ERROR")
            began = time.perf_counter()
            materialize_target(instance, pipeline, Target(lane.key("text_embeddings"), "en"), {}, "ERROR")
            return time.perf_counter() - began
        materialize_target(instance, pipeline, Target(lane.key("images"), None), {}, "ERROR")
        shards = [
            Target(lane.key("image_embedding_shards"), shard if lane.shards else None) for shard in lane.shard_keys()
        ]
        began = time.perf_counter()
        if workers > 1:
            materialize_concurrently(instance, pipeline, shards, workers, "ERROR")
        else:
            for shard in shards:
                materialize_target(instance, pipeline, shard, {}, "ERROR")
        materialize_target(instance, pipeline, Target(lane.key("image_embeddings"), None), {}, "ERROR")
        return time.perf_counter() - began


BARE_IMAGES = "bare image loop: decode + encode, batches of 32"
ONE_THREAD = "1 shard, 1 thread (one process given one core)"
TWO_SHARDS_SEQUENTIAL = "2 shards, one run after the other (every core each)"


def measure(images: int) -> list[dict]:
    rows: list[dict] = []

    def fresh(shards: int = 1) -> Path:
        return copy_dataset(Path(tempfile.mkdtemp(prefix="xlr-bench-")), images, shards)

    def record(name: str, seconds: float, items: int, unit: str, baseline: str | None = None) -> None:
        row = {
            "measurement": name,
            "seconds": round(seconds, 2),
            "items": items,
            "unit": unit,
            "items_per_s": round(items / seconds, 2),
        }
        if baseline is not None:
            row |= {
                "baseline": baseline,
                "speed_vs_baseline": round(
                    next(r for r in rows if r["measurement"] == baseline)["seconds"] / seconds, 3
                ),
            }
        rows.append(row)
        print(row, flush=True)

    # Text first, before anything loads torch (the text encoder is numpy-only). Untimed warm-up: each encoder's
    # weights read once and one Dagster run made, so no measurement pays the process's one-time imports (those
    # are in benchmarks/whole_commands.py).
    text_model, image_model = lane_models(fresh())  # resolved once, before any clock: it builds the whole pipeline
    load_text_encoder(text_model)
    stage_seconds(fresh(), "text")
    seconds, captions = bare_text_loop(fresh(), text_model)
    record("bare text loop: en captions, batches of 64", seconds, captions, "captions")
    record(
        "text stage: text_embeddings[en]",
        stage_seconds(fresh(), "text"),
        captions,
        "captions",
        "bare text loop: en captions, batches of 64",
    )
    load_image_encoder(image_model)
    seconds, count = bare_image_loop(fresh(), image_model)
    record(BARE_IMAGES, seconds, count, "images")
    record(
        "image stage (shard + union), decoding in the encoding thread",
        stage_seconds(fresh(), "image", decode_workers=0),
        count,
        "images",
        BARE_IMAGES,
    )
    record(
        "image stage, 2 decode threads ahead of the encoder",
        stage_seconds(fresh(), "image", decode_workers=2),
        count,
        "images",
        BARE_IMAGES,
    )
    record(ONE_THREAD, stage_seconds(fresh(), "image", step_threads=1), count, "images")
    record(TWO_SHARDS_SEQUENTIAL, stage_seconds(fresh(2), "image"), count, "images", ONE_THREAD)
    concurrent = "2 shards, 2 concurrent runs (--workers 2, half the cores each)"
    record(concurrent, stage_seconds(fresh(2), "image", workers=2), count, "images", ONE_THREAD)
    record(
        concurrent + " (again, against the sequential run)",
        stage_seconds(fresh(2), "image", workers=2),
        count,
        "images",
        TWO_SHARDS_SEQUENTIAL,
    )
    return rows


def estimate(rows: list[dict], cores: int) -> dict:
    """Time and cost of 1M images and 100 languages × 1M captions on `CLUSTER`, from this machine's measured
    throughput per core (the image stage on one thread; the text stage on every core, divided by them), assuming
    each core of the cluster does as much, with shards and languages spread over the nodes. The images here are
    64-px PNGs: large JPEGs (COCO) add their decoding."""
    image_rate = next(row["items_per_s"] for row in rows if row["measurement"] == ONE_THREAD)
    text_rate = max(row["items_per_s"] for row in rows if row["measurement"].startswith("text stage")) / cores
    cluster_cores = CLUSTER["nodes"] * CLUSTER["cores_per_node"]
    image_hours = 1_000_000 / (image_rate * cluster_cores) / 3600
    text_hours = 100 * 1_000_000 / (text_rate * cluster_cores) / 3600
    hours = image_hours + text_hours
    return {
        "cluster": CLUSTER["name"],
        "images_per_core_s": round(image_rate, 2),
        "captions_per_core_s": round(text_rate, 2),
        "image_hours": round(image_hours, 2),
        "text_hours": round(text_hours, 2),
        "usd": round(hours * CLUSTER["nodes"] * CLUSTER["usd_per_node_hour"], 0),
    }


def profile_text_stage(images: int) -> None:
    """Where the text stage's time goes beyond the bare loop's (the gap in the table)."""
    from pyinstrument import Profiler

    def fresh() -> Path:
        return copy_dataset(Path(tempfile.mkdtemp(prefix="xlr-bench-")), images, 1)

    load_text_encoder(lane_models(fresh())[0])
    stage_seconds(fresh(), "text")  # the same untimed warm-up as the table's
    with Profiler() as profiler:
        stage_seconds(fresh(), "text")
    (RESULTS / "text_stage_profile.txt").write_text(profiler.output_text(unicode=True, show_all=False), "utf-8")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=800, help="first N images of emoji_cldr (default 800)")
    parser.add_argument(
        "--profile-text",
        action="store_true",
        help="only profile the text stage (pyinstrument) → results/text_stage_profile.txt",
    )
    args = parser.parse_args()
    if args.profile_text:
        profile_text_stage(args.images)
        return
    cores = available_cores()
    rows = measure(args.images)
    cost = estimate(rows, cores)
    result = {
        **header("embedding_stages", DATASET),
        "images": args.images,
        "cores": cores,
        "rows": rows,
        "estimate_1m_images_100_languages": cost,
    }
    lines = [
        f"# Embedding stages on the first {args.images} emoji_cldr images ({result['date']}, {cores} cores, empty cache each)",
        "",
        "| measurement | wall time (s) | items | items/s | speed vs baseline |",
        "|---|---|---|---|---|",
        *[
            f"| {r['measurement']} | {r['seconds']:.1f} | {r['items']} {r['unit']} | {r['items_per_s']:.1f} | "
            + (f"{r['speed_vs_baseline']:.2f}× ({r['baseline']})" if "baseline" in r else "baseline")
            + " |"
            for r in rows
        ],
        "",
        f"Estimate for 1M images and 100 languages × 1M captions on {cost['cluster']}, from {cost['images_per_core_s']} images/s "
        f"and {cost['captions_per_core_s']} captions/s per core measured here: image stage {cost['image_hours']} h, text stage "
        f"{cost['text_hours']} h, about ${cost['usd']:.0f} on demand (assumes throughput per core as measured, shards and "
        "languages spread evenly over the nodes, the cache empty; 64-px PNGs here, so large JPEGs add their decoding; excludes "
        "download and head training).",
        "",
    ]
    write_results(result, lines)


if __name__ == "__main__":
    main()

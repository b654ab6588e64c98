"""Benchmark: exact evaluation (first-correct ranks of N caption queries against N images) at N = 1K, 10K, 100K.

Each measurement runs in a fresh subprocess so its peak RSS is its own. The baseline, in the same invocation,
is the previous evaluation: a FAISS flat index searched for the full ranking of every query (memory
1024 × N ids and scores per batch); it is run up to `--baseline-max` (at 100K one batch holds 1.2 GB and the
run takes minutes). Vectors: synthetic, 256-d (the head's output), L2-normalised, one caption per image.
Writes benchmarks/results/evaluation_memory.{json,md}.

Usage: .venv/bin/python benchmarks/evaluation_memory.py [--sizes 1000 10000 100000] [--baseline-max 10000]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import numpy as np
from results_io import header, write_results

DIM = 256


def previous_ranks(gallery: np.ndarray, queries: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """The previous evaluation's algorithm (the baseline): the full FAISS ranking of each query batch."""
    from xlr_pipeline.core.scoring.index import flat_ip_index

    index = flat_ip_index(gallery)
    ranks = np.zeros(len(queries), dtype=np.int64)
    for start in range(0, len(queries), 1024):
        _, neighbours = index.search(queries[start : start + 1024], index.ntotal)
        correct = labels[neighbours] == labels[start : start + 1024, None]
        ranks[start : start + len(neighbours)] = np.where(correct.any(axis=1), correct.argmax(axis=1) + 1, 0)
    return ranks


def child(size: int, method: str) -> None:
    """One measurement, printed as JSON (run in its own process)."""
    from xlr_pipeline.core.scoring.metrics import first_correct_ranks

    rng = np.random.default_rng(0)
    gallery = rng.normal(size=(size, DIM)).astype(np.float32)
    gallery /= np.linalg.norm(gallery, axis=1, keepdims=True)
    queries = gallery + 0.8 * rng.normal(size=gallery.shape).astype(np.float32) / np.sqrt(DIM)
    labels = np.arange(size)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    ranks = (
        first_correct_ranks(gallery, queries, labels, labels)
        if method == "chunked"
        else previous_ranks(gallery, queries, labels)
    )
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(
        json.dumps(
            {
                "seconds": seconds,
                "peak_rss_mb": peak / 1024,
                "rss_before_mb": before / 1024,
                "r1": float(np.mean(ranks == 1)),
                "checksum": int(ranks.sum()),
            }
        )
    )


def measure(size: int, method: str) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--child", str(size), method], capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000, 10_000, 100_000])
    parser.add_argument("--baseline-max", type=int, default=10_000)
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(int(args.child[0]), args.child[1])
        return
    rows = []
    for size in args.sizes:
        chunked = measure(size, "chunked")
        previous = measure(size, "previous") if size <= args.baseline_max else None
        if previous is not None and previous["checksum"] != chunked["checksum"]:
            raise SystemExit(f"N={size}: the chunked ranks differ from the full ranking's")
        row = {"n": size, "chunked": chunked, "previous": previous}
        print(row)
        rows.append(row)
    result = {**header("evaluation_memory", f"synthetic {DIM}-d unit vectors, N captions × N images"), "rows": rows}

    def cell(value: dict | None, key: str, fmt: str) -> str:
        return format(value[key], fmt) if value else "not run"

    lines = [
        f"# Exact evaluation at scale ({result['date']}, {result['machine']['cpus']} CPUs)",
        "",
        "Text→image first-correct ranks of N queries against N gallery items; peak RSS of the measuring process "
        "(including the vectors: 2 × N × 1 KB). Baseline: the previous full FAISS ranking per query batch, same run, "
        "identical ranks checked.",
        "",
        "| N | chunked (s) | chunked peak RSS (MB) | previous (s) | previous peak RSS (MB) | time ratio (previous / chunked) |",
        "|---|---|---|---|---|---|",
        *[
            f"| {r['n']:,} | {r['chunked']['seconds']:.2f} | {r['chunked']['peak_rss_mb']:.0f} | {cell(r['previous'], 'seconds', '.2f')} | "
            f"{cell(r['previous'], 'peak_rss_mb', '.0f')} | {format(r['previous']['seconds'] / r['chunked']['seconds'], '.1f') + '×' if r['previous'] else '–'} |"
            for r in rows
        ],
        "",
    ]
    write_results(result, lines)


if __name__ == "__main__":
    main()

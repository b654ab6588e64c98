"""Benchmark: embedding-cache lookups as the cache grows (10K, 100K, 1M cached vectors of 384 floats).

Measures, in one invocation, the store in use (`EmbeddingCache`: one SQLite file per model, keyed by content
hash) against the previous store it replaced (one Parquet file per encoded batch of 64, every lookup reading
all of them), on the same synthetic vectors: the time to look up 10K cached hashes, the time to fill the store,
and its size on disk. The baseline's lookup is the previous code's algorithm, kept here only as the baseline.
Writes benchmarks/results/embedding_store.{json,md}.

Usage: .venv/bin/python benchmarks/embedding_store.py [--sizes 10000 100000 1000000]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl
from results_io import header, write_results

from xlr_pipeline.core.models.embeddings import EmbeddingCache

DIM = 384
LOOKUPS = 10_000
PREVIOUS_BATCH = 64  # the text encoder's batch: the previous store wrote one file per encoded batch


def previous_store_fill(folder: Path, hashes: list[str], vectors: np.ndarray) -> None:
    folder.mkdir(parents=True)
    schema = {"content_hash": pl.String, "vector": pl.Array(pl.Float32, DIM)}
    for start in range(0, len(hashes), PREVIOUS_BATCH):
        pl.DataFrame(
            {"content_hash": hashes[start : start + PREVIOUS_BATCH], "vector": vectors[start : start + PREVIOUS_BATCH]},
            schema=schema,
        ).write_parquet(folder / f"{start:09d}.parquet")


def previous_store_lookup(folder: Path, hashes: list[str]) -> dict[str, np.ndarray]:
    wanted = pl.DataFrame({"content_hash": list(set(hashes))})
    found = (
        pl.concat([pl.read_parquet(shard) for shard in sorted(folder.glob("*.parquet"))])
        .unique("content_hash")
        .join(wanted, on="content_hash")
    )
    return dict(zip(found["content_hash"].to_list(), found["vector"].to_numpy()))


def size_on_disk(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def measure(size: int, root: Path, rng: np.random.Generator) -> dict:
    hashes = [f"{i:064x}" for i in rng.permutation(size)]
    vectors = rng.normal(size=(size, DIM)).astype(np.float32)
    asked = [hashes[i] for i in rng.choice(size, LOOKUPS, replace=False)]
    expected = {h: vectors[i] for i, h in enumerate(hashes)}

    cache = EmbeddingCache(root / "store", f"bench:{size}", "bench-engine")
    started = time.perf_counter()
    for start in range(0, size, 10_000):
        cache.add(hashes[start : start + 10_000], vectors[start : start + 10_000])
    fill = time.perf_counter() - started
    started = time.perf_counter()
    found = cache.lookup(asked)
    lookup = time.perf_counter() - started
    assert len(found) == LOOKUPS and all(np.array_equal(found[h], expected[h]) for h in asked[:100])

    folder = root / "previous" / str(size)
    started = time.perf_counter()
    previous_store_fill(folder, hashes, vectors)
    previous_fill = time.perf_counter() - started
    started = time.perf_counter()
    previous = previous_store_lookup(folder, asked)
    previous_lookup = time.perf_counter() - started
    assert len(previous) == LOOKUPS
    row = {
        "cached_vectors": size,
        "lookup_s": round(lookup, 3),
        "previous_lookup_s": round(previous_lookup, 3),
        "speedup": round(previous_lookup / lookup, 1),
        "fill_s": round(fill, 2),
        "previous_fill_s": round(previous_fill, 2),
        "files": len(store_files := list(cache.path.parent.glob(cache.path.name + "*"))),  # the file (+ WAL while open)
        "previous_files": (size + PREVIOUS_BATCH - 1) // PREVIOUS_BATCH,
        "mb_on_disk": round(sum(p.stat().st_size for p in store_files) / 1e6, 1),
        "previous_mb_on_disk": round(size_on_disk(folder) / 1e6, 1),
    }
    print(row)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        rows = [measure(size, Path(tmp) / str(size), rng) for size in args.sizes]
    result = {**header("embedding_store", "synthetic 384-d float32 vectors"), "lookups": LOOKUPS, "rows": rows}
    lines = [
        f"# Embedding-cache lookups ({result['date']}, {result['machine']['cpus']} CPUs)",
        "",
        f"{LOOKUPS:,} lookups of cached hashes; the previous store (one Parquet file per batch of {PREVIOUS_BATCH}) is the baseline, "
        "measured in the same run. Goal: ≤ 1 s for 10K lookups at 1M cached.",
        "",
        "| cached vectors | lookup (s) | previous store lookup (s) | speed-up | fill (s) | previous fill (s) | files (previous) | MB on disk (previous) |",
        "|---|---|---|---|---|---|---|---|",
        *[
            f"| {r['cached_vectors']:,} | {r['lookup_s']} | {r['previous_lookup_s']} | {r['speedup']}× | {r['fill_s']} | {r['previous_fill_s']} | "
            f"{r['files']} ({r['previous_files']:,}) | {r['mb_on_disk']} ({r['previous_mb_on_disk']}) |"
            for r in rows
        ],
        "",
    ]
    write_results(result, lines)


if __name__ == "__main__":
    main()

"""Benchmark: the image index at 100K and 1M vectors — exact (flat) vs HNSW as `build_index` makes it past its
threshold: build time, query time, memory (serialised size), recall@10 against exact.

Vectors: synthetic, 256-d (the head's output), L2-normalised, drawn around 2,000 centres (real embeddings are
clustered; uniformly random vectors in 256-d have no near neighbours and are the worst case for any ANN
index); queries: 1,000 fresh draws from the same mixture. The exact index is the baseline in the same run.
Writes benchmarks/results/ann_index.{json,md}.

Usage: .venv/bin/python benchmarks/ann_index.py [--sizes 100000 1000000]
"""

from __future__ import annotations

import argparse
import time

import faiss
import numpy as np

from results_io import header, write_results
from xlr_pipeline.core.index import IndexPlan, build_index, flat_ip_index

DIM, CENTRES, QUERIES, K = 256, 2_000, 1_000, 10


def mixture(rng: np.random.Generator, centres: np.ndarray, n: int) -> np.ndarray:
    vectors = centres[rng.integers(0, len(centres), n)] + 0.5 * rng.normal(size=(n, DIM)).astype(np.float32) / np.sqrt(DIM)  # noise of norm ≈ 0.5
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def timed_search(index: faiss.Index, queries: np.ndarray) -> tuple[np.ndarray, float]:
    started = time.perf_counter()
    _, found = index.search(queries, K)
    return found, time.perf_counter() - started


def measure(size: int, rng: np.random.Generator, centres: np.ndarray) -> dict:
    vectors = mixture(rng, centres, size).astype(np.float32)
    queries = mixture(rng, centres, QUERIES).astype(np.float32)
    started = time.perf_counter()
    exact = flat_ip_index(vectors)
    exact_build = time.perf_counter() - started
    truth, exact_query = timed_search(exact, queries)
    plan = IndexPlan(exact_up_to=size - 1)
    started = time.perf_counter()
    hnsw = build_index(vectors, plan)
    hnsw_build = time.perf_counter() - started
    found, hnsw_query = timed_search(hnsw, queries)
    recall = float(np.mean([len(set(a) & set(b)) / K for a, b in zip(truth.tolist(), found.tolist())]))
    row = {
        "n": size,
        "exact_build_s": round(exact_build, 2),
        "exact_query_s": round(exact_query, 3),
        "hnsw_build_s": round(hnsw_build, 1),
        "hnsw_query_s": round(hnsw_query, 4),
        "query_speedup": round(exact_query / hnsw_query, 1),
        "recall_at_10": round(recall, 4),
        "exact_mb": round(faiss.serialize_index(exact).nbytes / 1e6, 1),
        "hnsw_mb": round(faiss.serialize_index(hnsw).nbytes / 1e6, 1),
        "plan": plan.__dict__,
    }
    print(row)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(CENTRES, DIM)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    rows = [measure(size, rng, centres) for size in args.sizes]
    result = {**header("ann_index", f"synthetic {DIM}-d unit vectors around {CENTRES} centres"), "queries": QUERIES, "threads": faiss.omp_get_max_threads(), "rows": rows}
    lines = [
        f"# Image index: exact vs HNSW ({result['date']}, {result['machine']['cpus']} CPUs, {result['threads']} FAISS threads)",
        "",
        f"{QUERIES:,} queries, top-{K}; HNSW with `IndexPlan` defaults (M = {rows[0]['plan']['hnsw_neighbours']}, efConstruction = "
        f"{rows[0]['plan']['ef_construction']}, efSearch = {rows[0]['plan']['ef_search']}). Goal: recall@10 ≥ 0.95 at ≥ 10× query speed at 1M.",
        "",
        "| N | exact build (s) | exact query (s) | HNSW build (s) | HNSW query (s) | query speed-up | recall@10 vs exact | exact MB | HNSW MB |",
        "|---|---|---|---|---|---|---|---|---|",
        *[
            f"| {r['n']:,} | {r['exact_build_s']} | {r['exact_query_s']} | {r['hnsw_build_s']} | {r['hnsw_query_s']} | {r['query_speedup']}× | "
            f"{r['recall_at_10']} | {r['exact_mb']} | {r['hnsw_mb']} |"
            for r in rows
        ],
        "",
    ]
    write_results(result, lines)


if __name__ == "__main__":
    main()

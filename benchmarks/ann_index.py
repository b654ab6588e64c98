"""Benchmark: the image index at 100K and 1M vectors — exact (flat) vs IVF and HNSW as `build_index` makes them
past its threshold: build time, query time, memory (serialised size), recall@10 against exact.

Vectors: synthetic, 256-d (the head's output), L2-normalised, drawn around 2,000 centres (real embeddings are
clustered; uniformly random vectors in 256-d have no near neighbours and are the worst case for any ANN
index); queries: 1,000 fresh draws from the same mixture. The exact index is the baseline in the same run.
Writes benchmarks/results/ann_index.{json,md}.

Usage: .venv/bin/python benchmarks/ann_index.py [--sizes 100000 1000000] [--hnsw-up-to 100000]
"""

from __future__ import annotations

import argparse
import time

import faiss
import numpy as np
from results_io import header, write_results

from xlr_pipeline.core.scoring.index import IndexPlan, build_index, flat_ip_index

DIM, CENTRES, QUERIES, K = 256, 2_000, 1_000, 10


def mixture(rng: np.random.Generator, centres: np.ndarray, n: int) -> np.ndarray:
    vectors = centres[rng.integers(0, len(centres), n)] + 0.5 * rng.normal(size=(n, DIM)).astype(np.float32) / np.sqrt(
        DIM
    )  # noise of norm ≈ 0.5
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def timed_search(index: faiss.Index, queries: np.ndarray) -> tuple[np.ndarray, float]:
    started = time.perf_counter()
    _, found = index.search(queries, K)
    return found, time.perf_counter() - started


def approximate_row(
    vectors: np.ndarray, queries: np.ndarray, truth: np.ndarray, exact_query: float, plan: IndexPlan
) -> dict:
    started = time.perf_counter()
    index = build_index(vectors, plan)
    build = time.perf_counter() - started
    found, query = timed_search(index, queries)
    recall = float(np.mean([len(set(a) & set(b)) / K for a, b in zip(truth.tolist(), found.tolist())]))
    return {
        "kind": plan.approximate,
        "build_s": round(build, 1),
        "query_s": round(query, 4),
        "query_speedup": round(exact_query / query, 1),
        "recall_at_10": round(recall, 4),
        "mb": round(faiss.serialize_index(index).nbytes / 1e6, 1),
        "plan": plan.__dict__,
    }


def measure(size: int, rng: np.random.Generator, centres: np.ndarray, hnsw_up_to: int) -> dict:
    vectors = mixture(rng, centres, size).astype(np.float32)
    queries = mixture(rng, centres, QUERIES).astype(np.float32)
    started = time.perf_counter()
    exact = flat_ip_index(vectors)
    exact_build = time.perf_counter() - started
    truth, exact_query = timed_search(exact, queries)
    kinds = ("ivf", "hnsw") if size <= hnsw_up_to else ("ivf",)
    row = {
        "n": size,
        "exact_build_s": round(exact_build, 2),
        "exact_query_s": round(exact_query, 3),
        "exact_mb": round(faiss.serialize_index(exact).nbytes / 1e6, 1),
        "approximate": [
            approximate_row(vectors, queries, truth, exact_query, IndexPlan(exact_up_to=size - 1, approximate=kind))
            for kind in kinds
        ],
    }
    print(row, flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument(
        "--hnsw-up-to", type=int, default=100_000, help="build HNSW only up to this size (its build is slow)"
    )
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(CENTRES, DIM)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    rows = [measure(size, rng, centres, args.hnsw_up_to) for size in args.sizes]
    result = {
        **header("ann_index", f"synthetic {DIM}-d unit vectors around {CENTRES} centres"),
        "queries": QUERIES,
        "threads": faiss.omp_get_max_threads(),
        "rows": rows,
    }
    plan = IndexPlan()
    lines = [
        f"# Image index: exact vs IVF vs HNSW ({result['date']}, {result['machine']['cpus']} CPUs, {result['threads']} FAISS threads)",
        "",
        f"{QUERIES:,} queries, top-{K}, `IndexPlan` defaults: IVF with 4·√n cells, {plan.ivf_probe} searched, k-means on 64 "
        f"points per cell; HNSW M = {plan.hnsw_neighbours}, efConstruction = {plan.ef_construction}, efSearch = {plan.ef_search} "
        f"(built up to {args.hnsw_up_to:,} only). Goal: recall@10 ≥ 0.95 at ≥ 10× query speed at 1M.",
        "",
        "| N | exact build (s) | exact query (s) | exact MB | index | build (s) | query (s) | query speed-up | recall@10 vs exact | MB |",
        "|---|---|---|---|---|---|---|---|---|---|",
        *[
            f"| {r['n']:,} | {r['exact_build_s']} | {r['exact_query_s']} | {r['exact_mb']} | {a['kind']} | {a['build_s']} | {a['query_s']} | "
            f"{a['query_speedup']}× | {a['recall_at_10']} | {a['mb']} |"
            for r in rows
            for a in r["approximate"]
        ],
        "",
    ]
    write_results(result, lines)


if __name__ == "__main__":
    main()

"""Benchmark: end-to-end search latency over HTTP, and the index search alone at 1M vectors.

- `xlr serve` (uvicorn, one process) on 127.0.0.1 over a materialized emoji_cldr lane with the default encoders;
  1,000 distinct test captions of every language as queries (`GET /api/search`, k = 10) from 8 concurrent
  clients, after 20 warm-up queries. Latency is the client's wall time per request; the server's own split of
  each answer into text encoding and index search (`timings_ms`) gives their shares.
- The FAISS index alone: 1,000,000 synthetic unit vectors of the lane's dimension in the default IVF plan
  (`IndexPlan`: 4·√n cells, 32 searched), 1,000 single-query searches (k = 10), as the service calls it.
Goals (issue 25): HTTP p50 ≤ 50 ms, p95 ≤ 150 ms, 0 errors; index alone at 1M p50 ≤ 20 ms.
Writes benchmarks/results/search_latency.{json,md}.

Usage: .venv/bin/xlr run  (once, to build the lane), then .venv/bin/python benchmarks/search_latency.py [--data-dir D]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import polars as pl
from results_io import RESULTS, header, write_results

from xlr_pipeline.core.models.threads import available_cores
from xlr_pipeline.core.scoring.index import IndexPlan, build_index
from xlr_pipeline.core.storage.outputs import DEFAULT_DATA_DIR, DatasetOutputs

DATASET = "emoji_cldr"
QUERIES, CLIENTS, WARM_UP, K = 1_000, 8, 20, 10
SYNTHETIC = 1_000_000


def percentiles(values_ms: list[float]) -> dict:
    return {f"p{p}": round(float(np.percentile(values_ms, p)), 1) for p in (50, 95, 99)}


def test_queries(outputs: DatasetOutputs) -> list[tuple[str, str]]:
    """Distinct (language, caption) test queries of every language, a seeded sample of QUERIES."""
    frames = [
        pl.read_parquet(path).filter(pl.col("split") == "test").select(pl.lit(path.stem).alias("language"), "caption")
        for path in sorted(outputs.captions_path("en").parent.glob("*.parquet"))
        if path.name.count(".") == 1
    ]
    queries = pl.concat(frames).unique(maintain_order=True)
    return list(queries.sample(QUERIES, seed=0, shuffle=True).iter_rows())


def serve(data_dir: Path, port: int, log: Path) -> subprocess.Popen:
    environment = {**os.environ, "XLR_DATA_DIR": str(data_dir)}
    command = [sys.executable, "-m", "xlr_pipeline.cli", "serve", "--port", str(port), "--dataset", DATASET]
    process = subprocess.Popen(
        command, env=environment, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/api/datasets", timeout=5).status_code == 200:
                return process
        except httpx.TransportError:
            time.sleep(0.5)
    process.kill()
    raise SystemExit(f"xlr serve did not start; see {log}")


def http_latency(data_dir: Path, queries: list[tuple[str, str]], text_model: str) -> list[dict]:
    """One server; a single client first (service time without queueing), then CLIENTS concurrent clients."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = serve(data_dir, port, Path("/tmp/xlr_search_latency_serve.log"))
    base = f"http://127.0.0.1:{port}/api/search?dataset={DATASET}&k={K}"
    try:
        for language, caption in queries[:WARM_UP]:
            httpx.get(f"{base}&lang={language}&q={urllib.parse.quote(caption)}", timeout=60)
        rows = [load_round(base, queries[: QUERIES // 5], 1), load_round(base, queries, CLIENTS)]
        return [{**row, "text_model": text_model} for row in rows]
    finally:
        process.terminate()
        process.wait(30)


def load_round(base: str, queries: list[tuple[str, str]], concurrency: int) -> dict:
    clients = [httpx.Client(timeout=60) for _ in range(concurrency)]

    def ask(item: tuple[int, tuple[str, str]]) -> tuple[float, dict | None]:
        number, (language, caption) = item
        started = time.perf_counter()
        try:
            response = clients[number % concurrency].get(f"{base}&lang={language}&q={urllib.parse.quote(caption)}")
            body = response.json() if response.status_code == 200 else None
        except httpx.HTTPError:
            body = None
        return 1e3 * (time.perf_counter() - started), body

    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        answers = list(pool.map(ask, enumerate(queries)))
    wall = time.perf_counter() - started
    for client in clients:
        client.close()
    latencies = [ms for ms, _ in answers]
    served = [body for _, body in answers if body is not None]
    encode = sum(body["timings_ms"]["encode"] for body in served)
    search = sum(body["timings_ms"]["search"] for body in served)
    return {
        "queries": len(queries),
        "clients": concurrency,
        "errors": len(answers) - len(served),
        "wall_s": round(wall, 1),
        "queries_per_s": round(len(queries) / wall, 1),
        **percentiles(latencies),
        "text_encoding_share": round(encode / sum(latencies), 3),
        "index_search_share": round(search / sum(latencies), 4),
        "server_encode_ms_mean": round(encode / len(served), 1),
        "server_search_ms_mean": round(search / len(served), 2),
        "index_type": served[0]["index_type"],
        "head_run_id": served[0]["head_run_id"],
    }


def index_alone(dim: int) -> dict:
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((SYNTHETIC, dim), dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    started = time.perf_counter()
    index = build_index(vectors, IndexPlan(exact_up_to=1))
    build = time.perf_counter() - started
    queries = vectors[rng.choice(SYNTHETIC, QUERIES, replace=False)] + 0.1 * rng.standard_normal(
        (QUERIES, dim), dtype=np.float32
    )
    latencies = []
    for query in queries:
        started = time.perf_counter()
        index.search(query[None, :], K)
        latencies.append(1e3 * (time.perf_counter() - started))
    return {
        "vectors": SYNTHETIC,
        "dim": dim,
        "index_type": type(index).__name__,
        "lists": index.nlist,
        "probe": index.nprobe,
        "build_s": round(build, 1),
        **{key: round(value, 2) for key, value in percentiles(latencies).items()},
    }


def markdown(result: dict) -> list[str]:
    alone, first = result["index_alone"], result["http"][0]
    lines = [
        f"# Search latency ({result['date']}, {result['cores']} cores)",
        "",
        f"`xlr serve` (one uvicorn process) over the materialized {DATASET} lane ({first['index_type']}), distinct test "
        f"captions of every language as queries, k = {K}, clients on the same machine (127.0.0.1). Each query is "
        "encoded alone (no batching across requests, so an answer never depends on what else is asked).",
        "Goals: p50 ≤ 50 ms, p95 ≤ 150 ms, 0 errors with 8 clients; index alone at 1M p50 ≤ 20 ms.",
        "",
        "| measurement | text encoder | queries | clients | p50 (ms) | p95 (ms) | p99 (ms) | errors | queries/s | "
        "text encoding (ms/query, share) | index search (ms/query, share) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in result["http"]:
        lines.append(
            f"| HTTP `GET /api/search` | `{row['text_model']}` | {row['queries']:,} | {row['clients']} | {row['p50']} | {row['p95']} | "
            f"{row['p99']} | {row['errors']} | {row['queries_per_s']} | {row['server_encode_ms_mean']} ({100 * row['text_encoding_share']:.1f} %) | "
            f"{row['server_search_ms_mean']} ({100 * row['index_search_share']:.2f} %) |"
        )
    lines += [
        f"| index alone ({alone['index_type']}, {alone['lists']} cells, {alone['probe']} searched; built in {alone['build_s']} s) | | "
        f"{alone['vectors']:,} × {alone['dim']} | 1 | {alone['p50']} | {alone['p95']} | {alone['p99']} | | | | |",
        "",
        "With 8 clients the text encoding time includes the wait for the encoder, which serves one query at a time "
        "with every core.",
        "",
    ]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument(
        "--data-dir", type=Path, default=DEFAULT_DATA_DIR, help="data dir whose emoji_cldr lane `xlr run` built"
    )
    parser.add_argument(
        "--append", action="store_true", help="keep the HTTP rows of the last result (another text encoder's lane)"
    )
    args = parser.parse_args()
    outputs = DatasetOutputs(args.data_dir.resolve() / "outputs" / DATASET)
    if not outputs.index_path.is_file():
        raise SystemExit(f"no image index under {outputs.root}: run `xlr run` first")
    import faiss

    from xlr_pipeline.core.training.head import head_from_bytes

    text_model = head_from_bytes(outputs.head_path.read_bytes())[1]["text_model"]
    dim = faiss.read_index(str(outputs.index_path)).d
    http = http_latency(args.data_dir.resolve(), test_queries(outputs), text_model)
    if args.append:
        http = json.loads((RESULTS / "search_latency.json").read_text())["http"] + http
    result = {
        **header("search_latency", DATASET),
        "cores": available_cores(),
        "http": http,
        "index_alone": index_alone(dim),
    }
    write_results(result, markdown(result))


if __name__ == "__main__":
    main()

"""The image index: exact (FAISS flat inner product) up to a configurable size, HNSW past it; saved atomically.

Evaluation never reads the index (its ranks are exact, `core/metrics.py`): the index is what serves queries,
and when it is approximate its recall@k against the exact search is measured and recorded where it is built.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np

from xlr_pipeline.core.storage import write_with_atomic


@dataclass(frozen=True)
class IndexPlan:
    exact_up_to: int = 100_000  # flat search up to this many vectors: exact and fast enough below it
    hnsw_neighbours: int = 32  # HNSW graph degree (M)
    ef_construction: int = 200
    ef_search: int = 128

    def __post_init__(self) -> None:
        if min(self.exact_up_to, self.hnsw_neighbours, self.ef_construction, self.ef_search) < 1:
            raise ValueError(f"index parameters must be >= 1: {self}")


def flat_ip_index(vectors: np.ndarray) -> faiss.IndexFlatIP:
    """Exact inner-product index; on L2-normalised vectors the score is the cosine."""
    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(np.ascontiguousarray(vectors, dtype=np.float32))
    return index


def build_index(vectors: np.ndarray, plan: IndexPlan) -> faiss.Index:
    """Exact up to `plan.exact_up_to` vectors, an inner-product HNSW graph past it."""
    if len(vectors) <= plan.exact_up_to:
        return flat_ip_index(vectors)
    index = faiss.IndexHNSWFlat(vectors.shape[1], plan.hnsw_neighbours, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = plan.ef_construction
    index.add(np.ascontiguousarray(vectors, dtype=np.float32))
    index.hnsw.efSearch = plan.ef_search
    return index


def recall_against_exact(index: faiss.Index, vectors: np.ndarray, queries: np.ndarray, k: int = 10) -> float:
    """Mean fraction of each query's exact top-k (over `vectors`, the index's contents) that `index` returns."""
    k = min(k, len(vectors))
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    _, exact = flat_ip_index(vectors).search(queries, k)
    _, found = index.search(queries, k)
    return float(np.mean([len(set(a) & set(b)) / k for a, b in zip(exact.tolist(), found.tolist())]))


def save_index(index: faiss.Index, path: Path) -> None:
    write_with_atomic(path, lambda tmp: faiss.write_index(index, str(tmp)))


def load_index(path: Path) -> faiss.Index:
    return faiss.read_index(str(path))

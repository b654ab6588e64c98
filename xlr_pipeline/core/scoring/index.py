"""The image index: exact (FAISS flat inner product) up to a configurable size, IVF or HNSW past it; saved atomically.

Evaluation never reads the index (its ranks are exact, `core/scoring/metrics.py`): the index is what serves queries,
and when it is approximate its recall@k against the exact search is measured and recorded where it is built.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np

from xlr_pipeline.core.storage.locations import Location, is_remote, write_with_atomic

if TYPE_CHECKING:  # FAISS loads where an index is built or read, not with the plan
    import faiss


@dataclass(frozen=True)
class IndexPlan:
    exact_up_to: int = 100_000  # flat search up to this many vectors: exact and fast enough below it
    approximate: Literal["ivf", "hnsw"] = "ivf"  # past it (benchmarks/results/ann_index.md: IVF builds far faster here)
    ivf_lists: int = 0  # IVF cells; 0: 4·√n
    ivf_probe: int = 32  # IVF cells searched per query
    hnsw_neighbours: int = 32  # HNSW graph degree (M)
    ef_construction: int = 200
    ef_search: int = 128

    def __post_init__(self) -> None:
        if self.approximate not in ("ivf", "hnsw"):
            raise ValueError(f"approximate must be 'ivf' or 'hnsw', not {self.approximate!r}")
        if (
            min(self.exact_up_to, self.ivf_probe, self.hnsw_neighbours, self.ef_construction, self.ef_search) < 1
            or self.ivf_lists < 0
        ):
            raise ValueError(f"index parameters must be >= 1 (ivf_lists >= 0): {self}")

    def lists_for(self, n: int) -> int:
        return self.ivf_lists or max(1, round(4 * math.sqrt(n)))


def flat_ip_index(vectors: np.ndarray) -> faiss.IndexFlatIP:
    """Exact inner-product index; on L2-normalised vectors the score is the cosine."""
    import faiss

    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(np.ascontiguousarray(vectors, dtype=np.float32))
    return index


def build_index(vectors: np.ndarray, plan: IndexPlan) -> faiss.Index:
    """Exact up to `plan.exact_up_to` vectors; past it an inverted file (k-means cells, `ivf_probe` of them searched)
    or an HNSW graph, both on inner product."""
    import faiss

    if len(vectors) <= plan.exact_up_to:
        return flat_ip_index(vectors)
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if plan.approximate == "ivf":
        lists = plan.lists_for(len(vectors))
        index = faiss.IndexIVFFlat(
            faiss.IndexFlatIP(vectors.shape[1]), vectors.shape[1], lists, faiss.METRIC_INNER_PRODUCT
        )
        # k-means on a fixed sample of 64 points per cell (FAISS's own cap is 256): reproducible, and quick at 1M
        sample = np.random.default_rng(0).choice(len(vectors), min(len(vectors), 64 * lists), replace=False)
        index.train(vectors[np.sort(sample)])
        index.add(vectors)
        index.nprobe = min(plan.ivf_probe, lists)
        return index
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


def save_index(index: faiss.Index, path: Location) -> None:
    import faiss

    write_with_atomic(path, lambda tmp: faiss.write_index(index, str(tmp)))


def load_index(path: Location) -> faiss.Index:
    import faiss

    if is_remote(path):  # FAISS reads only local files: deserialize the object's bytes
        return faiss.deserialize_index(np.frombuffer(path.read_bytes(), dtype=np.uint8))
    return faiss.read_index(str(path))

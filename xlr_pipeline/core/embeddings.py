"""Embedding with a content-addressed cache: a vector is computed once per (content hash, model id).

The cache of one model is a folder of Parquet shards; each write adds a new shard atomically, so
concurrent writers (one per language partition) never lose each other's entries.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

import numpy as np
import polars as pl

from xlr_pipeline.core.storage import write_parquet_atomic

Item = TypeVar("Item")
ProgressCallback = Callable[[int, int], None]


def model_slug(model_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", model_id).strip("_")


class EmbeddingCache:
    def __init__(self, root: Path, model_id: str):
        self.folder = root / model_slug(model_id)
        self.model_id = model_id

    def lookup(self, hashes: Sequence[str]) -> dict[str, np.ndarray]:
        shards = sorted(self.folder.glob("*.parquet"))
        if not shards:
            return {}
        wanted = pl.DataFrame({"content_hash": list(set(hashes))})
        found = pl.concat([pl.read_parquet(shard) for shard in shards]).unique("content_hash").join(wanted, on="content_hash")
        vectors = found["vector"].to_numpy()
        return dict(zip(found["content_hash"].to_list(), vectors))

    def add(self, hashes: Sequence[str], vectors: np.ndarray) -> None:
        if not len(hashes):
            return
        frame = pl.DataFrame(
            {"content_hash": list(hashes), "vector": vectors.astype(np.float32)},
            schema={"content_hash": pl.String, "vector": pl.Array(pl.Float32, vectors.shape[1])},
        )
        write_parquet_atomic(frame, self.folder / f"{uuid.uuid4().hex}.parquet")


def embed_with_cache(
    items: Sequence[Item],
    hashes: Sequence[str],
    encode_batch: Callable[[list[Item]], np.ndarray],
    cache: EmbeddingCache,
    batch_size: int,
    progress: ProgressCallback | None = None,
) -> tuple[np.ndarray, int]:
    """Vectors for `items` in order, encoding only hashes the cache lacks; returns (vectors, n_encoded)."""
    if not len(hashes):
        raise ValueError("nothing to embed")
    known = cache.lookup(hashes)
    todo = [index for index, digest in enumerate(hashes) if digest not in known]
    # Encode each distinct content once even if it repeats (e.g. identical captions).
    unique_todo = list({hashes[index]: index for index in todo}.values())
    fresh: dict[str, np.ndarray] = {}
    for start in range(0, len(unique_todo), batch_size):
        chunk = unique_todo[start : start + batch_size]
        vectors = encode_batch([items[index] for index in chunk])
        batch_hashes = [hashes[index] for index in chunk]
        cache.add(batch_hashes, vectors)
        fresh.update(zip(batch_hashes, vectors))
        if progress is not None:
            progress(min(start + batch_size, len(unique_todo)), len(unique_todo))
    known.update(fresh)
    return np.stack([known[digest] for digest in hashes]).astype(np.float32), len(unique_todo)


def vectors_of(frame: pl.DataFrame, column: str = "vector") -> np.ndarray:
    return np.asarray(frame[column].to_numpy(), dtype=np.float32)


def with_vectors(frame: pl.DataFrame, vectors: np.ndarray, column: str = "vector") -> pl.DataFrame:
    return frame.with_columns(pl.Series(column, vectors.astype(np.float32), dtype=pl.Array(pl.Float32, vectors.shape[1])))

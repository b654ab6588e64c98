"""Embedding with a content-addressed cache: a vector is computed once per (content hash, model id).

The cache of one model on one backend is one SQLite file (`<model slug>--<backend slug>.sqlite`), keyed by content
hash: vectors computed by another engine (or another version of one) are never mixed in. Why SQLite:
- a lookup costs O(k log n) for k hashes asked, whatever the cache holds (B-tree primary key), where the
  previous folder of Parquet shards read every shard on every lookup (O(n), tens of thousands of files at COCO
  scale);
- one file per model, nothing to compact;
- concurrent writers are safe: in WAL mode readers never block, and writing processes (language partitions,
  image shards) wait for each other on a busy timeout; each `add` is one transaction, so a crash loses at
  most the batch being written, never what was stored.
DuckDB was the other candidate: its file lock admits one read-write process at a time (a second partition step
could not open the cache), and its columnar scans serve point lookups less well.
"""

from __future__ import annotations

import logging
import re
import sqlite3
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import numpy as np
import polars as pl

from xlr_pipeline.core.data.readers import DatasetError
from xlr_pipeline.core.storage.locations import Location, read_parquet

if TYPE_CHECKING:
    from xlr_pipeline.core.models.joined import JoinedEmbeddingCache

Item = TypeVar("Item")
Decoded = TypeVar("Decoded")
ProgressCallback = Callable[[int, int], None]
_BUSY_TIMEOUT_S = 120  # how long a process waits for another's write before it fails
_QUERY_CHUNK = 10_000  # hashes per `IN (...)` query (SQLite allows 32,766 parameters)


def model_slug(model_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", model_id).strip("_")


# How vectors are computed beyond the engine's version; a cache of another scheme is not read. "each-alone": one item
# per encoder call (`encoders.each_alone`), so a vector never depends on its batch.
VECTOR_SCHEME = "each-alone"


class EmbeddingCache:
    """One model's vectors by content hash, as one backend computed them, in
    `<root>/<model slug>--<backend>--<vector scheme>.sqlite`: vectors of another backend (or another version of it,
    or another scheme) are never mixed in."""

    def __init__(self, root: Path, model_id: str, backend: str):
        if not backend:
            raise ValueError(f"an embedding cache of {model_id} needs the backend that computes its vectors")
        self.path = root / f"{model_slug(model_id)}--{model_slug(backend)}--{VECTOR_SCHEME}.sqlite"
        self.model_id = model_id
        self.backend = backend

    @contextmanager
    def _connection(self) -> Iterator[sqlite3.Connection]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with closing(sqlite3.connect(self.path, timeout=_BUSY_TIMEOUT_S, isolation_level=None)) as connection:
            connection.execute("PRAGMA synchronous=NORMAL")
            if not self._is_set_up(connection):
                self._set_up(connection)
            yield connection

    @staticmethod
    def _is_set_up(connection: sqlite3.Connection) -> bool:
        # Reading the schema first makes SQLite open the file, so the journal mode read next is the file's own.
        has_table = connection.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'vectors'"
        ).fetchone()
        return has_table is not None and connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"

    def _set_up(self, connection: sqlite3.Connection) -> None:
        """WAL mode and the table, once per file. Switching to WAL fails at once ("database is locked") rather than
        waiting when another process holds the new file, so processes that create the cache together retry."""
        deadline = time.monotonic() + _BUSY_TIMEOUT_S
        pause = 0.01
        while True:
            try:
                connection.execute("PRAGMA page_size=16384")  # a new file only: ten 384-d vectors per page
                connection.execute("PRAGMA journal_mode=WAL")
                connection.execute(
                    "CREATE TABLE IF NOT EXISTS vectors "
                    "(content_hash TEXT PRIMARY KEY, dim INTEGER NOT NULL, vector BLOB NOT NULL)"
                )
                return
            except sqlite3.OperationalError as error:
                if "locked" not in str(error) or time.monotonic() > deadline:
                    raise
                time.sleep(pause)
                pause = min(pause * 2, 1.0)

    @staticmethod
    def _insert(connection: sqlite3.Connection, hashes: Sequence[str], vectors: np.ndarray) -> None:
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        connection.executemany(
            "INSERT OR IGNORE INTO vectors VALUES (?, ?, ?)",
            ((h, vectors.shape[1], v.tobytes()) for h, v in zip(hashes, vectors)),
        )

    def _set_aside(self, error: sqlite3.DatabaseError) -> None:
        """A damaged cache file is moved aside (kept for inspection) and a new one starts: it only holds what can
        be recomputed."""
        stamp = time.strftime("%Y%m%d-%H%M%S")
        for suffix in ("", "-wal", "-shm"):
            damaged = self.path.with_name(self.path.name + suffix)
            if damaged.exists():
                damaged.replace(damaged.with_name(f"{self.path.name}.damaged-{stamp}{suffix}"))
        logging.getLogger("xlr_pipeline").warning(
            "%s: unreadable embedding cache (%s); moved aside as %s.damaged-%s, vectors are recomputed",
            self.path,
            error,
            self.path.name,
            stamp,
        )

    def lookup(self, hashes: Sequence[str]) -> dict[str, np.ndarray]:
        """The cached vectors of those `hashes` the cache holds (none, from a damaged file, which is set aside)."""
        try:
            return self._lookup(hashes)
        except sqlite3.OperationalError:
            raise
        except sqlite3.DatabaseError as error:  # "file is not a database", "database disk image is malformed"
            self._set_aside(error)
            return {}

    def _lookup(self, hashes: Sequence[str]) -> dict[str, np.ndarray]:
        wanted = list(dict.fromkeys(hashes))
        found: dict[str, np.ndarray] = {}
        with self._connection() as connection:
            for start in range(0, len(wanted), _QUERY_CHUNK):
                chunk = wanted[start : start + _QUERY_CHUNK]
                rows = connection.execute(
                    f"SELECT content_hash, dim, vector FROM vectors WHERE content_hash IN ({','.join('?' * len(chunk))})",
                    chunk,
                )
                for digest, dim, blob in rows:
                    vector = np.frombuffer(blob, dtype=np.float32)
                    if vector.shape != (dim,):
                        raise ValueError(
                            f"{self.path}: the vector of {digest} has {vector.size} values, not {dim}; delete the file to rebuild it"
                        )
                    found[digest] = vector
        return found

    def add(self, hashes: Sequence[str], vectors: np.ndarray) -> None:
        """Store vectors in one transaction (entries already present are kept)."""
        if not len(hashes):
            return
        if len(hashes) != len(vectors):
            raise ValueError(f"{len(hashes)} hashes for {len(vectors)} vectors")
        if not all(isinstance(h, str) and h for h in hashes):
            raise ValueError("content hashes must be non-empty strings")
        for attempt in range(2):
            try:
                with self._connection() as connection:
                    connection.execute("BEGIN IMMEDIATE")
                    self._insert(connection, hashes, vectors)
                    connection.execute("COMMIT")
                return
            except sqlite3.OperationalError:
                raise
            except sqlite3.DatabaseError as error:
                if attempt:
                    raise
                self._set_aside(error)

    def __len__(self) -> int:
        with self._connection() as connection:
            return connection.execute("SELECT count(*) FROM vectors").fetchone()[0]


def _decoded_batches(
    items: Sequence[Item], batches: list[list[int]], decode: Callable[[Item], Decoded] | None, workers: int
) -> Iterator[list]:
    """Each batch's items, decoded. With workers, the next batch decodes on a thread pool while the caller
    encodes this one (image decoding releases the GIL); at most two batches are held in memory."""
    if decode is None or workers < 1:
        for batch in batches:
            yield [items[index] if decode is None else decode(items[index]) for index in batch]
        return
    with ThreadPoolExecutor(workers, thread_name_prefix="xlr-decode") as pool:
        pending: deque[list[Future]] = deque()
        for batch in batches:
            pending.append([pool.submit(decode, items[index]) for index in batch])
            if len(pending) > 1:
                yield [future.result() for future in pending.popleft()]
        while pending:
            yield [future.result() for future in pending.popleft()]


def embed_with_cache(
    items: Sequence[Item],
    hashes: Sequence[str],
    encode_batch: Callable[[list], np.ndarray],
    cache: EmbeddingCache | JoinedEmbeddingCache,
    batch_size: int,
    progress: ProgressCallback | None = None,
    decode: Callable[[Item], Decoded] | None = None,
    decode_workers: int = 0,
) -> tuple[np.ndarray, int]:
    """Vectors for `items` in order, encoding only hashes the cache lacks; returns (vectors, n_encoded).

    `encode_batch` gets the items of a batch, or with `decode` their decoded forms (decoded ahead on
    `decode_workers` threads)."""
    if not len(hashes):
        raise ValueError("nothing to embed")
    known = cache.lookup(hashes)
    todo = [index for index, digest in enumerate(hashes) if digest not in known]
    # Encode each distinct content once even if it repeats (e.g. identical captions).
    unique_todo = list({hashes[index]: index for index in todo}.values())
    batches = [unique_todo[start : start + batch_size] for start in range(0, len(unique_todo), batch_size)]
    fresh: dict[str, np.ndarray] = {}
    done = 0
    for batch, inputs in zip(batches, _decoded_batches(items, batches, decode, decode_workers)):
        vectors = encode_batch(inputs)
        batch_hashes = [hashes[index] for index in batch]
        cache.add(batch_hashes, vectors)
        fresh.update(zip(batch_hashes, vectors))
        done += len(batch)
        if progress is not None:
            progress(done, len(unique_todo))
    known.update(fresh)
    return np.stack([known[digest] for digest in hashes]).astype(np.float32), len(unique_todo)


def vectors_of(frame: pl.DataFrame, column: str = "vector") -> np.ndarray:
    return np.asarray(frame[column].to_numpy(), dtype=np.float32)


def with_vectors(frame: pl.DataFrame, vectors: np.ndarray, column: str = "vector") -> pl.DataFrame:
    return frame.with_columns(
        pl.Series(column, vectors.astype(np.float32), dtype=pl.Array(pl.Float32, vectors.shape[1]))
    )


@dataclass(frozen=True)
class ShardUnion:
    """What the shards of one embedding table must hold, named for its error message."""

    kind: str  # "image", "caption": the shards' name
    items: str  # "usable images", "needed captions": what must be covered
    remedy: str  # the command that rewrites the shards


def union_of_shards(
    wanted: pl.DataFrame, shard_paths: Sequence[Location], model_id: str, union: ShardUnion
) -> pl.DataFrame:
    """The shards' rows in `wanted`'s order (`wanted`: an id column, then `expected_hash`). Every wanted row must be
    in exactly one shard, embedded from its current content by `model_id`; else the shards are out of date: a
    `DatasetError` naming examples, nothing written."""
    shards = pl.concat([read_parquet(path) for path in shard_paths])
    id_column = wanted.columns[0]
    joined = wanted.join(shards, on=id_column, how="left", maintain_order="left")
    out_of_date = joined.filter(
        pl.col("content_hash").is_null()
        | (pl.col("content_hash") != pl.col("expected_hash"))
        | (pl.col("model_id") != model_id)
    )
    if shards.height != wanted.height or not out_of_date.is_empty():
        raise DatasetError(
            f"the {union.kind} shards ({len(shard_paths)} files, {shards.height} rows) do not match the {wanted.height} "
            f"{union.items} embedded by {model_id} (e.g. {out_of_date[id_column].head(5).to_list()}): {union.remedy}"
        )
    return joined.drop("expected_hash")

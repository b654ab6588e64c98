"""Result rows and how one evaluation is appended to the warehouse (schema: `core/reporting/warehouse.py`).

A *run* is one trained head (its configuration, models, seed, code versions and data hashes).
Evaluations append rows; re-evaluating identical inputs (same run, language, captions and test gallery) is
idempotent, and nothing already stored is ever deleted or updated.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import duckdb
import polars as pl

from xlr_pipeline.core.reporting.warehouse import connect_for_write
from xlr_pipeline.core.scoring.metrics import DirectionResult
from xlr_pipeline.core.storage.locations import Location, combined_hash


@dataclass(frozen=True)
class RunRecord:
    run_id: str
    dataset: str
    image_model: str
    text_model: str
    train_language: str
    objective: str
    augmentation: str
    head_config: dict
    seed: int
    code_versions: dict
    train_captions_hash: str
    images_hash: str
    baseline_of: str | None
    dagster_run_id: str


@dataclass(frozen=True)
class RecallRecord:
    run_id: str
    dataset: str
    language: str
    split: str
    direction: str
    k: int
    recall: float
    n_queries: int
    captions_hash: str
    code_version: str
    dagster_run_id: str
    gallery_hash: str  # the test images ranked (ids and contents, in order): a changed image gives new rows


@dataclass(frozen=True)
class RankRecord:
    run_id: str
    dataset: str
    language: str
    split: str
    direction: str
    n_queries: int
    mean_rank: float
    median_rank: float
    captions_hash: str
    dagster_run_id: str
    gallery_hash: str


def _insert(connection: duckdb.DuckDBPyConnection, table: str, row: dict, stamp_column: str) -> None:
    columns = ", ".join([stamp_column, *row])
    placeholders = ", ".join(["now()", *("?" * len(row))])
    connection.execute(f"INSERT OR IGNORE INTO {table} ({columns}) VALUES ({placeholders})", list(row.values()))


def append_tables(path: Path, tables: Sequence[tuple[str, pl.DataFrame, str]]) -> dict[str, int]:
    """Bulk-append frames in one transaction: (table, rows, timestamp column set to now()). Rows already
    stored (same primary key) are kept as they are; returns how many rows each table gained."""
    connection = connect_for_write(path)
    try:
        connection.execute("BEGIN")
        added = {}
        for table, frame, stamp_column in tables:
            before = connection.execute(f"SELECT count(*) FROM {table}").fetchall()[0][0]
            connection.register("incoming", frame.to_arrow())
            columns = ", ".join(frame.columns)
            connection.execute(
                f"INSERT OR IGNORE INTO {table} ({columns}, {stamp_column}) SELECT {columns}, now() FROM incoming"
            )
            connection.unregister("incoming")
            added[table] = connection.execute(f"SELECT count(*) FROM {table}").fetchall()[0][0] - before
        connection.execute("COMMIT")
        return added
    except Exception:
        connection.execute("ROLLBACK")
        raise
    finally:
        connection.close()


def record_evaluation(
    path: Path,
    runs: Sequence[RunRecord],
    recall: Sequence[RecallRecord],
    ranks: Sequence[RankRecord],
    rank_files: Location | None = None,
) -> int:
    """Append one evaluation in a single transaction; returns how many recall rows were new.
    `rank_files`: the folder its per-query rank files were written to (recorded for the `query_ranks` view)."""
    connection = connect_for_write(path, rank_files=rank_files)
    try:
        connection.execute("BEGIN")
        for run in runs:
            row = asdict(run)
            row["head_config"] = json.dumps(run.head_config, sort_keys=True)
            row["code_versions"] = json.dumps(run.code_versions, sort_keys=True)
            _insert(connection, "runs", row, "created_at")
        before = connection.execute("SELECT count(*) FROM recall").fetchone()[0]
        for record in recall:
            _insert(connection, "recall", asdict(record), "evaluated_at")
        for record in ranks:
            _insert(connection, "rank_summary", asdict(record), "evaluated_at")
        added = connection.execute("SELECT count(*) FROM recall").fetchone()[0] - before
        connection.execute("COMMIT")
        return int(added)
    except Exception:
        connection.execute("ROLLBACK")
        raise
    finally:
        connection.close()


def query_ranks_frame(
    run_id: str,
    dataset: str,
    language: str,
    directions: Sequence[DirectionResult],
    captions: pl.DataFrame,
    image_ids: Sequence[str],
) -> pl.DataFrame:
    """Rank of the first correct item for every query, both directions (0 = nothing correct in the gallery).

    `captions` (caption_id, image_id, caption) are the text→image queries in order; `image_ids` are
    the image→text queries in order.
    """
    by_direction = {result.direction: result.ranks for result in directions}
    text_queries = captions.select(
        pl.lit("text_to_image").alias("direction"), pl.col("caption_id").alias("query_id"), "image_id", "caption"
    ).with_columns(pl.Series("rank", by_direction["text_to_image"], dtype=pl.Int64))
    image_queries = pl.DataFrame(
        {
            "direction": "image_to_text",
            "query_id": list(image_ids),
            "image_id": list(image_ids),
            "caption": None,
            "rank": by_direction["image_to_text"],
        },
        schema={
            "direction": pl.String,
            "query_id": pl.String,
            "image_id": pl.String,
            "caption": pl.String,
            "rank": pl.Int64,
        },
    )
    return pl.concat([text_queries, image_queries]).select(
        pl.lit(run_id).alias("run_id"), pl.lit(dataset).alias("dataset"), pl.lit(language).alias("language"), pl.all()
    )


def query_ranks_path(
    ranks_root: Location, dataset: str, run_id: str, language: str, captions_hash: str, gallery_hash: str
) -> Location:
    """One file per (head run, language, captions, gallery): what the rows of `recall` with that key were ranked from."""
    return ranks_root / dataset / run_id / f"{language}-{captions_hash[:12]}-{gallery_hash[:12]}.parquet"


def gallery_hash(image_ids: Sequence[str], content_hashes: Sequence[str]) -> str:
    """The identity of a test gallery: its images' ids and contents, in gallery order."""
    return combined_hash(f"{image_id}:{content}" for image_id, content in zip(image_ids, content_hashes, strict=True))


def has_recall_rows(
    path: Path, run_id: str, dataset: str, language: str, captions_hash: str, gallery_hash: str
) -> bool:
    """Whether the results file holds an evaluation's recall rows (a missing, empty or emptied file does not).
    A file another process is writing cannot be read now: counted as holding them (it is being written)."""
    if not path.is_file():
        return False
    try:
        with duckdb.connect(str(path), read_only=True) as connection:
            found = (
                connection.execute("SELECT count(*) FROM duckdb_tables() WHERE table_name = 'recall'").fetchone()[0]
                and connection.execute(
                    "SELECT count(*) FROM recall WHERE run_id = ? AND dataset = ? AND language = ? AND captions_hash = ? "
                    "AND gallery_hash = ?",
                    [run_id, dataset, language, captions_hash, gallery_hash],
                ).fetchone()[0]
            )
    except duckdb.IOException as error:
        return "lock" in str(error).lower()
    except duckdb.Error:
        return False
    return bool(found)

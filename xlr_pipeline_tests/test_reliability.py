"""Reproducibility and crash safety with real runs: same seed → same rows; a SIGKILL mid-embedding loses nothing."""

import os
import shutil
import signal
import subprocess
import sys
import time

import dagster as dg
import pytest

from xlr_pipeline.core.models.embeddings import EmbeddingCache
from xlr_pipeline.core.models.encoders import backend_of
from xlr_pipeline.core.models.inference import DEFAULT_BACKEND
from xlr_pipeline.core.reporting.sql import run_sql
from xlr_pipeline.core.training.choices import DEFAULT_IMAGE_MODEL
from xlr_pipeline.defs.train import HeadTrainingConfig
from xlr_pipeline.runner import run_pipeline
from xlr_pipeline_tests.conftest import DATASET, make_emoji_subset, outputs_for, pipeline_for

pytestmark = pytest.mark.slow  # kills and resumes runs

RESULT_ROWS = (
    "SELECT r.language, r.direction, r.k, r.recall, r.n_queries, runs.objective, runs.seed, runs.head_config::VARCHAR "
    "FROM recall r JOIN runs USING (run_id) ORDER BY ALL"
)


def test_the_same_config_and_seed_give_identical_result_rows(tmp_path, subset_data_dir):
    rows = []
    for copy in ("first", "second"):
        data_dir = tmp_path / copy
        shutil.copytree(subset_data_dir / DATASET, data_dir / DATASET)
        with dg.instance_for_test() as instance:  # separate instance, cache and warehouse
            run_pipeline(
                instance,
                pipeline_for(data_dir),
                [DATASET],
                {"projection_head": HeadTrainingConfig(epochs=15, seed=3)},
                log=lambda _: None,
            )
        rows.append(run_sql(data_dir / "results.duckdb", RESULT_ROWS).rows())
        assert outputs_for(data_dir).head_path.is_file()
    assert rows[0] == rows[1] and len(rows[0]) == 2 * 3 * 2 * 3  # trained + random head, 3 languages, 2 directions, 3 k
    first, second = outputs_for(tmp_path / "first"), outputs_for(tmp_path / "second")
    assert first.image_embeddings_path.read_bytes() == second.image_embeddings_path.read_bytes()


def test_a_run_killed_while_embedding_images_resumes_from_the_cache_to_the_same_numbers(tmp_path):
    data_dir = tmp_path / "data"
    make_emoji_subset(data_dir, n_train=200, n_test=60)
    env = {**os.environ, "DAGSTER_HOME": str(tmp_path / "home"), "XLR_EMBEDDING_CACHE_DIR": ""}  # its own cache
    command = [
        sys.executable,
        "-m",
        "xlr_pipeline.cli",
        "run",
        "--data-dir",
        str(data_dir),
        "--dataset",
        DATASET,
        "--epochs",
        "10",
    ]
    process = subprocess.Popen(
        command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    cache = EmbeddingCache(
        data_dir / "cache" / "embeddings", DEFAULT_IMAGE_MODEL, backend_of(DEFAULT_IMAGE_MODEL, DEFAULT_BACKEND)
    )
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and not (cache.path.exists() and len(cache)):
        time.sleep(0.2)
    os.killpg(
        process.pid, signal.SIGKILL
    )  # mid image embedding (maybe mid-transaction): some batches cached, the asset not written
    process.wait(timeout=30)
    outputs = outputs_for(data_dir)
    assert not outputs.image_embeddings_path.exists()
    assert len(cache) > 0

    resumed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    with dg.DagsterInstance.from_config(str(tmp_path / "home")) as instance:
        shards = instance.fetch_materializations(dg.AssetKey([DATASET, "image_embedding_shards"]), limit=10).records
        metadata = [record.asset_materialization.metadata for record in shards]
        assert len(metadata) == 1  # one shard (the dataset declares no more), materialized by the resumed run
        from_cache, encoded_now = (
            sum(entry[name].value for entry in metadata) for name in ("from_cache", "encoded_now")
        )
        assert from_cache > 0 and encoded_now < 260 and from_cache + encoded_now == 260  # resumed, not restarted

    uninterrupted = tmp_path / "uninterrupted"
    make_emoji_subset(uninterrupted, n_train=200, n_test=60)
    with dg.instance_for_test() as instance:
        run_pipeline(
            instance,
            pipeline_for(uninterrupted),
            [DATASET],
            {"projection_head": HeadTrainingConfig(epochs=10)},
            log=lambda _: None,
        )
    assert (
        run_sql(data_dir / "results.duckdb", RESULT_ROWS).rows()
        == run_sql(uninterrupted / "results.duckdb", RESULT_ROWS).rows()
    )
    assert outputs.image_embeddings_path.read_bytes() == outputs_for(uninterrupted).image_embeddings_path.read_bytes()


def test_two_processes_on_one_dataset_add_no_duplicates_and_readers_wait_out_writers(tmp_path, subset_data_dir):
    data_dir = tmp_path / "data"
    shutil.copytree(subset_data_dir / DATASET, data_dir / DATASET)
    env = {**os.environ, "DAGSTER_HOME": str(tmp_path / "home")}
    base = [sys.executable, "-m", "xlr_pipeline.cli"]
    location = ["--data-dir", str(data_dir), "--dataset", DATASET, "--epochs", "10"]
    assert subprocess.run([*base, "run", *location], env=env, capture_output=True, timeout=600).returncode == 0
    db = data_dir / "results.duckdb"
    counts = "SELECT (SELECT count(*) FROM runs) AS runs, (SELECT count(*) FROM recall) AS recall, (SELECT count(*) FROM rank_summary) AS ranks"
    before = run_sql(db, counts).rows()

    # the same language re-evaluated by two processes at once (say the sensor's run and a user's)
    both = [
        subprocess.Popen([*base, "evaluate", "de", *location], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for _ in range(2)
    ]
    assert [process.wait(timeout=600) for process in both] == [0, 0]
    assert run_sql(db, counts).rows() == before  # identical inputs: nothing new, nothing twice

    # a reader through run_sql waits while another process holds the write lock, then reads
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"import time; from xlr_pipeline.core.reporting.warehouse import connect_for_write; c = connect_for_write(__import__('pathlib').Path({str(db)!r})); print('locked', flush=True); time.sleep(3); c.close()",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout.readline().strip() == "locked"
    started = time.monotonic()
    assert run_sql(db, counts).rows() == before
    assert time.monotonic() - started > 1.0  # it waited for the writer instead of failing
    assert holder.wait(timeout=30) == 0


def test_a_replaced_test_image_gives_new_recall_rows_that_agree_with_the_rank_files(fresh_data_dir):
    import duckdb
    import polars as pl

    config = {"projection_head": HeadTrainingConfig(epochs=10)}
    with dg.instance_for_test() as instance:
        run_pipeline(instance, pipeline_for(fresh_data_dir), [DATASET], config, log=lambda _: None)
        split = (fresh_data_dir / DATASET / "split.csv").read_text("utf-8").splitlines()
        test_ids = [line.split(",")[0] for line in split[1:] if line.split(",")[1] == "test"]
        images = fresh_data_dir / DATASET / "images"
        shutil.copyfile(images / f"{test_ids[1]}.png", images / f"{test_ids[0]}.png")  # two test images now alike
        run_pipeline(
            instance,
            pipeline_for(fresh_data_dir),
            [DATASET],
            config,
            include_stale=True,
            log=lambda _: None,
        )
    db = outputs_for(fresh_data_dir).root.parents[1] / "results.duckdb"
    with duckdb.connect(str(db), read_only=True) as connection:
        rows = connection.execute(
            "SELECT run_id, gallery_hash, recall FROM recall WHERE language = 'en' AND direction = 'text_to_image' "
            "AND k = 1 AND run_id NOT LIKE '%random-head' ORDER BY evaluated_at"
        ).fetchall()
        latest = connection.execute(
            "SELECT recall FROM recall_latest WHERE language = 'en' AND direction = 'text_to_image' AND k = 1 "
            "AND run_id NOT LIKE '%random-head'"
        ).fetchall()
    assert len(rows) == 2 and rows[0][0] == rows[1][0] and rows[0][1] != rows[1][1]  # same head, new gallery
    (rank_file,) = (fresh_data_dir / "ranks" / DATASET / rows[1][0]).glob(f"en-*-{rows[1][1][:12]}.parquet")
    ranks = pl.read_parquet(rank_file).filter(pl.col("direction") == "text_to_image")["rank"]
    assert latest == [(rows[1][2],)] and rows[1][2] == float((ranks == 1).mean())


def test_two_runs_at_once_on_one_lane_queue_and_leave_one_head_everywhere(tmp_path, subset_data_dir):
    from xlr_pipeline.core.training.head import head_from_bytes

    data_dir = tmp_path / "data"
    shutil.copytree(subset_data_dir / DATASET, data_dir / DATASET)
    env = {**os.environ, "DAGSTER_HOME": str(tmp_path / "home")}
    command = [sys.executable, "-m", "xlr_pipeline.cli", "run", "--data-dir", str(data_dir), "--dataset", DATASET]
    both = [
        subprocess.Popen(
            [*command, "--epochs", "10"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        for _ in range(2)
    ]
    outputs = [process.communicate(timeout=900)[0] for process in both]
    assert [process.returncode for process in both] == [0, 0], outputs
    waited = [out for out in outputs if f"waiting for another run on {DATASET} (pid " in out]
    assert len(waited) == 1 and "0 materializations" in waited[0]  # the second found everything done
    head_run = head_from_bytes(outputs_for(data_dir).head_path.read_bytes())[1]["run_id"]
    with dg.DagsterInstance.from_config(str(tmp_path / "home")) as instance:
        heads = instance.fetch_materializations(dg.AssetKey([DATASET, "projection_head"]), limit=10).records
    assert [record.run_id for record in heads] == [head_run]
    rows = run_sql(
        data_dir / "results.duckdb", "SELECT DISTINCT run_id FROM recall WHERE run_id NOT LIKE '%random-head'"
    )
    assert rows.rows() == [(head_run,)]

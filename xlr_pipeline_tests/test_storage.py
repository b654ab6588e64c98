"""Outputs on object storage: the chain on S3 (moto's S3 server on 127.0.0.1, the real s3fs client), DuckDB
reading the rank files there, staleness through the stored objects, and the storage URL validated where it enters."""

from __future__ import annotations

import logging
import subprocess
import sys

import dagster as dg
import polars as pl
import pytest
from pydantic import ValidationError
from upath import UPath

from xlr_pipeline.core.reporting.sql import QueryError, run_sql
from xlr_pipeline.core.storage.locations import StorageError, read_parquet, storage_location, write_parquet_atomic
from xlr_pipeline.defs.train import HeadTrainingConfig
from xlr_pipeline.runner import run_pipeline
from xlr_pipeline_tests.conftest import DATASET, SUBSET_LANGUAGES, make_emoji_subset, pipeline_for, settings_for

pytestmark = pytest.mark.slow  # runs the chain on a local S3 server

BUCKET = "xlr-outputs"
RESULT_ROWS = "SELECT dataset, language, direction, k, recall FROM recall ORDER BY ALL"


@pytest.fixture(scope="module")
def s3_endpoint():
    """An S3 API on 127.0.0.1 (moto's server, as s3fs's own tests use), with one empty bucket."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    patch = pytest.MonkeyPatch()
    for variable, value in {
        "AWS_ENDPOINT_URL": f"http://{host}:{port}",
        "AWS_ACCESS_KEY_ID": "xlr",
        "AWS_SECRET_ACCESS_KEY": "xlr",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        patch.setenv(variable, value)
    UPath(f"s3://{BUCKET}").fs.mkdir(BUCKET)
    yield f"http://{host}:{port}"
    patch.undo()
    server.stop()


def test_local_folders_stay_paths_and_unknown_protocols_are_refused(tmp_path):
    assert storage_location(str(tmp_path)) == tmp_path and storage_location(f"file://{tmp_path}") == tmp_path
    assert isinstance(storage_location("memory://bucket/outputs"), UPath)
    with pytest.raises(StorageError, match=r"storage URL 'nosuch://bucket' cannot be used: .*nosuch"):
        storage_location("nosuch://bucket")
    with pytest.raises(StorageError, match=r"storage URL 'gs://bucket/x' cannot be used: .*gcsfs"):
        storage_location("gs://bucket/x")  # a known protocol whose driver is not installed names the package
    with pytest.raises(ValidationError, match="nosuch"):
        settings_for(tmp_path, storage_url="nosuch://bucket")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "xlr_pipeline.cli",
            "status",
            "--data-dir",
            str(tmp_path),
            "--storage-url",
            "nosuch://x",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0 and "invalid option" in result.stderr and "nosuch" in result.stderr


def test_a_failed_write_to_object_storage_keeps_the_stored_object():
    target = storage_location("memory://xlr-test/atomic/table.parquet")
    write_parquet_atomic(pl.DataFrame({"a": [1, 2]}), target)

    class Broken(pl.DataFrame):
        def write_parquet(self, *args, **kwargs):
            raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_parquet_atomic(Broken({"a": [3]}), target)
    assert read_parquet(target)["a"].to_list() == [1, 2]


def test_the_chain_on_s3_matches_the_local_run_and_duckdb_reads_its_rank_files(tmp_path, s3_endpoint):
    configs = {"projection_head": HeadTrainingConfig(epochs=10)}
    recall = {}
    for where in ("local", "s3"):
        data_dir = tmp_path / where
        make_emoji_subset(data_dir, n_train=60, n_test=20)
        storage = f"s3://{BUCKET}/team/xlr" if where == "s3" else ""
        with dg.instance_for_test() as instance:
            pipeline = pipeline_for(data_dir, storage_url=storage)
            run_pipeline(instance, pipeline, [DATASET], configs, log=lambda _: None)
            recall[where] = run_sql(data_dir / "results.duckdb", RESULT_ROWS)
            if where == "s3":
                _check_outputs_live_on_s3(instance, pipeline, data_dir, configs)
    assert recall["s3"].height == recall["local"].height > 0
    assert recall["s3"].equals(recall["local"])  # same inputs, same numbers wherever the outputs live


def _check_outputs_live_on_s3(instance, pipeline, data_dir, configs) -> None:
    outputs = pipeline.settings.outputs(DATASET)
    assert str(outputs.root) == f"s3://{BUCKET}/team/xlr/outputs/{DATASET}"
    stored = {path.relative_to(outputs.root).as_posix() for path in outputs.root.rglob("*.parquet")}
    assert {"images/images.parquet", "image_embeddings.parquet", "image_index/image_ids.parquet"} <= stored
    assert {f"text_embeddings/{language}.parquet" for language in SUBSET_LANGUAGES} <= stored
    assert outputs.head_path.is_file() and outputs.index_path.is_file()
    assert not (data_dir / "outputs").exists() and not (data_dir / "ranks").exists()  # nothing written locally

    db = data_dir / "results.duckdb"
    ranks = run_sql(db, "SELECT language, count(*) AS n FROM query_ranks GROUP BY ALL ORDER BY 1")
    assert ranks["language"].to_list() == sorted(SUBSET_LANGUAGES) and min(ranks["n"]) > 20
    # the sandbox reaches the rank files on S3 and nothing else there
    with pytest.raises(QueryError, match="Permission"):
        run_sql(db, f"SELECT * FROM read_parquet('s3://{BUCKET}/team/xlr/outputs/{DATASET}/images/images.parquet')")

    # Staleness hashes the stored objects: all fresh; a deleted head object reruns the head alone (it retrains to
    # the same bytes, so the index and metrics that read it stay fresh).
    assert run_pipeline(instance, pipeline, [DATASET], configs, include_stale=True, log=lambda _: None).executed == []
    outputs.head_path.unlink()
    rerun = run_pipeline(instance, pipeline, [DATASET], configs, include_stale=True, log=lambda _: None)
    assert [asset for asset, _, _ in rerun.executed] == [f"{DATASET}/projection_head"]
    assert outputs.head_path.is_file()


def test_outputs_are_written_readable_as_the_umask_allows(tmp_path):
    import os
    import stat

    target = tmp_path / "out" / "frame.parquet"
    write_parquet_atomic(pl.DataFrame({"a": [1]}), target)
    mask = os.umask(0o022)
    os.umask(mask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~mask

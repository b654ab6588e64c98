"""The Dagster UI server (`xlr dev`): the graph loads, the sensor adds languages, a launched run succeeds."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from xlr_pipeline_tests.conftest import SUBSET_LANGUAGES

ASSETS = {"captions", "image_embeddings", "text_embeddings", "projection_head", "image_index", "retrieval_metrics"} | {
    "text_augmentations", "experiment_grid", "grid_report", "tags", "tagging_report"
}


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _poll(fetch, ready, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        try:
            last = fetch()
            if ready(last):
                return last
        except (urllib.error.URLError, ConnectionError, KeyError, TypeError):
            pass
        time.sleep(1)
    raise AssertionError(f"timed out waiting for {what}; last answer: {last}")


@pytest.fixture
def dagster_dev(fresh_data_dir, tmp_path):
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    port = _free_port()
    env = {**os.environ, "DAGSTER_HOME": str(home), "XLR_DATA_DIR": str(fresh_data_dir)}
    log = open(tmp_path / "dev.log", "w")
    process = subprocess.Popen(
        [sys.executable, "-m", "xlr_pipeline.cli", "dev", "--port", str(port)],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}/graphql"

    def graphql(query: str, variables: dict | None = None) -> dict:
        body = json.dumps({"query": query, "variables": variables or {}}).encode()
        request = urllib.request.Request(url, body, {"content-type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read())["data"]

    try:
        yield graphql
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
        log.close()


def test_ui_shows_the_graph_and_runs_a_materialization(dagster_dev, fresh_data_dir):
    graphql = dagster_dev
    nodes = _poll(
        lambda: graphql("{ assetNodes { assetKey { path } groupName partitionKeys } }")["assetNodes"],
        lambda answer: all(
            set(SUBSET_LANGUAGES) <= set(n["partitionKeys"]) for n in answer if n["partitionKeys"] or n["assetKey"]["path"][-1] == "captions"
        ),
        timeout_s=120,
        what="the asset graph with languages added by the sensor",
    )
    assert {tuple(node["assetKey"]["path"]) for node in nodes} == {("emoji_small", asset) for asset in ASSETS}
    assert {node["groupName"] for node in nodes} == {"emoji_small", "emoji_small_experiments", "emoji_small_tagging"}

    launched = graphql(
        """mutation($params: ExecutionParams!) { launchPipelineExecution(executionParams: $params) {
             __typename ... on LaunchRunSuccess { run { runId } } ... on PythonError { message } } }""",
        {
            "params": {
                "selector": {
                    "repositoryLocationName": "xlr_pipeline",
                    "repositoryName": "__repository__",
                    "pipelineName": "__ASSET_JOB",
                    "assetSelection": [{"path": ["emoji_small", "captions"]}],
                },
                "executionMetadata": {"tags": [{"key": "dagster/partition", "value": "ja"}]},
            }
        },
    )["launchPipelineExecution"]
    assert launched["__typename"] == "LaunchRunSuccess", launched
    run_id = launched["run"]["runId"]
    status = _poll(
        lambda: graphql("query($id: ID!) { runOrError(runId: $id) { ... on Run { status } } }", {"id": run_id})["runOrError"]["status"],
        lambda answer: answer in ("SUCCESS", "FAILURE", "CANCELED"),
        timeout_s=120,
        what=f"run {run_id}",
    )
    assert status == "SUCCESS"
    assert Path(fresh_data_dir / "outputs" / "emoji_small" / "captions" / "ja.parquet").is_file()

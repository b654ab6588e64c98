"""The Dagster UI driven as a user drives it, in headless Chromium: *Materialize all* on a lane, the Runs page,
the metrics asset's Recall table and plot, the typed launchpad (a wrong value, then a retrained head whose
index and metrics follow by themselves), the one-language job, and a small grid from the launchpad.

Screenshots and timings go to the test's tmp dir, or screenshots to $XLR_SCREENSHOT_DIR (`scripts/refresh_screenshots.sh`
points it at docs/screenshots/).
"""

import json
import os
import re
import time
from pathlib import Path

import duckdb
import polars as pl
import pytest

from xlr_pipeline.core.training.head import head_from_bytes
from xlr_pipeline_tests.conftest import DATASET, SUBSET_LANGUAGES, outputs_for, pipeline_for
from xlr_pipeline_tests.ui_session import (
    CHROMIUM,
    DagsterUI,
    chromium_page,
    click_materialize_all,
    group_url,
    lineage_screenshot,
    open_launchpad,
    open_page,
    screenshot,
    set_launchpad_config,
    xlr_dev,
)

pytestmark = [
    pytest.mark.slow,  # a whole session in the Dagster UI
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs Debian's chromium (installed by .ci/run)"),
]

SMALL_GRID = f"""ops:
  {DATASET}__text_augmentations:
    config:
      languages: [de, ja]
      words_per_language: 300
      seeds: [0]
  {DATASET}__text_encoder_finetuning:
    config:
      steps: 2
      batch_size: 8
      trainable_layers: 1
      seeds: [0]
  {DATASET}__experiment_grid:
    config:
      objectives: [patr, m3]
      augmentations: [none, salt]
      seeds: [0]
      epochs: 10
      per_language_centring: false
      hubness_reduction: false
      english_only_baseline: false
      finetuned_encoders: false
      tuning_trials: 2
      other_text_models: []
      other_image_models: []
      tuning_seeds: [0]
  {DATASET}__target_diagnostics:
    config:
      fractions: [0.5, 1.0]
      seeds: [0]
"""


def _materialized(runs: list[dict], asset: str, after: float = 0.0) -> bool:
    return any(run["status"] == "SUCCESS" and asset in run["assets"] and run["startTime"] > after for run in runs)


def _show_markdown(page, key: str):
    """Open a Markdown metadata entry of the asset page; the PNG chart inside it."""
    page.locator("tr", has=page.get_by_text(key, exact=True)).get_by_text("[Show Markdown]").click()
    return page.locator("[role=dialog] img[src^='data:image/png']")


def _launch_from_launchpad(page) -> None:
    page.locator("[role=dialog]").locator("button:has-text('Materialize')").last.click()


def _head_run_id(data_dir: Path) -> str:
    return head_from_bytes(outputs_for(data_dir).head_path.read_bytes())[1]["run_id"]


def test_a_user_works_the_pipeline_in_the_browser(fresh_data_dir, tmp_path):
    screenshots = Path(os.environ.get("XLR_SCREENSHOT_DIR") or tmp_path / "screenshots")
    timings: dict[str, float] = {}
    languages = set(SUBSET_LANGUAGES)
    with (
        xlr_dev(fresh_data_dir, tmp_path / "dagster_home", tmp_path / "dev.log", DATASET, languages) as ui,
        chromium_page(tmp_path) as page,
    ):
        # What the UI must show, read off the graph the code location builds.
        pipeline = pipeline_for(fresh_data_dir)
        chain = sorted(pipeline.stage_assets("run"))
        every_asset = pipeline.stage_assets("run", "grid", "alignment", "tagging")
        nodes = ui.graphql("{ assetNodes { assetKey { path } groupName } }")["assetNodes"]
        assert {tuple(node["assetKey"]["path"]) for node in nodes} == {(DATASET, asset) for asset in every_asset}
        assert {node["groupName"] for node in nodes} == {DATASET, f"{DATASET}_experiments", f"{DATASET}_tagging"}

        # The lane's graph: its eight assets, with Materialize all.
        open_page(page, group_url(ui, DATASET))
        for asset in chain:  # long names are shown middle-truncated ("image_embe…_shards")
            page.get_by_text(re.compile(rf"^({asset}|{asset[:6]}.*….*{asset[-6:]})$")).first.wait_for()

        # Materialize all → one backfill; language-partitioned assets run as one run per asset range.
        launched = click_materialize_all(page, ui, DATASET)
        runs = ui.wait_for_runs(lambda runs: _materialized(runs, "retrieval_metrics"), 600, "the lane's backfill")
        timings["materialize_all_s"] = max(run["endTime"] for run in runs) - launched
        assert {asset for run in runs for asset in run["assets"]} == set(chain)
        assert len(runs) <= 8, [run["assets"] for run in runs]  # a run per language and asset would be 14
        assert all(run["status"] == "SUCCESS" for run in runs)
        ranged = [run for run in runs if "captions" in run["assets"]]
        assert {tag["key"]: tag["value"] for tag in ranged[0]["tags"]}.get("dagster/asset_partition_range_start")

        lineage_screenshot(page, ui, DATASET, screenshots / "lineage.png")
        open_page(page, f"{ui.url}/runs")
        page.get_by_text("Success").first.wait_for()
        screenshot(page, screenshots / "runs.png")

        # The metrics asset's page: per-language Recall table and the R@1/5/10 bar plot.
        open_page(page, f"{ui.url}/assets/{DATASET}/retrieval_metrics")
        page.get_by_text("languages_table").wait_for()
        assert page.get_by_text("t2i R@10").count() > 0
        page.get_by_text("xlr sql").first.wait_for()
        screenshot(page, screenshots / "retrieval_metrics.png")
        plot = _show_markdown(page, "recall_by_language")
        plot.wait_for()
        assert plot.evaluate("image => image.naturalWidth") > 300
        screenshot(page, screenshots / "recall_plot.png")
        page.keyboard.press("Escape")

        with duckdb.connect(str(fresh_data_dir / "results.duckdb"), read_only=True) as connection:
            found = connection.sql(
                "SELECT DISTINCT language FROM recall WHERE dataset = ? AND k = 10", params=[DATASET]
            ).fetchall()
        assert {language for (language,) in found} == languages

        # The launchpad is typed: a wrong objective is refused there, with the allowed values.
        open_launchpad(page, f"{ui.url}/assets/{DATASET}/projection_head")
        set_launchpad_config(page, f"ops:\n  {DATASET}__projection_head:\n    config:\n      objective: m4\n")
        page.get_by_text(re.compile(r"objective not in enum type .*'m3'.* got m4")).wait_for()
        screenshot(page, screenshots / "launchpad_error.png")

        # Retrained as m3 from the launchpad: the index and the metrics follow without a user asking.
        set_launchpad_config(page, f"ops:\n  {DATASET}__projection_head:\n    config:\n      objective: m3\n")
        retrained = time.time()
        _launch_from_launchpad(page)
        ui.wait_for_runs(
            lambda runs: _materialized(runs, "retrieval_metrics", after=retrained),
            300,
            "index and metrics after the new head",
        )
        timings["head_change_followed_s"] = time.time() - retrained
        head_run = _head_run_id(fresh_data_dir)
        indexed = pl.read_parquet(outputs_for(fresh_data_dir).index_ids_path)["head_run_id"][0]
        assert indexed == head_run
        with duckdb.connect(str(fresh_data_dir / "results.duckdb"), read_only=True) as connection:
            evaluated = connection.sql(
                "SELECT DISTINCT language FROM recall WHERE run_id = ?", params=[head_run]
            ).fetchall()
            ((objective,),) = connection.sql(
                "SELECT objective FROM runs WHERE run_id = ?", params=[head_run]
            ).fetchall()
        assert objective == "m3" and {language for (language,) in evaluated} == languages

        # The one-language job for ja now succeeds (it failed against a stale index before eager automation).
        job_run = _launch_job_for(ui, f"{DATASET}_reevaluate_language", "ja")
        ui.wait_for_runs(
            lambda runs: any(r["runId"] == job_run and r["status"] == "SUCCESS" for r in runs), 300, "reevaluate ja"
        )

        open_page(page, f"{ui.url}/automation")
        page.get_by_text(f"{DATASET}_language_files").first.wait_for()
        page.get_by_text(f"{DATASET}_reevaluate_all_languages").first.wait_for()
        screenshot(page, screenshots / "automation.png")

        # A small grid, configured in the launchpad of the experiments group.
        open_launchpad(page, group_url(ui, f"{DATASET}_experiments"))
        set_launchpad_config(page, SMALL_GRID)
        grid_started = time.time()
        _launch_from_launchpad(page)
        ui.wait_for_runs(lambda runs: _materialized(runs, "grid_report", after=grid_started), 600, "the small grid")
        timings["small_grid_s"] = time.time() - grid_started
        open_page(page, f"{ui.url}/assets/{DATASET}/grid_report")
        _show_markdown(page, "mean_recall").wait_for()
        screenshot(page, screenshots / "grid_report.png")

    (tmp_path / "browser_timings.json").write_text(json.dumps(timings, indent=2))
    print("browser timings:", timings)
    for name in ("lineage", "runs", "retrieval_metrics", "recall_plot", "launchpad_error", "automation", "grid_report"):
        assert (screenshots / f"{name}.png").stat().st_size > 10_000


def _launch_job_for(ui: DagsterUI, job: str, partition: str) -> str:
    launched = ui.graphql(
        """mutation($params: ExecutionParams!) { launchPipelineExecution(executionParams: $params) {
             __typename ... on LaunchRunSuccess { run { runId } } ... on PythonError { message } } }""",
        {
            "params": {
                "selector": {
                    "repositoryLocationName": "xlr_pipeline",
                    "repositoryName": "__repository__",
                    "pipelineName": job,
                },
                "executionMetadata": {"tags": [{"key": "dagster/partition", "value": partition}]},
            }
        },
    )["launchPipelineExecution"]
    assert launched["__typename"] == "LaunchRunSuccess", launched
    return launched["run"]["runId"]

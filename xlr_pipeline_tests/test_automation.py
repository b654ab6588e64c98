"""The language-file sensor and the re-evaluation schedule, through Dagster's testing APIs, runs executed."""

import json
import shutil
from datetime import UTC, datetime

import dagster as dg
import pytest

from xlr_pipeline.defs.train import HeadTrainingConfig
from xlr_pipeline.runner import run_pipeline
from xlr_pipeline_tests.conftest import DATASET, SHIPPED, SUBSET_LANGUAGES, pipeline_for

pytestmark = pytest.mark.slow  # runs sensors and schedules over pipeline runs

LANGUAGE_ASSETS = ["captions", "text_embeddings", "retrieval_metrics"]
SUBSET_FIRST_IMAGE = "1f603"  # first train emoji of the shipped split, so in every subset
JOB_ASSETS = [dg.AssetKey([DATASET, key]) for key in LANGUAGE_ASSETS]  # what the reevaluate_language job selects
PARTITIONS = f"{DATASET}_languages"


def tick(instance, data_dir, cursor=None):
    pipeline = pipeline_for(data_dir)
    repository = pipeline.definitions.get_repository_def()
    context = dg.build_sensor_context(instance=instance, cursor=cursor, repository_def=repository)
    # Invoked directly: evaluate_tick would validate run requests against partitions the daemon adds later.
    result = repository.get_sensor_def(f"{DATASET}_language_files")(context)
    assert isinstance(result, dg.SensorResult)
    return result


def skip_message(result: dg.SensorResult) -> str:
    return result.skip_reason.skip_message if result.skip_reason else ""


def execute(instance, data_dir, requests):
    """What the daemon does with a tick's run requests."""
    assets = pipeline_for(data_dir).assets()
    for request in requests:
        result = dg.materialize(
            assets, selection=request.asset_selection, partition_key=request.partition_key, instance=instance
        )
        assert result.success


def latest_ids(instance, asset, partitions):
    return {
        p: instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=dg.AssetKey([DATASET, asset]), asset_partitions=[p] if p else None), limit=1
        )
        .records[0]
        .storage_id
        for p in partitions
    }


def test_first_tick_registers_every_language_and_runs_nothing(fresh_data_dir, instance):
    """Starting the UI then materializing the lane evaluates each language once: the first tick only registers."""
    result = tick(instance, fresh_data_dir)
    (partition_request,) = result.dynamic_partitions_requests
    assert sorted(partition_request.partition_keys) == sorted(SUBSET_LANGUAGES)
    assert not result.run_requests and "materialize the lane to evaluate them" in skip_message(result)
    assert sorted(json.loads(result.cursor)) == sorted(SUBSET_LANGUAGES)
    instance.add_dynamic_partitions(PARTITIONS, list(SUBSET_LANGUAGES))
    shutil.copyfile(SHIPPED / "emoji_cldr" / "captions" / "fr.tsv", fresh_data_dir / DATASET / "captions" / "fr.tsv")
    (request,) = tick(instance, fresh_data_dir, result.cursor).run_requests
    # a later file runs alone; no head yet: only what can run without one
    assert request.partition_key == "fr" and request.asset_selection == JOB_ASSETS[:2]


@pytest.fixture
def trained(fresh_data_dir):
    with dg.instance_for_test() as instance:
        configs = {"projection_head": HeadTrainingConfig(epochs=10)}
        run_pipeline(instance, pipeline_for(fresh_data_dir), [DATASET], configs, log=lambda _: None)
        yield instance


def test_new_language_file_is_evaluated_alone(fresh_data_dir, trained):
    instance = trained
    first = tick(instance, fresh_data_dir)  # first tick: languages already materialized are remembered, not rerun
    assert not first.run_requests and first.cursor
    before = {
        "image_embeddings": latest_ids(instance, "image_embeddings", [None]),
        "projection_head": latest_ids(instance, "projection_head", [None]),
        **{asset: latest_ids(instance, asset, SUBSET_LANGUAGES) for asset in LANGUAGE_ASSETS},
    }
    shutil.copyfile(SHIPPED / "emoji_cldr" / "captions" / "fr.tsv", fresh_data_dir / DATASET / "captions" / "fr.tsv")

    result = tick(instance, fresh_data_dir, first.cursor)
    assert [r.partition_keys for r in result.dynamic_partitions_requests] == [["fr"]]
    (request,) = result.run_requests
    assert request.partition_key == "fr" and request.asset_selection == JOB_ASSETS
    instance.add_dynamic_partitions(PARTITIONS, ["fr"])  # the daemon applies this; the test context does not
    execute(instance, fresh_data_dir, result.run_requests)

    after = {
        "image_embeddings": latest_ids(instance, "image_embeddings", [None]),
        "projection_head": latest_ids(instance, "projection_head", [None]),
        **{asset: latest_ids(instance, asset, SUBSET_LANGUAGES) for asset in LANGUAGE_ASSETS},
    }
    assert after == before
    assert set(latest_ids(instance, "retrieval_metrics", ["fr"])) == {"fr"}
    assert not tick(instance, fresh_data_dir, result.cursor).run_requests


def test_changed_invalid_and_removed_files_are_reported(fresh_data_dir, trained):
    instance = trained
    cursor = tick(instance, fresh_data_dir).cursor
    captions = fresh_data_dir / DATASET / "captions"
    with open(captions / "de.tsv", "a", encoding="utf-8") as handle:
        handle.write(f"{SUBSET_FIRST_IMAGE}\tzweite Beschreibung\tx\n")
    changed = tick(instance, fresh_data_dir, cursor)
    assert [r.partition_key for r in changed.run_requests] == ["de"] and not changed.dynamic_partitions_requests
    execute(instance, fresh_data_dir, changed.run_requests)

    (captions / "ja.tsv").write_bytes(b"image_id\tcaption\n1f600\t\xff\n")
    (captions / "de.tsv").unlink()
    (captions / "xx.tsv").write_text("image_id\tcaption\n", "utf-8")
    result = tick(instance, fresh_data_dir, changed.cursor)
    message = skip_message(result)
    assert not result.run_requests and message
    assert "ja.tsv:2: not valid UTF-8" in message
    assert "caption file for 'de' was removed; its partition and stored results are kept" in message
    assert "unknown language code 'xx'" in message
    assert set(instance.get_dynamic_partitions(PARTITIONS)) >= set(SUBSET_LANGUAGES)
    assert latest_ids(instance, "retrieval_metrics", ["de", "ja"])  # stored results are still there


def test_schedule_reevaluates_every_language(fresh_data_dir, trained):
    instance = trained
    before = latest_ids(instance, "retrieval_metrics", SUBSET_LANGUAGES)
    repository = pipeline_for(fresh_data_dir).definitions.get_repository_def()
    context = dg.build_schedule_context(
        instance=instance, scheduled_execution_time=datetime(2026, 11, 30, 3, tzinfo=UTC), repository_def=repository
    )
    with dg.partition_loading_context(dynamic_partitions_store=instance):
        requests = (
            repository.get_schedule_def(f"{DATASET}_reevaluate_all_languages").evaluate_tick(context).run_requests
        )
    assert sorted(r.partition_key for r in requests) == sorted(SUBSET_LANGUAGES)
    assert {request.job_name for request in requests} <= {None, f"{DATASET}_reevaluate_language"}
    execute(instance, fresh_data_dir, [request.with_replaced_attrs(asset_selection=JOB_ASSETS) for request in requests])
    after = latest_ids(instance, "retrieval_metrics", SUBSET_LANGUAGES)
    assert all(after[language] > before[language] for language in SUBSET_LANGUAGES)


def test_schedule_waits_for_a_trained_head(fresh_data_dir, instance):
    instance.add_dynamic_partitions(PARTITIONS, ["en"])
    repository = pipeline_for(fresh_data_dir).definitions.get_repository_def()
    context = dg.build_schedule_context(
        instance=instance, scheduled_execution_time=datetime(2026, 11, 30, tzinfo=UTC), repository_def=repository
    )
    skip = repository.get_schedule_def(f"{DATASET}_reevaluate_all_languages").evaluate_tick(context).skip_message
    assert f"no trained {DATASET}/projection_head" in skip


def test_a_dataset_waiting_for_its_images_gets_partitions_but_no_runs(fresh_data_dir, instance, tmp_path):
    images = fresh_data_dir / DATASET / "images"
    images.rename(tmp_path / "parked_images")
    waiting = tick(instance, fresh_data_dir)
    assert not waiting.run_requests and "no runs until the images are in place" in skip_message(waiting)
    assert "images folder not found" in skip_message(waiting)
    (partition_request,) = waiting.dynamic_partitions_requests
    assert sorted(partition_request.partition_keys) == sorted(SUBSET_LANGUAGES)
    instance.add_dynamic_partitions(PARTITIONS, list(SUBSET_LANGUAGES))  # what the daemon does

    (tmp_path / "parked_images").rename(images)
    ready = tick(instance, fresh_data_dir, waiting.cursor)
    assert (
        not ready.run_requests and not ready.dynamic_partitions_requests
    )  # registered: the user materializes the lane
    assert sorted(json.loads(ready.cursor)) == sorted(SUBSET_LANGUAGES)

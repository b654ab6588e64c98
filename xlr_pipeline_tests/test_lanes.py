"""Datasets side by side: two real datasets in one instance and one DuckDB, each its own lane."""

import hashlib
import shutil
from pathlib import Path

import dagster as dg
import numpy as np
import polars as pl
import pytest

from xlr_pipeline.core.models.embedding_frames import training_pairs
from xlr_pipeline.core.models.embeddings import vectors_of
from xlr_pipeline.core.reporting.sql import run_sql
from xlr_pipeline.core.training.head import HeadConfig, head_fingerprint, head_from_bytes, train_head
from xlr_pipeline.defs.experiments import AugmentationConfig, FinetuneAssetConfig, GridConfig
from xlr_pipeline.defs.train import HeadTrainingConfig
from xlr_pipeline.runner import RunFailed, current_statuses, run_pipeline
from xlr_pipeline_tests.conftest import make_emoji_subset, outputs_for, pipeline_for

pytestmark = pytest.mark.slow  # runs several lanes

HEAD = {"projection_head": HeadTrainingConfig(epochs=10)}
A, B = "lane_a", "lane_b"


def executed(report) -> set[str]:
    return {f"{asset}[{partition}]" if partition else asset for asset, partition, _ in report.executed}


def materialization_records(instance, dataset: str) -> list:
    """Every stored materialization event of a dataset's assets, serialised: storage id, tags and metadata."""
    records = []
    for key in sorted(key for key in instance.get_asset_keys() if key.path[0] == dataset):
        found = instance.fetch_materializations(dg.AssetRecordsFilter(asset_key=key), limit=1000).records
        records += [
            (
                r.storage_id,
                r.asset_materialization.partition,
                repr(sorted(r.asset_materialization.tags.items())),
                repr(sorted((k, repr(v)) for k, v in r.asset_materialization.metadata.items())),
            )
            for r in found
        ]
    return sorted(records)


def warehouse_rows(db: Path, dataset: str) -> dict[str, list]:
    return {
        table: run_sql(db, f"SELECT * FROM {table} WHERE dataset = '{dataset}' ORDER BY ALL").rows()
        for table in ("runs", "recall", "rank_summary")
    }


def output_bytes(data_dir: Path, dataset: str) -> dict[str, str]:
    root = outputs_for(data_dir, dataset).root
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def two_datasets(tmp_path_factory):
    """Dataset A (en, ja) and dataset B (en, de, other images) under one data dir, both materialized in one instance."""
    data_dir = tmp_path_factory.mktemp("lanes")
    make_emoji_subset(data_dir, n_train=60, n_test=30, languages=("en", "ja"), name=A)
    make_emoji_subset(data_dir, n_train=60, n_test=30, languages=("en", "de"), name=B, first=60)
    home = tmp_path_factory.mktemp("home")
    with dg.DagsterInstance.local_temp(tempdir=str(home)) as instance:
        pipeline = pipeline_for(data_dir)
        first = run_pipeline(instance, pipeline, [A], HEAD, log=lambda _: None)
        second = run_pipeline(instance, pipeline, [B], HEAD, log=lambda _: None)
        yield data_dir, instance, first, second


def test_each_dataset_runs_in_its_own_lane(two_datasets):
    data_dir, instance, first, second = two_datasets
    assert executed(first) == {
        f"{A}/{a}[{lang}]" for a in ("captions", "text_embeddings", "retrieval_metrics") for lang in ("en", "ja")
    } | {f"{A}/images", f"{A}/image_embeddings", f"{A}/projection_head", f"{A}/image_index"} | {
        f"{A}/image_embedding_shards"
    }
    assert {name.split("/")[0] for name in executed(second)} == {B}
    assert set(instance.get_dynamic_partitions(f"{A}_languages")) == {"en", "ja"}
    assert set(instance.get_dynamic_partitions(f"{B}_languages")) == {"en", "de"}
    db = data_dir / "results.duckdb"
    languages = run_sql(
        db,
        "SELECT dataset, string_agg(DISTINCT language, ' ' ORDER BY language) AS l FROM recall GROUP BY ALL ORDER BY 1",
    )
    assert languages.rows() == [(A, "en ja"), (B, "de en")]
    assert outputs_for(data_dir, A).head_path.is_file() and outputs_for(data_dir, B).head_path.is_file()


def test_nothing_done_on_one_dataset_touches_the_other(two_datasets, tmp_path):
    data_dir, instance, _, _ = two_datasets
    pipeline = pipeline_for(data_dir)
    before = (
        materialization_records(instance, A),
        warehouse_rows(data_dir / "results.duckdb", A),
        output_bytes(data_dir, A),
    )

    # after A then B, a stale walk over every lane has nothing to do
    assert all(s.state == "fresh" for s in current_statuses(instance, pipeline, [A, B], HEAD))
    assert executed(run_pipeline(instance, pipeline, [A, B], HEAD, include_stale=True, log=lambda _: None)) == set()

    # changing B's German captions reruns B's German assets only
    captions = data_dir / B / "captions" / "de.tsv"
    lines = captions.read_text("utf-8").splitlines()
    test_image = next(
        line.split(",")[0] for line in (data_dir / B / "split.csv").read_text().splitlines()[1:] if ",test," in line
    )
    edited = []
    for line in lines:
        image_id, caption, *rest = line.split("\t")
        edited.append("\t".join([image_id, f"{caption} neu" if image_id == test_image else caption, *rest]))
    captions.write_text("\n".join(edited) + "\n", "utf-8")
    rerun = run_pipeline(instance, pipeline, [A, B], HEAD, include_stale=True, log=lambda _: None)
    assert executed(rerun) == {f"{B}/captions[de]", f"{B}/text_embeddings[de]", f"{B}/retrieval_metrics[de]"}

    # the grid runs on B alone, reading B's languages and no other; B has no val split, so hubness reduction
    # (tuned on validation) is refused before any training, naming the option that turns it off
    grid_options = dict(
        objectives=["patr"],
        augmentations=["none", "salt"],
        seeds=[0],
        epochs=5,
        per_language_centring=False,
        english_only_baseline=False,
        tuning_trials=0,
        other_text_models=[],
        other_image_models=[],
    )
    grid = {
        **HEAD,
        "text_augmentations": AugmentationConfig(languages=["de"], words_per_language=200, seeds=[0]),
        "text_encoder_finetuning": FinetuneAssetConfig(steps=2, batch_size=8, trainable_layers=1, seeds=[0]),
        "experiment_grid": GridConfig(**grid_options),
    }
    grid_stages = pipeline.stage_assets("run", "grid")
    with pytest.raises(RunFailed, match="no 'en' captions of validation .* set hubness_reduction to false"):
        run_pipeline(instance, pipeline, [B], grid, stages=grid_stages, log=lambda _: None)
    grid["experiment_grid"] = GridConfig(**grid_options, hubness_reduction=False)
    report = run_pipeline(instance, pipeline, [B], grid, stages=grid_stages, log=lambda _: None)
    # the refused run materialized the grid's inputs; this one the grid and its report
    assert {f"{B}/experiment_grid", f"{B}/grid_report"} <= executed(report)
    grid_languages = run_sql(
        data_dir / "results.duckdb",
        f"SELECT DISTINCT language FROM recall WHERE dataset = '{B}' AND run_id LIKE '%/seed%'",
    )
    assert set(grid_languages["language"]) == {"en", "de"}
    assert set(pl.read_parquet(outputs_for(data_dir, B).grid_hits_path)["language"]) == {"en", "de"}
    assert (data_dir / "reports" / B / "report.md").is_file() and not (data_dir / "reports" / A).exists()

    after = (
        materialization_records(instance, A),
        warehouse_rows(data_dir / "results.duckdb", A),
        output_bytes(data_dir, A),
    )
    assert after == before


def test_a_dataset_trained_on_german_reads_german_captions_only(tmp_path):
    dataset = make_emoji_subset(tmp_path, n_train=60, n_test=20, languages=("en", "de", "ja"), name="german_trained")
    spec = dataset / "dataset.toml"
    spec.write_text(spec.read_text("utf-8").replace('train_language = "en"', 'train_language = "de"'), "utf-8")
    with dg.instance_for_test() as instance:
        run_pipeline(instance, pipeline_for(tmp_path), ["german_trained"], HEAD, log=lambda _: None)
    outputs = outputs_for(tmp_path, "german_trained")
    head, provenance = head_from_bytes(outputs.head_path.read_bytes())
    german = pl.read_parquet(outputs.text_embeddings_path("de"))
    assert provenance["train_language"] == "de" and provenance["train_pairs"] == 60
    assert set(german["split"]) == {"train", "test"}
    assert set(pl.read_parquet(outputs.text_embeddings_path("en"))["split"]) == {"test"}  # English is zero-shot now
    # the stored head is exactly what training on the German train captions gives
    pairs = training_pairs(pl.read_parquet(outputs.image_embeddings_path), german)
    expected = train_head(
        vectors_of(pairs), vectors_of(pairs, "image_vector"), pairs["image_id"].to_numpy(), HeadConfig(epochs=10)
    )
    assert head_fingerprint(expected.head) == head_fingerprint(head)
    runs = run_sql(tmp_path / "results.duckdb", "SELECT DISTINCT train_language, dataset FROM runs")
    assert runs.rows() == [("de", "german_trained")]


def test_a_dataset_without_its_images_is_reported_and_does_not_stop_the_others(tmp_path):
    make_emoji_subset(tmp_path, n_train=20, n_test=10, languages=("en", "de"), name="complete")
    waiting = make_emoji_subset(tmp_path, n_train=20, n_test=10, languages=("en", "de"), name="no_images_yet")
    shutil.rmtree(waiting / "images")
    pipeline = pipeline_for(tmp_path)
    with dg.instance_for_test() as instance:
        statuses = {s.target.name: s for s in current_statuses(instance, pipeline, ["complete", "no_images_yet"], HEAD)}
        assert statuses["no_images_yet/images"].state == "error"
        assert "images folder not found" in statuses["no_images_yet/images"].causes[0]
        assert statuses["no_images_yet/image_embedding_shards"].state == "blocked"
        assert statuses["no_images_yet/image_embeddings"].state == "blocked"
        assert statuses["no_images_yet/projection_head"].state == "blocked"
        assert (
            "upstream cannot run: no_images_yet/image_index" in statuses["no_images_yet/retrieval_metrics[de]"].causes
        )
        report = run_pipeline(
            instance, pipeline, ["complete", "no_images_yet"], HEAD, include_stale=True, log=lambda _: None
        )
    ran = executed(report)
    assert "complete/retrieval_metrics[de]" in ran and "no_images_yet/text_embeddings[de]" in ran
    assert not any(
        name.startswith("no_images_yet/") and "captions" not in name and "text_embeddings" not in name for name in ran
    )
    assert {s.target.name for s in report.blocked} >= {
        "no_images_yet/images",
        "no_images_yet/image_embeddings",
        "no_images_yet/projection_head",
    }
    assert np.isfinite(run_sql(tmp_path / "results.duckdb", "SELECT avg(recall) AS r FROM recall")["r"][0])

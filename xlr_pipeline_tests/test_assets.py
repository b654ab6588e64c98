"""Each asset materialized for real with dagster.materialize into a temporary data dir."""

import shutil

import dagster as dg
import duckdb
import numpy as np
import polars as pl
import pytest

from xlr_pipeline.core.models.embeddings import vectors_of
from xlr_pipeline.core.scoring.index import load_index
from xlr_pipeline.core.training.head import head_from_bytes
from xlr_pipeline.defs.index import ImageIndexConfig
from xlr_pipeline.defs.train import HeadTrainingConfig
from xlr_pipeline_tests.conftest import DATASET, SUBSET_LANGUAGES, op_name, pipeline_for

pytestmark = pytest.mark.slow  # materializes the whole lane

FAST_HEAD = dg.RunConfig(ops={op_name("projection_head"): HeadTrainingConfig(epochs=15, seed=1)})


def materialize(instance, pipeline, asset, partition=None, run_config=None, raise_on_error=True):
    """One asset of the subset's lane, through the pipeline's own definitions (settings bound)."""
    return dg.materialize(
        pipeline.assets(),
        selection=[pipeline.lane(DATASET).key(asset)],
        partition_key=partition,
        instance=instance,
        run_config=run_config,
        raise_on_error=raise_on_error,
    )


def embed_images(instance, pipeline):
    """Every image shard of the subset, then their union, as `xlr run` does; the union's run result."""
    lane = pipeline.lane(DATASET)
    for shard in lane.shard_keys():
        materialize(instance, pipeline, "image_embedding_shards", shard if lane.shards else None)
    return materialize(instance, pipeline, "image_embeddings")


def check_results(result) -> dict[str, bool]:
    return {
        evaluation.check_name: evaluation.passed
        for evaluation in (
            e.event_specific_data
            for e in result.all_events
            if e.event_type == dg.DagsterEventType.ASSET_CHECK_EVALUATION
        )
    }


def failure_message(result) -> str:
    return next(
        e.step_failure_data.error.message for e in result.all_events if e.event_type == dg.DagsterEventType.STEP_FAILURE
    )


@pytest.fixture(scope="module")
def chain(tmp_path_factory, subset_data_dir):
    """Materialize the whole chain once, asset by asset, and hand back (pipeline, instance, results)."""
    data_dir = tmp_path_factory.mktemp("chain")
    shutil.copytree(subset_data_dir / DATASET, data_dir / DATASET)
    with dg.instance_for_test() as instance:
        yield _materialize_chain(pipeline_for(data_dir), instance)


def _materialize_chain(pipeline, instance):
    instance.add_dynamic_partitions(pipeline.lane(DATASET).partitions.name, list(SUBSET_LANGUAGES))
    results = {"images": materialize(instance, pipeline, "images")}
    for language in SUBSET_LANGUAGES:
        results[f"captions[{language}]"] = materialize(instance, pipeline, "captions", language)
    results["image_embeddings"] = embed_images(instance, pipeline)
    for language in SUBSET_LANGUAGES:
        results[f"text_embeddings[{language}]"] = materialize(instance, pipeline, "text_embeddings", language)
    results["projection_head"] = materialize(instance, pipeline, "projection_head", run_config=FAST_HEAD)
    results["image_index"] = materialize(instance, pipeline, "image_index")
    for language in SUBSET_LANGUAGES:
        results[f"retrieval_metrics[{language}]"] = materialize(instance, pipeline, "retrieval_metrics", language)
    return pipeline, instance, results


def test_every_asset_writes_what_it_promises(chain):
    pipeline, instance, results = chain
    outputs = pipeline.settings.outputs(DATASET)
    assert all(result.success for result in results.values())

    image_set = pl.read_parquet(outputs.images_path)
    assert image_set.height == 190 and set(image_set["status"]) == {"ok"}
    assert image_set["sha256"].str.len_chars().to_list() == [64] * 190
    assert check_results(results["images"]) == {"all_images_usable": True}

    captions = pl.read_parquet(outputs.captions_path("de"))
    assert captions.height == 190 and set(captions["split"]) == {"train", "val", "test"}
    assert check_results(results["captions[de]"]) == {"no_quarantined_rows": True, "every_test_image_captioned": True}

    images = pl.read_parquet(outputs.image_embeddings_path)
    assert images.height == 190 and vectors_of(images).shape == (190, 1280)
    assert check_results(results["image_embeddings"]) == {
        "vectors_valid": True,
        "row_count_matches_source": True,
        "distinct_images": True,
    }

    english = pl.read_parquet(outputs.text_embeddings_path("en"))
    german = pl.read_parquet(outputs.text_embeddings_path("de"))
    assert english.height == 190  # training language: every split
    assert german.height == 40 and set(german["split"]) == {"test"}  # others: test only
    assert np.allclose(np.linalg.norm(vectors_of(german), axis=1), 1.0, atol=1e-3)

    head, provenance = head_from_bytes(outputs.head_path.read_bytes())
    assert provenance["train_pairs"] == 120 and provenance["train_language"] == "en"
    assert head.config.epochs == 15 and head.config.seed == 1
    assert check_results(results["projection_head"]) == {"weights_finite": True, "loss_decreased": True}
    history = pl.read_parquet(outputs.loss_history_path)
    assert history.height == 15

    index = load_index(outputs.index_path)
    assert index.ntotal == 40 and index.d == head.config.embed_dim

    metrics = results["retrieval_metrics[ja]"].asset_materializations_for_node(op_name("retrieval_metrics"))[0].metadata
    assert 0.0 <= metrics["text_to_image/R@1"].value <= metrics["text_to_image/R@10"].value <= 1.0
    assert check_results(results["retrieval_metrics[ja]"])["recall_bounds"] is True


def test_duckdb_holds_both_directions_for_every_language(chain):
    settings = chain[0].lane(DATASET).settings(chain[0].settings)
    with duckdb.connect(str(settings.results_db), read_only=True) as connection:
        rows = connection.execute(
            "SELECT language, direction, k, recall, n_queries FROM recall r JOIN runs USING (run_id) "
            "WHERE runs.baseline_of IS NULL ORDER BY ALL"
        ).fetchall()
        runs = connection.execute(
            "SELECT objective, seed, image_model, text_model, baseline_of IS NULL FROM runs ORDER BY 1"
        ).fetchall()
    assert {(language, direction, k) for language, direction, k, _, _ in rows} == {
        (language, direction, k)
        for language in SUBSET_LANGUAGES
        for direction in ("image_to_text", "text_to_image")
        for k in (1, 5, 10)
    }
    assert all(n == 40 for *_, n in rows)
    assert runs == [
        ("hinge", 1, settings.image_model, settings.text_model, True),
        ("random_init", 1, settings.image_model, settings.text_model, False),
    ]


def test_bad_caption_file_fails_clearly_and_keeps_what_was_stored(chain):
    pipeline, instance, _ = chain
    outputs = pipeline.settings.outputs(DATASET)
    stored = outputs.captions_path("de").read_bytes()
    source = pipeline.lane(DATASET).spec.root / "captions" / "de.tsv"
    original = source.read_bytes()
    source.write_bytes(b"image_id\tcaption\n1f600\tGrinsen \xff\n")
    try:
        result = materialize(instance, pipeline, "captions", "de", raise_on_error=False)
    finally:
        source.write_bytes(original)
    assert not result.success
    assert "de.tsv:2: not valid UTF-8" in failure_message(result)
    assert outputs.captions_path("de").read_bytes() == stored


def test_quarantined_rows_warn_but_keep_good_rows(fresh_data_dir, instance):
    pipeline = pipeline_for(fresh_data_dir)
    outputs = pipeline.settings.outputs(DATASET)
    path = fresh_data_dir / DATASET / "captions" / "de.tsv"
    path.write_text(path.read_text("utf-8") + "zz-unknown\tGeist\tx\n", "utf-8")
    instance.add_dynamic_partitions(pipeline.lane(DATASET).partitions.name, ["de"])
    result = materialize(instance, pipeline, "captions", "de")
    assert check_results(result)["no_quarantined_rows"] is False
    quarantine = pl.read_parquet(outputs.quarantine_path("de"))
    assert quarantine.row(0, named=True)["source_line"] == 192 and "zz-unknown" in quarantine["reason"][0]
    assert pl.read_parquet(outputs.captions_path("de")).height == 190


def test_a_corrupt_image_stops_the_lane_and_a_missing_one_is_named_and_left_out(fresh_data_dir, instance):
    images = sorted((fresh_data_dir / DATASET / "images").iterdir())
    images[5].unlink()
    original = images[3].read_bytes()
    images[3].write_bytes(b"not an image at all")
    pipeline = pipeline_for(fresh_data_dir)
    failed = materialize(instance, pipeline, "images", raise_on_error=False)
    message = "".join(str(event.event_specific_data) for event in failed.all_events if event.is_failure)
    assert not failed.success and f"1 listed image(s) cannot be decoded — {images[3]}: cannot decode image" in message
    assert "replace them or remove them from the image list" in message
    images[3].write_bytes(original)
    result = materialize(instance, pipeline, "images")
    evaluation = next(
        e.event_specific_data
        for e in result.all_events
        if e.event_type == dg.DagsterEventType.ASSET_CHECK_EVALUATION
        and e.event_specific_data.check_name == "all_images_usable"
    )
    assert not evaluation.passed and evaluation.metadata["unusable"].value == 1
    assert images[5].stem in evaluation.metadata["first"].value
    unusable = pl.read_parquet(pipeline.settings.outputs(DATASET).images_path).filter(pl.col("status") != "ok")
    assert dict(zip(unusable["image_id"], unusable["status"])) == {images[5].stem: "missing"}
    result = embed_images(instance, pipeline)
    embedded = pl.read_parquet(pipeline.settings.outputs(DATASET).image_embeddings_path)
    assert embedded.height == 189 and images[5].stem not in set(embedded["image_id"])


def test_byte_identical_images_under_two_ids_are_reported(fresh_data_dir, instance):
    dataset = fresh_data_dir / DATASET
    train_image = next(
        line.split(",")[0] for line in (dataset / "split.csv").read_text().splitlines()[1:] if ",train," in line
    )
    shutil.copyfile(dataset / "images" / f"{train_image}.png", dataset / "images" / "copy-of-train.png")
    with open(dataset / "split.csv", "a", encoding="utf-8") as handle:
        handle.write("copy-of-train,test,x,y,z\n")
    pipeline = pipeline_for(fresh_data_dir)
    materialize(instance, pipeline, "images")
    result = embed_images(instance, pipeline)
    evaluation = next(
        e.event_specific_data
        for e in result.all_events
        if e.event_type == dg.DagsterEventType.ASSET_CHECK_EVALUATION
        and e.event_specific_data.check_name == "distinct_images"
    )
    assert not evaluation.passed
    metadata = {key: value.value for key, value in evaluation.metadata.items()}
    assert metadata["duplicate_groups"] == 1 and metadata["groups_across_splits"] == 1
    assert metadata["examples"] == " = ".join(sorted([train_image, "copy-of-train"]))


def test_past_its_threshold_the_index_is_hnsw_with_its_recall_against_exact_recorded(chain):
    pipeline, instance, _ = chain
    node = op_name("image_index")
    approximate = materialize(
        instance,
        pipeline,
        "image_index",
        run_config=dg.RunConfig(ops={node: ImageIndexConfig(exact_up_to=5, approximate="hnsw", hnsw_neighbours=4)}),
    )
    metadata = approximate.asset_materializations_for_node(node)[0].metadata
    index = load_index(pipeline.settings.outputs(DATASET).index_path)
    assert metadata["index_type"].value == "IndexHNSWFlat" and type(index).__name__ == "IndexHNSWFlat"
    assert 0.5 <= metadata["recall_at_10_vs_exact"].value <= 1.0 and metadata["index_plan"].data["exact_up_to"] == 5
    exact = materialize(instance, pipeline, "image_index").asset_materializations_for_node(node)[0].metadata
    assert exact["index_type"].value == "IndexFlatIP" and exact["recall_at_10_vs_exact"].value == 1.0

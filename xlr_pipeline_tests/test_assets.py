"""Each asset materialized for real with dagster.materialize into a temporary data dir."""

import shutil

import dagster as dg
import duckdb
import numpy as np
import polars as pl
import pytest

from xlr_pipeline.core.embeddings import vectors_of
from xlr_pipeline.core.head import head_from_bytes
from xlr_pipeline.core.index import load_index
from xlr_pipeline.definitions import defs
from xlr_pipeline.defs.partitions import language_partitions
from xlr_pipeline.defs.train import HeadTrainingConfig
from xlr_pipeline_tests.conftest import SUBSET_LANGUAGES, settings_for

ASSETS = list(defs.assets)
FAST_HEAD = dg.RunConfig(ops={"projection_head": HeadTrainingConfig(epochs=15, seed=1)})


def materialize(instance, settings, asset, partition=None, run_config=None, raise_on_error=True):
    return dg.materialize(
        ASSETS,
        selection=[asset],
        partition_key=partition,
        instance=instance,
        resources={"settings": settings},
        run_config=run_config,
        raise_on_error=raise_on_error,
    )


def check_results(result) -> dict[str, bool]:
    return {
        evaluation.check_name: evaluation.passed
        for evaluation in (e.event_specific_data for e in result.all_events if e.event_type == dg.DagsterEventType.ASSET_CHECK_EVALUATION)
    }


def failure_message(result) -> str:
    return next(e.step_failure_data.error.message for e in result.all_events if e.event_type == dg.DagsterEventType.STEP_FAILURE)


@pytest.fixture(scope="module")
def chain(tmp_path_factory, subset_data_dir):
    """Materialize the whole chain once, asset by asset, and hand back (settings, instance, results)."""
    data_dir = tmp_path_factory.mktemp("chain")
    shutil.copytree(subset_data_dir / "emoji_small", data_dir / "emoji_small")
    with dg.instance_for_test() as instance:
        yield _materialize_chain(settings_for(data_dir), instance)


def _materialize_chain(settings, instance):
    instance.add_dynamic_partitions(language_partitions.name, list(SUBSET_LANGUAGES))
    results = {}
    for language in SUBSET_LANGUAGES:
        results[f"captions[{language}]"] = materialize(instance, settings, "captions", language)
    results["image_embeddings"] = materialize(instance, settings, "image_embeddings")
    for language in SUBSET_LANGUAGES:
        results[f"text_embeddings[{language}]"] = materialize(instance, settings, "text_embeddings", language)
    results["projection_head"] = materialize(instance, settings, "projection_head", run_config=FAST_HEAD)
    results["image_index"] = materialize(instance, settings, "image_index")
    for language in SUBSET_LANGUAGES:
        results[f"retrieval_metrics[{language}]"] = materialize(instance, settings, "retrieval_metrics", language)
    return settings, instance, results


def test_every_asset_writes_what_it_promises(chain):
    settings, instance, results = chain
    assert all(result.success for result in results.values())

    captions = pl.read_parquet(settings.captions_path("de"))
    assert captions.height == 160 and set(captions["split"]) == {"train", "test"}
    assert check_results(results["captions[de]"]) == {"no_quarantined_rows": True, "every_test_image_captioned": True}

    images = pl.read_parquet(settings.image_embeddings_path)
    assert images.height == 160 and vectors_of(images).shape == (160, 1280)
    assert check_results(results["image_embeddings"]) == {"vectors_valid": True, "row_count_matches_source": True}

    english = pl.read_parquet(settings.text_embeddings_path("en"))
    german = pl.read_parquet(settings.text_embeddings_path("de"))
    assert english.height == 160  # training language: train + test
    assert german.height == 40 and set(german["split"]) == {"test"}  # others: test only
    assert np.allclose(np.linalg.norm(vectors_of(german), axis=1), 1.0, atol=1e-3)

    head, provenance = head_from_bytes(settings.head_path.read_bytes())
    assert provenance["train_pairs"] == 120 and provenance["train_language"] == "en"
    assert head.config.epochs == 15 and head.config.seed == 1
    assert check_results(results["projection_head"]) == {"weights_finite": True, "loss_decreased": True}
    history = pl.read_parquet(settings.loss_history_path)
    assert history.height == 15

    index = load_index(settings.index_path)
    assert index.ntotal == 40 and index.d == head.config.embed_dim

    metrics = results["retrieval_metrics[ja]"].asset_materializations_for_node("retrieval_metrics")[0].metadata
    assert 0.0 <= metrics["text_to_image/R@1"].value <= metrics["text_to_image/R@10"].value <= 1.0
    assert check_results(results["retrieval_metrics[ja]"])["recall_bounds"] is True


def test_duckdb_holds_both_directions_for_every_language(chain):
    settings, _, _ = chain
    with duckdb.connect(str(settings.results_db), read_only=True) as connection:
        rows = connection.execute(
            "SELECT language, direction, k, recall, n_queries FROM recall r JOIN runs USING (run_id) "
            "WHERE runs.baseline_of IS NULL ORDER BY ALL"
        ).fetchall()
        runs = connection.execute("SELECT objective, seed, image_model, text_model, baseline_of IS NULL FROM runs ORDER BY 1").fetchall()
    assert {(language, direction, k) for language, direction, k, _, _ in rows} == {
        (language, direction, k) for language in SUBSET_LANGUAGES for direction in ("image_to_text", "text_to_image") for k in (1, 5, 10)
    }
    assert all(n == 40 for *_, n in rows)
    assert runs == [
        ("patr", 1, settings.image_model, settings.text_model, True),
        ("random_init", 1, settings.image_model, settings.text_model, False),
    ]


def test_bad_caption_file_fails_clearly_and_keeps_what_was_stored(chain):
    settings, instance, _ = chain
    stored = settings.captions_path("de").read_bytes()
    source = settings.dataset_spec().root / "captions" / "de.tsv"
    original = source.read_bytes()
    source.write_bytes(b"image_id\tcaption\n1f600\tGrinsen \xff\n")
    try:
        result = materialize(instance, settings, "captions", "de", raise_on_error=False)
    finally:
        source.write_bytes(original)
    assert not result.success
    assert "de.tsv:2: not valid UTF-8" in failure_message(result)
    assert settings.captions_path("de").read_bytes() == stored


def test_quarantined_rows_warn_but_keep_good_rows(fresh_data_dir, instance):
    settings = settings_for(fresh_data_dir)
    path = fresh_data_dir / "emoji_small" / "captions" / "de.tsv"
    path.write_text(path.read_text("utf-8") + "zz-unknown\tGeist\tx\n", "utf-8")
    instance.add_dynamic_partitions(language_partitions.name, ["de"])
    result = materialize(instance, settings, "captions", "de")
    assert check_results(result)["no_quarantined_rows"] is False
    quarantine = pl.read_parquet(settings.quarantine_path("de"))
    assert quarantine.row(0, named=True)["source_line"] == 162 and "zz-unknown" in quarantine["reason"][0]
    assert pl.read_parquet(settings.captions_path("de")).height == 160


def test_corrupt_image_fails_naming_the_file(fresh_data_dir, instance):
    settings = settings_for(fresh_data_dir)
    victim = sorted((fresh_data_dir / "emoji_small" / "images").iterdir())[3]
    victim.write_bytes(b"not an image at all")
    result = materialize(instance, settings, "image_embeddings", raise_on_error=False)
    assert f"{victim}: cannot decode image" in failure_message(result)

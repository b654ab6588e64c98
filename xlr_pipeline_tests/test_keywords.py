"""Keyword augmentation in the chain: `xlr run` trains on each training caption's keywords as one more pair —
the rows the grid's `keywords` cells train on, in their order — and a dataset without keywords is refused by name."""

import dagster as dg
import numpy as np
import polars as pl
import pytest

from xlr_pipeline.core.experiments.grid import training_arrays, training_data
from xlr_pipeline.core.models.embedding_frames import with_keyword_pairs
from xlr_pipeline.core.models.embeddings import vectors_of, with_vectors
from xlr_pipeline.core.reporting.sql import run_sql
from xlr_pipeline.core.training.augment import keyword_texts
from xlr_pipeline.core.training.head import head_from_bytes
from xlr_pipeline.defs.train import HeadTrainingConfig
from xlr_pipeline.runner import RunFailed, run_pipeline
from xlr_pipeline_tests.conftest import DATASET, SHIPPED, outputs_for, pipeline_for


def _shipped_english_captions() -> pl.DataFrame:
    rows = [
        line.split("\t") for line in (SHIPPED / "emoji_cldr" / "captions" / "en.tsv").read_text("utf-8").splitlines()
    ]
    frame = pl.DataFrame(rows[1:], schema=rows[0], orient="row").head(60)
    return frame.with_columns(
        pl.col("image_id").alias("caption_id"),
        pl.when(pl.int_range(pl.len()) % 3 == 0).then(pl.lit("test")).otherwise(pl.lit("train")).alias("split"),
        pl.when(pl.int_range(pl.len()) % 7 == 0).then(pl.lit("")).otherwise(pl.col("keywords")).alias("keywords"),
    )


def test_the_chains_keyword_pairs_are_the_grids_keyword_rows():
    captions = _shipped_english_captions()
    rng = np.random.default_rng(0)
    train = captions.filter(pl.col("split") == "train")
    pairs = with_vectors(train.select("caption_id", "image_id"), rng.normal(size=(train.height, 8)))
    pairs = with_vectors(pairs, rng.normal(size=(train.height, 6)), "image_vector")
    keywords = keyword_texts(captions.filter(pl.col("split") == "train"))
    keywords = with_vectors(keywords, rng.normal(size=(keywords.height, 8)))
    assert 0 < keywords.height < train.height  # every seventh caption has none

    chain = with_keyword_pairs(pairs, keywords)
    no_copies = pl.DataFrame(schema={"seed": pl.Int64})  # no code-switched copies: keywords only
    text, image, image_ids = training_arrays(training_data(pairs, no_copies, keywords), "keywords", 0.4, 0)
    assert chain.height == train.height + keywords.height
    assert np.array_equal(vectors_of(chain), text) and np.array_equal(vectors_of(chain, "image_vector"), image)
    assert chain["image_id"].to_list() == list(image_ids)


@pytest.mark.slow  # runs the chain twice
def test_xlr_run_trains_with_keywords_records_it_and_refuses_a_dataset_without_them(fresh_data_dir):
    pipeline = pipeline_for(fresh_data_dir)
    outputs = outputs_for(fresh_data_dir)
    config = {"projection_head": HeadTrainingConfig(augmentation="keywords", epochs=2)}
    with dg.instance_for_test() as instance:
        run_pipeline(instance, pipeline, [DATASET], config, log=lambda _: None)
        _, provenance = head_from_bytes(outputs.head_path.read_bytes())
        train = pl.read_parquet(outputs.captions_path("en")).filter(pl.col("split") == "train")
        with_keywords = train.filter(pl.col("keywords") != "").height
        assert provenance["augmentation"] == "keywords" and provenance["train_pairs"] == train.height + with_keywords
        runs = run_sql(pipeline.settings.results_db, "SELECT DISTINCT augmentation FROM runs")
        assert runs["augmentation"].to_list() == ["keywords"]

        captions = fresh_data_dir / DATASET / "captions" / "en.tsv"
        lines = captions.read_text("utf-8").splitlines()
        captions.write_text("\n".join(line.rsplit("\t", 1)[0] for line in lines) + "\n", "utf-8")
        with pytest.raises(RunFailed, match=f"{DATASET}: augmentation 'keywords' needs keywords"):
            run_pipeline(instance, pipeline, [DATASET], config, include_stale=True, log=lambda _: None)

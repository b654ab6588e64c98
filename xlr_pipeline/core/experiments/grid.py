"""The experiment grid: objectives × augmentations × seeds (× text and image encoders), trained on cached embeddings.

Every cell trains for the same number of optimiser steps (`step_budget`): augmented cells have more rows, and
with a per-epoch budget they would also get more updates, confounding the augmentation with training length.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import numpy as np
import polars as pl

from xlr_pipeline.core.experiments.comparisons import encoder_label, image_encoder_label
from xlr_pipeline.core.models.embeddings import vectors_of
from xlr_pipeline.core.scoring.evaluation import TRAINED
from xlr_pipeline.core.scoring.hubness import HUBNESS_PARAMETERS
from xlr_pipeline.core.scoring.metrics import DirectionResult
from xlr_pipeline.core.training.augment import mixup
from xlr_pipeline.core.training.choices import AUGMENTATIONS, OBJECTIVES, Augmentation, Objective
from xlr_pipeline.core.training.configs import HeadConfig

# The objective fine-tuned text encoders are compared with (the paper's m3): each arm has several independently
# fine-tuned replicates, so one objective keeps the grid's cost in bounds.
FINETUNED_OBJECTIVE = "m3"

if TYPE_CHECKING:
    from xlr_pipeline.core.training.head import TrainingResult


@dataclass(frozen=True)
class Cell:
    objective: Objective
    augmentation: Augmentation
    seed: int
    text_model: str
    image_model: str
    centring: str = "train"  # "train" or "per_language" (evaluation-time)
    with_random_baseline: bool = False  # one random head per seed and encoder
    retrieval: str = "plain"  # or a hubness reduction of core/scoring/hubness.py (evaluation-time)

    @property
    def augmentation_label(self) -> str:
        centring = " + per-language centring" if self.centring == "per_language" else ""
        return self.augmentation + centring + (f" + {self.retrieval}" if self.retrieval != "plain" else "")

    @property
    def encoders(self) -> tuple[str, str]:
        return self.text_model, self.image_model

    def run_suffix(self, encoders_label: str) -> str:
        parts = [self.objective, self.augmentation_label, encoders_label, f"seed{self.seed}"]
        return "/".join(part.replace(" ", "") for part in parts)


@dataclass(frozen=True)
class AugmentedCopies:
    """One seed's code-switched copies: the row of `TrainingData.text` each was made from, its vector, and the
    vectors of its English control twins (the same words deleted, or replaced by English neighbours)."""

    of: np.ndarray
    switched: np.ndarray
    english_control: np.ndarray
    english_substitute: np.ndarray


@dataclass(frozen=True)
class TrainingData:
    """English train pairs (+ optional augmentations) for one text encoder."""

    text: np.ndarray
    image: np.ndarray
    image_ids: np.ndarray
    copies: Mapping[int, AugmentedCopies] = field(default_factory=dict)  # per seed
    keyword_text: np.ndarray | None = None  # vectors of each caption's CLDR keywords
    keyword_of: np.ndarray | None = None


def training_data(
    pairs: pl.DataFrame, switched: pl.DataFrame | None = None, keywords: pl.DataFrame | None = None
) -> TrainingData:
    """`pairs` (train captions with `vector` and their image's `image_vector`) and, when given, the code-switched
    copies of every seed (`seed`, `caption_id`, `vector`, `control_vector`, `substitute_vector`) and the keyword texts (`caption_id`,
    `vector`) of those captions; augmentations of captions not in `pairs` are left out."""
    base = (vectors_of(pairs), vectors_of(pairs, "image_vector"), pairs["image_id"].to_numpy())
    if switched is None:
        return TrainingData(*base)
    row_of = {caption_id: i for i, caption_id in enumerate(pairs["caption_id"].to_list())}

    def usable(frame: pl.DataFrame) -> tuple[pl.DataFrame, np.ndarray]:
        frame = frame.filter(pl.col("caption_id").is_in(list(row_of)))
        return frame, np.array([row_of[c] for c in frame["caption_id"].to_list()], dtype=np.int64)

    copies = {}
    for (seed,), frame in switched.group_by("seed"):
        frame, of = usable(frame.sort("caption_id"))
        copies[seed] = AugmentedCopies(
            of, vectors_of(frame), vectors_of(frame, "control_vector"), vectors_of(frame, "substitute_vector")
        )
    keyword_frame, keyword_of = usable(keywords) if keywords is not None else (pl.DataFrame(), np.zeros(0, np.int64))
    has_keywords = keyword_frame.height > 0
    return TrainingData(
        *base, copies, vectors_of(keyword_frame) if has_keywords else None, keyword_of if has_keywords else None
    )


def _with_rows(data: TrainingData, text: np.ndarray, of: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The originals plus extra text rows paired with the image of the caption each came from."""
    return (
        np.concatenate([data.text, text]),
        np.concatenate([data.image, data.image[of]]),
        np.concatenate([data.image_ids, data.image_ids[of]]),
    )


def training_arrays(
    data: TrainingData, augmentation: str, alpha: float, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The pairs one cell trains on. SALT and its English controls draw the same mixup weights for a seed."""
    if augmentation == "none":
        return data.text, data.image, data.image_ids
    if augmentation == "keywords":
        if data.keyword_text is None or data.keyword_of is None:
            raise ValueError("keyword augmentation needs keyword vectors of the training captions")
        return _with_rows(data, data.keyword_text, data.keyword_of)
    if seed not in data.copies:
        raise ValueError(
            f"{augmentation} needs code-switched copies drawn with seed {seed}; text_augmentations has seeds "
            f"{sorted(data.copies)} (rematerialize it with this seed in its `seeds`)"
        )
    copies = data.copies[seed]
    other = {
        "salt": copies.switched,
        "english_substitutes": copies.english_substitute,
        "english_mixup": copies.english_control,
    }[augmentation]
    return _with_rows(data, mixup(data.text[copies.of], other, alpha, np.random.default_rng(seed)), copies.of)


def step_budget(
    data: TrainingData, augmentations: Sequence[str], seeds: Sequence[int], epochs: int, batch_size: int
) -> int:
    """`epochs` passes over the largest training set any cell of the grid uses: the one budget of every cell."""
    largest = max(len(training_arrays(data, a, 1.0, s)[0]) for a in augmentations for s in seeds)
    return epochs * math.ceil(largest / batch_size)


@dataclass(frozen=True)
class GridPlan:
    """What a grid compares; `plan_cells` turns it into cells."""

    objectives: Sequence[Objective]
    augmentations: Sequence[Augmentation]
    seeds: Sequence[int]
    per_language_centring: bool = True
    hubness_reduction: bool = True  # every objective, unaugmented, with each method of HUBNESS_PARAMETERS
    english_only_model: str | None = None  # the first objective with this (English-only) text encoder
    other_text_models: Sequence[str] = ()  # every objective, unaugmented, with each of these text encoders
    other_image_models: Sequence[str] = ()  # every objective, unaugmented, with each of these image encoders ...
    image_text_models: Sequence[str] = ()  # ... crossed with these text encoders (empty: the main one)
    finetuned_text_models: Sequence[str] = ()  # fine-tuned replicates: FINETUNED_OBJECTIVE only, unaugmented
    ensembles: bool = True  # score ensembles of the unaugmented heads (`plan_ensembles`)


def require_known(kind: str, names: Sequence[str], known: Sequence[str]) -> list[str]:
    """`names` unchanged if every one is in `known`, else a ValueError naming the unknown ones."""
    unknown = sorted(set(names) - set(known))
    if unknown:
        raise ValueError(f"unknown {kind} {unknown}; known {kind}: {list(known)}")
    return list(names)


def plan_cells(plan: GridPlan, text_model: str, image_model: str) -> list[Cell]:
    """objectives × augmentations × seeds with the main encoders, then the levers, the other encoders (every
    objective, unaugmented: their augmentations would need the copies embedded by them too) and the baselines.

    The first objective's unaugmented cell of each seed (and encoder pair) carries the random-head baseline.
    """
    require_known("objectives", plan.objectives, OBJECTIVES)
    require_known("augmentations", plan.augmentations, AUGMENTATIONS)
    if not plan.objectives or not plan.augmentations or not plan.seeds:
        raise ValueError("a grid needs at least one objective, one augmentation and one seed")
    first = plan.objectives[0]
    cells = [
        Cell(o, a, s, text_model, image_model, with_random_baseline=(o, a) == (first, "none"))
        for o in plan.objectives
        for a in plan.augmentations
        for s in plan.seeds
    ]
    if plan.per_language_centring:
        cells += [
            Cell(o, "none", s, text_model, image_model, centring="per_language")
            for o in plan.objectives
            for s in plan.seeds
        ]
    if plan.hubness_reduction:
        cells += [
            Cell(o, "none", s, text_model, image_model, retrieval=method)
            for method in HUBNESS_PARAMETERS
            for o in plan.objectives
            for s in plan.seeds
        ]
    pairs = [(model, image_model) for model in plan.other_text_models]
    pairs += [(text, image) for image in plan.other_image_models for text in plan.image_text_models or [text_model]]
    # a comparison encoder that is the main one (a dataset whose default already is it) adds no cells of its own
    pairs = [pair for pair in dict.fromkeys(pairs) if pair != (text_model, image_model)]
    for text, image in pairs:
        cells += [
            Cell(o, "none", s, text, image, with_random_baseline=o == first)
            for o in plan.objectives
            for s in plan.seeds
        ]
    finetuned_objective = FINETUNED_OBJECTIVE if FINETUNED_OBJECTIVE in plan.objectives else first
    for text in plan.finetuned_text_models:
        cells += [
            Cell(finetuned_objective, "none", s, text, image_model, with_random_baseline=finetuned_objective == first)
            for s in plan.seeds
        ]
    if plan.english_only_model:
        cells += [
            Cell(first, "none", s, plan.english_only_model, image_model, with_random_baseline=True) for s in plan.seeds
        ]
    return cells


# A seed ensemble's hits: one level of the statistics (its heads are all the seeds), not a seed.
SEED_ENSEMBLE = -1
ENSEMBLE_PREFIX = "none + ensemble"  # how every ensemble's augmentation label starts
# The main pair's share of a two-pair ensemble's score, chosen per seed on validation (ties: the first, equal weights).
ENSEMBLE_SHARES = (0.5, 0.25, 0.75)


def encoder_ensemble_label(others: Sequence[tuple[str, str]]) -> str:
    """How the report names an ensemble of the main pair with the (text, image) pairs `others`."""
    if len(others) > 1:
        return f"{ENSEMBLE_PREFIX} of {len(others) + 1} encoder pairs"
    (text, image), *_ = others
    return f"{ENSEMBLE_PREFIX} with {encoder_label(text)} + {image_encoder_label(image)}"


@dataclass(frozen=True)
class Ensemble:
    """A score ensemble of trained cells (plain retrieval, unaugmented): all seeds of one objective with the main
    encoders (`seeds`), or one seed's heads of that objective on the main and other encoder pairs (`encoders`);
    the first member is the main pair's. Evaluated at retrieval time: nothing is trained for it."""

    members: tuple[Cell, ...]
    kind: str  # "seeds" or "encoders"

    @property
    def objective(self) -> str:
        return self.members[0].objective

    @property
    def seed(self) -> int:
        return SEED_ENSEMBLE if self.kind == "seeds" else self.members[0].seed

    @property
    def text_model(self) -> str:
        return self.members[0].text_model

    @property
    def image_model(self) -> str:
        return self.members[0].image_model

    @property
    def augmentation_label(self) -> str:
        if self.kind == "seeds":
            return f"{ENSEMBLE_PREFIX} of {len(self.members)} seeds"
        return encoder_ensemble_label([member.encoders for member in self.members[1:]])

    @property
    def weighs_members(self) -> bool:
        """Whether the main member's share is chosen on validation (two encoder pairs); else equal weights."""
        return self.kind == "encoders" and len(self.members) == 2


def plan_ensembles(plan: GridPlan, cells: Sequence[Cell], main_pair: tuple[str, str]) -> list[Ensemble]:
    """Per objective: its seeds with the main encoders (when there are several); and per seed the main pair with
    each other encoder pair the plan compares (not the fine-tuned or English-only encoders), then with all of
    them (when there are several)."""
    if not plan.ensembles:
        return []
    excluded = {*plan.finetuned_text_models, plan.english_only_model}
    plain = {
        (c.objective, c.encoders, c.seed): c
        for c in cells
        if c.augmentation == "none"
        and c.centring == "train"
        and c.retrieval == "plain"
        and c.text_model not in excluded
    }
    ensembles = []
    for objective in plan.objectives:
        seeds = [seed for seed in plan.seeds if (objective, main_pair, seed) in plain]
        if len(seeds) > 1:
            ensembles.append(Ensemble(tuple(plain[(objective, main_pair, seed)] for seed in seeds), "seeds"))
        others = [
            pair
            for pair in dict.fromkeys(pair for o, pair, _ in plain if o == objective and pair != main_pair)
            if all((objective, pair, seed) in plain for seed in seeds)
        ]
        for group in [[pair] for pair in others] + ([others] if len(others) > 1 else []):
            ensembles += [
                Ensemble(tuple(plain[(objective, pair, seed)] for pair in [main_pair, *group]), "encoders")
                for seed in seeds
            ]
    return ensembles


@dataclass(frozen=True)
class TrainingJob:
    """One head to train: the training data of an encoder pair (text, image), with `augmentation`; `config.seed`
    seeds the head's initialisation, its batch order and the augmentation's draws."""

    encoders: tuple[str, str]
    augmentation: Augmentation
    config: HeadConfig


def cell_job(cell: Cell, objective_config: HeadConfig) -> TrainingJob:
    """The head a cell trains (its objective's configuration, its seed). Cells that differ only in evaluation
    (per-language centring, hubness reduction) share a job, so the head is trained once."""
    if objective_config.objective != cell.objective:
        raise ValueError(f"cell {cell} given the configuration of {objective_config.objective}")
    return TrainingJob(cell.encoders, cell.augmentation, replace(objective_config, seed=cell.seed))


def train_job(job: TrainingJob, data: TrainingData, mixup_alpha: float) -> tuple[TrainingResult, int]:
    """Train one job's head on `data`; also the number of training rows."""
    from xlr_pipeline.core.training.head import train_head

    text, image, ids = training_arrays(data, job.augmentation, mixup_alpha, job.config.seed)
    return train_head(text, image, ids, job.config), len(text)


def hits_frame(
    cell: Cell | Ensemble,
    results: Mapping[str, Mapping[str, list[DirectionResult]]],
    query_images: Mapping[str, np.ndarray],
    grid_run_id: str,
    steps: int,
) -> pl.DataFrame:
    """Per-query ranks of a cell's trained and random heads, with each query's image (the statistical unit).

    A caption's image is its gallery row (`query_images[language]`); an image query is its own row. Queries
    without a correct item in the gallery (rank 0) are left out, as in Recall@k.
    """
    frames = []
    for language, by_head in results.items():
        for head_name, directions in by_head.items():
            for result in directions:
                images = query_images[language] if result.direction == "text_to_image" else np.arange(len(result.ranks))
                frames.append(
                    pl.DataFrame(
                        {
                            "grid_run_id": grid_run_id,
                            "steps": steps,
                            "objective": cell.objective if head_name == TRAINED else "random_init",
                            "augmentation": cell.augmentation_label,
                            "text_model": cell.text_model,
                            "image_model": cell.image_model,
                            "seed": cell.seed,
                            "language": language,
                            "direction": result.direction,
                            "image": images,
                            "rank": result.ranks,
                        }
                    ).filter(pl.col("rank") > 0)
                )
    return pl.concat(frames)

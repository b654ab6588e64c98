"""The experiment grid: objectives × augmentation × seeds (× text encoder), trained on cached embeddings."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np
import polars as pl

from xlr_pipeline.core.augment import mixup
from xlr_pipeline.core.evaluation import TRAINED
from xlr_pipeline.core.head import HeadConfig, ProjectionHead, train_head
from xlr_pipeline.core.choices import AUGMENTATIONS, OBJECTIVES, Augmentation, Objective
from xlr_pipeline.core.metrics import DirectionResult

DEFAULT_TEXT_WEIGHT = HeadConfig().text_weight


@dataclass(frozen=True)
class Cell:
    objective: Objective
    augmentation: Augmentation
    seed: int
    text_model: str
    text_weight: float = DEFAULT_TEXT_WEIGHT  # m3 only
    centring: str = "train"  # "train" or "per_language" (evaluation-time)

    @property
    def objective_label(self) -> str:
        return f"m3 (λ_t={self.text_weight})" if self.objective == "m3" and self.text_weight != DEFAULT_TEXT_WEIGHT else self.objective

    @property
    def augmentation_label(self) -> str:
        return self.augmentation + (" + per-language centring" if self.centring == "per_language" else "")

    @property
    def has_random_baseline(self) -> bool:
        """One random head per seed and encoder: the plain PATR cell carries it."""
        return (self.objective, self.augmentation, self.centring) == ("patr", "none", "train")

    def run_suffix(self, text_model_label: str) -> str:
        parts = [self.objective_label, self.augmentation_label, text_model_label, f"seed{self.seed}"]
        return "/".join(part.replace(" ", "") for part in parts)


@dataclass(frozen=True)
class TrainingData:
    """English train pairs (+ optional code-switched copies) for one text encoder."""

    text: np.ndarray
    image: np.ndarray
    image_ids: np.ndarray
    switched_text: np.ndarray | None = None  # code-switched copies' vectors
    switched_of: np.ndarray | None = None  # row of `text` each copy was made from
    keyword_text: np.ndarray | None = None  # vectors of each caption's CLDR keywords
    keyword_of: np.ndarray | None = None


def training_arrays(data: TrainingData, augmentation: str, alpha: float, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The pairs one cell trains on: originals, plus mixup of original and code-switched vectors for SALT."""
    if augmentation == "none":
        return data.text, data.image, data.image_ids
    if augmentation == "keywords":
        if data.keyword_text is None or data.keyword_of is None:
            raise ValueError("keyword augmentation needs keyword vectors of the training captions")
        return (
            np.concatenate([data.text, data.keyword_text]),
            np.concatenate([data.image, data.image[data.keyword_of]]),
            np.concatenate([data.image_ids, data.image_ids[data.keyword_of]]),
        )
    if data.switched_text is None or data.switched_of is None:
        raise ValueError("SALT needs code-switched copies of the training captions")
    rng = np.random.default_rng(seed)
    mixed = mixup(data.text[data.switched_of], data.switched_text, alpha, rng)
    return (
        np.concatenate([data.text, mixed]),
        np.concatenate([data.image, data.image[data.switched_of]]),
        np.concatenate([data.image_ids, data.image_ids[data.switched_of]]),
    )


@dataclass(frozen=True)
class GridPlan:
    """What a grid compares; `plan_cells` turns it into cells."""

    objectives: Sequence[Objective]
    augmentations: Sequence[Augmentation]
    seeds: Sequence[int]
    m3_text_weights: Sequence[float] = ()
    per_language_centring: bool = True
    english_only_model: str | None = None  # a PATR baseline with this (English-only) text encoder


def require_known(kind: str, names: Sequence[str], known: Sequence[str]) -> list[str]:
    """`names` unchanged if every one is in `known`, else a ValueError naming the unknown ones."""
    unknown = sorted(set(names) - set(known))
    if unknown:
        raise ValueError(f"unknown {kind} {unknown}; known {kind}: {list(known)}")
    return list(names)


def plan_cells(plan: GridPlan, text_model: str) -> list[Cell]:
    """objectives × augmentations × seeds with `text_model`, then the levers and baselines that apply."""
    require_known("objectives", plan.objectives, OBJECTIVES)
    require_known("augmentations", plan.augmentations, AUGMENTATIONS)
    if not plan.objectives or not plan.augmentations or not plan.seeds:
        raise ValueError("a grid needs at least one objective, one augmentation and one seed")
    cells = [Cell(o, a, s, text_model) for o in plan.objectives for a in plan.augmentations for s in plan.seeds]
    if "m3" in plan.objectives:
        cells += [Cell("m3", "none", s, text_model, text_weight=w) for w in plan.m3_text_weights for s in plan.seeds]
    if plan.per_language_centring:
        cells += [Cell(o, "none", s, text_model, centring="per_language") for o in plan.objectives for s in plan.seeds]
    if plan.english_only_model:
        cells += [Cell("patr", "none", s, plan.english_only_model) for s in plan.seeds]
    return cells


def train_cell(cell: Cell, base_config: HeadConfig, data: TrainingData, mixup_alpha: float) -> ProjectionHead:
    """Train one cell's head on its training rows (originals, plus the cell's augmentation)."""
    config = replace(base_config, objective=cell.objective, seed=cell.seed, text_weight=cell.text_weight)
    text, image, ids = training_arrays(data, cell.augmentation, mixup_alpha, cell.seed)
    return train_head(text, image, ids, config).head


def hits_frame(cell: Cell, results: Mapping[str, Mapping[str, list[DirectionResult]]]) -> pl.DataFrame:
    """Per-query ranks of a cell's trained and random heads: the input of the statistics."""
    frames = []
    for language, by_head in results.items():
        for head_name, directions in by_head.items():
            for result in directions:
                frames.append(
                    pl.DataFrame(
                        {
                            "objective": cell.objective_label if head_name == TRAINED else "random_init",
                            "augmentation": cell.augmentation_label,
                            "text_model": cell.text_model,
                            "seed": cell.seed,
                            "language": language,
                            "direction": result.direction,
                            "query": np.arange(len(result.ranks)),
                            "rank": result.ranks,
                        }
                    )
                )
    return pl.concat(frames)

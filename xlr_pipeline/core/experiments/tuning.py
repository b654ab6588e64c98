"""Hyperparameters and the best configuration, chosen on the English validation split.

No function here takes test data: tuning sees the English train pairs and the validation split only, so the
test split is read for the final numbers alone (a poison test rewrites the test split and checks that the
tuning table does not change).
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np
import polars as pl

from xlr_pipeline.core.experiments.comparisons import SYSTEM_COLUMNS
from xlr_pipeline.core.experiments.grid import TrainingData, TrainingJob
from xlr_pipeline.core.scoring.metrics import evaluate_head
from xlr_pipeline.core.training.choices import ENGLISH_ONLY_TEXT_MODEL
from xlr_pipeline.core.training.configs import HeadConfig
from xlr_pipeline.core.training.defaults import DefaultsError, LaneDefaults

if TYPE_CHECKING:
    from xlr_pipeline.core.training.head import ProjectionHead

# The stated search budget: per objective, these values of these HeadConfig fields. The step budget is not
# searched: every cell of a grid trains for the same number of steps, so augmentations compare at equal cost.
SEARCH_SPACE: dict[str, dict[str, tuple[float, ...]]] = {
    "hinge": {"learning_rate": (3e-4, 1e-3, 3e-3), "margin": (0.05, 0.1, 0.2)},
    "patr": {"learning_rate": (3e-4, 1e-3, 3e-3), "margin": (0.5, 1.0, 1.5)},
    "m3": {
        "learning_rate": (3e-4, 1e-3, 3e-3),
        "margin": (0.5, 1.0, 1.5),
        "text_margin": (0.5, 1.0),
        "text_weight": (0.25, 0.5, 1.0),
    },
    "m3_pull": {"learning_rate": (3e-4, 1e-3, 3e-3), "margin": (0.5, 1.0, 1.5), "text_weight": (0.25, 0.5, 1.0)},
    "infonce": {"learning_rate": (3e-4, 1e-3, 3e-3), "temperature": (0.02, 0.05, 0.1)},
}
VALIDATION_KS = (1, 5, 10)
TUNING_DATA = ("train", "train")  # the one encoder pair tuning trains on


@dataclass(frozen=True)
class ValidationSet:
    """English validation captions (`text`, each describing image `labels[i]`) and the validation images."""

    text: np.ndarray
    labels: np.ndarray
    images: np.ndarray

    def __post_init__(self) -> None:
        if len(self.text) == 0 or len(self.images) == 0:
            raise ValueError("the validation split is empty: tuning needs validation captions and images")


def validation_recall(head: ProjectionHead, validation: ValidationSet) -> dict[str, float]:
    """Text→image R@1/5/10 on the validation split and their mean (`score`, the quantity maximised)."""
    text_to_image = evaluate_head(head, validation.images, validation.text, validation.labels)[0]
    recall = {f"r{k}": text_to_image.recall[k] for k in VALIDATION_KS}
    return {**recall, "score": float(np.mean(list(recall.values())))}


def candidate_configs(base: HeadConfig, budget: int, seed: int) -> list[HeadConfig]:
    """`base` (the stated defaults) and up to `budget` − 1 other points of its objective's search space,
    drawn uniformly without replacement."""
    if budget < 1:
        raise ValueError(f"a tuning budget is at least 1 configuration, got {budget}")
    space = SEARCH_SPACE[base.objective]
    points = [dict(zip(space, values)) for values in itertools.product(*space.values())]
    others = [point for point in points if point != searched_values(base)]
    order = np.random.default_rng(seed).permutation(len(others))
    return [base] + [replace(base, **others[i]) for i in order[: budget - 1]]


def searched_values(config: HeadConfig) -> dict[str, float]:
    return {
        name: getattr(config, name) if name != "margin" else config.resolved_margin
        for name in SEARCH_SPACE[config.objective]
    }


def tune(
    base_configs: Mapping[str, HeadConfig],
    train: TrainingData,
    validation: ValidationSet,
    budget: int,
    seeds: Sequence[int],
    processes: int = 1,
) -> pl.DataFrame:
    """Every candidate of every objective trained on the unaugmented `train` pairs with each seed (in `processes`
    workers) and scored on `validation`; one row per candidate (mean over seeds), `chosen` marking each
    objective's best (ties: the earlier candidate, so the stated defaults win a tie)."""
    from xlr_pipeline.core.training.training_pool import train_heads

    if not seeds:
        raise ValueError("tuning needs at least one seed")
    candidates = [
        (objective, number, config)
        for objective, base in base_configs.items()
        for number, config in enumerate(candidate_configs(base, budget, seed=0))
    ]
    jobs = [TrainingJob(TUNING_DATA, "none", replace(config, seed=s)) for _, _, config in candidates for s in seeds]
    trained = iter(train_heads(jobs, {TUNING_DATA: train}, 0.0, processes))
    scored = []
    for objective, number, config in candidates:
        per_seed = [validation_recall(next(trained)[0].head, validation) for _ in seeds]
        means = {name: float(np.mean([r[name] for r in per_seed])) for name in per_seed[0]}
        scored.append(
            {"objective": objective, "candidate": number, "parameters": json.dumps(searched_values(config)), **means}
        )
    best = {}
    for i, row in enumerate(scored):
        if row["objective"] not in best or row["score"] > scored[best[row["objective"]]]["score"]:
            best[row["objective"]] = i
    return pl.DataFrame([{**row, "chosen": i in best.values()} for i, row in enumerate(scored)])


def tuned_configs(table: pl.DataFrame, base_configs: Mapping[str, HeadConfig]) -> dict[str, HeadConfig]:
    """Each objective's base configuration with its chosen candidate's values."""
    chosen = {
        objective: json.loads(parameters)
        for objective, parameters in table.filter(pl.col("chosen")).select("objective", "parameters").iter_rows()
    }
    return {objective: replace(base, **chosen[objective]) for objective, base in base_configs.items()}


def best_system(validation: pl.DataFrame, system_columns: Sequence[str]) -> tuple:
    """The system with the highest mean validation score over seeds (ties: the first in sort order)."""
    means = (
        validation.group_by(*system_columns)
        .agg(pl.col("score").mean())
        .sort([pl.col("score"), *system_columns], descending=[True] + [False] * len(system_columns))
    )
    return tuple(means.row(0)[: len(system_columns)])


def selection_candidates(validation: pl.DataFrame) -> pl.DataFrame:
    """The systems a configuration may be chosen from: every trained one but the English-only control (which
    cannot transfer, and English validation cannot tell)."""
    return validation.filter((pl.col("text_model") != ENGLISH_ONLY_TEXT_MODEL) & (pl.col("objective") != "random_init"))


def validation_choice(validation: pl.DataFrame, tuning: pl.DataFrame | None) -> LaneDefaults:
    """The configuration a grid chose on the validation split, as a dataset's `[defaults]`: its encoders, its
    objective with the values tuned for it, and the grid's step budget (so `xlr run` trains what was chosen)."""
    objective, augmentation, text_model, image_model = best_system(selection_candidates(validation), SYSTEM_COLUMNS)
    if augmentation != "none":
        raise DefaultsError(
            f"the validation choice trains with augmentation {augmentation!r}, which `xlr run` does not: "
            "adopt it by hand, or run a grid without augmented cells"
        )
    head: dict[str, object] = {"objective": objective}
    if tuning is not None:
        chosen = tuning.filter(pl.col("chosen") & (pl.col("objective") == objective))
        head |= json.loads(chosen["parameters"][0]) | {"steps": int(chosen["steps"][0])}
    return LaneDefaults.from_table(
        {"image_model": image_model, "text_model": text_model, "chosen_by": validation["grid_run_id"][0], **head}
    )

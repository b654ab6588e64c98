"""Hyperparameters and the best configuration, chosen on the English validation split.

No function here takes test data: tuning sees the English train pairs and the validation split only, so the
test split is read for the final numbers alone (a poison test rewrites the test split and checks that the
tuning table does not change).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import polars as pl

from xlr_pipeline.core.experiments.comparisons import SYSTEM_COLUMNS
from xlr_pipeline.core.experiments.grid import ENSEMBLE_PREFIX, TrainingData, TrainingJob, encoder_ensemble_label
from xlr_pipeline.core.scoring.hubness import HUBNESS_PARAMETERS
from xlr_pipeline.core.scoring.metrics import DirectionResult, evaluate_head
from xlr_pipeline.core.training.choices import CHAIN_AUGMENTATIONS, ENGLISH_ONLY_TEXT_MODEL
from xlr_pipeline.core.training.configs import HeadConfig
from xlr_pipeline.core.training.defaults import DefaultsError, LaneDefaults

if TYPE_CHECKING:
    import optuna

    from xlr_pipeline.core.scoring.hubness import HubnessReduction
    from xlr_pipeline.core.training.head import ProjectionHead


@dataclass(frozen=True)
class Dimension:
    """A searched HeadConfig field: a float in [low, high] (log scale where `log`), or one of `choices`.
    `hard_limit`: which ends the field's valid range fixes (a chosen value there is not a too-narrow space)."""

    low: float = 0.0
    high: float = 0.0
    log: bool = False
    choices: tuple[str, ...] = ()
    hard_limit: tuple[bool, bool] = (False, False)

    def at_edge(self, value: float) -> str | None:
        """'low' / 'high' where a chosen value sits in the outer 2 % of the space (None: interior or a choice)."""
        if self.choices:
            return None
        scale = np.log if self.log else (lambda x: x)
        position = (scale(value) - scale(self.low)) / (scale(self.high) - scale(self.low))
        if position <= 0.02 and not self.hard_limit[0]:
            return "low"
        if position >= 0.98 and not self.hard_limit[1]:
            return "high"
        return None


# Widened where grid runs chose values on an edge: cece0492 (learning rate ≈ 3e-5 for three studies, dropout ≈ 0.5),
# 3417f45e (learning rate ≈ 3e-2, the old top, for three e5-small linear heads), 7d3b452e (learning rate 0.26 and
# dropout 0.70, both tops, for two SALT-fine-tuned encoders' MLP heads), 1c44ae26 (hinge alone: learning rate 0.975
# and margin 0.999, both tops of its own ranges, so hinge's are widened without moving any other study's space).
_LEARNING_RATE = Dimension(1e-5, 1.0, log=True)
# dropout: mlp only; 0 (no dropout) is the end of its valid range
_HEAD = {"architecture": Dimension(choices=("linear", "mlp")), "dropout": Dimension(0.0, 0.9, hard_limit=(True, False))}
_DISTANCE_MARGIN = Dimension(0.1, 2.0, hard_limit=(False, True))  # a cosine distance is at most 2
_WEIGHT = Dimension(0.01, 10.0, log=True)
# The stated search space per objective (Optuna's TPE samples it; the stated defaults are every study's first
# trial). The step budget is not searched: every cell of a grid trains for the same number of steps, so
# augmentations compare at equal cost.
SEARCH_SPACE: dict[str, dict[str, Dimension]] = {
    "hinge": {
        "learning_rate": Dimension(1e-5, 10.0, log=True),
        "margin": Dimension(0.01, 2.0, hard_limit=(False, True)),  # a gap of cosine similarities is at most 2
        **_HEAD,
    },
    "patr": {"learning_rate": _LEARNING_RATE, "margin": _DISTANCE_MARGIN, **_HEAD},
    "m3": {
        "learning_rate": _LEARNING_RATE,
        "margin": _DISTANCE_MARGIN,
        "text_margin": Dimension(0.0, 2.0, hard_limit=(True, True)),
        "text_weight": _WEIGHT,
        **_HEAD,
    },
    "m3_pull": {"learning_rate": _LEARNING_RATE, "margin": _DISTANCE_MARGIN, "text_weight": _WEIGHT, **_HEAD},
    "infonce": {"learning_rate": _LEARNING_RATE, "temperature": Dimension(0.003, 1.0, log=True), **_HEAD},
}
VALIDATION_KS = (1, 5, 10)


@dataclass(frozen=True)
class ValidationSet:
    """English validation captions (`text`, each describing image `labels[i]`) and the validation images."""

    text: np.ndarray
    labels: np.ndarray
    images: np.ndarray

    def __post_init__(self) -> None:
        if len(self.text) == 0 or len(self.images) == 0:
            raise ValueError("the validation split is empty: tuning needs validation captions and images")


def validation_recall(
    head: ProjectionHead, validation: ValidationSet, hubness: HubnessReduction | None = None
) -> dict[str, float]:
    """Text→image R@1/5/10 on the validation split and their mean (`score`, the quantity maximised)."""
    return validation_scores(evaluate_head(head, validation.images, validation.text, validation.labels, hubness)[0])


def validation_scores(text_to_image: DirectionResult) -> dict[str, float]:
    """R@1/5/10 of a validation evaluation's text→image direction and their mean (`score`)."""
    recall = {f"r{k}": text_to_image.recall[k] for k in VALIDATION_KS}
    return {**recall, "score": float(np.mean(list(recall.values())))}


def searched_values(config: HeadConfig) -> dict[str, float | str]:
    """The searched fields of `config` (dropout only for an MLP, where it exists)."""
    values = {
        name: getattr(config, name) if name != "margin" else config.resolved_margin
        for name in SEARCH_SPACE[config.objective]
    }
    if values["architecture"] != "mlp":
        del values["dropout"]
    return values


def _suggested(trial: optuna.Trial, objective: str) -> dict[str, float | str]:
    values: dict[str, float | str] = {}
    for name, dimension in SEARCH_SPACE[objective].items():
        if name == "dropout" and values["architecture"] != "mlp":
            continue
        if dimension.choices:
            values[name] = trial.suggest_categorical(name, list(dimension.choices))
        else:
            values[name] = trial.suggest_float(name, dimension.low, dimension.high, log=dimension.log)
    return values


def edges(objective: str, values: Mapping[str, float | str]) -> list[str]:
    """The chosen values that sit on a soft edge of the search space ("learning_rate=low", ...)."""
    space = SEARCH_SPACE[objective]
    found = []
    for name, value in values.items():
        if not isinstance(value, str) and (edge := space[name].at_edge(float(value))):
            found.append(f"{name}={edge}")
    return found


TuningKey = tuple[tuple[str, str], str]  # (text model, image model), objective


def _study_name(key: TuningKey) -> str:
    (text_model, image_model), objective = key
    return f"{objective}|{text_model}|{image_model}"


def tune(
    base_configs: Mapping[TuningKey, HeadConfig],
    data: Mapping[tuple[str, str], TrainingData],
    validation: Mapping[tuple[str, str], ValidationSet],
    trials: int,
    seeds: Sequence[int],
    processes: int = 1,
    study_path: Path | None = None,
    sampler_seed: int = 0,
) -> pl.DataFrame:
    """One Optuna study (TPE, seeded) per (encoder pair, objective), each with the same `trials`: trial 0 is the
    stated defaults, the rest sampled from SEARCH_SPACE. A trial trains on the unaugmented train pairs of its
    encoder pair with each seed and scores the mean validation score (its row lists the seeds). The studies
    advance together, one trial each per round, so a round's heads train in `processes` workers. One row per trial; `chosen` marks each
    study's best (ties: the earlier trial, so the stated defaults win a tie). `study_path`: where the studies are
    stored (SQLite, written whole at the end)."""
    import optuna

    from xlr_pipeline.core.training.training_pool import train_heads

    if trials < 1:
        raise ValueError(f"a tuning budget is at least 1 trial, got {trials}")
    if not seeds:
        raise ValueError("tuning needs at least one seed")
    missing = sorted({pair for pair, _ in base_configs} - set(validation))
    if missing:
        raise ValueError(f"no validation set for encoder pairs {missing}: tuning needs each pair's validation split")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    folder = tempfile.mkdtemp(dir=study_path.parent) if study_path is not None else tempfile.mkdtemp()
    storage = f"sqlite:///{Path(folder) / 'studies.db'}"
    studies = {}
    for key, base in base_configs.items():
        studies[key] = optuna.create_study(
            study_name=_study_name(key),
            storage=storage,
            direction="maximize",
            sampler=optuna.samplers.TPESampler(seed=sampler_seed, n_startup_trials=max(1, trials // 3)),
        )
        studies[key].enqueue_trial(searched_values(base))
    rows = []
    for number in range(trials):
        asked = {key: study.ask() for key, study in studies.items()}
        configs = {key: replace(base_configs[key], **_suggested(trial, key[1])) for key, trial in asked.items()}
        jobs = [TrainingJob(key[0], "none", replace(config, seed=s)) for key, config in configs.items() for s in seeds]
        trained = iter(train_heads(jobs, data, 0.0, processes))
        for key, trial in asked.items():
            per_seed = [validation_recall(next(trained)[0].head, validation[key[0]]) for _ in seeds]
            means = {name: float(np.mean([r[name] for r in per_seed])) for name in per_seed[0]}
            studies[key].tell(trial, means["score"])
            rows.append(
                {
                    "text_model": key[0][0],
                    "image_model": key[0][1],
                    "objective": key[1],
                    "trial": number,
                    "seeds": list(seeds),
                    "parameters": json.dumps(searched_values(configs[key]), sort_keys=True),
                    **means,
                }
            )
    if study_path is not None:
        os.replace(Path(folder) / "studies.db", study_path)
    table = pl.DataFrame(rows).sort("text_model", "image_model", "objective", "trial")
    best = table.group_by("text_model", "image_model", "objective").agg(
        pl.col("trial").sort_by(pl.col("score"), pl.col("trial"), descending=[True, False]).first().alias("best")
    )
    return (
        table.join(best, on=["text_model", "image_model", "objective"])
        .with_columns((pl.col("trial") == pl.col("best")).alias("chosen"))
        .drop("best")
    )


def tuned_configs(table: pl.DataFrame, base_configs: Mapping[TuningKey, HeadConfig]) -> dict[TuningKey, HeadConfig]:
    """Each study's base configuration with its chosen trial's values."""
    chosen = {
        ((text_model, image_model), objective): json.loads(parameters)
        for text_model, image_model, objective, parameters in table.filter(pl.col("chosen"))
        .select("text_model", "image_model", "objective", "parameters")
        .iter_rows()
    }
    return {key: replace(base, **chosen[key]) for key, base in base_configs.items()}


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


def adoptable_candidates(validation: pl.DataFrame) -> pl.DataFrame:
    """The selection candidates `xlr run` can train: no augmentation or the captions' keywords (SALT's copies are
    the grid's), plain retrieval, a hubness reduction, or a score ensemble over encoder pairs (not over seeds)."""
    trainable = [*CHAIN_AUGMENTATIONS, *(f"none + {method}" for method in HUBNESS_PARAMETERS)]
    label = pl.col("augmentation")
    encoder_ensemble = label.str.starts_with(f"{ENSEMBLE_PREFIX} ") & ~label.str.ends_with(" seeds")
    return selection_candidates(validation).filter(label.is_in(trainable) | encoder_ensemble)


def _tuned(tuning: pl.DataFrame | None, objective: str, text_model: str, image_model: str) -> dict[str, object]:
    """The values the tuning study of an objective and encoder pair chose, with the grid's step budget."""
    if tuning is None:
        return {}
    chosen = tuning.filter(
        pl.col("chosen")
        & (pl.col("objective") == objective)
        & (pl.col("text_model") == text_model)
        & (pl.col("image_model") == image_model)
    )
    return json.loads(chosen["parameters"][0]) | {"steps": int(chosen["steps"][0])}


def _most_chosen(values: pl.Series) -> float:
    """The value a system's seeds chose most often on validation (ties: the smallest)."""
    counts = values.value_counts(sort=True).sort(["count", values.name], descending=[True, False])
    return float(counts[values.name][0])


def _ensemble_members(
    augmentation: str, objective: str, main_pair: tuple[str, str], tuning: pl.DataFrame | None
) -> list[dict[str, object]]:
    """The further members of a grid encoder ensemble, as `[defaults]` tables: the group of the other pairs the
    objective was tuned for — each alone, or all together, as the grid's `plan_ensembles` groups them — whose
    label is `augmentation`."""
    if tuning is None:
        raise DefaultsError(f"adopting {augmentation!r} needs the grid's tuning table, which names its members")
    tuned = tuning.filter(pl.col("objective") == objective).select("text_model", "image_model")
    others = [pair for pair in dict.fromkeys(tuned.iter_rows()) if pair != main_pair]
    groups = [[pair] for pair in others] + ([others] if len(others) > 1 else [])
    named = [group for group in groups if encoder_ensemble_label(group) == augmentation]
    if len(named) != 1:
        raise DefaultsError(f"the tuning table does not name the further members of {augmentation!r}")
    return [
        {"text_model": text, "image_model": image, "objective": objective, **_tuned(tuning, objective, text, image)}
        for text, image in named[0]
    ]


def validation_choice(validation: pl.DataFrame, tuning: pl.DataFrame | None) -> LaneDefaults:
    """The best configuration on the validation split among those `xlr run` trains, as a dataset's `[defaults]`:
    its encoders, its objective with the values tuned for it, its training augmentation, a chosen hubness
    reduction, and the grid's step budget (so `xlr run` trains what was chosen)."""
    system = best_system(adoptable_candidates(validation), SYSTEM_COLUMNS)
    objective, augmentation, text_model, image_model = system
    rows = validation.filter(pl.all_horizontal(pl.col(c) == v for c, v in zip(SYSTEM_COLUMNS, system)))
    hubness = next((method for method in HUBNESS_PARAMETERS if augmentation == f"none + {method}"), None)
    head: dict[str, object] = {"objective": objective, **_tuned(tuning, objective, text_model, image_model)}
    if augmentation in CHAIN_AUGMENTATIONS:
        head["augmentation"] = augmentation
    if hubness is not None:
        head |= {"hubness": hubness, "hubness_parameter": _most_chosen(rows["hubness_parameter"])}
    if augmentation.startswith(ENSEMBLE_PREFIX):
        head["ensemble"] = _ensemble_members(augmentation, objective, (text_model, image_model), tuning)
        if len(head["ensemble"]) == 1:  # two members: the first's share chosen on validation
            head["ensemble_share"] = _most_chosen(rows["ensemble_share"])
    return LaneDefaults.from_table(
        {"image_model": image_model, "text_model": text_model, "chosen_by": validation["grid_run_id"][0], **head}
    )

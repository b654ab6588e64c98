"""The grid's analysis: per-system hit tables, hierarchical CIs, the paired comparisons in two families with
Holm's correction each, and the run's bookkeeping, computed once for the report's text and plots
(`grid_report.py`, `core/reporting/grid_plots.py`). Statistics: `core/experiments/stats.py`.

The **primary family** is declared here, before any grid runs: the research questions, at R@1 and R@5 —
SALT vs no augmentation and SALT vs its control (English substitutes) under the paper's objective m3 with the
main encoders; m3 vs PATR in the paper's configuration (its text encoder, multilingual USE v3, with the main
image encoder); and the configuration chosen on validation vs the previous default. Every other comparison is
**secondary**, corrected within its own family, and reads as exploration.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from xlr_pipeline.core.experiments.stats import Estimate, PairedTest, hierarchical_ci, holm_adjusted, paired_test
from xlr_pipeline.core.training.choices import DEFAULT_IMAGE_MODEL, DEFAULT_TEXT_MODEL, MUSE_TEXT_MODEL

SIGNIFICANCE = 0.05
System = tuple[str, str, str, str]  # objective, augmentation, text model, image model
SYSTEM_COLUMNS = ["objective", "augmentation", "text_model", "image_model"]

PRIMARY_OBJECTIVE = "m3"  # the paper's objective: the SALT questions are asked of it
PAPER_TEXT_MODEL = MUSE_TEXT_MODEL
PREVIOUS_DEFAULT: System = ("hinge", "none", DEFAULT_TEXT_MODEL, DEFAULT_IMAGE_MODEL)  # before the grid chose
CHOSEN = "chosen on validation"
# A difference smaller than this (absolute recall) counts as "no difference", where a TOST shows it: about a tenth
# of the typical zero-shot R@1 (~0.05) and R@5 (~0.10) of a trained head on emoji_cldr.
EQUIVALENCE_MARGINS = {1: 0.005, 5: 0.01}


@dataclass(frozen=True)
class HitTables:
    """Per system: hits[seed, language, image] at k for one direction (NaN: no query of that image)."""

    languages: list[str]
    tables: dict[System, np.ndarray]


def hit_tables(hits: pl.DataFrame, k: int, direction: str, languages: list[str]) -> HitTables:
    frame = (
        hits.filter((pl.col("direction") == direction) & pl.col("language").is_in(languages))
        .with_columns((pl.col("rank") <= k).cast(pl.Float64).alias("hit"))
        .group_by(*SYSTEM_COLUMNS, "seed", "language", "image")
        .agg(pl.col("hit").mean())
    )
    images = {image: i for i, image in enumerate(sorted(frame["image"].unique().to_list()))}
    language_index = {language: i for i, language in enumerate(languages)}
    tables = {}
    for system, group in frame.group_by(*SYSTEM_COLUMNS):
        seeds = {seed: i for i, seed in enumerate(sorted(group["seed"].unique().to_list()))}
        table = np.full((len(seeds), len(languages), len(images)), np.nan)
        table[
            [seeds[s] for s in group["seed"].to_list()],
            [language_index[lang] for lang in group["language"].to_list()],
            [images[i] for i in group["image"].to_list()],
        ] = group["hit"].to_numpy()
        tables[tuple(system)] = table
    return HitTables(languages, tables)


@dataclass(frozen=True)
class Comparison:
    label: str
    k: int
    test: PairedTest
    family: str = "secondary"  # "primary": declared before the run (module docstring)
    adjusted_p: float = 1.0  # Holm within the family
    adjusted_p_equivalence: float = 1.0

    @property
    def verdict(self) -> str:
        if self.adjusted_p < SIGNIFICANCE:
            return "significant gain" if self.test.difference > 0 else "significant loss"
        if self.adjusted_p_equivalence < SIGNIFICANCE:
            return f"equivalent (±{self.test.margin:g})"
        return "inconclusive"


def finetuned_arm(model_id: str) -> str | None:
    """The fine-tuning arm of a fine-tuned encoder's weights file (`<arm>-s<seed>-<content hash>.pt`), else None."""
    _, at, weights = model_id.partition("@")
    return Path(weights).stem.split("-", 1)[0] if at else None


FinetuningGroups = dict[tuple[str, str, str], list["System"]]  # (arm, objective, image model) → replicates


def finetuning_groups(systems: list[System]) -> FinetuningGroups:
    """The trained systems of fine-tuned encoders, grouped by arm, objective and image model (replicates in
    model-id order)."""
    groups: FinetuningGroups = {}
    for system in sorted(systems, key=lambda s: s[2]):
        arm = finetuned_arm(system[2])
        if arm is not None and system[0] != "random_init":
            groups.setdefault((arm, system[0], system[3]), []).append(system)
    return groups


def encoder_label(model_id: str) -> str:
    """A text model as the report names it: its scheme, or for fine-tuned weights `scheme:<arm>` (the weights
    file is named `<arm>-<content hash>.pt`)."""
    scheme, _, rest = model_id.partition(":")
    _, at, weights = rest.partition("@")
    return f"{scheme}:{Path(weights).stem.rsplit('-', 1)[0]}" if at else scheme


def image_encoder_label(model_id: str) -> str:
    """An image model as the report names it: its architecture (`efficientnet-lite:efficientnet-lite2` → `efficientnet-lite2`)."""
    return model_id.partition(":")[2].partition("@")[0] or model_id


def system_label(system: System, main_image_model: str) -> str:
    """objective / augmentation / text encoder, and the image encoder where it is not the main one."""
    label = f"{system[0]} / {system[1]} / {encoder_label(system[2])}"
    return label if system[3] == main_image_model else f"{label} / {image_encoder_label(system[3])}"


def comparisons_of(
    systems: list[System], main_text_model: str, main_image_model: str
) -> list[tuple[System, System, str]]:
    """The report's family of comparisons: augmentations and objectives with the main encoders, each other text
    encoder against the main one per objective, each other image encoder against the main one per text encoder
    and objective, m3 against PATR with each other encoder pair: (A, B, label), A − B. (The fine-tuning arms are
    compared on their replicates: `replicate_tables`.)"""
    present = set(systems)
    trained = [s for s in systems if s[0] != "random_init"]

    def main(objective: str, augmentation: str = "none") -> System:
        return (objective, augmentation, main_text_model, main_image_model)

    pairs = []
    for objective, augmentation, text_model, image_model in trained:
        if (text_model, image_model) != (main_text_model, main_image_model) or augmentation == "none":
            continue
        pairs.append((main(objective, augmentation), main(objective), f"{augmentation} vs none ({objective})"))
        if augmentation == "salt":
            for control in ("english_substitutes", "english_mixup"):
                pairs.append((main(objective, "salt"), main(objective, control), f"salt vs {control} ({objective})"))
    for objective in ("hinge", "m3", "m3_pull", "infonce"):
        pairs.append((main(objective), main("patr"), f"{objective} vs patr (no augmentation)"))
    pairs.append((main("m3"), main("m3_pull"), "m3 vs m3_pull (no augmentation)"))
    main_name, main_image_name = encoder_label(main_text_model), image_encoder_label(main_image_model)
    other_pairs = sorted(
        {(t, i) for _, _, t, i in trained if finetuned_arm(t) is None} - {(main_text_model, main_image_model)},
        key=lambda p: (p[1] != main_image_model, p),
    )
    for text_model, image_model in other_pairs:
        objectives = sorted({o for o, _, t, i in trained if (t, i) == (text_model, image_model)})
        name = encoder_label(text_model) + (
            "" if image_model == main_image_model else f" + {image_encoder_label(image_model)}"
        )
        for objective in objectives:
            system = (objective, "none", text_model, image_model)
            if image_model == main_image_model:
                pairs.append((system, main(objective), f"{name} vs {main_name} ({objective})"))
            else:
                pairs.append(
                    (
                        system,
                        (objective, "none", text_model, main_image_model),
                        f"{image_encoder_label(image_model)} vs {main_image_name} ({encoder_label(text_model)}, {objective})",
                    )
                )
        pairs.append(
            (("m3", "none", text_model, image_model), ("patr", "none", text_model, image_model), f"m3 vs patr ({name})")
        )
    return [(a, b, label) for a, b, label in pairs if a in present and b in present]


def primary_comparisons(
    systems: list[System], main_text_model: str, main_image_model: str, chosen: System | None
) -> list[tuple[System, System, str]]:
    """The primary family (module docstring) among `systems`: (A, B, label), A − B; `chosen` is the validation
    choice (None: the run has no validation split)."""

    def main(augmentation: str) -> System:
        return (PRIMARY_OBJECTIVE, augmentation, main_text_model, main_image_model)

    pairs = [
        (main("salt"), main("none"), f"salt vs none ({PRIMARY_OBJECTIVE})"),
        (main("salt"), main("english_substitutes"), f"salt vs english_substitutes ({PRIMARY_OBJECTIVE})"),
        (
            ("m3", "none", PAPER_TEXT_MODEL, main_image_model),
            ("patr", "none", PAPER_TEXT_MODEL, main_image_model),
            f"m3 vs patr ({encoder_label(PAPER_TEXT_MODEL)} + {image_encoder_label(main_image_model)})",
        ),
    ]
    if chosen is not None and chosen != PREVIOUS_DEFAULT:
        pairs.append((chosen, PREVIOUS_DEFAULT, f"{CHOSEN} vs previous default"))
    present = set(systems)
    return [(a, b, label) for a, b, label in pairs if a in present and b in present]


def _seed_mean(table: np.ndarray) -> np.ndarray:
    with warnings.catch_warnings():  # images without queries in a language stay NaN
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(table, axis=0, keepdims=True)


def on_one_level(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two systems' tables on the same seed level. A system of one level (a seed ensemble: all seeds' heads at
    once) meets the other's seed mean, so the comparison is conditional on those heads: images are its unit."""
    if a.shape[0] == b.shape[0]:
        return a, b
    if 1 not in (a.shape[0], b.shape[0]):
        raise ValueError(f"systems with {a.shape[0]} and {b.shape[0]} seeds cannot be paired")
    return _seed_mean(a), _seed_mean(b)


def replicate_table(tables: HitTables, replicates: list[System]) -> np.ndarray:
    """hits[replicate, language, image]: each replicate's hits averaged over its heads' seeds, so the replicate
    (an independently fine-tuned encoder) is the level the statistics resample, not the head seed."""
    return np.concatenate([_seed_mean(tables.tables[system]) for system in replicates])


@dataclass(frozen=True)
class GridAnalysis:
    """Everything the report says about one grid run, computed once."""

    grid_run: str
    steps: list[int]
    train_language: str
    main_text_model: str
    main_image_model: str
    chosen: System | None  # the validation choice
    zero_shot: list[str]
    systems: list[System]  # main encoders first, random heads after trained ones
    estimates: dict[System, dict[str, Estimate]]  # "r1", "r5", "r10" (t2i), "i1" (i2t): zero-shot means
    english: dict[System, dict[str, Estimate]]  # "r1", "r5", "r10" (t2i) of the training language ({}: no queries)
    seed_count: dict[System, int]
    comparisons: list[Comparison]  # the primary family first; Holm-adjusted within each family
    r1_by_language: dict[System, np.ndarray]  # zero-shot t2i R@1 per language, mean over seeds and images


def analyse(
    hits: pl.DataFrame,
    train_language: str,
    main_text_model: str,
    main_image_model: str,
    validation: pl.DataFrame | None = None,
    tuning: pl.DataFrame | None = None,
    cost: dict | None = None,
    chosen: System | None = None,
) -> GridAnalysis:
    """The analysis of one grid run's hits; `validation`, `tuning` and `cost` must come from the same run;
    `chosen`: the configuration selected on validation (a primary comparison against the previous default)."""
    grid_runs = hits["grid_run_id"].unique().to_list()
    if len(grid_runs) != 1:
        raise ValueError(f"a report is built from exactly one grid run; these hits come from {sorted(grid_runs)}")
    for name, frame in (("validation scores", validation), ("tuning table", tuning)):
        if frame is not None and frame["grid_run_id"].unique().to_list() != grid_runs:
            raise ValueError(
                f"the {name} come from grid run(s) {frame['grid_run_id'].unique().to_list()}, the hits from {grid_runs[0]}"
            )
    if cost is not None and cost["grid_run_id"] != grid_runs[0]:
        raise ValueError(f"the grid cost is of grid run {cost['grid_run_id']}, the hits of {grid_runs[0]}")
    all_languages = sorted(hits["language"].unique().to_list())
    zero_shot = [language for language in all_languages if language != train_language]
    tables = {
        key: hit_tables(hits, k, direction, zero_shot)
        for key, k, direction in (
            ("r1", 1, "text_to_image"),
            ("r5", 5, "text_to_image"),
            ("r10", 10, "text_to_image"),
            ("i1", 1, "image_to_text"),
        )
    }
    english = (
        {key: hit_tables(hits, k, "text_to_image", [train_language]) for key, k in (("r1", 1), ("r5", 5), ("r10", 10))}
        if train_language in all_languages
        else {}
    )
    systems = sorted(
        tables["r1"].tables, key=lambda s: (s[3] != main_image_model, s[2] != main_text_model, s[0] == "random_init", s)
    )
    primary = primary_comparisons(systems, main_text_model, main_image_model, chosen)
    declared = {(a, b) for a, b, _ in primary}
    secondary = [
        (a, b, label)
        for a, b, label in comparisons_of(systems, main_text_model, main_image_model)
        if (a, b) not in declared
    ]
    families = {
        "primary": [
            (label, key, *on_one_level(tables[key].tables[a], tables[key].tables[b]))
            for a, b, label in primary
            for key in ("r1", "r5")
        ],
        "secondary": [
            (label, key, *on_one_level(tables[key].tables[a], tables[key].tables[b]))
            for a, b, label in secondary
            for key in ("r1", "r5")
        ],
    }
    groups = finetuning_groups(systems)
    for (arm, objective, image_model), replicates in groups.items():
        control = groups.get(("english", objective, image_model))
        if arm == "english" or not control or len(control) != len(replicates):
            continue
        label = f"{arm} vs english fine-tuning ({objective}, {len(replicates)} encoders per arm)"
        families["secondary"] += [
            (label, key, replicate_table(tables[key], replicates), replicate_table(tables[key], control))
            for key in ("r1", "r5")
        ]
    comparisons = []
    for family, rows in families.items():
        raw = [(label, int(key[1:]), paired_test(a, b, EQUIVALENCE_MARGINS[int(key[1:])])) for label, key, a, b in rows]
        adjusted = holm_adjusted([test.p_value for _, _, test in raw])
        adjusted_equivalence = holm_adjusted([test.p_equivalence for _, _, test in raw])
        comparisons += [
            Comparison(label, k, test, family, p, p_equivalence)
            for (label, k, test), p, p_equivalence in zip(raw, adjusted, adjusted_equivalence)
        ]
    return GridAnalysis(
        grid_run=grid_runs[0],
        steps=hits["steps"].unique().to_list(),
        train_language=train_language,
        main_text_model=main_text_model,
        main_image_model=main_image_model,
        chosen=chosen,
        zero_shot=zero_shot,
        systems=systems,
        estimates={system: {key: hierarchical_ci(tables[key].tables[system]) for key in tables} for system in systems},
        english={
            system: {key: hierarchical_ci(table.tables[system]) for key, table in english.items()} for system in systems
        },
        seed_count={
            tuple(row[:-1]): row[-1]
            for row in hits.group_by(*SYSTEM_COLUMNS).agg(pl.col("seed").n_unique()).iter_rows()
        },
        comparisons=comparisons,
        r1_by_language={system: np.nanmean(tables["r1"].tables[system], axis=(0, 2)) for system in systems},
    )

"""The grid report: zero-shot mean Recall with hierarchical CIs, Holm-corrected paired tests, per-language plots.

A report is built from the cells of exactly one grid run (named in it). Statistics: `core/experiments/stats.py` — the image
is the unit across all languages and seeds are a level.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from xlr_pipeline.core.experiments.stats import Estimate, PairedTest, hierarchical_ci, holm_adjusted, paired_test
from xlr_pipeline.core.experiments.tuning import best_system, selection_candidates
from xlr_pipeline.core.training.choices import ENGLISH_ONLY_TEXT_MODEL

SIGNIFICANCE = 0.05
System = tuple[str, str, str, str]  # objective, augmentation, text model, image model
SYSTEM_COLUMNS = ["objective", "augmentation", "text_model", "image_model"]


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
    adjusted_p: float = 1.0

    @property
    def verdict(self) -> str:
        if self.adjusted_p >= SIGNIFICANCE:
            return "not significant"
        return "significant gain" if self.test.difference > 0 else "significant loss"


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
    and objective, m3 against PATR with each other encoder pair, and the two fine-tuning arms: (A, B, label), A − B."""
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
            pairs.append(
                (main(objective, "salt"), main(objective, "english_mixup"), f"salt vs english_mixup ({objective})")
            )
    for objective in ("hinge", "m3", "m3_pull", "infonce"):
        pairs.append((main(objective), main("patr"), f"{objective} vs patr (no augmentation)"))
    pairs.append((main("m3"), main("m3_pull"), "m3 vs m3_pull (no augmentation)"))
    main_name, main_image_name = encoder_label(main_text_model), image_encoder_label(main_image_model)
    other_pairs = sorted(
        {(t, i) for _, _, t, i in trained} - {(main_text_model, main_image_model)},
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
    by_label = {encoder_label(t): t for t, i in other_pairs if i == main_image_model}
    salt, english = by_label.get("e5torch:salt_in_model"), by_label.get("e5torch:english")
    if salt and english:  # the two fine-tuning arms: what code-switching + mixup inside the model adds
        for objective in sorted({o for o, _, t, _ in trained if t == salt}):
            pairs.append(
                (
                    (objective, "none", salt, main_image_model),
                    (objective, "none", english, main_image_model),
                    f"salt_in_model vs english fine-tuning ({objective})",
                )
            )
    return [(a, b, label) for a, b, label in pairs if a in present and b in present]


def _p(value: float) -> str:
    return "< 0.001" if value < 0.001 else f"{value:.3f}"


def _fmt(estimate: Estimate) -> str:
    return f"{estimate.mean:.3f} [{estimate.low:.3f}, {estimate.high:.3f}]"


def validation_sections(
    validation: pl.DataFrame, tuning: pl.DataFrame | None, estimates: dict, english_r1: dict
) -> list[str]:
    """How hyperparameters and the reported configuration were chosen (validation split only), and the chosen
    configuration's test numbers."""
    lines = []
    if tuning is not None:
        lines += [
            "",
            "## Tuning on the validation split",
            "",
            f"Per objective, {tuning.group_by('objective').len()['len'].max()} configurations (candidate 0: the stated "
            "defaults; the others drawn from `core/experiments/tuning.py`'s search space), each trained on the English train split "
            "with the grid's step budget and scored on English validation captions → validation images (score = mean "
            "of R@1, R@5, R@10). The grid then trains every cell of an objective with its chosen values.",
            "",
            "| objective | chosen values | validation score (chosen) | validation score (stated defaults) |",
            "|---|---|---|---|",
        ]
        for (objective,), group in tuning.group_by("objective", maintain_order=True):
            chosen = group.filter(pl.col("chosen")).row(0, named=True)
            default = group.filter(pl.col("candidate") == 0).row(0, named=True)
            lines.append(f"| {objective} | `{chosen['parameters']}` | {chosen['score']:.4f} | {default['score']:.4f} |")
    trained = selection_candidates(validation)
    chosen_system = best_system(trained, SYSTEM_COLUMNS)
    score = trained.filter(pl.all_horizontal([pl.col(c) == v for c, v in zip(SYSTEM_COLUMNS, chosen_system)]))[
        "score"
    ].mean()
    english = english_r1[chosen_system]
    lines += [
        "",
        "## Configuration chosen on the validation split",
        "",
        f"Highest mean validation score over seeds among every trained system but the English-only control: "
        f"**{system_label(chosen_system, main_image_model='')}** ({score:.4f}; per-language centring does not "
        "change English queries, so it ties with plain training and the plain one is named). Its "
        f"test numbers: zero-shot mean t2i R@10 {_fmt(estimates[chosen_system]['r10'])}, R@5 {_fmt(estimates[chosen_system]['r5'])}, "
        f"R@1 {_fmt(estimates[chosen_system]['r1'])}; en t2i R@1 {_fmt(english) if english else '–'}.",
    ]
    return lines


def build_report(
    hits: pl.DataFrame,
    train_language: str,
    main_text_model: str,
    main_image_model: str,
    out_dir: Path,
    title: str,
    validation: pl.DataFrame | None = None,
    tuning: pl.DataFrame | None = None,
    cost: dict | None = None,
    finetuning: pl.DataFrame | None = None,
) -> str:
    """Write `report.md`, `per_language_r1.png` and `mean_recall.png` into out_dir; return the Markdown.
    `validation` (each cell's validation scores), `tuning` and `cost` (the grid step's wall time) must come from
    the same grid run as `hits`; `finetuning` is the fine-tuned encoders' manifest (their cost)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
    out_dir.mkdir(parents=True, exist_ok=True)
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
    english = hit_tables(hits, 1, "text_to_image", [train_language]) if train_language in all_languages else None
    systems = sorted(
        tables["r1"].tables, key=lambda s: (s[3] != main_image_model, s[2] != main_text_model, s[0] == "random_init", s)
    )
    estimates = {system: {key: hierarchical_ci(tables[key].tables[system]) for key in tables} for system in systems}
    english_r1 = {system: hierarchical_ci(english.tables[system]) if english else None for system in systems}
    seed_count = {
        tuple(row[:-1]): row[-1] for row in hits.group_by(*SYSTEM_COLUMNS).agg(pl.col("seed").n_unique()).iter_rows()
    }
    steps = hits["steps"].unique().to_list()

    raw = [
        Comparison(label, k, paired_test(tables[key].tables[a], tables[key].tables[b]))
        for a, b, label in comparisons_of(systems, main_text_model, main_image_model)
        for k, key in ((1, "r1"), (5, "r5"))
    ]
    comparisons = [
        Comparison(c.label, c.k, c.test, adjusted)
        for c, adjusted in zip(raw, holm_adjusted([c.test.p_value for c in raw]))
    ]

    lines = [
        f"# {title}",
        "",
        f"Grid run `{grid_runs[0]}`: every row below comes from this one run. Each head trained for "
        f"{', '.join(map(str, steps))} optimiser steps, whatever its augmentation. Zero-shot = mean over the "
        f"{len(zero_shot)} languages other than `{train_language}` (the head is trained on `{train_language}` only). "
        "[95% CI: crossed bootstrap over seeds and images — the image is the unit in every language — with a t "
        "quantile on Welch–Satterthwaite degrees of freedom.] t2i = text→image, i2t = image→text.",
        "",
        *(cost_lines(cost, finetuning) if cost is not None else []),
        "| objective | augmentation | text encoder | image encoder | seeds | zero-shot t2i R@1 | zero-shot t2i R@5 | zero-shot t2i R@10 | zero-shot i2t R@1 | en t2i R@1 |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for system in systems:
        e = estimates[system]
        english_cell = _fmt(english_r1[system]) if english_r1[system] else "–"
        lines.append(
            f"| {system[0]} | {system[1]} | {encoder_label(system[2])} | {image_encoder_label(system[3])} | {seed_count[system]} | {_fmt(e['r1'])} | {_fmt(e['r5'])} | "
            f"{_fmt(e['r10'])} | {_fmt(e['i1'])} | {english_cell} |"
        )
    lines += [
        "",
        "## Paired comparisons (zero-shot mean, text→image)",
        "",
        "Same seeds, same images. p = the larger of a sign-flip test with the image as the unit (all languages "
        "together) and a seeds × images test; **Holm–Bonferroni over all "
        f"{len(comparisons)} comparisons below**; verdicts at adjusted p < {SIGNIFICANCE}.",
        "",
        "| comparison | k | difference [95% CI] | p (images) | p (seeds × images) | p | Holm p | verdict |",
        "|---|---|---|---|---|---|---|---|",
        *[
            f"| {c.label} | {c.k} | {c.test.difference:+.4f} [{c.test.low:+.4f}, {c.test.high:+.4f}] | {_p(c.test.p_sign_flip)} | "
            f"{_p(c.test.p_hierarchical)} | {_p(c.test.p_value)} | {_p(c.adjusted_p)} | {c.verdict} |"
            for c in comparisons
        ],
    ]

    r1_by_language = {system: np.nanmean(tables["r1"].tables[system], axis=(0, 2)) for system in systems}
    lines += [
        "",
        "## Per language, text→image R@1 (mean over seeds and images; descriptive, no test)",
        "",
        "| system | " + " | ".join(zero_shot) + " |",
        "|---|" + "---|" * len(zero_shot),
        *[
            f"| {system_label(system, main_image_model)} | "
            + " | ".join(f"{value:.3f}" for value in r1_by_language[system])
            + " |"
            for system in systems
        ],
        "",
        *(validation_sections(validation, tuning, estimates, english_r1) if validation is not None else []),
        "",
        "## What the numbers say",
        "",
        *summarise(comparisons, estimates, english_r1, main_text_model, main_image_model),
        "",
        "![per-language R@1](per_language_r1.png)",
        "",
        "![mean recall](mean_recall.png)",
        "",
    ]

    main = [s for s in systems if s[2:] == (main_text_model, main_image_model) and s[0] != "random_init"]
    figure, axis = plt.subplots(figsize=(12, 4.5))
    width = 0.8 / max(len(main), 1)
    for offset, system in enumerate(main):
        axis.bar(
            np.arange(len(zero_shot)) + offset * width,
            r1_by_language[system],
            width,
            label=f"{system[0]} / {system[1]}",
        )
    axis.set_xticks(np.arange(len(zero_shot)) + width * (len(main) - 1) / 2, zero_shot)
    axis.set_ylabel("text→image R@1 (mean over seeds)")
    axis.legend(ncol=4, fontsize=7)
    axis.set_title(title)
    figure.tight_layout()
    figure.savefig(out_dir / "per_language_r1.png", dpi=110)
    plt.close(figure)

    figure, axes = plt.subplots(1, 2, figsize=(12, max(4.5, 0.28 * len(systems))))
    for axis, key, name in ((axes[0], "r1", "R@1"), (axes[1], "r10", "R@10")):
        means = [estimates[s][key].mean for s in systems]
        errors = [
            [estimates[s][key].mean - estimates[s][key].low for s in systems],
            [estimates[s][key].high - estimates[s][key].mean for s in systems],
        ]
        axis.barh([system_label(s, main_image_model) for s in systems], means, xerr=errors, capsize=3)
        axis.set_xlabel(f"zero-shot mean text→image {name} (95% CI)")
        axis.invert_yaxis()
    figure.tight_layout()
    figure.savefig(out_dir / "mean_recall.png", dpi=110)
    plt.close(figure)

    markdown = "\n".join(lines)
    (out_dir / "report.md").write_text(markdown, "utf-8")
    return markdown


def cost_lines(cost: dict, finetuning: pl.DataFrame | None) -> list[str]:
    """The grid step's wall time as this run measured it, and the fine-tuned encoders' training time."""
    line = (
        f"Cost: the `experiment_grid` step took **{cost['seconds']:.0f} s** on {cost['cores']} CPU cores ({cost['processes']} "
        f"training processes): {cost['head_trainings']} head trainings for {cost['cells']} cells, of which tuning "
        f"{cost['tuning_seconds']:.0f} s; embedding with the other encoders {cost['encoding_seconds']:.0f} s (cached after the first run)."
    )
    if finetuning is not None and finetuning.height:
        arms = ", ".join(f"{arm} {seconds:.0f} s" for arm, seconds in finetuning.select("arm", "seconds").iter_rows())
        line += f" Fine-tuning the text encoder (`text_encoder_finetuning`, {finetuning['steps'][0]} steps per arm): {arms}."
    return [line, ""]


def summarise(
    comparisons: list[Comparison], estimates: dict, english_r1: dict, main_text_model: str, main_image_model: str
) -> list[str]:
    """Sentences generated from the numbers, so the README's answer can never drift from them."""
    sentences = [
        f"- {c.label}, R@{c.k}: {c.test.difference:+.4f} (Holm-adjusted p {_p(c.adjusted_p)}) — {c.verdict}."
        for c in comparisons
    ]
    trained = [s for s in estimates if s[2:] == (main_text_model, main_image_model) and s[0] != "random_init"]
    best = max(trained, key=lambda s: estimates[s]["r10"].mean)
    sentences.append(
        f"- Highest zero-shot mean R@10 on the test split: {best[0]} / {best[1]} at {estimates[best]['r10'].mean:.3f} "
        "(descriptive: a configuration chosen by test numbers is not a selection)."
    )
    for system in [s for s in estimates if s[0] == "random_init" or s[2] == ENGLISH_ONLY_TEXT_MODEL]:
        english = english_r1[system].mean if english_r1[system] else float("nan")
        sentences.append(
            f"- Baseline {system_label(system, main_image_model)}: zero-shot mean R@1 {estimates[system]['r1'].mean:.3f}, English R@1 {english:.3f}."
        )
    return sentences

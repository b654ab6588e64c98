"""The grid report: mean Recall with bootstrap CIs, paired tests, per-language plots, and what they say."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from xlr_pipeline.core.stats import Estimate, bootstrap_ci, paired_permutation_test

SIGNIFICANCE = 0.05
System = tuple[str, str, str]  # objective, augmentation, text model


def hit_rates(hits: pl.DataFrame, k: int, direction: str) -> dict[System, dict[str, np.ndarray]]:
    """system → language → per-query hit rate at k, averaged over seeds."""
    rates = (
        hits.filter(pl.col("direction") == direction)
        .with_columns(((pl.col("rank") >= 1) & (pl.col("rank") <= k)).cast(pl.Float64).alias("hit"))
        .group_by("objective", "augmentation", "text_model", "language", "query")
        .agg(pl.col("hit").mean())
        .sort("query")
    )
    out: dict[System, dict[str, np.ndarray]] = {}
    for (objective, augmentation, text_model, language), group in rates.group_by(
        "objective", "augmentation", "text_model", "language", maintain_order=True
    ):
        out.setdefault((objective, augmentation, text_model), {})[language] = group["hit"].to_numpy()
    return out


def zero_shot(by_language: dict[str, np.ndarray], train_language: str) -> dict[str, np.ndarray]:
    return {language: hits for language, hits in by_language.items() if language != train_language}


@dataclass(frozen=True)
class Comparison:
    label: str
    k: int
    difference: float
    p_value: float

    @property
    def verdict(self) -> str:
        if self.p_value >= SIGNIFICANCE:
            return "not significant"
        return "significant gain" if self.difference > 0 else "significant loss"


def reference_of(system: System) -> tuple[System, str]:
    """What a system is compared with: its objective without augmentation; m3 variants with m3; m3/InfoNCE with PATR."""
    objective, augmentation, text_model = system
    if augmentation != "none":
        return (objective, "none", text_model), f"{augmentation} vs none ({objective})"
    if objective.startswith("m3 ("):
        return ("m3", "none", text_model), f"{objective} vs m3 (λ_t=default)"
    return ("patr", "none", text_model), f"{objective} vs patr (no augmentation)"


def _p(value: float) -> str:
    return "< 0.001" if value < 0.001 else f"{value:.3f}"


def _fmt(estimate: Estimate) -> str:
    return f"{estimate.mean:.3f} [{estimate.low:.3f}, {estimate.high:.3f}]"


def build_report(hits: pl.DataFrame, train_language: str, main_text_model: str, out_dir: Path, title: str) -> str:
    """Write `report.md`, `per_language_r1.png` and `mean_recall.png` into out_dir; return the Markdown."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    r1, r5 = hit_rates(hits, 1, "text_to_image"), hit_rates(hits, 5, "text_to_image")
    i1 = hit_rates(hits, 1, "image_to_text")
    systems = sorted(r1, key=lambda s: (s[2] != main_text_model, s[0] == "random_init", s))
    estimates = {
        system: {
            "r1": bootstrap_ci(zero_shot(r1[system], train_language)),
            "r5": bootstrap_ci(zero_shot(r5[system], train_language)),
            "i1": bootstrap_ci(zero_shot(i1[system], train_language)),
            "en_r1": float(r1[system][train_language].mean()) if train_language in r1[system] else float("nan"),
        }
        for system in systems
    }
    seeds = hits.group_by("objective", "augmentation", "text_model").agg(pl.col("seed").n_unique().alias("n"))
    seed_count = {(o, a, t): n for o, a, t, n in seeds.iter_rows()}

    lines = [
        f"# {title}",
        "",
        f"Zero-shot mean over the {len(zero_shot(r1[systems[0]], train_language))} languages other than "
        f"`{train_language}` (the head is trained on `{train_language}` only). Per query, hits are averaged over "
        "seeds; [95% bootstrap CI over queries]. t2i = text→image, i2t = image→text.",
        "",
        "| objective | augmentation | text encoder | seeds | mean t2i R@1 | mean t2i R@5 | mean i2t R@1 | en t2i R@1 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for system in systems:
        e = estimates[system]
        lines.append(
            f"| {system[0]} | {system[1]} | {system[2]} | {seed_count[system]} | {_fmt(e['r1'])} | {_fmt(e['r5'])} | "
            f"{_fmt(e['i1'])} | {e['en_r1']:.3f} |"
        )

    comparisons: list[Comparison] = []
    main = [s for s in systems if s[2] == main_text_model and s[0] != "random_init"]
    for system in main:
        reference, label = reference_of(system)
        if reference in r1 and reference != system:
            for k, rates in ((1, r1), (5, r5)):
                diff, p = paired_permutation_test(zero_shot(rates[system], train_language), zero_shot(rates[reference], train_language))
                comparisons.append(Comparison(label, k, diff, p))
    lines += [
        "",
        "## Paired comparisons (zero-shot mean, text→image; sign-flip permutation test over queries)",
        "",
        "| comparison | k | difference | p | verdict |",
        "|---|---|---|---|---|",
        *[f"| {c.label} | {c.k} | {c.difference:+.4f} | {_p(c.p_value)} | {c.verdict} |" for c in comparisons],
        "",
        f"Significance at p < {SIGNIFICANCE}, two-sided, without correction for the {len(comparisons)} comparisons "
        "(with Bonferroni, p must be below "
        f"{SIGNIFICANCE / max(len(comparisons), 1):.4f}).",
    ]

    lines += [
        "",
        "## Per-language paired tests (text→image R@1: difference, p; * = p < 0.05)",
        "",
        "| comparison | " + " | ".join(sorted(r1[systems[0]])) + " |",
        "|---|" + "---|" * len(r1[systems[0]]),
    ]
    for system in main:
        reference, label = reference_of(system)
        if reference not in r1 or reference == system:
            continue
        cells = []
        for language in sorted(r1[system]):
            diff, p = paired_permutation_test({language: r1[system][language]}, {language: r1[reference][language]}, permutations=2000)
            cells.append(f"{diff:+.3f} ({_p(p)}){'*' if p < SIGNIFICANCE else ''}")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")

    lines += ["", "## Per language, text→image R@1 (mean over seeds)", ""]
    languages = sorted(r1[systems[0]])
    lines.append("| system | " + " | ".join(languages) + " |")
    lines.append("|---|" + "---|" * len(languages))
    for system in systems:
        lines.append(f"| {' / '.join(system)} | " + " | ".join(f"{r1[system][lang].mean():.3f}" for lang in languages) + " |")

    lines += ["", "## What the numbers say", "", *summarise(comparisons, estimates, main_text_model), ""]
    lines += ["![per-language R@1](per_language_r1.png)", "", "![mean recall](mean_recall.png)", ""]

    figure, axis = plt.subplots(figsize=(12, 4.5))
    width = 0.8 / max(len(main), 1)
    for offset, system in enumerate(main):
        values = [r1[system][lang].mean() for lang in languages]
        axis.bar(np.arange(len(languages)) + offset * width, values, width, label=f"{system[0]} / {system[1]}")
    axis.set_xticks(np.arange(len(languages)) + width * (len(main) - 1) / 2, languages)
    axis.set_ylabel("text→image R@1 (mean over seeds)")
    axis.legend(ncol=3, fontsize=8)
    axis.set_title(title)
    figure.tight_layout()
    figure.savefig(out_dir / "per_language_r1.png", dpi=110)
    plt.close(figure)

    figure, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for axis, key, name in ((axes[0], "r1", "R@1"), (axes[1], "r5", "R@5")):
        means = [estimates[s][key].mean for s in systems]
        errors = [[estimates[s][key].mean - estimates[s][key].low for s in systems], [estimates[s][key].high - estimates[s][key].mean for s in systems]]
        axis.barh([" / ".join(s[:2]) + ("" if s[2] == main_text_model else " (English-only encoder)") for s in systems], means, xerr=errors, capsize=3)
        axis.set_xlabel(f"zero-shot mean text→image {name} (95% CI)")
        axis.invert_yaxis()
    figure.tight_layout()
    figure.savefig(out_dir / "mean_recall.png", dpi=110)
    plt.close(figure)

    markdown = "\n".join(lines)
    (out_dir / "report.md").write_text(markdown, "utf-8")
    return markdown


def summarise(comparisons: list[Comparison], estimates: dict, main_text_model: str) -> list[str]:
    """A few sentences generated from the numbers, so the README's answer can never drift from them."""
    sentences = []
    for comparison in comparisons:
        sentences.append(
            f"- {comparison.label}, R@{comparison.k}: {comparison.difference:+.4f} "
            f"(p {'< 0.001' if comparison.p_value < 0.001 else f'= {comparison.p_value:.3f}'}) — {comparison.verdict}."
        )
    random = [s for s in estimates if s[0] == "random_init"]
    english_only = [s for s in estimates if s[2] != main_text_model and s[0] != "random_init"]
    best = max((s for s in estimates if s[2] == main_text_model and s[0] != "random_init"), key=lambda s: estimates[s]["r1"].mean)
    sentences.append(f"- Best zero-shot mean R@1: {best[0]} / {best[1]} at {estimates[best]['r1'].mean:.3f}.")
    for system in random + english_only:
        sentences.append(
            f"- Baseline {system[0]} / {system[2]}: zero-shot mean R@1 {estimates[system]['r1'].mean:.3f}, "
            f"English R@1 {estimates[system]['en_r1']:.3f}."
        )
    return sentences

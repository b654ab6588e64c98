"""The grid report's text: zero-shot mean Recall with hierarchical CIs, the Holm-corrected paired comparisons,
per-language R@1, how the configuration was chosen on validation, and sentences generated from the numbers.

A report is built from the cells of exactly one grid run (named in it). The numbers: `comparisons.py`; the
figures: `core/reporting/grid_plots.py`.
"""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl

from xlr_pipeline.core.experiments.comparisons import (
    EQUIVALENCE_MARGINS,
    SIGNIFICANCE,
    SYSTEM_COLUMNS,
    Comparison,
    GridAnalysis,
    analyse,
    encoder_label,
    hit_tables,
    image_encoder_label,
    system_label,
)
from xlr_pipeline.core.experiments.grid import ENSEMBLE_SHARES
from xlr_pipeline.core.experiments.stats import Estimate, hierarchical_ci, p_value
from xlr_pipeline.core.experiments.tuning import adoptable_candidates, best_system, edges, selection_candidates
from xlr_pipeline.core.reporting.grid_plots import mean_recall, per_language_r1
from xlr_pipeline.core.scoring.hubness import HUBNESS_PARAMETERS
from xlr_pipeline.core.training.choices import ENGLISH_ONLY_TEXT_MODEL


def _fmt(estimate: Estimate) -> str:
    return f"{estimate.mean:.3f} [{estimate.low:.3f}, {estimate.high:.3f}]"


def transfer_ratio(estimates: dict[str, Estimate], english: dict[str, Estimate]) -> float:
    """Zero-shot mean t2i R@10 / English t2i R@10 (NaN without English queries or English hits)."""
    return estimates["r10"].mean / english["r10"].mean if english and english["r10"].mean > 0 else float("nan")


def development_selection(validation: pl.DataFrame, hits: pl.DataFrame, analysis: GridAnalysis) -> list[str]:
    """The secondary selection: the best system by validation score in the development language, and its test
    numbers over the zero-shot languages other than that one."""
    development = validation.get_column("development_language", default=None)
    if development is None or development.null_count() == len(development):
        return []
    language = development.drop_nulls()[0]
    candidates = selection_candidates(validation).drop("score").rename({"development_score": "score"})
    system = best_system(candidates, SYSTEM_COLUMNS)
    languages = [other for other in analysis.zero_shot if other != language]
    estimates = {
        key: hierarchical_ci(hit_tables(hits, k, "text_to_image", languages).tables[system])
        for key, k in (("r1", 1), ("r5", 5), ("r10", 10))
    }
    same = "the same system as the primary selection" if system == analysis.chosen else "a different system"
    return [
        "",
        f"**Secondary selection on the development language `{language}`** (its validation captions → validation "
        f"images, the same score): **{system_label(system, main_image_model='')}** ({same}). Its test numbers over "
        f"the {len(languages)} zero-shot languages without `{language}`: R@10 {_fmt(estimates['r10'])}, R@5 "
        f"{_fmt(estimates['r5'])}, R@1 {_fmt(estimates['r1'])}.",
    ]


def _chosen_per_system(validation: pl.DataFrame, column: str, intro: str) -> list[str]:
    """`intro`, then the values of `column` chosen on validation per system and objective (one per seed's head)."""
    if column not in validation.columns:
        return []
    chosen = validation.filter(pl.col(column).is_not_null())
    if chosen.is_empty():
        return []
    rows = chosen.group_by("augmentation", "objective", maintain_order=True).agg(pl.col(column))
    return [
        "",
        intro
        + "; ".join(
            f"{augmentation} / {objective}: {', '.join(f'{v:g}' for v in values)}"
            for augmentation, objective, values in rows.iter_rows()
        )
        + ".",
    ]


def hubness_lines(validation: pl.DataFrame) -> list[str]:
    """The hubness-reduction parameters chosen on validation, per method and objective (one per seed's head)."""
    return _chosen_per_system(
        validation,
        "hubness_parameter",
        "Hubness reduction (`core/scoring/hubness.py`; query bank: the English train captions; CSLS's k and "
        "QB-Norm's β chosen per head on validation from "
        + ", ".join(f"{method} {list(values)}" for method, values in HUBNESS_PARAMETERS.items())
        + "): ",
    )


def ensemble_lines(validation: pl.DataFrame) -> list[str]:
    """The main pair's share of each two-pair ensemble, chosen on validation (one per seed)."""
    return _chosen_per_system(
        validation,
        "ensemble_share",
        "Score ensembles (`core/scoring/ensemble.py`: the weighted mean of the members' cosine similarities; a seed "
        "ensemble's heads are all the seeds, so it has one level and its CI and comparisons are conditional on those "
        "heads, images the only unit). The main pair's share of a two-pair ensemble, chosen per seed on validation "
        f"from {list(ENSEMBLE_SHARES)} (more pairs: equal weights): ",
    )


def validation_sections(
    validation: pl.DataFrame, tuning: pl.DataFrame | None, estimates: dict, english: dict
) -> list[str]:
    """How hyperparameters and the reported configuration were chosen (validation split only), and the chosen
    configuration's test numbers."""
    lines = []
    if tuning is not None:
        trials = tuning.group_by("text_model", "image_model", "objective").len()["len"]
        seeds = tuning["seeds"].explode().unique().sort().to_list()
        trained_with = (
            f"seed {seeds[0]}" if len(seeds) == 1 else f"seeds {', '.join(map(str, seeds))} (score: their mean)"
        )
        lines += [
            "",
            "## Tuning on the validation split",
            "",
            f"One seeded Optuna study (TPE) per objective and encoder pair, each with the same budget of "
            f"{trials.max()} trials (trial 0: the stated defaults; the rest sampled from "
            "`core/experiments/tuning.py`'s `SEARCH_SPACE`: learning rate, margins, τ, α3/β2, linear or MLP head, "
            f"dropout), each trained with {trained_with} on the English train split with the grid's step budget and "
            "scored on English validation captions → validation images (score = mean of R@1, R@5, R@10). Every cell "
            "of an objective and encoder pair then trains with its study's chosen values. 'edge': a chosen value in "
            "the outer 2 % of a range that is not a hard limit of the parameter (a sign the space should widen).",
            "",
            "| text encoder | image encoder | objective | chosen values | edge | validation score (chosen) | validation score (stated defaults) |",
            "|---|---|---|---|---|---|---|",
        ]
        for (text_model, image_model, objective), group in tuning.group_by(
            "text_model", "image_model", "objective", maintain_order=True
        ):
            chosen = group.filter(pl.col("chosen")).row(0, named=True)
            default = group.filter(pl.col("trial") == 0).row(0, named=True)
            values = json.loads(chosen["parameters"])
            shown = {name: float(f"{v:.3g}") if isinstance(v, float) else v for name, v in values.items()}
            lines.append(
                f"| {encoder_label(text_model)} | {image_encoder_label(image_model)} | {objective} | `{json.dumps(shown)}` | "
                f"{', '.join(edges(objective, values)) or '–'} | {chosen['score']:.4f} | {default['score']:.4f} |"
            )
    trained = selection_candidates(validation)
    chosen_system = best_system(trained, SYSTEM_COLUMNS)
    score = trained.filter(pl.all_horizontal([pl.col(c) == v for c, v in zip(SYSTEM_COLUMNS, chosen_system)]))[
        "score"
    ].mean()
    chosen_english = english[chosen_system]
    lines += [
        "",
        "## Configuration chosen on the validation split",
        "",
        f"Highest mean validation score over seeds among every trained system but the English-only control: "
        f"**{system_label(chosen_system, main_image_model='')}** ({score:.4f}; per-language centring does not "
        "change English queries, so it ties with plain training and the plain one is named). Its "
        f"test numbers: zero-shot mean t2i R@10 {_fmt(estimates[chosen_system]['r10'])}, R@5 {_fmt(estimates[chosen_system]['r5'])}, "
        f"R@1 {_fmt(estimates[chosen_system]['r1'])}; "
        + (
            f"en t2i R@1 {_fmt(chosen_english['r1'])}, R@5 {_fmt(chosen_english['r5'])}, R@10 {_fmt(chosen_english['r10'])}; "
            f"transfer ratio {transfer_ratio(estimates[chosen_system], chosen_english):.2f}."
            if chosen_english
            else "no English test queries."
        ),
    ]
    adoptable = best_system(adoptable_candidates(validation), SYSTEM_COLUMNS)
    if adoptable == chosen_system:
        lines += ["", "`xlr run` trains it: it is what `xlr grid --adopt` writes into `[defaults]`."]
    else:
        lines += [
            "",
            "Among the systems `xlr run` trains (no augmentation or the captions' keywords, SALT's copies being the "
            f"grid's; plain, hubness-reduced or ensembled over encoder pairs, not over seeds): **{system_label(adoptable, main_image_model='')}** "
            f"— what `xlr grid --adopt` writes into `[defaults]`. Its test numbers: zero-shot mean t2i R@10 "
            f"{_fmt(estimates[adoptable]['r10'])}, R@1 {_fmt(estimates[adoptable]['r1'])}"
            + (f"; en t2i R@1 {_fmt(english[adoptable]['r1'])}." if english[adoptable] else "."),
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
    chosen = best_system(selection_candidates(validation), SYSTEM_COLUMNS) if validation is not None else None
    analysis = analyse(hits, train_language, main_text_model, main_image_model, validation, tuning, cost, chosen)
    out_dir.mkdir(parents=True, exist_ok=True)
    markdown = render(analysis, hits, title, validation, tuning, cost, finetuning)
    per_language_r1(analysis, title, out_dir / "per_language_r1.png")
    mean_recall(analysis, out_dir / "mean_recall.png")
    (out_dir / "report.md").write_text(markdown, "utf-8")
    return markdown


def render(
    analysis: GridAnalysis,
    hits: pl.DataFrame,
    title: str,
    validation: pl.DataFrame | None,
    tuning: pl.DataFrame | None,
    cost: dict | None,
    finetuning: pl.DataFrame | None,
) -> str:
    """The report's Markdown."""
    a = analysis
    lines = [
        f"# {title}",
        "",
        f"Grid run `{a.grid_run}`: every row below comes from this one run. Each head trained for "
        f"{', '.join(map(str, a.steps))} optimiser steps, whatever its augmentation. Zero-shot = mean over the "
        f"{len(a.zero_shot)} languages other than `{a.train_language}` (the head is trained on `{a.train_language}` only). "
        "[95% CI: crossed bootstrap over seeds and images — the image is the unit in every language — with a t "
        "quantile on Welch–Satterthwaite degrees of freedom.] t2i = text→image, i2t = image→text. Embeddings are "
        "bit-exact whatever the batching, threads and cache state: every item is encoded alone "
        "(`xlr_pipeline_tests/test_determinism.py`).",
        "",
        *(cost_lines(cost, finetuning) if cost is not None else []),
        f"| objective | augmentation | text encoder | image encoder | seeds | zero-shot t2i R@1 | zero-shot t2i R@5 | zero-shot t2i R@10 | zero-shot i2t R@1 | {a.train_language} t2i R@1 | {a.train_language} t2i R@5 | {a.train_language} t2i R@10 | transfer ratio |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for system in a.systems:
        e, english = a.estimates[system], a.english[system]
        english_cells = " | ".join(_fmt(english[key]) if english else "–" for key in ("r1", "r5", "r10"))
        lines.append(
            f"| {system[0]} | {system[1]} | {encoder_label(system[2])} | {image_encoder_label(system[3])} | {a.seed_count[system]} | {_fmt(e['r1'])} | {_fmt(e['r5'])} | "
            f"{_fmt(e['r10'])} | {_fmt(e['i1'])} | {english_cells} | {transfer_ratio(e, english):.2f} |"
        )
    for family, heading, note in (
        (
            "primary",
            "## Primary comparisons (declared before the run; zero-shot mean, text→image)",
            "The research questions, fixed in `core/experiments/comparisons.py` before any grid ran; Holm–Bonferroni "
            "within this family.",
        ),
        (
            "secondary",
            "## Secondary comparisons (exploratory; zero-shot mean, text→image)",
            "Every other contrast the grid allows; Holm–Bonferroni within this family only.",
        ),
    ):
        rows = [c for c in a.comparisons if c.family == family]
        if not rows:
            continue
        lines += [
            "",
            heading,
            "",
            f"{note} {len(rows)} comparisons. Same seeds, same images. p = the larger of a sign-flip test with the "
            "image as the unit (all languages together; normal approximation of the sign-flip distribution) and a "
            "seeds × images t test (a seed ensemble, one level, meets its members' seed mean: images only); "
            "verdicts at adjusted p < "
            f"{SIGNIFICANCE}; 'equivalent' only where a TOST with the stated margin (R@1 ±{EQUIVALENCE_MARGINS[1]}, "
            f"R@5 ±{EQUIVALENCE_MARGINS[5]}), Holm-corrected the same way, shows it, else 'inconclusive'. "
            "The 95% CIs are unadjusted (per comparison).",
            "",
            "| comparison | k | difference [95% CI, unadjusted] | p (images) | p (seeds × images) | p | Holm p | TOST Holm p | verdict |",
            "|---|---|---|---|---|---|---|---|---|",
            *[
                f"| {c.label} | {c.k} | {c.test.difference:+.4f} [{c.test.low:+.4f}, {c.test.high:+.4f}] | {p_value(c.test.p_sign_flip)} | "
                f"{p_value(c.test.p_hierarchical)} | {p_value(c.test.p_value)} | {p_value(c.adjusted_p)} | "
                f"{p_value(c.adjusted_p_equivalence)} | {c.verdict} |"
                for c in rows
            ],
        ]
    lines += [
        "",
        "## Per language, text→image R@1 (mean over seeds and images; descriptive, no test)",
        "",
        "| system | " + " | ".join(a.zero_shot) + " |",
        "|---|" + "---|" * len(a.zero_shot),
        *[
            f"| {system_label(system, a.main_image_model)} | "
            + " | ".join(f"{value:.3f}" for value in a.r1_by_language[system])
            + " |"
            for system in a.systems
        ],
        "",
        *(validation_sections(validation, tuning, a.estimates, a.english) if validation is not None else []),
        *(
            development_selection(validation, hits, a) + hubness_lines(validation) + ensemble_lines(validation)
            if validation is not None
            else []
        ),
        "",
        "## What the numbers say",
        "",
        *summarise(a.comparisons, a.estimates, a.english, a.main_text_model, a.main_image_model),
        "",
        "![per-language R@1](per_language_r1.png)",
        "",
        "![mean recall](mean_recall.png)",
        "",
    ]
    return "\n".join(lines)


def cost_lines(cost: dict, finetuning: pl.DataFrame | None) -> list[str]:
    """The grid step's wall time as this run measured it, and the fine-tuned encoders' training time."""
    line = (
        f"Cost: the `experiment_grid` step took **{cost['seconds']:.0f} s** on {cost['cores']} CPU cores ({cost['processes']} "
        f"training processes): {cost['head_trainings']} head trainings for {cost['cells']} cells, of which tuning "
        f"{cost['tuning_seconds']:.0f} s; embedding with the other encoders {cost['encoding_seconds']:.0f} s (cached after the first run)"
        + (f"; {cost['ensembles']} score ensembles of those heads." if cost.get("ensembles") else ".")
    )
    if finetuning is not None and finetuning.height:
        arms = ", ".join(f"{arm} {seconds:.0f} s" for arm, seconds in finetuning.select("arm", "seconds").iter_rows())
        line += f" Fine-tuning the text encoder (`text_encoder_finetuning`, {finetuning['steps'][0]} steps per arm): {arms}."
    return [line, ""]


def summarise(
    comparisons: list[Comparison], estimates: dict, english: dict, main_text_model: str, main_image_model: str
) -> list[str]:
    """Sentences generated from the numbers, so the README's answer can never drift from them: every primary
    comparison, and the secondary ones with a verdict other than 'inconclusive'."""
    sentences = [
        f"- {c.family.capitalize()}: {c.label}, R@{c.k}: {c.test.difference:+.4f} (Holm-adjusted p {p_value(c.adjusted_p)}, "
        f"TOST {p_value(c.adjusted_p_equivalence)}) — {c.verdict}."
        for c in comparisons
        if c.family == "primary" or c.verdict != "inconclusive"
    ]
    trained = [s for s in estimates if s[2:] == (main_text_model, main_image_model) and s[0] != "random_init"]
    best = max(trained, key=lambda s: estimates[s]["r10"].mean)
    sentences.append(
        f"- Highest zero-shot mean R@10 on the test split: {best[0]} / {best[1]} at {estimates[best]['r10'].mean:.3f} "
        "(descriptive: a configuration chosen by test numbers is not a selection)."
    )
    for system in [s for s in estimates if s[0] == "random_init" or s[2] == ENGLISH_ONLY_TEXT_MODEL]:
        english_r1 = english[system]["r1"].mean if english[system] else float("nan")
        sentences.append(
            f"- Baseline {system_label(system, main_image_model)}: zero-shot mean R@1 {estimates[system]['r1'].mean:.3f}, English R@1 {english_r1:.3f}."
        )
    return sentences

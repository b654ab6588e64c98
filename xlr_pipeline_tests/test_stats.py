"""The statistics on synthetic data where the truth is known."""

import numpy as np
import pytest

from xlr_pipeline.core.experiments.stats import equivalence_p, hierarchical_ci, p_value, paired_test, sign_flip_p


def _grid_table(rng, mean=0.3, seeds=5, languages=6, images=150, seed_sd=0.03, image_sd=0.15, noise_sd=0.1):
    """Hit rates of a grid: a seed effect shared by all queries of a seed, an image effect shared by the image's
    queries in every language (correlated languages), a language × image effect and cell noise."""
    return (
        mean
        + rng.normal(0, seed_sd, (seeds, 1, 1))
        + rng.normal(0, image_sd, (1, 1, images))
        + rng.normal(0, 0.05, (1, languages, images))
        + rng.normal(0, noise_sd, (seeds, languages, images))
    )


def test_hierarchical_ci_covers_the_truth_about_95_percent_with_correlated_languages_and_seed_effects():
    rng = np.random.default_rng(3)
    covered = sum(
        (estimate := hierarchical_ci(_grid_table(rng), resamples=400, seed=trial)).low <= 0.3 <= estimate.high
        for trial in range(200)
    )
    assert 0.88 <= covered / 200 <= 0.99


def test_paired_test_keeps_false_positives_near_5_percent_with_correlated_languages_and_seed_effects():
    rng = np.random.default_rng(4)
    hierarchical = []
    for trial in range(200):
        base = _grid_table(rng)
        # B differs from A by seed-level and image-level noise only: no true difference
        other = base + _grid_table(rng, mean=0.0, seed_sd=0.03, image_sd=0.05)
        hierarchical.append(paired_test(other, base, 0.01, resamples=400, seed=trial).p_value < 0.05)
    assert np.mean(hierarchical) <= 0.09


def test_paired_test_finds_a_real_gain_and_handles_missing_queries():
    rng = np.random.default_rng(5)
    base = _grid_table(rng)
    better = base + 0.03 + _grid_table(rng, mean=0.0, seed_sd=0.005, image_sd=0.02, noise_sd=0.05)
    base[:, 2, :40] = np.nan  # a language without queries for some images
    better[:, 2, :40] = np.nan
    result = paired_test(better, base, 0.01, resamples=500)
    assert result.p_value < 0.01 and result.low < 0.03 < result.high
    assert result.p_value == max(result.p_sign_flip, result.p_hierarchical)
    assert result.p_equivalence > 0.5  # a gain of 0.03 is not within ±0.01
    same = paired_test(base, base, 0.01, resamples=100)
    assert same.p_value == 1.0 and same.p_equivalence == 0.0
    with pytest.raises(ValueError, match="same seeds, languages and images"):
        paired_test(base, base[:4], 0.01, resamples=10)


def test_the_sign_flip_normal_approximation_agrees_with_100k_random_flips():
    rng = np.random.default_rng(6)
    for shift in (0.0, 0.004, 0.01, 0.02):  # from no effect to p around 1e-3
        contributions = (rng.normal(shift, 0.1, 400) * (rng.random(400) < 0.6)) / 400  # many images tie at 0
        drawn = sign_flip_p(contributions, sign_flips=100_000, seed=1)
        approximated = sign_flip_p(contributions)
        monte_carlo_error = np.sqrt(drawn * (1 - drawn) / 100_000)
        assert abs(approximated - drawn) <= max(4 * monte_carlo_error, 0.1 * drawn), (shift, drawn, approximated)


def test_equivalence_needs_the_whole_interval_inside_the_margin():
    # 90% t interval of 0.002 ± 1.70 × 0.002 (df 30) = [-0.0014, 0.0054]: inside ±0.01, not inside ±0.005
    assert equivalence_p(0.002, 0.002, 30, 0.01) < 0.05 < equivalence_p(0.002, 0.002, 30, 0.005)
    assert equivalence_p(0.0, 0.0, 30, 0.01) == 0.0 and equivalence_p(0.02, 0.0, 30, 0.01) == 1.0
    with pytest.raises(ValueError, match="positive"):
        equivalence_p(0.0, 0.01, 30, 0.0)


def test_p_values_print_to_two_significant_figures():
    assert [p_value(v) for v in (0.0261, 0.00061, 3.14e-9, 1.0)] == ["0.026", "0.00061", "3.1e-09", "1"]

"""The statistics on synthetic data where the truth is known."""

import numpy as np
import pytest

from xlr_pipeline.core.experiments.stats import hierarchical_ci, paired_test


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
        hierarchical.append(paired_test(other, base, resamples=400, permutations=400, seed=trial).p_value < 0.05)
    assert np.mean(hierarchical) <= 0.09


def test_paired_test_finds_a_real_gain_and_handles_missing_queries():
    rng = np.random.default_rng(5)
    base = _grid_table(rng)
    better = base + 0.03 + _grid_table(rng, mean=0.0, seed_sd=0.005, image_sd=0.02, noise_sd=0.05)
    base[:, 2, :40] = np.nan  # a language without queries for some images
    better[:, 2, :40] = np.nan
    result = paired_test(better, base, resamples=500, permutations=1000)
    assert result.p_value < 0.01 and result.low < 0.03 < result.high
    assert result.p_value == max(result.p_sign_flip, result.p_hierarchical)
    assert paired_test(base, base, resamples=100, permutations=100).p_value == 1.0
    with pytest.raises(ValueError, match="same seeds, languages and images"):
        paired_test(base, base[:4], resamples=10, permutations=10)

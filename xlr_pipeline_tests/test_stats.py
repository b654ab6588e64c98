"""The statistics on synthetic data where the truth is known."""

import numpy as np

from xlr_pipeline.core.stats import bootstrap_ci, paired_permutation_test


def test_bootstrap_ci_covers_the_true_mean_about_95_percent_of_the_time():
    rng = np.random.default_rng(1)
    truth = {"de": 0.3, "ja": 0.1}
    covered = 0
    for trial in range(200):
        hits = {lang: (rng.random(300) < p).astype(float) for lang, p in truth.items()}
        estimate = bootstrap_ci(hits, resamples=500, seed=trial)
        covered += estimate.low <= np.mean(list(truth.values())) <= estimate.high
        assert estimate.low <= estimate.mean <= estimate.high
    assert 0.88 <= covered / 200 <= 0.99


def test_permutation_test_finds_a_real_gap_and_not_an_absent_one():
    rng = np.random.default_rng(2)
    base = {lang: (rng.random(500) < 0.3).astype(float) for lang in ("de", "ja")}
    better = {lang: np.maximum(hits, (rng.random(500) < 0.15).astype(float)) for lang, hits in base.items()}
    gain, p_value = paired_permutation_test(better, base, permutations=2000)
    assert gain > 0.05 and p_value < 0.01
    same = {lang: hits.copy() for lang, hits in base.items()}
    assert paired_permutation_test(same, base, permutations=500)[1] == 1.0
    p_values = []
    for trial in range(40):
        a = {"de": (rng.random(300) < 0.3).astype(float)}
        b = {"de": (rng.random(300) < 0.3).astype(float)}
        p_values.append(paired_permutation_test(a, b, permutations=500, seed=trial)[1])
    assert np.mean(np.array(p_values) < 0.05) <= 0.15  # about 5% false positives under the null

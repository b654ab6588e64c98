"""Honest comparisons with few hundred queries: bootstrap CIs over queries and paired permutation tests.

Inputs are per-query *hit rates*: for each query, the fraction of seeds in which the correct item was in the
top k (so seed variance and query sampling are both reflected). A language's score is the mean over its
queries; "mean over languages" averages those means, resampling queries within each language.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Estimate:
    mean: float
    low: float
    high: float


def bootstrap_ci(hits_by_language: Mapping[str, np.ndarray], resamples: int = 2000, seed: int = 0, level: float = 0.95) -> Estimate:
    """Mean over languages of per-language mean hit rate, with a percentile bootstrap CI over queries."""
    rng = np.random.default_rng(seed)
    languages = sorted(hits_by_language)
    point = float(np.mean([hits_by_language[lang].mean() for lang in languages]))
    samples = np.zeros(resamples)
    for lang in languages:
        hits = hits_by_language[lang]
        indices = rng.integers(0, len(hits), size=(resamples, len(hits)))
        samples += hits[indices].mean(axis=1)
    samples /= len(languages)
    tail = (1 - level) / 2
    return Estimate(point, float(np.quantile(samples, tail)), float(np.quantile(samples, 1 - tail)))


def paired_permutation_test(
    a_by_language: Mapping[str, np.ndarray], b_by_language: Mapping[str, np.ndarray], permutations: int = 5000, seed: int = 0
) -> tuple[float, float]:
    """(mean difference A − B over languages, two-sided p-value) by random sign flips of per-query differences."""
    rng = np.random.default_rng(seed)
    languages = sorted(a_by_language)
    differences = [a_by_language[lang] - b_by_language[lang] for lang in languages]
    observed = float(np.mean([d.mean() for d in differences]))
    null = np.zeros(permutations)
    for diff in differences:
        signs = rng.choice(np.array([-1.0, 1.0]), size=(permutations, len(diff)))
        null += (signs * diff).mean(axis=1)
    null /= len(languages)
    p_value = (np.sum(np.abs(null) >= abs(observed) - 1e-12) + 1) / (permutations + 1)
    return observed, float(p_value)


def holm_adjusted(p_values: list[float]) -> list[float]:
    """Holm–Bonferroni adjusted p-values (same order as given): reject where adjusted p < α controls the
    family-wise error rate at α over the whole family."""
    order = np.argsort(p_values)
    adjusted = np.empty(len(p_values))
    running = 0.0
    for position, index in enumerate(order):
        running = max(running, min(1.0, (len(p_values) - position) * p_values[index]))
        adjusted[index] = running
    return adjusted.tolist()

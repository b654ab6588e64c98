"""Honest comparisons with a few hundred images: the image is the unit, seeds are a level.

Retrieval queries are not independent: query i is the same image in every language, and every number also
depends on the training seed. The grid's statistics therefore work on a table `hits[s, l, i]` — seed s,
language l, image i (the hit rate of that image's queries; NaN where the language has none) — and

- **score** = mean over languages of the mean over (seed, image) cells;
- **confidence intervals**: the standard error from a crossed cluster bootstrap that resamples seeds and images
  independently (the same images in every language, so correlated languages move together; resampling both
  factors of a crossed design is slightly conservative — Owen, "The pigeonhole bootstrap", 2007), and a t
  quantile whose degrees of freedom come from the seed and image variance components (Welch–Satterthwaite), so
  a seed-dominated difference measured on five seeds gets the wide interval it deserves;
- **paired tests** of two systems on the same seeds and images: the larger of (a) a sign-flip test that flips
  each *image's* difference (summed over seeds and languages) — valid for the images, conditional on the seeds —
  and (b) the t test from the bootstrap error above, which adds seed-to-seed variance. The larger of two valid
  p-values is a valid p-value. The sign-flip p is the normal approximation of the sign-flip distribution (its
  variance is exact: the sum of the squared per-image differences), so its resolution is not capped by a
  number of draws; `sign_flips=N` draws N random flips instead, and a test checks that the two agree;
- **equivalence** (TOST, Schuirmann 1987): two one-sided t tests, on the same error and degrees of freedom,
  that the difference lies above −margin and below +margin; "no difference" is only claimed where it passes.

The tagging report uses the same functions with one language per table.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Estimate:
    mean: float
    low: float
    high: float


@dataclass(frozen=True)
class PairedTest:
    difference: float  # score(A) − score(B)
    low: float  # crossed-bootstrap CI of the difference
    high: float
    p_sign_flip: float  # images as the unit, conditional on the seeds
    p_hierarchical: float  # seeds × images (bootstrap error, t reference)
    p_value: float  # the larger of the two
    p_equivalence: float  # TOST: |difference| < margin (seeds × images error, t reference)
    margin: float


def _check_table(hits: np.ndarray) -> np.ndarray:
    hits = np.asarray(hits, dtype=np.float64)
    if hits.ndim != 3 or 0 in hits.shape:
        raise ValueError(f"need a (seeds, languages, images) table, got shape {hits.shape}")
    return hits


def score(hits: np.ndarray) -> float:
    """Mean over languages of the mean over (seed, image) cells that have queries."""
    hits = _check_table(hits)
    return float(np.nanmean(np.nanmean(hits, axis=(0, 2))))


def _crossed_bootstrap(hits: np.ndarray, resamples: int, seed: int) -> np.ndarray:
    """`resamples` scores of tables whose seeds and images were each drawn with replacement.

    Each cell's deviation from its seed-average is scaled by √(S/(S−1)) first: resampling S seeds otherwise
    shrinks the seed-to-seed variance by (S−1)/S, which matters with the handful of seeds a grid affords.
    """
    seeds, languages, images = hits.shape
    if seeds > 1:
        with warnings.catch_warnings():  # cells without queries stay NaN
            warnings.simplefilter("ignore", RuntimeWarning)
            seed_mean = np.nanmean(hits, axis=0, keepdims=True)
        hits = seed_mean + np.sqrt(seeds / (seeds - 1)) * (hits - seed_mean)
    rng = np.random.default_rng(seed)
    seed_counts = rng.multinomial(seeds, np.full(seeds, 1 / seeds), size=resamples).astype(np.float64)
    image_counts = rng.multinomial(images, np.full(images, 1 / images), size=resamples).astype(np.float64)
    present = ~np.isnan(hits)

    def weighted_sum(table: np.ndarray) -> np.ndarray:  # (resamples, languages)
        by_image = (table.reshape(seeds * languages, images) @ image_counts.T).reshape(seeds, languages, resamples)
        return np.einsum("bs,slb->bl", seed_counts, by_image)

    totals, counts = weighted_sum(np.where(present, hits, 0.0)), weighted_sum(present.astype(np.float64))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.nanmean(totals / counts, axis=1)


def _degrees_of_freedom(hits: np.ndarray) -> float:
    """Welch–Satterthwaite degrees of freedom of the seed and image components of the score's variance.

    With five seeds and hundreds of images the seed term, when it matters, has only S − 1 degrees of freedom:
    a normal (or percentile) interval would then be far too narrow.
    """
    seeds, _, images = hits.shape
    with warnings.catch_warnings():  # images without queries in any language stay NaN
        warnings.simplefilter("ignore", RuntimeWarning)
        cells = np.nanmean(hits, axis=1)  # (seeds, images): languages averaged within the image unit
    image_part = np.nanvar(np.nanmean(cells, axis=0), ddof=1) / images
    if seeds == 1:
        return float(images - 1)
    seed_part = np.nanvar(np.nanmean(cells, axis=1), ddof=1) / seeds
    denominator = seed_part**2 / (seeds - 1) + image_part**2 / (images - 1)
    return float((seed_part + image_part) ** 2 / denominator) if denominator > 0 else float(images - 1)


def _t_reference(samples: np.ndarray, hits: np.ndarray) -> tuple[float, float]:
    """(standard error, degrees of freedom): the bootstrap error and its Satterthwaite degrees of freedom."""
    return float(np.std(samples, ddof=1)), _degrees_of_freedom(hits)


def _t_interval(center: float, error: float, df: float, level: float) -> tuple[float, float, float]:
    """(low, high, two-sided p of center = 0): center ± t quantile × standard error."""
    from scipy import stats

    half = stats.t.ppf(0.5 + level / 2, df) * error
    p_value = 1.0 if error == 0 else float(2 * stats.t.sf(abs(center) / error, df))
    return center - half, center + half, p_value


def equivalence_p(difference: float, error: float, df: float, margin: float) -> float:
    """TOST p of −margin < difference < margin: the larger of the two one-sided t tests' p-values."""
    from scipy import stats

    if margin <= 0:
        raise ValueError(f"an equivalence margin is positive, not {margin}")
    if error == 0:
        return 0.0 if abs(difference) < margin else 1.0
    above_lower = stats.t.sf((difference + margin) / error, df)
    below_upper = stats.t.cdf((difference - margin) / error, df)
    return float(max(above_lower, below_upper))


def sign_flip_p(contributions: np.ndarray, sign_flips: int | None = None, seed: int = 0) -> float:
    """Two-sided p of the sum of per-image `contributions` under random signs: the normal approximation
    (sign_flips None; variance Σ c²) or `sign_flips` random draws (Monte Carlo, +1 in both counts)."""
    from scipy import stats

    observed = float(contributions.sum())
    if sign_flips is None:
        spread = float(np.sqrt(np.sum(contributions**2)))
        return 1.0 if spread == 0 else float(2 * stats.norm.sf(abs(observed) / spread))
    rng, exceed, chunk = np.random.default_rng(seed), 0, 10_000
    for start in range(0, sign_flips, chunk):
        signs = rng.choice(np.array([-1.0, 1.0]), size=(min(chunk, sign_flips - start), len(contributions)))
        exceed += int(np.sum(np.abs(signs @ contributions) >= abs(observed) - 1e-12))
    return (exceed + 1) / (sign_flips + 1)


def hierarchical_ci(hits: np.ndarray, resamples: int = 2000, seed: int = 0, level: float = 0.95) -> Estimate:
    """The score with a t interval: crossed (seeds × images) bootstrap error, Satterthwaite degrees of freedom."""
    hits = _check_table(hits)
    center = score(hits)
    low, high, _ = _t_interval(center, *_t_reference(_crossed_bootstrap(hits, resamples, seed), hits), level)
    return Estimate(center, low, high)


def paired_test(
    a: np.ndarray,
    b: np.ndarray,
    margin: float,
    resamples: int = 2000,
    sign_flips: int | None = None,
    seed: int = 0,
    level: float = 0.95,
) -> PairedTest:
    """Compare two systems on the same (seed, language, image) cells; see the module docstring. `margin`: the
    equivalence margin of the TOST (in units of the score)."""
    a, b = _check_table(a), _check_table(b)
    if a.shape != b.shape or not np.array_equal(np.isnan(a), np.isnan(b)):
        raise ValueError("a paired test needs both systems on the same seeds, languages and images")
    difference = a - b
    observed = score(difference)
    error, df = _t_reference(_crossed_bootstrap(difference, resamples, seed), difference)
    low, high, p_hierarchical = _t_interval(observed, error, df, level)

    present = ~np.isnan(difference)
    per_image = np.where(present, difference, 0.0).sum(axis=0)  # (languages, images)
    per_language_count = present.sum(axis=(0, 2)).astype(np.float64)
    used = per_language_count > 0
    contributions = (per_image[used] / per_language_count[used, None]).mean(axis=0)  # (images,): sums to observed
    p_sign_flip = sign_flip_p(contributions, sign_flips, seed + 1)
    return PairedTest(
        observed,
        low,
        high,
        p_sign_flip,
        float(p_hierarchical),
        float(max(p_sign_flip, p_hierarchical)),
        equivalence_p(observed, error, df, margin),
        margin,
    )


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


def p_value(value: float) -> str:
    """A p-value as reports print it: two significant figures."""
    return f"{value:.2g}"

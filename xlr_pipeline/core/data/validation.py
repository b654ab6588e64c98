"""Plain checks on pipeline outputs, used by the Dagster asset checks."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def vector_problems(vectors: np.ndarray, expected_dim: int) -> list[str]:
    """Empty when every row has the expected dimension, finite values and a non-zero norm."""
    problems = []
    if vectors.ndim != 2 or vectors.shape[1] != expected_dim:
        problems.append(f"shape {vectors.shape}, expected (n, {expected_dim})")
        return problems
    bad = int((~np.isfinite(vectors)).any(axis=1).sum())
    if bad:
        problems.append(f"{bad} rows hold NaN or inf")
    zero = int((np.linalg.norm(vectors, axis=1) < 1e-8).sum())
    if zero:
        problems.append(f"{zero} rows have zero norm")
    return problems


def norm_summary(vectors: np.ndarray) -> dict[str, float]:
    if not len(vectors):
        return {}
    norms = np.linalg.norm(vectors, axis=1)
    return {"norm_min": float(norms.min()), "norm_mean": float(norms.mean()), "norm_max": float(norms.max())}


def duplicate_groups(ids: Sequence[str], content_hashes: Sequence[str]) -> list[list[str]]:
    """Ids whose files are byte-identical, one sorted group per content with more than one id."""
    by_hash: dict[str, list[str]] = {}
    for item, digest in zip(ids, content_hashes):
        by_hash.setdefault(digest, []).append(item)
    return sorted(sorted(group) for group in by_hash.values() if len(group) > 1)

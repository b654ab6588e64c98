"""Score ensembles: several trained heads rank by the weighted mean of their cosine similarities.

A head's projections are unit vectors, so Σ_m w_m ⟨q_m, g_m⟩ is the inner product of the members' projections
laid side by side, each scaled by √w_m. Ranking those joined vectors is exactly ranking by the ensemble's score,
with the same exact, bounded-memory code as a single head (`metrics.first_correct_ranks`) — no score matrix
is ever stored.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from xlr_pipeline.core.scoring.metrics import DirectionResult, evaluate_retrieval

if TYPE_CHECKING:
    from xlr_pipeline.core.training.head import ProjectionHead


def member_weights(count: int, first_share: float | None) -> list[float]:
    """Weights summing to 1: `first_share` for the first member and the rest split evenly (None: all equal)."""
    if count < 1:
        raise ValueError("an ensemble needs at least one member")
    if first_share is None or count == 1:
        return [1.0 / count] * count
    if not 0.0 < first_share < 1.0:
        raise ValueError(f"the first member's share of an ensemble is in (0, 1), not {first_share}")
    return [first_share] + [(1.0 - first_share) / (count - 1)] * (count - 1)


def joined(parts: Sequence[np.ndarray], weights: Sequence[float]) -> np.ndarray:
    """The members' unit vectors side by side, each scaled by √weight: inner products of two joined matrices are
    the weighted sums of the members' cosine similarities."""
    if len(parts) != len(weights) or len({len(part) for part in parts}) != 1:
        raise ValueError("joining needs one weight per member and the same rows in every member")
    return np.concatenate(
        [np.sqrt(np.float32(weight)) * np.asarray(part, dtype=np.float32) for part, weight in zip(parts, weights)],
        axis=1,
    )


def projected(heads: Sequence[ProjectionHead], features: Sequence[np.ndarray], modality: str) -> list[np.ndarray]:
    """Each member's raw features (its own encoder's; row for row the same items as every other member's)
    through its own head: what `rank_joined` joins. Projected once, they serve every weighting tried."""
    from xlr_pipeline.core.training.head import project

    return [project(head, part, modality) for head, part in zip(heads, features)]


def rank_joined(
    images: Sequence[np.ndarray], texts: Sequence[np.ndarray], labels: np.ndarray, weights: Sequence[float]
) -> list[DirectionResult]:
    """Both directions, exact, ranked by the weighted mean cosine of the members' projections (image i has label
    i; `labels[j]`: the image of caption j)."""
    joined_images = joined(images, weights)
    return evaluate_retrieval(joined_images, np.arange(len(joined_images)), joined(texts, weights), labels)

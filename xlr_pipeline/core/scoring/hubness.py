"""Hubness reduction at retrieval time: a few gallery images ("hubs") are the nearest neighbour of many queries in
a shared space, and zero-shot queries of other languages fall on them more often. Both methods here rescore each
gallery image against a **query bank** — the English *train* captions, never test queries — and, for text→image
retrieval, both reduce to subtracting a per-image offset from every query's score:

- **CSLS** (Conneau et al., "Word translation without parallel data", ICLR 2018, eq. 6):
  CSLS(q, g) = 2·cos(q, g) − r_T(q) − r_S(g), r_S(g) the mean cosine of g to its k nearest bank queries. For one
  query r_T(q) is a constant, so the ranking of images is that of cos(q, g) − r_S(g)/2.
- **QB-Norm with the inverted softmax** (Bogolin et al., "Cross Modal Retrieval with Querybank Normalisation",
  CVPR 2022, eq. 3, the IS form without the dynamic activation set): score(q, g) = exp(β·s(q, g)) /
  Σ_b exp(β·s(b, g)); its logarithm ranks images as s(q, g) − (1/β)·log Σ_b exp(β·s(b, g)).

k and β are tuned on the validation split. Image→text retrieval is left as it is.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# method → the parameter values tried on validation (CSLS: k neighbours; QB-Norm: β, an inverse temperature on
# cosine similarities)
HUBNESS_PARAMETERS: dict[str, tuple[float, ...]] = {"csls": (5, 10, 25, 50), "qb_norm": (5, 10, 20, 50)}


@dataclass(frozen=True)
class HubnessReduction:
    method: str  # a key of HUBNESS_PARAMETERS
    parameter: float
    bank: np.ndarray  # the query bank: raw (unprojected) English train caption vectors

    def __post_init__(self) -> None:
        if self.method not in HUBNESS_PARAMETERS:
            raise ValueError(f"unknown hubness reduction {self.method!r}; known: {sorted(HUBNESS_PARAMETERS)}")
        if len(self.bank) == 0:
            raise ValueError("hubness reduction needs a non-empty query bank")


def gallery_offsets(method: str, parameter: float, bank: np.ndarray, gallery: np.ndarray) -> np.ndarray:
    """Per gallery item, what its score loses (both vectors projected and unit length)."""
    similarity = (bank @ gallery.T).astype(np.float64)  # (bank, gallery)
    if method == "csls":
        k = min(int(parameter), len(bank))
        return np.sort(np.partition(similarity, len(bank) - k, axis=0)[-k:], axis=0).mean(axis=0) / 2
    if method == "qb_norm":
        scaled = parameter * similarity
        peak = scaled.max(axis=0)
        return (peak + np.log(np.exp(scaled - peak).sum(axis=0))) / parameter
    raise ValueError(f"unknown hubness reduction {method!r}")


def offset_gallery(gallery: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Gallery vectors with one more dimension, −offset: with `offset_queries`, inner products are
    score(q, g) − offset(g), so exact or FAISS inner-product search applies unchanged."""
    return np.hstack([gallery, -offsets[:, None]]).astype(np.float32)


def offset_queries(queries: np.ndarray) -> np.ndarray:
    """Query vectors with one more dimension, 1 (the partner of `offset_gallery`)."""
    return np.hstack([queries, np.ones((len(queries), 1))]).astype(np.float32)

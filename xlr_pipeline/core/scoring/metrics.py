"""Retrieval metrics on FAISS search results.

"Recall@k" follows the CLIP/XTD10 convention: it is really hit@k, the fraction of queries with at
least one correct item among the top k. Every query and gallery item carries a group label (the image
id); a gallery item is correct for a query when their labels match, so an image may have several
captions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # torch loads only where a head is evaluated
    from xlr_pipeline.core.scoring.hubness import HubnessReduction
    from xlr_pipeline.core.training.head import ProjectionHead

DEFAULT_KS = (1, 5, 10)
# Scores closer than this to a query's correct item tie with it: float32 dot products of unit vectors with up to
# a few thousand dimensions differ by ~1e-7 between summation orders.
TIE_TOLERANCE = 1e-6


def _correct_scores(
    gallery: np.ndarray, queries: np.ndarray, query_codes: np.ndarray, gallery_codes: np.ndarray
) -> np.ndarray:
    """Per query, the highest score among the gallery items of its label (-inf where there is none); the
    (query, correct item) pairs are found by sorting labels, so the cost is one dot product per pair."""
    order = np.argsort(gallery_codes, kind="stable")
    first = np.searchsorted(gallery_codes[order], query_codes, "left")
    counts = np.searchsorted(gallery_codes[order], query_codes, "right") - first
    pair_query = np.repeat(np.arange(len(queries)), counts)
    offsets = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    pair_item = order[np.repeat(first, counts) + offsets]
    best = np.full(len(queries), -np.inf, dtype=np.float32)
    np.maximum.at(best, pair_query, np.einsum("ij,ij->i", queries[pair_query], gallery[pair_item]))
    return best


def first_correct_ranks(
    gallery: np.ndarray,
    queries: np.ndarray,
    query_labels: np.ndarray,
    gallery_labels: np.ndarray,
    query_batch: int = 1024,
    gallery_chunk: int = 16_384,
) -> np.ndarray:
    """1-based rank of the first correct gallery item per query (0 where the gallery has none), by inner product.

    Exact, in bounded memory: the rank is 1 + the number of wrong items scoring at or above the query's best
    correct item, counted over gallery chunks, so memory is query_batch × gallery_chunk scores whatever the gallery
    size (no full ranking is ever materialised). Ties count against the query (pessimistic rank): a wrong item
    within `TIE_TOLERANCE` of the correct one (float rounding of two summation orders) ranks above it, so a head
    whose scores are all equal gets the worst rank, never the best.
    """
    if len(gallery) != len(gallery_labels):
        raise ValueError(f"the gallery holds {len(gallery)} items but {len(gallery_labels)} gallery labels were given")
    gallery = np.ascontiguousarray(gallery, dtype=np.float32)
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    _, codes = np.unique(np.concatenate([np.asarray(gallery_labels), np.asarray(query_labels)]), return_inverse=True)
    gallery_codes, query_codes = codes[: len(gallery)], codes[len(gallery) :]
    best = _correct_scores(gallery, queries, query_codes, gallery_codes)
    above = np.zeros(len(queries), dtype=np.int64)
    for q in range(0, len(queries), query_batch):
        batch, batch_best, batch_codes = (
            queries[q : q + query_batch],
            best[q : q + query_batch, None],
            query_codes[q : q + query_batch, None],
        )
        for g in range(0, len(gallery), gallery_chunk):
            scores = batch @ gallery[g : g + gallery_chunk].T
            wrong = gallery_codes[None, g : g + gallery_chunk] != batch_codes
            above[q : q + len(batch)] += ((scores >= batch_best - TIE_TOLERANCE) & wrong).sum(axis=1)
    return np.where(np.isfinite(best), above + 1, 0)


def recall_at_k(ranks: np.ndarray, k: int) -> float:
    """Fraction of answerable queries (rank > 0) whose first correct item is within the top k."""
    answerable = ranks[ranks > 0]
    if len(answerable) == 0:
        raise ValueError("no query has a correct item in the gallery")
    return float(np.mean(answerable <= k))


@dataclass(frozen=True)
class DirectionResult:
    direction: str
    recall: dict[int, float]
    n_queries: int
    mean_rank: float
    median_rank: float
    ranks: np.ndarray


def summarise(direction: str, ranks: np.ndarray, ks: tuple[int, ...] = DEFAULT_KS) -> DirectionResult:
    answerable = ranks[ranks > 0]
    return DirectionResult(
        direction=direction,
        recall={k: recall_at_k(ranks, k) for k in ks},
        n_queries=len(answerable),
        mean_rank=float(answerable.mean()),
        median_rank=float(np.median(answerable)),
        ranks=ranks,
    )


def evaluate_retrieval(
    image_vectors: np.ndarray,
    image_labels: np.ndarray,
    text_vectors: np.ndarray,
    text_labels: np.ndarray,
    ks: tuple[int, ...] = DEFAULT_KS,
    image_offsets: np.ndarray | None = None,
) -> list[DirectionResult]:
    """Both directions, exact: captions rank the images (each image's score lowered by `image_offsets`, where
    given: hubness reduction), images rank the captions."""
    gallery, queries = image_vectors, text_vectors
    if image_offsets is not None:
        from xlr_pipeline.core.scoring.hubness import offset_gallery, offset_queries

        gallery, queries = offset_gallery(image_vectors, image_offsets), offset_queries(text_vectors)
    text_to_image = first_correct_ranks(gallery, queries, text_labels, image_labels)
    image_to_text = first_correct_ranks(text_vectors, image_vectors, image_labels, text_labels)
    return [summarise("text_to_image", text_to_image, ks), summarise("image_to_text", image_to_text, ks)]


def random_head_like(head: ProjectionHead) -> ProjectionHead:
    """The untrained baseline of a head: same seed, same architecture, same input normalisation, evaluated as a
    trained head is (dropout off: in training mode an MLP's baseline would drop features at random)."""
    from xlr_pipeline.core.training.head import EnsembleHead, new_head

    if isinstance(head, EnsembleHead):
        return head.with_members([random_head_like(member) for member in head.members]).eval()
    random_head = new_head(head.text_mean.shape[0], head.image_mean.shape[0], head.config)
    random_head.copy_normalisation(head)
    return random_head.eval()


def evaluate_head(
    head: ProjectionHead,
    image_features: np.ndarray,
    text_features: np.ndarray,
    text_labels: np.ndarray,
    hubness: HubnessReduction | None = None,
) -> list[DirectionResult]:
    """Retrieval in both directions through one head. Image i of `image_features` has label i;
    `text_labels[j]` is the image of caption j. `hubness`: text→image scores rescored against its query bank."""
    from xlr_pipeline.core.training.head import project

    images = project(head, image_features, "image")
    offsets = None
    if hubness is not None:
        from xlr_pipeline.core.scoring.hubness import gallery_offsets

        offsets = gallery_offsets(hubness.method, hubness.parameter, project(head, hubness.bank, "text"), images)
    return evaluate_retrieval(
        images, np.arange(len(image_features)), project(head, text_features, "text"), text_labels, image_offsets=offsets
    )


def recall_is_monotone(recall: dict[int, float]) -> bool:
    """0 <= R@k1 <= R@k2 <= ... <= 1 for increasing k."""
    values = [recall[k] for k in sorted(recall)]
    return all(0.0 <= v <= 1.0 for v in values) and all(a <= b for a, b in zip(values, values[1:]))

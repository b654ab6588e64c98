"""Retrieval metrics on FAISS search results.

"Recall@k" follows the CLIP/XTD10 convention: it is really hit@k, the fraction of queries with at
least one correct item among the top k. Every query and gallery item carries a group label (the image
id); a gallery item is correct for a query when their labels match, so an image may have several
captions.
"""

from __future__ import annotations

from dataclasses import dataclass

import faiss
import numpy as np

from xlr_pipeline.core.head import ProjectionHead, new_head, project

DEFAULT_KS = (1, 5, 10)


def flat_ip_index(vectors: np.ndarray) -> faiss.IndexFlatIP:
    """Exact inner-product index; on L2-normalised vectors the score is the cosine."""
    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(np.ascontiguousarray(vectors, dtype=np.float32))
    return index


def first_correct_ranks(
    index: faiss.Index,
    queries: np.ndarray,
    query_labels: np.ndarray,
    gallery_labels: np.ndarray,
    batch_size: int = 1024,
) -> np.ndarray:
    """1-based rank of the first correct gallery item per query (0 where the gallery has none)."""
    if index.ntotal != len(gallery_labels):
        raise ValueError(f"index holds {index.ntotal} items but {len(gallery_labels)} gallery labels were given")
    ranks = np.zeros(len(queries), dtype=np.int64)
    for start in range(0, len(queries), batch_size):
        batch = np.ascontiguousarray(queries[start : start + batch_size], dtype=np.float32)
        _, neighbours = index.search(batch, index.ntotal)
        correct = gallery_labels[neighbours] == query_labels[start : start + batch_size, None]
        found = correct.any(axis=1)
        ranks[start : start + len(batch)] = np.where(found, correct.argmax(axis=1) + 1, 0)
    return ranks


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
        n_queries=int(len(answerable)),
        mean_rank=float(answerable.mean()),
        median_rank=float(np.median(answerable)),
        ranks=ranks,
    )


def evaluate_retrieval(
    image_index: faiss.Index,
    image_labels: np.ndarray,
    text_vectors: np.ndarray,
    text_labels: np.ndarray,
    image_vectors: np.ndarray,
    ks: tuple[int, ...] = DEFAULT_KS,
) -> list[DirectionResult]:
    """Both directions: captions query the image index; images query an index of the captions."""
    text_to_image = first_correct_ranks(image_index, text_vectors, text_labels, image_labels)
    image_to_text = first_correct_ranks(flat_ip_index(text_vectors), image_vectors, image_labels, text_labels)
    return [summarise("text_to_image", text_to_image, ks), summarise("image_to_text", image_to_text, ks)]


def random_head_like(head: ProjectionHead) -> ProjectionHead:
    """The untrained baseline of a head: same seed, same architecture, same input normalisation."""
    random_head = new_head(head.text_mean.shape[0], head.image_mean.shape[0], head.config)
    random_head.copy_normalisation(head)
    return random_head


def evaluate_head(
    head: ProjectionHead,
    image_features: np.ndarray,
    text_features: np.ndarray,
    text_labels: np.ndarray,
    image_index: faiss.Index | None = None,
) -> list[DirectionResult]:
    """Retrieval in both directions through one head.

    Image i of `image_features` has label i; `text_labels[j]` is the image of caption j. When given,
    `image_index` must hold this head's projection of `image_features` in the same order.
    """
    images = project(head, image_features, "image")
    index = image_index if image_index is not None else flat_ip_index(images)
    return evaluate_retrieval(index, np.arange(len(image_features)), project(head, text_features, "text"), text_labels, images)


def recall_is_monotone(recall: dict[int, float]) -> bool:
    """0 <= R@k1 <= R@k2 <= ... <= 1 for increasing k."""
    values = [recall[k] for k in sorted(recall)]
    return all(0.0 <= v <= 1.0 for v in values) and all(a <= b for a, b in zip(values, values[1:]))

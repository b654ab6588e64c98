"""Text-alignment diagnostic: how well a frozen text encoder aligns each language with the pivot (English).

For every language L, its captions retrieve the pivot captions of the same images (`to_pivot`) and the pivot
captions retrieve L's (`from_pivot`), R@1/5/10 with the image as the match label. Needs no image: it runs on
XTD10's shipped captions offline. A head trained on pivot captions sees other languages only through this
alignment, so it bounds zero-shot transfer. With `centred`, each language's mean vector is removed first
(language identity is a large shared offset in many multilingual encoders).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from xlr_pipeline.core.scoring.metrics import DEFAULT_KS, first_correct_ranks, summarise

DIRECTIONS = ("to_pivot", "from_pivot")


@dataclass(frozen=True)
class CaptionVectors:
    vectors: np.ndarray  # unit-norm rows
    image_ids: np.ndarray  # the image each caption describes


@dataclass(frozen=True)
class AlignmentResult:
    language: str
    direction: str
    centred: bool
    recall: dict[int, float]
    n_queries: int


def centre(vectors: np.ndarray) -> np.ndarray:
    shifted = vectors - vectors.mean(axis=0, keepdims=True)
    return shifted / np.maximum(np.linalg.norm(shifted, axis=1, keepdims=True), 1e-12)


def _restricted(captions: CaptionVectors, images: np.ndarray) -> CaptionVectors:
    keep = np.isin(captions.image_ids, images)
    return CaptionVectors(captions.vectors[keep], captions.image_ids[keep])


def align_language(
    language: CaptionVectors, pivot: CaptionVectors, centred: bool, ks: tuple[int, ...] = DEFAULT_KS
) -> dict[str, tuple[dict[int, float], int]]:
    """direction → (recall at each k, answerable queries), over the images captioned in both languages."""
    shared = np.intersect1d(language.image_ids, pivot.image_ids)
    if not len(shared):
        raise ValueError("the language and the pivot caption no common image")
    ours, theirs = _restricted(language, shared), _restricted(pivot, shared)
    ours_vectors = centre(ours.vectors) if centred else ours.vectors
    theirs_vectors = centre(theirs.vectors) if centred else theirs.vectors
    to_pivot = first_correct_ranks(theirs_vectors, ours_vectors, ours.image_ids, theirs.image_ids)
    from_pivot = first_correct_ranks(ours_vectors, theirs_vectors, theirs.image_ids, ours.image_ids)
    results = {}
    for direction, ranks in zip(DIRECTIONS, (to_pivot, from_pivot)):
        summary = summarise(direction, ranks, ks)
        results[direction] = (summary.recall, summary.n_queries)
    return results


def text_alignment(
    captions: dict[str, CaptionVectors], pivot_language: str, ks: tuple[int, ...] = DEFAULT_KS
) -> list[AlignmentResult]:
    """Every non-pivot language against the pivot, raw and centred."""
    if pivot_language not in captions:
        raise ValueError(f"no captions in the pivot language {pivot_language!r}; languages: {sorted(captions)}")
    results = []
    for language in sorted(set(captions) - {pivot_language}):
        for centred in (False, True):
            for direction, (recall, n) in align_language(
                captions[language], captions[pivot_language], centred, ks
            ).items():
                results.append(AlignmentResult(language, direction, centred, recall, n))
    return results

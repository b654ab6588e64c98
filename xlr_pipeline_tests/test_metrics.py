"""Recall@k and ranks against hand-computed cases."""

import numpy as np
import pytest

from xlr_pipeline.core.scoring.index import flat_ip_index
from xlr_pipeline.core.scoring.metrics import (
    evaluate_retrieval,
    first_correct_ranks,
    recall_at_k,
    recall_is_monotone,
    summarise,
)

# Three images along the axes of R^3; captions point at known places.
IMAGES = np.eye(3, dtype=np.float32)


def test_ranks_by_hand():
    captions = np.array(
        [
            [0.9, 0.1, 0.0],  # image 0 ranks first
            [0.8, 0.5, 0.1],  # its image 1 ranks second (behind image 0)
            [0.7, 0.6, 0.1],  # its image 2 ranks third
        ],
        dtype=np.float32,
    )
    ranks = first_correct_ranks(IMAGES, captions, np.array([0, 1, 2]), np.array([0, 1, 2]))
    assert ranks.tolist() == [1, 2, 3]
    assert recall_at_k(ranks, 1) == pytest.approx(1 / 3)
    assert recall_at_k(ranks, 2) == pytest.approx(2 / 3)
    assert recall_at_k(ranks, 3) == 1.0
    summary = summarise("text_to_image", ranks, ks=(1, 2, 3))
    assert summary.mean_rank == 2.0 and summary.median_rank == 2.0 and summary.n_queries == 3


def test_image_to_text_counts_any_of_several_captions():
    # Image 0 has two captions; the second of them is its nearest caption overall.
    captions = np.array([[0.1, 0.9, 0.0], [0.95, 0.0, 0.0], [0.0, 1.0, 0.0]], dtype=np.float32)
    caption_images = np.array([0, 0, 1])
    ranks = first_correct_ranks(captions, IMAGES[:2], np.array([0, 1]), caption_images)
    # image 0: nearest caption is #1 (its own) → rank 1; image 1: nearest is #2 (its own) → rank 1
    assert ranks.tolist() == [1, 1]


def test_queries_without_any_correct_item_are_left_out():
    ranks = first_correct_ranks(IMAGES, IMAGES, np.array([0, 1, 7]), np.array([0, 1, 2]))
    assert ranks.tolist() == [1, 1, 0]
    assert recall_at_k(ranks, 1) == 1.0
    with pytest.raises(ValueError, match="no query has a correct item"):
        recall_at_k(np.zeros(3, dtype=np.int64), 1)


def test_both_directions_on_perfect_and_reversed_alignment():
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(50, 8)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    labels = np.arange(50)
    perfect = evaluate_retrieval(vectors, labels, vectors, labels)
    assert all(r.recall == {1: 1.0, 5: 1.0, 10: 1.0} for r in perfect)
    shuffled = evaluate_retrieval(vectors, labels, vectors, labels[::-1].copy())
    assert shuffled[0].recall[1] < 0.1 and {r.direction for r in shuffled} == {"text_to_image", "image_to_text"}


def test_chunked_ranks_equal_a_full_faiss_ranking_whatever_the_chunk_sizes():
    rng = np.random.default_rng(1)
    gallery = rng.normal(size=(300, 16)).astype(np.float32)
    queries = rng.normal(size=(120, 16)).astype(np.float32)
    gallery_labels = rng.integers(0, 100, size=300).astype(str)  # several items per label, some labels absent
    query_labels = rng.integers(0, 110, size=120).astype(str)
    _, neighbours = flat_ip_index(gallery).search(queries, len(gallery))
    correct = gallery_labels[neighbours] == query_labels[:, None]
    expected = np.where(correct.any(axis=1), correct.argmax(axis=1) + 1, 0)
    assert (expected == 0).any() and (expected > 10).any()
    for query_batch, gallery_chunk in ((1024, 16_384), (7, 13), (1, 300)):
        assert (
            first_correct_ranks(gallery, queries, query_labels, gallery_labels, query_batch, gallery_chunk).tolist()
            == expected.tolist()
        )
    with pytest.raises(ValueError, match="300 items but 299 gallery labels"):
        first_correct_ranks(gallery, queries, query_labels, gallery_labels[:299])


def test_ties_count_against_the_query_so_a_constant_score_head_is_never_rewarded():
    zero = np.zeros((50, 8), dtype=np.float32)  # every score 0: what a head projecting to 0 dimensions gives
    labels = np.arange(50)
    for result in evaluate_retrieval(zero, labels, zero, labels):
        assert result.recall == {1: 0.0, 5: 0.0, 10: 0.0} and result.mean_rank == 50.0
    # an exact tie between the correct image and one wrong image: the wrong one ranks first
    tied = np.array([[1.0, 1.0, 0.0]], dtype=np.float32) / np.sqrt(2)
    assert first_correct_ranks(IMAGES, tied, np.array([0]), np.array([0, 1, 2])).tolist() == [2]
    # a difference bigger than float rounding still separates them
    ahead = np.array([[1.0 + 1e-4, 1.0, 0.0]], dtype=np.float32)
    assert first_correct_ranks(IMAGES, ahead, np.array([0]), np.array([0, 1, 2])).tolist() == [1]


def test_monotonicity_check():
    assert recall_is_monotone({1: 0.1, 5: 0.4, 10: 0.4})
    assert not recall_is_monotone({1: 0.5, 5: 0.4, 10: 0.6})
    assert not recall_is_monotone({1: 0.5, 5: 0.6, 10: 1.2})

"""Score ensembles rank exactly as the weighted mean of their members' cosine similarity matrices."""

import numpy as np
import pytest

from xlr_pipeline.core.scoring.ensemble import joined, member_weights, projected, rank_joined
from xlr_pipeline.core.scoring.metrics import evaluate_head, random_head_like
from xlr_pipeline.core.training.head import HeadConfig, new_head, project


def _unit(rng, rows, dim):
    vectors = rng.normal(size=(rows, dim)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def _ranks_by_full_scores(scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """The rank of each caption's image when the whole score matrix (captions × images) is sorted."""
    correct = scores[np.arange(len(labels)), labels]
    return 1 + (scores > correct[:, None]).sum(axis=1)


def test_member_weights_sum_to_one_and_refuse_a_share_outside_the_interval():
    assert member_weights(3, None) == pytest.approx([1 / 3] * 3)
    assert member_weights(3, 0.5) == pytest.approx([0.5, 0.25, 0.25])
    assert member_weights(1, 0.25) == [1.0]
    for share in (0.0, 1.0, 1.5):
        with pytest.raises(ValueError, match="share"):
            member_weights(2, share)
    with pytest.raises(ValueError, match="same rows"):
        joined([np.ones((3, 2)), np.ones((4, 2))], [0.5, 0.5])


def test_an_ensemble_of_two_heads_ranks_by_the_weighted_mean_of_their_similarity_matrices():
    rng = np.random.default_rng(0)
    images, captions = 60, 150
    labels = rng.integers(0, images, captions)
    heads, image_features, text_features = [], [], []
    for seed, (text_dim, image_dim) in enumerate([(16, 12), (10, 14)]):
        heads.append(new_head(text_dim, image_dim, HeadConfig(seed=seed, architecture="mlp", dropout=0.5)).eval())
        image_features.append(rng.normal(size=(images, image_dim)))
        text_features.append(rng.normal(size=(captions, text_dim)))
    weights = member_weights(2, 0.25)
    scores = sum(
        weight * project(head, text, "text") @ project(head, image, "image").T
        for weight, head, image, text in zip(weights, heads, image_features, text_features)
    )
    projected_images, projected_texts = (
        projected(heads, image_features, "image"),
        projected(heads, text_features, "text"),
    )
    text_to_image, image_to_text = rank_joined(projected_images, projected_texts, labels, weights)
    assert np.array_equal(text_to_image.ranks, _ranks_by_full_scores(scores, labels))
    # image → text: an image's rank is that of its best-scoring caption among all captions
    best_caption = np.array([scores[labels == i, i].max() if (labels == i).any() else -np.inf for i in range(images)])
    expected = np.where(np.isfinite(best_caption), 1 + (scores.T > best_caption[:, None]).sum(axis=1), 0)
    assert np.array_equal(image_to_text.ranks, expected)
    # the ensemble is not either member alone
    alone = rank_joined(projected_images[:1], projected_texts[:1], labels, [1.0])[0].ranks
    assert not np.array_equal(alone, text_to_image.ranks)


def test_the_random_baseline_of_an_mlp_head_with_dropout_ranks_the_same_every_time():
    rng = np.random.default_rng(1)
    trained = new_head(16, 12, HeadConfig(seed=3, architecture="mlp", dropout=0.5)).eval()
    images, text, labels = rng.normal(size=(40, 12)), rng.normal(size=(90, 16)), rng.integers(0, 40, 90)
    first, second = (evaluate_head(random_head_like(trained), images, text, labels)[0].ranks for _ in range(2))
    assert not random_head_like(trained).training and np.array_equal(first, second)

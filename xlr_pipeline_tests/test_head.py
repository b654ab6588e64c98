"""The triplet objective and the projection head on tiny tensors."""

import numpy as np
import pytest
import torch

from xlr_pipeline.core.head import (
    HeadConfig,
    head_from_bytes,
    head_to_bytes,
    new_head,
    project,
    train_head,
)
from xlr_pipeline.core.losses import triplet_ranking_loss


def test_triplet_loss_known_value():
    text = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    image = torch.tensor([[0.6, 0.8], [1.0, 0.0]])
    # s(t0,v0)=0.6, s(t0,v1)=1.0 → max(0, 0.2-0.6+1.0)=0.6 ; s(t1,v1)=0, s(t1,v0)=0.8 → 0.2-0+0.8=1.0
    loss = triplet_ranking_loss(text, image, torch.tensor([0, 1]), margin=0.2)
    assert loss.item() == pytest.approx(0.8)
    assert triplet_ranking_loss(text, image, torch.tensor([0, 1]), 0.2, "hardest").item() == pytest.approx(0.8)


def test_triplet_loss_ignores_other_captions_of_the_same_image():
    text = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    image = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    assert triplet_ranking_loss(text, image, torch.tensor([3, 3]), margin=0.2).item() == 0.0
    assert triplet_ranking_loss(text, image, torch.tensor([3, 4]), margin=0.2).item() == pytest.approx(0.2)


def test_all_negatives_average_only_violations():
    text = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, -1.0]])
    image = torch.tensor([[1.0, 0.0], [0.95, 0.312], [0.0, 1.0]])
    ids = torch.arange(3)
    # anchor 0: one violation 0.15; anchor 1: one violation 0.888; anchor 2: two violations 1.2 and 0.888
    assert triplet_ranking_loss(text, image, ids, 0.2, "all").item() == pytest.approx((0.15 + 0.888 + 1.044) / 3)
    assert triplet_ranking_loss(text, image, ids, 0.2, "hardest").item() == pytest.approx((0.15 + 0.888 + 1.2) / 3)


def test_gradients_reach_both_branches():
    head = new_head(6, 4, HeadConfig(embed_dim=3))
    loss = triplet_ranking_loss(
        head.project_text(torch.randn(5, 6)), head.project_image(torch.randn(5, 4)), torch.arange(5), 0.2
    )
    loss.backward()
    assert head.text_branch.weight.grad.abs().sum() > 0 and head.image_branch.weight.grad.abs().sum() > 0


def _toy_pairs(n=64, seed=0):
    """Texts and images that are two noisy linear views of one latent: learnable."""
    rng = np.random.default_rng(seed)
    latent = rng.normal(size=(n, 4))
    text = (latent @ rng.normal(size=(4, 12)) + 0.05 * rng.normal(size=(n, 12))).astype(np.float32)
    image = (latent @ rng.normal(size=(4, 10)) + 0.05 * rng.normal(size=(n, 10))).astype(np.float32)
    return text, image, np.arange(n)


@pytest.mark.parametrize("architecture", ["linear", "mlp"])
def test_training_learns_and_is_seeded(architecture):
    text, image, ids = _toy_pairs()
    config = HeadConfig(architecture=architecture, embed_dim=8, hidden_dim=32, epochs=40, batch_size=16, seed=3)
    first = train_head(text, image, ids, config)
    second = train_head(text, image, ids, config)
    assert first.loss_history[-1] < 0.5 * first.loss_history[0]
    assert first.loss_history == second.loss_history
    similarity = project(first.head, text, "text") @ project(first.head, image, "image").T
    assert (similarity.argmax(1) == ids).mean() > 0.5


def test_head_round_trips_through_bytes():
    text, image, ids = _toy_pairs(16)
    result = train_head(text, image, ids, HeadConfig(embed_dim=4, epochs=2, batch_size=8))
    loaded, extra = head_from_bytes(head_to_bytes(result.head, {"run_id": "abc"}))
    assert extra == {"run_id": "abc"} and loaded.config == result.head.config
    np.testing.assert_allclose(project(loaded, text, "text"), project(result.head, text, "text"), rtol=1e-6)


def test_training_refuses_misaligned_input():
    with pytest.raises(ValueError, match="aligned training pairs"):
        train_head(np.zeros((3, 2), np.float32), np.zeros((2, 2), np.float32), np.arange(3), HeadConfig())

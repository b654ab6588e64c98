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
from xlr_pipeline.core.losses import m3_loss, symmetric_info_nce_loss, text_repulsion_loss, triplet_ranking_loss


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


def _unit(rows):
    tensor = torch.tensor(rows, dtype=torch.float32)
    return tensor / tensor.norm(dim=1, keepdim=True)


def test_m3_reduces_to_patr_without_text_weight():
    torch.manual_seed(0)
    text, image, ids = _unit(torch.randn(6, 4).tolist()), _unit(torch.randn(6, 4).tolist()), torch.arange(6)
    assert m3_loss(text, image, ids, 0.2, 0.3, 0.0).item() == pytest.approx(triplet_ranking_loss(text, image, ids, 0.2).item())
    assert m3_loss(text, image, ids, 0.2, 0.3, 1.0).item() > triplet_ranking_loss(text, image, ids, 0.2).item()


def test_text_repulsion_known_value():
    # t0 and t1 are captions of different images and identical to each other; each matches its image with s = 0.6
    text = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    image = torch.tensor([[0.6, 0.8], [0.6, -0.8]])
    # each anchor: max(0, 0.1 - 0.6 + 1.0) = 0.5
    assert text_repulsion_loss(text, image, torch.tensor([0, 1]), margin=0.1).item() == pytest.approx(0.5)
    # captions of the same image do not repel
    assert text_repulsion_loss(text, image, torch.tensor([0, 0]), margin=0.1).item() == 0.0


def test_info_nce_known_value_and_multi_positive_targets():
    text = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    image = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    expected = -torch.log_softmax(torch.tensor([1.0, 0.0]) / 0.5, dim=0)[0].item()
    assert symmetric_info_nce_loss(text, image, torch.tensor([0, 1]), 0.5).item() == pytest.approx(expected)
    same_image = symmetric_info_nce_loss(text, image, torch.tensor([0, 0]), 0.5).item()
    # both columns are correct: the target puts half the mass on each
    assert same_image == pytest.approx(-(0.5 * torch.log_softmax(torch.tensor([2.0, 0.0]), dim=0)).sum().item())


@pytest.mark.parametrize("objective", ["m3", "infonce"])
def test_every_objective_trains(objective):
    text, image, ids = _toy_pairs()
    result = train_head(text, image, ids, HeadConfig(objective=objective, embed_dim=8, epochs=40, batch_size=16))
    assert result.loss_history[-1] < 0.7 * result.loss_history[0]
    similarity = project(result.head, text, "text") @ project(result.head, image, "image").T
    assert (similarity.argmax(1) == ids).mean() > 0.3  # chance is 1/64

"""The objectives (against values computed by hand from their formulas) and the projection head on tiny tensors."""

import numpy as np
import pytest
import torch

from xlr_pipeline.core.training.head import (
    HeadConfig,
    head_from_bytes,
    head_to_bytes,
    new_head,
    project,
    train_head,
)
from xlr_pipeline.core.training.losses import (
    hinge_triplet_loss,
    m3_loss,
    m3_pull_loss,
    patr_loss,
    symmetric_info_nce_loss,
)


def test_triplet_loss_known_value():
    text = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    image = torch.tensor([[0.6, 0.8], [1.0, 0.0]])
    # s(t0,v0)=0.6, s(t0,v1)=1.0 → max(0, 0.2-0.6+1.0)=0.6 ; s(t1,v1)=0, s(t1,v0)=0.8 → 0.2-0+0.8=1.0
    loss = hinge_triplet_loss(text, image, torch.tensor([0, 1]), margin=0.2)
    assert loss.item() == pytest.approx(0.8)
    assert hinge_triplet_loss(text, image, torch.tensor([0, 1]), 0.2, "hardest").item() == pytest.approx(0.8)


def test_triplet_loss_ignores_other_captions_of_the_same_image():
    text = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    image = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    assert hinge_triplet_loss(text, image, torch.tensor([3, 3]), margin=0.2).item() == 0.0
    assert hinge_triplet_loss(text, image, torch.tensor([3, 4]), margin=0.2).item() == pytest.approx(0.2)


def test_all_negatives_average_only_violations():
    text = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, -1.0]])
    image = torch.tensor([[1.0, 0.0], [0.95, 0.312], [0.0, 1.0]])
    ids = torch.arange(3)
    # anchor 0: one violation 0.15; anchor 1: one violation 0.888; anchor 2: two violations 1.2 and 0.888
    assert hinge_triplet_loss(text, image, ids, 0.2, "all").item() == pytest.approx((0.15 + 0.888 + 1.044) / 3)
    assert hinge_triplet_loss(text, image, ids, 0.2, "hardest").item() == pytest.approx((0.15 + 0.888 + 1.2) / 3)


def test_gradients_reach_both_branches():
    head = new_head(6, 4, HeadConfig(embed_dim=3))
    loss = hinge_triplet_loss(
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


def test_patr_known_value_from_the_papers_formula():
    # L = mean_i [ d(t_i, v_i) + max(0, η − d(t_i, v_n)) ], d = 1 − cos, η = 1.0
    text = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    image = torch.tensor([[0.6, 0.8], [1.0, 0.0]])
    # anchor 0: d(t0,v0) = 0.4, d(t0,v1) = 0 → 0.4 + 1.0 ; anchor 1: d(t1,v1) = 1, d(t1,v0) = 0.2 → 1 + 0.8
    assert patr_loss(text, image, torch.tensor([0, 1]), margin=1.0).item() == pytest.approx(1.6)
    # the positive term never switches off: a perfect pair with far negatives still costs its distance
    assert patr_loss(image, image, torch.tensor([0, 1]), margin=0.1).item() == pytest.approx(0.0)
    assert patr_loss(text, text, torch.tensor([0, 0]), margin=1.0).item() == pytest.approx(
        0.0
    )  # same image: no negative


def test_m3_known_value_and_reduction_to_patr():
    text = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    image = torch.tensor([[0.6, 0.8], [1.0, 0.0]])
    ids = torch.tensor([0, 1])
    # text term: d(t0, t1) = 1 → max(0, 1.5 − 1) = 0.5 per anchor; L = 1.6 + 0.5 · 0.5
    assert m3_loss(text, image, ids, margin=1.0, text_margin=1.5, text_weight=0.5).item() == pytest.approx(1.85)
    assert m3_loss(text, image, ids, 1.0, 1.5, 0.0).item() == pytest.approx(patr_loss(text, image, ids, 1.0).item())
    # captions of one image never repel each other
    same = torch.tensor([0, 0])
    assert m3_loss(text, image, same, 1.0, 1.5, 0.5).item() == pytest.approx(patr_loss(text, image, same, 1.0).item())


def test_m3_pull_spends_the_extra_weight_on_the_positive():
    text = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    image = torch.tensor([[0.6, 0.8], [1.0, 0.0]])
    # mean positive distance (0.4 + 1.0) / 2 = 0.7 → 1.6 + 0.5 · 0.7
    assert m3_pull_loss(text, image, torch.tensor([0, 1]), margin=1.0, text_weight=0.5).item() == pytest.approx(1.95)


def test_info_nce_known_value_and_multi_positive_targets():
    text = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    image = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    expected = -torch.log_softmax(torch.tensor([1.0, 0.0]) / 0.5, dim=0)[0].item()
    assert symmetric_info_nce_loss(text, image, torch.tensor([0, 1]), 0.5).item() == pytest.approx(expected)
    same_image = symmetric_info_nce_loss(text, image, torch.tensor([0, 0]), 0.5).item()
    # both columns are correct: the target puts half the mass on each
    assert same_image == pytest.approx(-(0.5 * torch.log_softmax(torch.tensor([2.0, 0.0]), dim=0)).sum().item())


@pytest.mark.parametrize("objective", ["patr", "m3", "m3_pull", "infonce"])
def test_every_objective_trains(objective):
    text, image, ids = _toy_pairs()
    result = train_head(
        text, image, ids, HeadConfig(objective=objective, margin=1.0, embed_dim=8, epochs=40, batch_size=16)
    )
    assert result.loss_history[-1] < 0.7 * result.loss_history[0]
    similarity = project(result.head, text, "text") @ project(result.head, image, "image").T
    assert (similarity.argmax(1) == ids).mean() > 0.3  # chance is 1/64


def test_a_step_budget_is_exact_whatever_the_data_size():
    text, image, ids = _toy_pairs(50)
    config = HeadConfig(embed_dim=4, batch_size=16, steps=7)
    assert train_head(text, image, ids, config).steps == 7
    assert train_head(*_toy_pairs(200), config).steps == 7
    assert train_head(text, image, ids, HeadConfig(embed_dim=4, batch_size=16, epochs=3)).steps == 3 * 4


def test_an_unknown_objective_is_refused_not_trained_as_another():
    from dataclasses import replace

    from xlr_pipeline.core.training.head import objective_loss

    vectors = torch.nn.functional.normalize(torch.ones(2, 4), dim=-1)
    with pytest.raises(ValueError, match="unknown objective 'bogus'"):
        objective_loss(replace(HeadConfig(), objective="bogus"), vectors, vectors, torch.tensor([0, 1]))

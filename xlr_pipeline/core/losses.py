"""Training objectives for the projection head (plain functions on batches of L2-normalised vectors)."""

from __future__ import annotations

from typing import Literal

import torch

NegativeMining = Literal["all", "hardest"]


def triplet_ranking_loss(
    text: torch.Tensor,
    image: torch.Tensor,
    image_ids: torch.Tensor,
    margin: float,
    negatives: NegativeMining = "all",
) -> torch.Tensor:
    """The paper's baseline (PATR-style) triplet ranking loss with in-batch negatives.

    Anchor: a caption t_i; positive: its image v_i; negatives: the other images v_j of the batch
    (those of the same image id excluded, a batch may hold several captions of one image).
    With cosine similarity s, each triplet costs max(0, margin - s(t_i, v_i) + s(t_i, v_j)).
    `negatives="all"` averages the cost over the violating negatives of each anchor (stable on small
    data); `"hardest"` keeps only the hardest negative per anchor (VSE++).
    """
    scores = text @ image.T
    positive = scores.diagonal().unsqueeze(1)
    is_negative = image_ids.unsqueeze(0) != image_ids.unsqueeze(1)
    cost = (margin - positive + scores).clamp(min=0) * is_negative
    if negatives == "hardest":
        per_anchor = cost.max(dim=1).values
    else:
        violating = (cost > 0).sum(dim=1).clamp(min=1)
        per_anchor = cost.sum(dim=1) / violating
    return per_anchor.mean()

"""Training objectives for the projection head (plain functions on batches of L2-normalised vectors)."""

from __future__ import annotations

import torch

from xlr_pipeline.core.choices import NegativeMining


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
    return _mean_over_negatives(cost, negatives)


def _mean_over_negatives(cost: torch.Tensor, negatives: NegativeMining) -> torch.Tensor:
    if negatives == "hardest":
        return cost.max(dim=1).values.mean()
    violating = (cost > 0).sum(dim=1).clamp(min=1)
    return (cost.sum(dim=1) / violating).mean()


def text_repulsion_loss(
    text: torch.Tensor,
    image: torch.Tensor,
    image_ids: torch.Tensor,
    margin: float,
    negatives: NegativeMining = "all",
) -> torch.Tensor:
    """The text–text term of m3: push an anchor caption away from captions of *other* images.

    Relative to its positive image: each pair costs max(0, margin - s(t_i, v_i) + s(t_i, t_j)) for
    captions t_j of images other than t_i's, so a caption must sit closer to its own image than to any
    unrelated caption. This tightens each image's caption cluster and separates clusters.
    """
    positive = (text * image).sum(dim=1, keepdim=True)
    is_other = image_ids.unsqueeze(0) != image_ids.unsqueeze(1)
    cost = (margin - positive + text @ text.T).clamp(min=0) * is_other
    return _mean_over_negatives(cost, negatives)


def m3_loss(
    text: torch.Tensor,
    image: torch.Tensor,
    image_ids: torch.Tensor,
    margin: float,
    text_margin: float,
    text_weight: float,
    negatives: NegativeMining = "all",
) -> torch.Tensor:
    """Multimodal metric loss (m3) as implemented here: PATR + text_weight × text repulsion.

    L = PATR(t, v; margin) + text_weight · mean_i mean_{j: img(j) ≠ img(i)} max(0, text_margin − s(t_i, v_i) + s(t_i, t_j)).
    The paper describes the second term only in words ("pushes dissimilar texts apart"); this is our
    reading of it. With text_weight = 0 it is exactly PATR.
    """
    loss = triplet_ranking_loss(text, image, image_ids, margin, negatives)
    if text_weight == 0:
        return loss
    return loss + text_weight * text_repulsion_loss(text, image, image_ids, text_margin, negatives)


def symmetric_info_nce_loss(
    text: torch.Tensor, image: torch.Tensor, image_ids: torch.Tensor, temperature: float
) -> torch.Tensor:
    """CLIP-style symmetric InfoNCE over the batch; several captions of one image share the target mass."""
    logits = text @ image.T / temperature
    positives = (image_ids.unsqueeze(1) == image_ids.unsqueeze(0)).float()
    text_targets = positives / positives.sum(dim=1, keepdim=True)
    image_targets = positives.T / positives.T.sum(dim=1, keepdim=True)
    text_to_image = -(text_targets * logits.log_softmax(dim=1)).sum(dim=1).mean()
    image_to_text = -(image_targets * logits.T.log_softmax(dim=1)).sum(dim=1).mean()
    return (text_to_image + image_to_text) / 2

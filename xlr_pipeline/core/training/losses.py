"""Training objectives for the projection head (plain functions on batches of L2-normalised vectors).

Notation: t_i a caption (the anchor), v_i its image, s the cosine similarity and d = 1 − s the cosine
distance of unit vectors. In-batch negatives of anchor i are the rows j whose image differs from i's (a batch
may hold several captions of one image: those are never negatives). The papers draw one negative per triplet;
with in-batch negatives each hinge is averaged over the violating negatives of an anchor (`negatives="all"`)
or taken at the hardest one (`"hardest"`, VSE++), then averaged over anchors.

- `patr`: Positive-Aware Triplet Ranking (Aggarwal et al., arXiv 1905.13339 §3.2; the baseline of
  arXiv 2012.05107 §3 and 2109.07622 §3): L = d(t_a, v_p) + max(0, η − d(t_a, v_n)). Unlike a plain triplet
  hinge, the positive distance is always minimised and the negative is pushed beyond an absolute margin η.
- `m3`: Multi-modal Metric Loss (arXiv 2012.05107 §3.2; 2109.07622 §3.2):
  L = α1·d(t_a, v_p) + α2·max(0, β1 − d(t_a, v_n)) + α3·max(0, β2 − d(t_a, t_n)), t_n the caption of the
  negative image: PATR plus a text–text term that pushes captions of different images apart. We fix
  α1 = α2 = 1 (so α3 = 0 is exactly PATR) and expose α3 as `text_weight`, β1 as `margin`, β2 as `text_margin`.
- `m3_pull` (our control, not from a paper): PATR + α3·d(t_a, v_p) — the same extra weight spent on pulling the
  positive instead of repelling texts, to tell m3's text repulsion apart from a stronger positive pull.
- `hinge` (our earlier "patr", renamed): the plain in-batch triplet hinge max(0, m − s(t_a, v_p) + s(t_a, v_n)).
- `infonce`: CLIP-style symmetric InfoNCE.

The forms are written from the papers named; the search corpus available here holds only their opening
sections, so equation numbers (PATR: 1905.13339 §3.2; m3: 2012.05107 §3.2) could not be re-checked in-repo.
"""

from __future__ import annotations

import torch

from xlr_pipeline.core.training.choices import NegativeMining


def _other_images(image_ids: torch.Tensor) -> torch.Tensor:
    return image_ids.unsqueeze(0) != image_ids.unsqueeze(1)


def _reduce_hinges(cost: torch.Tensor, negatives: NegativeMining) -> torch.Tensor:
    """Per anchor: the mean over violating negatives (`all`) or the largest cost (`hardest`)."""
    if negatives == "hardest":
        return cost.max(dim=1).values
    violating = (cost > 0).sum(dim=1).clamp(min=1)
    return cost.sum(dim=1) / violating


def hinge_triplet_loss(
    text: torch.Tensor, image: torch.Tensor, image_ids: torch.Tensor, margin: float, negatives: NegativeMining = "all"
) -> torch.Tensor:
    """max(0, margin − s(t_i, v_i) + s(t_i, v_j)) over in-batch negatives: relative distances only."""
    scores = text @ image.T
    cost = (margin - scores.diagonal().unsqueeze(1) + scores).clamp(min=0) * _other_images(image_ids)
    return _reduce_hinges(cost, negatives).mean()


def _negative_push(
    anchor: torch.Tensor, others: torch.Tensor, image_ids: torch.Tensor, margin: float, negatives: NegativeMining
) -> torch.Tensor:
    """Per anchor: max(0, margin − d(anchor_i, others_j)) over rows j of other images, reduced per `negatives`."""
    distance = 1 - anchor @ others.T
    return _reduce_hinges((margin - distance).clamp(min=0) * _other_images(image_ids), negatives)


def _positive_distance(text: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
    return 1 - (text * image).sum(dim=1)


def patr_loss(
    text: torch.Tensor, image: torch.Tensor, image_ids: torch.Tensor, margin: float, negatives: NegativeMining = "all"
) -> torch.Tensor:
    """Positive-Aware Triplet Ranking: mean_i [ d(t_i, v_i) + max(0, η − d(t_i, v_n)) ], η = `margin`."""
    return (_positive_distance(text, image) + _negative_push(text, image, image_ids, margin, negatives)).mean()


def m3_loss(
    text: torch.Tensor,
    image: torch.Tensor,
    image_ids: torch.Tensor,
    margin: float,
    text_margin: float,
    text_weight: float,
    negatives: NegativeMining = "all",
) -> torch.Tensor:
    """Multi-modal Metric Loss: PATR + α3 · max(0, β2 − d(t_i, t_n)), t_n captions of the negative images."""
    text_push = _negative_push(text, text, image_ids, text_margin, negatives)
    return patr_loss(text, image, image_ids, margin, negatives) + text_weight * text_push.mean()


def m3_pull_loss(
    text: torch.Tensor,
    image: torch.Tensor,
    image_ids: torch.Tensor,
    margin: float,
    text_weight: float,
    negatives: NegativeMining = "all",
) -> torch.Tensor:
    """Control for m3: PATR + α3 · d(t_i, v_i) — the extra term pulls the positive and repels nothing."""
    return patr_loss(text, image, image_ids, margin, negatives) + text_weight * _positive_distance(text, image).mean()


def symmetric_info_nce_loss(
    text: torch.Tensor, image: torch.Tensor, image_ids: torch.Tensor, temperature: float
) -> torch.Tensor:
    """CLIP-style symmetric InfoNCE over the batch; several captions of one image share the target mass."""
    logits = text @ image.T / temperature
    positives = (~_other_images(image_ids)).float()
    text_targets = positives / positives.sum(dim=1, keepdim=True)
    image_targets = positives.T / positives.T.sum(dim=1, keepdim=True)
    text_to_image = -(text_targets * logits.log_softmax(dim=1)).sum(dim=1).mean()
    image_to_text = -(image_targets * logits.T.log_softmax(dim=1)).sum(dim=1).mean()
    return (text_to_image + image_to_text) / 2

"""The trainable projection head between two frozen encoders, and its training loop."""

from __future__ import annotations

import hashlib
import io
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch
from torch import nn

from xlr_pipeline.core.training.configs import HeadConfig

if TYPE_CHECKING:
    from xlr_pipeline.core.scoring.hubness import HubnessReduction
from xlr_pipeline.core.training.losses import (
    hinge_triplet_loss,
    m3_loss,
    m3_pull_loss,
    patr_loss,
    symmetric_info_nce_loss,
)


def objective_loss(
    config: HeadConfig, text: torch.Tensor, image: torch.Tensor, image_ids: torch.Tensor
) -> torch.Tensor:
    """The configured objective on one batch of projected, normalised vectors."""
    if config.objective == "hinge":
        return hinge_triplet_loss(text, image, image_ids, config.resolved_margin, config.negatives)
    if config.objective == "patr":
        return patr_loss(text, image, image_ids, config.resolved_margin, config.negatives)
    if config.objective == "m3":
        return m3_loss(
            text, image, image_ids, config.resolved_margin, config.text_margin, config.text_weight, config.negatives
        )
    if config.objective == "m3_pull":
        return m3_pull_loss(text, image, image_ids, config.resolved_margin, config.text_weight, config.negatives)
    if config.objective == "infonce":
        return symmetric_info_nce_loss(text, image, image_ids, config.temperature)
    raise ValueError(f"unknown objective {config.objective!r}")


def _branch(in_dim: int, config: HeadConfig) -> nn.Module:
    if config.architecture == "identity":
        return nn.Identity()
    if config.architecture == "linear":
        return nn.Linear(in_dim, config.embed_dim)
    return nn.Sequential(
        nn.Linear(in_dim, config.hidden_dim),
        nn.GELU(),
        nn.Dropout(config.dropout),
        nn.Linear(config.hidden_dim, config.embed_dim),
    )


class ProjectionHead(nn.Module):
    """Projects frozen text and image features into one shared, L2-normalised space.

    Text features are centred with the training text mean (multilingual-e5 vectors are very anisotropic);
    image features are standardised with the training image statistics. Both are stored as buffers so
    a saved head carries everything needed to project new data. The `identity` architecture has no
    parameters and no normalisation: cosine similarity in the encoders' own shared space.
    """

    def __init__(self, text_dim: int, image_dim: int, config: HeadConfig):
        super().__init__()
        self.config = config
        self.register_buffer("text_mean", torch.zeros(text_dim))
        self.register_buffer("image_mean", torch.zeros(image_dim))
        self.register_buffer("image_std", torch.ones(image_dim))
        if config.hubness != "none":  # the training captions' raw vectors: the query bank (set when trained)
            self.register_buffer("query_bank", torch.zeros(0, text_dim))
        self.text_branch = _branch(text_dim, config)
        self.image_branch = _branch(image_dim, config)

    @property
    def is_identity(self) -> bool:
        return self.config.architecture == "identity"

    def fit_normalisation(self, text: torch.Tensor, image: torch.Tensor) -> None:
        self.text_mean.copy_(text.mean(0))
        self.image_mean.copy_(image.mean(0))
        self.image_std.copy_(image.std(0).clamp(min=1e-6))

    def copy_normalisation(self, other: ProjectionHead) -> None:
        for name in ("text_mean", "image_mean", "image_std"):
            getattr(self, name).copy_(getattr(other, name))
        if self.config.hubness != "none":
            self.query_bank = other.query_bank.clone()

    def load_weights(self, state: Mapping[str, torch.Tensor]) -> None:
        """`load_state_dict`, with the query bank sized as saved."""
        if "query_bank" in state:
            self.query_bank = torch.empty_like(state["query_bank"])
        self.load_state_dict(state)

    def hubness_reduction(self) -> HubnessReduction | None:
        """The retrieval-time hubness reduction this head was trained for (None: plain cosine)."""
        if self.config.hubness == "none":
            return None
        from xlr_pipeline.core.scoring.hubness import HubnessReduction

        return HubnessReduction(self.config.hubness, self.config.hubness_parameter, self.query_bank.numpy())

    def project_text(self, text: torch.Tensor) -> torch.Tensor:
        return nn.functional.normalize(self.text_branch(text - self.text_mean), dim=-1)

    def project_image(self, image: torch.Tensor) -> torch.Tensor:
        return nn.functional.normalize(self.image_branch((image - self.image_mean) / self.image_std), dim=-1)


def new_head(text_dim: int, image_dim: int, config: HeadConfig) -> ProjectionHead:
    """A freshly initialised head (seeded): the starting point of training and the random-head baseline."""
    torch.manual_seed(config.seed)
    return ProjectionHead(text_dim, image_dim, config)


class TrainingDiverged(ValueError):
    """The loss or the weights stopped being finite: no head is kept (a NaN head would score as random or worse)."""


@dataclass(frozen=True)
class TrainingResult:
    head: ProjectionHead
    loss_history: list[float]  # mean loss per pass over the data (the last pass may be cut short by `steps`)
    steps: int  # optimiser steps taken


def train_head(text: np.ndarray, image: np.ndarray, image_ids: np.ndarray, config: HeadConfig) -> TrainingResult:
    """Train on aligned rows: text[i] captions image[i]; `image_ids[i]` groups captions of one image."""
    if not (len(text) == len(image) == len(image_ids)) or len(text) < 2:
        raise ValueError(f"need >= 2 aligned training pairs, got {len(text)} texts and {len(image)} images")
    head = new_head(text.shape[1], image.shape[1], config)
    if head.is_identity:
        if text.shape[1] != image.shape[1]:
            raise ValueError(
                f"the identity head needs image and text encoders of one shared space; got {image.shape[1]}-d images "
                f"and {text.shape[1]}-d texts (use an aligned pair, e.g. one open_clip id for both)"
            )
        return TrainingResult(head.eval(), [], 0)
    text_t, image_t = torch.tensor(text, dtype=torch.float32), torch.tensor(image, dtype=torch.float32)
    _, group_ids = np.unique(image_ids, return_inverse=True)
    groups = torch.from_numpy(group_ids)
    head.fit_normalisation(text_t, image_t)
    if config.hubness != "none":
        head.query_bank = text_t.clone()
    optimiser = torch.optim.AdamW(head.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    generator = torch.Generator().manual_seed(config.seed)
    history: list[float] = []
    budget = config.steps if config.steps is not None else config.epochs * math.ceil(len(text) / config.batch_size)
    steps = 0
    head.train()
    while steps < budget:
        order = torch.randperm(len(text), generator=generator)
        losses = []
        for start in range(0, len(text), config.batch_size):
            if steps == budget:
                break
            batch = order[start : start + config.batch_size]
            loss = objective_loss(
                config, head.project_text(text_t[batch]), head.project_image(image_t[batch]), groups[batch]
            )
            if not math.isfinite(loss.item()):
                raise TrainingDiverged(
                    f"training diverged: the {config.objective} loss is {loss.item()} at step {steps + 1} "
                    f"(learning_rate {config.learning_rate:g}); no head was saved — lower the learning rate"
                )
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            losses.append(loss.item())
            steps += 1
        history.append(float(np.mean(losses)))
    head.eval()
    if not weights_are_finite(head):
        raise TrainingDiverged(
            f"training diverged: the head's weights are not finite after {steps} steps; no head was saved"
        )
    return TrainingResult(head, history, steps)


def project(head: ProjectionHead, vectors: np.ndarray, modality: Literal["text", "image"]) -> np.ndarray:
    with torch.inference_mode():
        tensor = torch.tensor(vectors, dtype=torch.float32)
        out = head.project_text(tensor) if modality == "text" else head.project_image(tensor)
    return out.numpy().astype(np.float32)


def head_to_bytes(head: ProjectionHead, extra: dict) -> bytes:
    buffer = io.BytesIO()
    torch.save(
        {
            "config": head.config.as_dict(),
            "text_dim": head.text_mean.shape[0],
            "image_dim": head.image_mean.shape[0],
            "state_dict": head.state_dict(),
            "extra": extra,
        },
        buffer,
    )
    return buffer.getvalue()


def head_from_bytes(data: bytes) -> tuple[ProjectionHead, dict]:
    saved = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    head = ProjectionHead(saved["text_dim"], saved["image_dim"], HeadConfig(**saved["config"]))
    head.load_weights(saved["state_dict"])
    head.eval()
    return head, saved["extra"]


def head_fingerprint(head: ProjectionHead) -> str:
    """Hash of config and weights: identical retraining gives the same data version."""
    digest = hashlib.sha256(repr(head.config).encode())
    for tensor in head.state_dict().values():
        digest.update(tensor.numpy().tobytes())
    return digest.hexdigest()[:16]


def weights_are_finite(head: ProjectionHead) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in head.parameters())

"""The trainable projection head between two frozen encoders, and its training loop."""

from __future__ import annotations

import hashlib
import io
import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
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


class EnsembleHead(nn.Module):
    """A score ensemble of heads on different encoder pairs, as one head over joined vectors
    (`core/models/joined.py`): member m projects its encoders' columns (`text_slices[m]`, `image_slices[m]`) and
    its unit vectors are scaled by √weight_m and laid side by side. The joined projections are unit vectors whose
    inner product is Σ_m w_m cos_m, the ensemble's score (`core/scoring/ensemble.py`), so the image index, the
    metrics and the search service rank by it as they rank by one head."""

    def __init__(
        self,
        members: list[ProjectionHead],
        encoders: list[tuple[str, str]],
        text_slices: list[tuple[int, int]],
        image_slices: list[tuple[int, int]],
        weights: list[float],
    ):
        super().__init__()
        if not len(members) == len(encoders) == len(text_slices) == len(image_slices) == len(weights) > 1:
            raise ValueError("an ensemble needs two or more members, each with its encoders, slices and weight")
        if any(member.config.hubness != "none" or member.is_identity for member in members):
            raise ValueError("an ensemble's members are trained heads that rank without hubness reduction")
        self.members = nn.ModuleList(members)
        self.encoders = encoders  # (text model, image model) of each member
        self.text_slices, self.image_slices, self.weights = text_slices, image_slices, weights

    @property
    def config(self) -> HeadConfig:
        """The first member's configuration (its objective and seed name the ensemble's run)."""
        return self.members[0].config

    is_identity = False

    def hubness_reduction(self) -> None:
        return None

    def with_members(self, members: list[ProjectionHead]) -> EnsembleHead:
        """The same ensemble over other heads (e.g. their random twins)."""
        return EnsembleHead(members, self.encoders, self.text_slices, self.image_slices, self.weights)

    def _joined(self, vectors: torch.Tensor, slices: list[tuple[int, int]], modality: str) -> torch.Tensor:
        parts = []
        for member, (start, stop), weight in zip(self.members, slices, self.weights):
            branch = member.project_text if modality == "text" else member.project_image
            parts.append(math.sqrt(weight) * branch(vectors[:, start:stop]))
        return torch.cat(parts, dim=1)

    def project_text(self, text: torch.Tensor) -> torch.Tensor:
        return self._joined(text, self.text_slices, "text")

    def project_image(self, image: torch.Tensor) -> torch.Tensor:
        return self._joined(image, self.image_slices, "image")

    def describe(self) -> dict:
        """The first member's configuration and every member's encoders, weight and configuration."""
        members = [
            {"text_model": text, "image_model": image, "weight": weight, **member.config.as_dict()}
            for member, (text, image), weight in zip(self.members, self.encoders, self.weights)
        ]
        return {**self.config.as_dict(), "ensemble": members}


AnyHead = ProjectionHead | EnsembleHead


def head_description(head: AnyHead) -> dict:
    """A head's configuration as recorded with its results: its config, with an ensemble's members."""
    return head.describe() if isinstance(head, EnsembleHead) else head.config.as_dict()


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


@dataclass(frozen=True)
class EnsembleMemberSpec:
    """One member to train: its encoders, their columns in the joined vectors, and its head configuration."""

    encoders: tuple[str, str]  # (text model, image model)
    text_columns: tuple[int, int]
    image_columns: tuple[int, int]
    config: HeadConfig


def train_ensemble(
    text: np.ndarray, image: np.ndarray, image_ids: np.ndarray, members: list[EnsembleMemberSpec], weights: list[float]
) -> tuple[EnsembleHead, list[TrainingResult]]:
    """Each member trained on its encoders' columns of the same aligned rows (as `train_head`), then joined."""
    results = [
        train_head(text[:, slice(*m.text_columns)], image[:, slice(*m.image_columns)], image_ids, m.config)
        for m in members
    ]
    head = EnsembleHead(
        [result.head for result in results],
        [m.encoders for m in members],
        [m.text_columns for m in members],
        [m.image_columns for m in members],
        weights,
    )
    return head.eval(), results


def retrained(head: AnyHead, text: np.ndarray, image: np.ndarray, image_ids: np.ndarray, seed: int) -> AnyHead:
    """The same head (an ensemble: the same members and weights) trained again with another seed."""
    if isinstance(head, ProjectionHead):
        return train_head(text, image, image_ids, replace(head.config, seed=seed)).head
    members = [
        EnsembleMemberSpec(encoders, text_columns, image_columns, replace(member.config, seed=seed))
        for member, encoders, text_columns, image_columns in zip(
            head.members, head.encoders, head.text_slices, head.image_slices
        )
    ]
    return train_ensemble(text, image, image_ids, members, list(head.weights))[0]


def project(head: AnyHead, vectors: np.ndarray, modality: Literal["text", "image"]) -> np.ndarray:
    with torch.inference_mode():
        tensor = torch.tensor(vectors, dtype=torch.float32)
        out = head.project_text(tensor) if modality == "text" else head.project_image(tensor)
    return out.numpy().astype(np.float32)


def _saved(head: ProjectionHead) -> dict:
    return {
        "config": head.config.as_dict(),
        "text_dim": head.text_mean.shape[0],
        "image_dim": head.image_mean.shape[0],
        "state_dict": head.state_dict(),
    }


def _loaded(saved: Mapping) -> ProjectionHead:
    head = ProjectionHead(saved["text_dim"], saved["image_dim"], HeadConfig(**saved["config"]))
    head.load_weights(saved["state_dict"])
    return head.eval()


def head_to_bytes(head: AnyHead, extra: dict) -> bytes:
    """A head (an ensemble: its members, encoders, slices and weights) and `extra` (its provenance) as bytes."""
    if isinstance(head, EnsembleHead):
        saved = {
            "members": [_saved(member) for member in head.members],
            "encoders": [list(pair) for pair in head.encoders],
            "text_slices": [list(columns) for columns in head.text_slices],
            "image_slices": [list(columns) for columns in head.image_slices],
            "weights": list(head.weights),
        }
    else:
        saved = _saved(head)
    buffer = io.BytesIO()
    torch.save({**saved, "extra": extra}, buffer)
    return buffer.getvalue()


def head_from_bytes(data: bytes) -> tuple[AnyHead, dict]:
    saved = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    if "members" not in saved:
        return _loaded(saved), saved["extra"]
    head = EnsembleHead(
        [_loaded(member) for member in saved["members"]],
        [tuple(pair) for pair in saved["encoders"]],
        [tuple(columns) for columns in saved["text_slices"]],
        [tuple(columns) for columns in saved["image_slices"]],
        list(saved["weights"]),
    )
    return head.eval(), saved["extra"]


def head_fingerprint(head: AnyHead) -> str:
    """Hash of configuration and weights: identical retraining gives the same data version."""
    digest = hashlib.sha256(repr(head.config if isinstance(head, ProjectionHead) else head.describe()).encode())
    for tensor in head.state_dict().values():
        digest.update(tensor.numpy().tobytes())
    return digest.hexdigest()[:16]


def weights_are_finite(head: AnyHead) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in head.parameters())

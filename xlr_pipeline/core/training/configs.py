"""Hyperparameters of the trainable parts, as plain dataclasses: what configs, launchpad defaults and provenance
read without loading torch (the training code that uses them is in `head.py` and `encoder_finetune.py`)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from xlr_pipeline.core.training.choices import Architecture, NegativeMining, Objective


@dataclass(frozen=True)
class HeadConfig:
    architecture: Architecture = "linear"
    embed_dim: int = 256
    hidden_dim: int = 1024
    objective: Objective = "hinge"
    margin: float | None = (
        None  # hinge: on similarities (default 0.1); patr/m3/m3_pull: η (β1) on distance (default 1.0)
    )
    negatives: NegativeMining = "all"
    text_margin: float = 1.0  # m3: β2 on the distance between captions of different images
    text_weight: float = 0.5
    temperature: float = 0.05
    epochs: int = 60
    steps: int | None = None  # a fixed optimiser-step budget (overrides epochs): equal budgets across data sizes
    batch_size: int = 128
    learning_rate: float = 1e-3
    weight_decay: float = 1e-4
    seed: int = 0

    def as_dict(self) -> dict:
        return asdict(self)

    @property
    def resolved_margin(self) -> float:
        """The margin in use: the hinge's is on similarities, the positive-aware losses' on distances."""
        if self.margin is not None:
            return self.margin
        return 0.1 if self.objective == "hinge" else 1.0


@dataclass(frozen=True)
class FinetuneConfig:
    steps: int = 150
    batch_size: int = 64
    trainable_layers: int = 2
    encoder_learning_rate: float = 1e-4
    head_learning_rate: float = 1e-3
    embed_dim: int = 256
    temperature: float = 0.05
    switch_probability: float = 0.5
    switch_ratio: float = 0.5
    mixup_alpha: float = 0.4
    seed: int = 0

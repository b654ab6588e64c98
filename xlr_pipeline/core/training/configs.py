"""Hyperparameters of the trainable parts, as plain dataclasses: what configs, launchpad defaults and provenance
read without loading torch (the training code that uses them is in `head.py` and `encoder_finetune.py`)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from xlr_pipeline.core.training.choices import Architecture, Hubness, NegativeMining, Objective


class ConfigError(ValueError):
    """A hyperparameter outside its range: names the option, its range and the value given."""

    def __init__(self, option: str, requirement: str, value: object):
        super().__init__(f"{option} {requirement}, not {value!r}")
        self.option, self.requirement, self.value = option, requirement, value


@dataclass(frozen=True)
class Range:
    low: float
    high: float
    low_open: bool = False  # (low, high] instead of [low, high]

    def __str__(self) -> str:
        return f"{'(' if self.low_open else '['}{self.low:g}, {self.high:g}]"

    def check(self, option: str, value: float | int) -> None:
        too_low = value <= self.low if self.low_open else value < self.low
        if isinstance(value, bool) or not math.isfinite(value) or too_low or value > self.high:
            raise ConfigError(option, f"must be a finite number in {self}", value)


# What each head hyperparameter may be, checked wherever a config enters (CLI, launchpad, the grid's search):
# outside these a head is degenerate (0 dimensions, no training), diverges (an infinite learning rate) or its loss
# is meaningless (margins beyond the cosine range).
HEAD_RANGES = {
    "embed_dim": Range(1, 8192),
    "hidden_dim": Range(1, 16384),
    "dropout": Range(0, 0.9),
    "margin": Range(0, 2, low_open=True),
    "text_margin": Range(0, 2),
    "text_weight": Range(0, 100),
    "temperature": Range(0, 10, low_open=True),
    "epochs": Range(1, 100_000),
    "steps": Range(1, 10_000_000),
    "batch_size": Range(2, 65_536),
    "learning_rate": Range(0, 10, low_open=True),
    "weight_decay": Range(0, 1),
    "seed": Range(0, 2**32 - 1),
    "hubness_parameter": Range(0, 1000, low_open=True),
}


@dataclass(frozen=True)
class HeadConfig:
    architecture: Architecture = "linear"
    embed_dim: int = 256
    hidden_dim: int = 1024
    dropout: float = 0.1  # mlp only: between its two layers
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
    # At retrieval time: text→image scores rescored against the training captions (CSLS's k, QB-Norm's β).
    hubness: Hubness = "none"
    hubness_parameter: float = 10.0

    def __post_init__(self) -> None:
        for option, allowed in HEAD_RANGES.items():
            value = getattr(self, option)
            if value is not None:
                allowed.check(option, value)

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

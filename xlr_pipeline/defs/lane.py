"""A lane: one dataset's own slice of the graph — key prefix, asset groups, language partitions, outputs."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import dagster as dg

from xlr_pipeline.core.data.datasets import DatasetSpec
from xlr_pipeline.core.data.shards import shard_keys
from xlr_pipeline.core.storage.outputs import DatasetOutputs
from xlr_pipeline.core.training.configs import HeadConfig
from xlr_pipeline.defs.resources import XlrSettings

# Language-partitioned assets run a backfill of many languages as one run (`BackfillPolicy.single_run`): one
# process loads torch once instead of once per language. The parameter is marked beta; its note would print on
# every definitions load.
warnings.filterwarnings("ignore", message="Parameter `backfill_policy`", category=dg.BetaWarning)
# Sharded text embeddings report their data version on a graph's output (`Output(data_version=…)`, also beta).
warnings.filterwarnings("ignore", message="Parameter `data_version`", category=dg.BetaWarning)

# The command that brings an asset up to date: `xlr run` (the chain), `xlr grid` (experiments on top of it),
# `xlr alignment` (a diagnostic no other command runs) and `xlr tagging`. Recorded as each asset's STAGE_TAG.
Stage = Literal["run", "grid", "alignment", "tagging"]
STAGE_TAG = "xlr/stage"
ConfigFunction = Callable[["XlrSettings", "Lane", "str | None", dict], dict]


def no_config(settings: XlrSettings, lane: Lane, partition: str | None, head_config: dict) -> dict:
    return {}


@dataclass(frozen=True)
class AssetDeclaration:
    """One asset's facts besides its body, declared beside it: its name in every lane, its code version (bump it
    when the logic changes, so it and what depends on it go stale), the command that runs it, and `config`, the
    configuration its output depends on besides code and inputs — recorded with every materialization and
    recomputed by the staleness walk (`xlr_pipeline/staleness.py`)."""

    name: str
    code_version: str
    stage: Stage
    config: ConfigFunction = no_config

    def asset_args(self, lane: Lane) -> dict:
        """The `@dg.asset` arguments these facts fix: key, group, code version and stage tag."""
        group = {"run": lane.group, "tagging": lane.tagging_group}.get(self.stage, lane.experiment_group)
        return {
            "key": lane.key(self.name),
            "group_name": group,
            "code_version": self.code_version,
            "tags": {STAGE_TAG: self.stage},
        }


@dataclass(frozen=True)
class Lane:
    """Everything of one dataset is named from its declared `name`: keys `<name>/<asset>`, groups `<name>`
    (the chain), `<name>_experiments` and `<name>_tagging`, partitions `<name>_languages`, outputs
    `outputs/<name>/`; image shards are static partitions when the dataset declares more than one."""

    spec: DatasetSpec
    partitions: dg.DynamicPartitionsDefinition
    # None with one shard: Dagster 1.13's "Materialize all" cannot launch a backfill over two unrelated partition
    # sets (languages and shards), so an unsharded dataset keeps that button working.
    shards: dg.StaticPartitionsDefinition | None

    @classmethod
    def of(cls, spec: DatasetSpec) -> Lane:
        keys = shard_keys(spec.image_shards)
        return cls(
            spec,
            dg.DynamicPartitionsDefinition(name=f"{spec.name}_languages"),
            dg.StaticPartitionsDefinition(keys) if len(keys) > 1 else None,
        )

    def shard_keys(self) -> list[str]:
        return shard_keys(self.spec.image_shards)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def train_language(self) -> str:
        return self.spec.train_language

    @property
    def group(self) -> str:
        return self.name

    @property
    def experiment_group(self) -> str:
        return f"{self.name}_experiments"

    @property
    def tagging_group(self) -> str:
        return f"{self.name}_tagging"

    def key(self, asset: str) -> dg.AssetKey:
        return dg.AssetKey([self.name, asset])

    def keys(self, assets: tuple[str, ...]) -> list[dg.AssetKey]:
        return [self.key(asset) for asset in assets]

    def settings(self, settings: XlrSettings) -> XlrSettings:
        """The settings with this dataset's encoders resolved (`XlrSettings.for_dataset`): the chain's."""
        return settings.for_dataset(self.spec)

    def grid_settings(self, settings: XlrSettings) -> XlrSettings:
        """The settings with the encoder pair the grid compares others with: an ensemble's first member's."""
        return settings.for_dataset(self.spec, ensemble=False)

    def head_config(self, overrides: dict) -> HeadConfig:
        """The head this lane trains: its `[defaults]`, then the options given."""
        return self.spec.defaults.head_config(overrides)

    def augmentation(self, given: str | None) -> str:
        """What this lane's head trains with besides its pairs: the option given, else its `[defaults]`."""
        return given or self.spec.defaults.augmentation or "none"

    def outputs(self, settings: XlrSettings) -> DatasetOutputs:
        return settings.outputs(self.name)

    def reports_dir(self, settings: XlrSettings) -> Path:
        return settings.reports_dir(self.name)


def asset_name(key: dg.AssetKey) -> str:
    """`captions` for `emoji_cldr/captions`: an asset's name within its lane."""
    return key.path[-1]


def language_asset_keys(assets: Iterable[dg.AssetsDefinition], lane: Lane) -> list[dg.AssetKey]:
    """The chain's assets partitioned by the lane's languages: what a new language runs."""
    return [
        spec.key
        for assets_def in assets
        for spec in assets_def.specs
        if spec.tags.get(STAGE_TAG) == "run" and spec.partitions_def == lane.partitions
    ]

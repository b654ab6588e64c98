"""Which asset partitions are missing or stale, and why — and running exactly those, level by level.

Dagster's own stale status is not transitive before execution and ignores configuration that lives in
resources, so the walk is done here: an asset partition is *stale* when its code version changed, its
configuration changed (models, head hyperparameters, source files; see `defs/lineage.py`), or an input it
read has a different data version now, or a file it wrote is missing or altered; it is *blocked* when an input cannot be produced (e.g. a
dataset's images are not there yet). Statuses of a level are resolved only after the level above has
run, so a rerun that writes identical bytes stops the cascade. The walk covers the lanes (datasets) it is
given and nothing else: one dataset's changes never make another's assets stale. All use of Dagster's
asset-graph internals is kept in this module.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Literal

import dagster as dg

from xlr_pipeline.core.data.datasets import DatasetError
from xlr_pipeline.core.data.readers import ImagesNotAvailable
from xlr_pipeline.core.reporting.results import has_recall_rows
from xlr_pipeline.defs.lane import asset_name
from xlr_pipeline.defs.lineage import (
    CONFIG_KEY,
    INPUTS_KEY,
    OUTPUTS_KEY,
    VERSION_KEY,
    WAREHOUSE_KEY,
    file_version,
    input_name,
    output_location,
)
from xlr_pipeline.defs.pipeline import Pipeline

# waiting: its images are not there yet and may not be downloaded (a COCO-sourced lane as shipped): not an error
State = Literal["fresh", "missing", "stale", "error", "blocked", "waiting"]
DATA_VERSION_TAG = "dagster/data_version"
CODE_VERSION_TAG = "dagster/code_version"


@dataclass(frozen=True)
class Target:
    key: dg.AssetKey
    partition: str | None

    @property
    def name(self) -> str:
        return input_name(self.key.to_user_string(), self.partition)

    @property
    def name_in_lane(self) -> str:
        """How assets of the same lane record it as an input (`text_embeddings[en]`)."""
        return input_name(asset_name(self.key), self.partition)


@dataclass(frozen=True)
class Status:
    target: Target
    state: State
    causes: tuple[str, ...] = ()


def _recorded(metadata: dict, key: str) -> dict | None:
    entry = metadata.get(key)
    return None if entry is None else dict(entry.value)


def _version(materialization: dg.AssetMaterialization) -> str | None:
    """A partition's own version where it recorded one (see `VERSION_KEY`), else Dagster's data version."""
    recorded = materialization.metadata.get(VERSION_KEY)
    return recorded.value if recorded is not None else materialization.tags.get(DATA_VERSION_TAG)


def _short(value: object) -> str:
    text = repr(value)
    return text[:13] + "…'" if isinstance(value, str) and len(value) > 24 else text


def _describe_change(recorded: dict | None, current: dict) -> list[str]:
    if recorded is None:
        return ["no configuration recorded (materialized by an older version)"] if current else []
    return [
        f"config changed: {field_name} {_short(recorded.get(field_name))} → {_short(current.get(field_name))}"
        for field_name in sorted(set(recorded) | set(current))
        if recorded.get(field_name) != current.get(field_name)
    ]


@dataclass
class StalenessResolver:
    instance: dg.DagsterInstance
    pipeline: Pipeline
    head_config: dict
    languages: dict[str, list[str]]  # the lanes walked (dataset name → its language partitions)
    stages: frozenset[str]  # asset names walked (`Pipeline.stage_assets`)
    graph: object = field(init=False)
    # Each target's latest materialization, read once per walk (a target is every other's parent several times
    # over); `forget` drops one after it has been rematerialized.
    _latest: dict[Target, dg.AssetMaterialization | None] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        self.graph = self.pipeline.definitions.get_repository_def().asset_graph

    def levels(self) -> Iterator[list[dg.AssetKey]]:
        for level in self.graph.toposorted_asset_keys_by_level:
            keys = sorted(key for key in level if key.path[0] in self.languages and asset_name(key) in self.stages)
            if keys:
                yield keys

    def _partitions(self, key: dg.AssetKey) -> list[str | None]:
        """An unpartitioned asset's one target, a sharded asset's shards, or a language-partitioned asset's languages."""
        partitions_def = self.graph.get(key).assets_def.partitions_def
        if partitions_def is None:
            return [None]
        if self.is_sharded(key):
            return list(partitions_def.get_partition_keys())
        return list(self.languages.get(key.path[0], []))

    def is_sharded(self, key: dg.AssetKey) -> bool:
        return isinstance(self.graph.get(key).assets_def.partitions_def, dg.StaticPartitionsDefinition)

    def targets(self, key: dg.AssetKey) -> list[Target]:
        return [Target(key, p) for p in self._partitions(key)]

    def parents(self, target: Target) -> list[Target]:
        assets_def = self.graph.get(target.key).assets_def
        found = []
        for parent in sorted(self.graph.get(target.key).parent_keys):
            if self.graph.get(parent).assets_def.partitions_def is None:
                found.append(Target(parent, None))
                continue
            mapping = assets_def.get_partition_mapping(parent)
            if isinstance(mapping, dg.SpecificPartitionsPartitionMapping):
                found.extend(Target(parent, p) for p in mapping.partition_keys)
            elif target.partition is None:  # an unpartitioned asset reads every language (or shard) of its dataset
                found.extend(Target(parent, p) for p in self._partitions(parent))
            else:
                found.append(Target(parent, target.partition))
        return found

    def latest(self, target: Target) -> dg.AssetMaterialization | None:
        if target not in self._latest:
            records = self.instance.fetch_materializations(
                dg.AssetRecordsFilter(
                    asset_key=target.key, asset_partitions=[target.partition] if target.partition else None
                ),
                limit=1,
            ).records
            self._latest[target] = records[0].asset_materialization if records else None
        return self._latest[target]

    def forget(self, target: Target) -> None:
        self._latest.pop(target, None)

    def status(self, target: Target, pending: set[Target] = frozenset(), blocked: set[Target] = frozenset()) -> Status:
        """`pending`: targets that will rerun before this one; `blocked`: targets that cannot run."""
        stuck = [parent.name for parent in self.parents(target) if parent in blocked]
        if stuck:
            return Status(target, "blocked", tuple(f"upstream cannot run: {name}" for name in stuck))
        materialization = self.latest(target)
        lane = self.pipeline.lane_of(target.key)
        try:
            current_config = self.pipeline.declaration(target.key).config(
                self.pipeline.settings, lane, target.partition, self.head_config
            )
        except ImagesNotAvailable as error:
            return Status(target, "waiting", (f"waiting for images: {error}",))
        except DatasetError as error:
            return Status(target, "error", (f"cannot read its sources: {error}",))
        if materialization is None:
            return Status(target, "missing", ("never materialized",))
        causes: list[str] = []
        current_code = self.graph.get(target.key).code_version
        recorded_code = materialization.tags.get(CODE_VERSION_TAG)
        if recorded_code != current_code:
            causes.append(f"code version changed: {recorded_code} → {current_code}")
        causes += _describe_change(_recorded(materialization.metadata, CONFIG_KEY), current_config)
        for key, version in (_recorded(materialization.metadata, OUTPUTS_KEY) or {}).items():
            path = output_location(key, self.pipeline.settings.root)
            if not path.is_file():
                causes.append(f"output missing: {path}")
            elif file_version(path) != version:
                causes.append(f"output changed since it was written: {path}")
        rows = _recorded(materialization.metadata, WAREHOUSE_KEY)
        if rows is not None:
            key = {name: value for name, value in rows.items() if name != "results_db"}
            results_db = output_location(rows["results_db"], self.pipeline.settings.root)
            if not has_recall_rows(results_db, **key):
                causes.append(
                    f"results missing: {results_db} has no recall rows of run {key['run_id']} ({key['language']})"
                )
        recorded_inputs = _recorded(materialization.metadata, INPUTS_KEY) or {}
        for parent in self.parents(target):
            if parent in pending:
                causes.append(f"upstream will rerun: {parent.name}")
                continue
            parent_materialization = self.latest(parent)
            if parent_materialization is None:
                causes.append(f"upstream missing: {parent.name}")
            elif _version(parent_materialization) != recorded_inputs.get(parent.name_in_lane):
                causes.append(f"upstream changed: {parent.name}")
        # Written once but gone (a new data folder, deleted outputs or results): missing, so plain `xlr run` rebuilds
        # it, as it would an asset never materialized; changed inputs, code or config make it stale.
        gone = any(cause.startswith(("output missing:", "results missing:")) for cause in causes)
        return Status(target, "missing" if gone else "stale" if causes else "fresh", tuple(causes))

    def plan(self) -> list[Status]:
        """Status of every target; what would rerun makes its dependents pending too (transitive)."""
        statuses: list[Status] = []
        pending: set[Target] = set()
        blocked: set[Target] = set()
        for level in self.levels():
            for key in level:
                for target in self.targets(key):
                    status = self.status(target, pending, blocked)
                    if status.state in ("missing", "stale"):
                        pending.add(target)
                    elif status.state in ("error", "blocked", "waiting"):
                        blocked.add(target)
                    statuses.append(status)
        return statuses

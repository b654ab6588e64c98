"""`xlr run`: materialize what is missing (and what depends on anything rerun), stage by stage.

Each stage runs through `dagster.materialize` against a persistent Dagster instance, so the UI shows
these runs and their metadata like any other.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import dagster as dg

from xlr_pipeline.definitions import defs
from xlr_pipeline.defs.automation import language_partition_requests
from xlr_pipeline.defs.partitions import TRAIN_LANGUAGE, language_partitions
from xlr_pipeline.defs.resources import DEFAULT_DATA_DIR, XlrSettings

DEFAULT_DAGSTER_HOME = DEFAULT_DATA_DIR.parent / ".dagster_home"


class RunFailed(RuntimeError):
    pass


@dataclass
class RunReport:
    executed: list[tuple[str, str | None, float]] = field(default_factory=list)
    skipped: list[tuple[str, str | None]] = field(default_factory=list)


def ensure_instance_home() -> Path:
    """Use $DAGSTER_HOME, else the project's .dagster_home (telemetry off), so CLI and UI share runs."""
    home = Path(os.environ.setdefault("DAGSTER_HOME", str(DEFAULT_DAGSTER_HOME)))
    home.mkdir(parents=True, exist_ok=True)
    config = home / "dagster.yaml"
    if not config.exists():
        config.write_text("telemetry:\n  enabled: false\n")
    return home


def register_languages(instance: dg.DagsterInstance, settings: XlrSettings) -> list[str]:
    existing = set(instance.get_dynamic_partitions(language_partitions.name))
    new, problems = language_partition_requests(settings, existing)
    if problems:
        raise RunFailed("; ".join(problems))
    if new:
        instance.add_dynamic_partitions(language_partitions.name, new)
    languages = sorted(existing | set(new))
    if TRAIN_LANGUAGE not in languages:
        raise RunFailed(f"dataset {settings.dataset!r} has no {TRAIN_LANGUAGE!r} caption file to train on")
    return languages


def _first_error(result: dg.ExecuteInProcessResult) -> str:
    for event in result.all_events:
        if event.event_type == dg.DagsterEventType.STEP_FAILURE:
            error = event.step_failure_data.error
            return error.message.strip() if error else "step failed"
    return "run failed"


def _dirty_partitions(
    assets_def: dg.AssetsDefinition,
    partitions: list[str | None],
    executed: dict[dg.AssetKey, set[str | None]],
) -> set[str | None]:
    """Partitions of this asset whose upstream was (re)materialized during this invocation."""
    dirty: set[str | None] = set()
    for parent in assets_def.dependency_keys:
        done = executed.get(parent, set())
        if not done:
            continue
        mapping = assets_def.get_partition_mapping(parent)
        for partition in partitions:
            if isinstance(mapping, dg.SpecificPartitionsPartitionMapping):
                touched = bool(done & set(mapping.partition_keys))
            else:
                touched = None in done or partition in done or partition is None
            if touched:
                dirty.add(partition)
    return dirty


def run_missing(
    instance: dg.DagsterInstance,
    settings: XlrSettings,
    asset_configs: dict[str, dg.Config] | None = None,
    log: Callable[[str], None] = print,
    console_log_level: str = "INFO",
) -> RunReport:
    languages = register_languages(instance, settings)
    graph = defs.get_repository_def().asset_graph
    all_assets = list(defs.assets)
    executed: dict[dg.AssetKey, set[str | None]] = {}
    report = RunReport()
    for level in graph.toposorted_asset_keys_by_level:
        for key in level:
            assets_def = graph.get(key).assets_def
            partitioned = assets_def.partitions_def is not None
            partitions: list[str | None] = list(languages) if partitioned else [None]
            if partitioned:
                done = instance.get_materialized_partitions(key)
                missing = {p for p in partitions if p not in done}
            else:
                missing = set() if instance.get_latest_materialization_event(key) else {None}
            todo = missing | _dirty_partitions(assets_def, partitions, executed)
            for partition in partitions:
                name = key.to_user_string() + (f"[{partition}]" if partition else "")
                if partition not in todo:
                    report.skipped.append((key.to_user_string(), partition))
                    continue
                log(f"materializing {name} ...")
                started = time.perf_counter()
                result = dg.materialize(
                    all_assets,
                    selection=[key],
                    partition_key=partition,
                    instance=instance,
                    resources={"settings": settings},
                    run_config=dg.RunConfig(
                        ops={name: cfg for name, cfg in (asset_configs or {}).items() if name == key.to_user_string()},
                        loggers={"console": {"config": {"log_level": console_log_level}}},
                    ),
                    raise_on_error=False,
                )
                if not result.success:
                    raise RunFailed(f"{name} failed: {_first_error(result)}")
                elapsed = time.perf_counter() - started
                executed.setdefault(key, set()).add(partition)
                report.executed.append((key.to_user_string(), partition, elapsed))
                log(f"  done in {elapsed:.1f} s")
    return report

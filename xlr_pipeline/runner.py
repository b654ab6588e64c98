"""`xlr run`: materialize what is missing (or, with --stale, also what is stale), level by level.

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

from xlr_pipeline.core.datasets import DatasetError
from xlr_pipeline.definitions import defs
from xlr_pipeline.defs.automation import LANGUAGE_ASSETS
from xlr_pipeline.defs.partitions import TRAIN_LANGUAGE, language_partitions
from xlr_pipeline.defs.resources import DEFAULT_DATA_DIR, XlrSettings
from xlr_pipeline.defs.train import HeadTrainingConfig
from xlr_pipeline.defs.versions import ASSET_GROUP
from xlr_pipeline.staleness import StalenessResolver, Status, Target

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
    try:
        files, problems = settings.dataset_spec().scan_caption_files()
    except DatasetError as error:
        raise RunFailed(str(error)) from None
    new = sorted(set(files) - existing)
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
            while error is not None and error.cause is not None and "DagsterExecutionStepExecutionError" in error.cls_name:
                error = error.cause
            return error.message.strip() if error else "step failed"
    return "run failed"


def _materialize(
    instance: dg.DagsterInstance,
    settings: XlrSettings,
    selection: list,
    partition: str | None,
    ops_config: dict[str, dg.Config],
    what: str,
    console_log_level: str = "INFO",
) -> None:
    result = dg.materialize(
        list(defs.assets),
        selection=selection,
        partition_key=partition,
        instance=instance,
        resources={"settings": settings},
        run_config=dg.RunConfig(ops=ops_config, loggers={"console": {"config": {"log_level": console_log_level}}}),
        raise_on_error=False,
    )
    if not result.success:
        raise RunFailed(f"{what} failed: {_first_error(result)}")


def materialize_target(
    instance: dg.DagsterInstance,
    settings: XlrSettings,
    target: Target,
    asset_configs: dict[str, dg.Config],
    console_log_level: str = "INFO",
) -> None:
    name = target.key.to_user_string()
    ops_config = {asset: config for asset, config in asset_configs.items() if asset == name}
    _materialize(instance, settings, [target.key], target.partition, ops_config, target.name, console_log_level)


def head_config_of(asset_configs: dict[str, dg.Config]) -> dict:
    config = asset_configs.get("projection_head") or HeadTrainingConfig()
    return config.head_config().as_dict()


def run_pipeline(
    instance: dg.DagsterInstance,
    settings: XlrSettings,
    asset_configs: dict[str, dg.Config] | None = None,
    include_stale: bool = False,
    log: Callable[[str], None] = print,
    console_log_level: str = "INFO",
    groups: frozenset[str] = frozenset({ASSET_GROUP}),
) -> RunReport:
    """Materialize what is missing (and, with `include_stale`, what is stale), one graph level at a time."""
    asset_configs = asset_configs or {}
    resolver = StalenessResolver(
        instance, settings, head_config_of(asset_configs), register_languages(instance, settings), groups
    )
    wanted = {"missing", "stale"} if include_stale else {"missing"}
    report = RunReport()
    for level in resolver.levels():
        for key in level:
            for target in resolver.targets(key):
                status = resolver.status(target)
                if status.state == "error":
                    log(f"skipping {target.name}: {'; '.join(status.causes)}")
                if status.state not in wanted:
                    report.skipped.append((key.to_user_string(), target.partition))
                    continue
                log(f"materializing {target.name} ({'; '.join(status.causes)}) ...")
                started = time.perf_counter()
                materialize_target(instance, settings, target, asset_configs, console_log_level)
                elapsed = time.perf_counter() - started
                report.executed.append((key.to_user_string(), target.partition, elapsed))
                log(f"  done in {elapsed:.1f} s")
    return report


def evaluate_languages(
    instance: dg.DagsterInstance, settings: XlrSettings, languages: list[str], log: Callable[[str], None] = print
) -> None:
    """Re-ingest, re-embed and re-evaluate the given languages with the current head (one run each)."""
    known = set(register_languages(instance, settings))
    unknown = sorted(set(languages) - known)
    if unknown:
        raise RunFailed(f"no caption file for {unknown} in dataset {settings.dataset!r}; languages: {sorted(known)}")
    for language in languages:
        log(f"re-evaluating {language} ...")
        _materialize(instance, settings, LANGUAGE_ASSETS, language, {}, f"re-evaluating {language}")
        log("  done")


def current_statuses(
    instance: dg.DagsterInstance,
    settings: XlrSettings,
    asset_configs: dict[str, dg.Config] | None = None,
    groups: frozenset[str] = frozenset({ASSET_GROUP}),
) -> list[Status]:
    """`xlr status`: every asset partition with its state and causes, before anything runs."""
    languages = sorted(set(instance.get_dynamic_partitions(language_partitions.name)) | set(settings.dataset_spec().scan_caption_files()[0]))
    return StalenessResolver(instance, settings, head_config_of(asset_configs or {}), languages, groups).plan()

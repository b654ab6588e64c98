"""`xlr run`: materialize what is missing (or, with --stale, also what is stale), level by level.

Each stage runs through `dagster.materialize` against a persistent Dagster instance, so the UI shows
these runs and their metadata like any other.
"""

from __future__ import annotations

import fcntl
import json
import multiprocessing
import os
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import dagster as dg
import yaml

from xlr_pipeline.core.data.datasets import DatasetError
from xlr_pipeline.core.models.threads import available_cores
from xlr_pipeline.core.storage.locations import write_with_atomic
from xlr_pipeline.core.storage.locks import exclusive_lanes
from xlr_pipeline.defs.lane import Lane, asset_name
from xlr_pipeline.defs.pipeline import Pipeline, build_pipeline
from xlr_pipeline.defs.resources import DEFAULT_DATA_DIR, XlrSettings
from xlr_pipeline.defs.train import HeadTrainingConfig
from xlr_pipeline.staleness import StalenessResolver, Status, Target

DEFAULT_DAGSTER_HOME = DEFAULT_DATA_DIR.parent / ".dagster_home"


class InstanceInUse(RuntimeError):
    """The Dagster instance keeps another data folder's runs."""


class RunFailed(RuntimeError):
    pass


@dataclass
class RunReport:
    executed: list[tuple[str, str | None, float]] = field(default_factory=list)
    skipped: list[tuple[str, str | None]] = field(default_factory=list)
    blocked: list[Status] = field(default_factory=list)


def instance_yaml(cpus: int) -> str:
    """The dagster.yaml of an instance the project creates, sized from the machine's cores."""
    runs = max(1, cpus // 2)
    return (
        "telemetry:\n  enabled: false\n"
        f"# At most {runs} run(s) at once (half of {cpus} cores; every run is a process that loads torch), so a\n"
        "# backfill or the sensors' runs queue instead of thrashing a laptop. Edit to taste: xlr never rewrites it.\n"
        f"concurrency:\n  runs:\n    max_concurrent_runs: {runs}\n"
        "# Queued runs are checked every second (Dagster's default is 5): a backfill's runs follow each other sooner.\n"
        "run_coordinator:\n  module: dagster.core.run_coordinator\n  class: QueuedRunCoordinator\n"
        "  config:\n    dequeue_interval_seconds: 1\n"
        "# Runs whose process never started are marked failed instead of staying STARTING.\n"
        "run_monitoring:\n  enabled: true\n  start_timeout_seconds: 180\n"
    )


def ensure_instance_home(data_dir: Path) -> Path:
    """Use $DAGSTER_HOME, else the project's .dagster_home, so CLI and UI share runs. A new home gets the
    project's dagster.yaml and its storage is created once, under a lock: two commands started at once on a
    fresh home do not race to create the same tables.

    A home belongs to one data folder (recorded in `.xlr-data-dir` on first use): its records of what was
    materialized describe that folder's files, so a command over another folder is refused rather than told
    that a folder it never built is up to date."""
    home = Path(os.environ.setdefault("DAGSTER_HOME", str(DEFAULT_DAGSTER_HOME)))
    home.mkdir(parents=True, exist_ok=True)
    with open(home / ".xlr-instance.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        owner = home / ".xlr-data-dir"
        data_dir = data_dir.expanduser().resolve()
        if not owner.exists():
            write_with_atomic(owner, lambda tmp: tmp.write_text(str(data_dir) + "\n", "utf-8"))
        elif (recorded := owner.read_text("utf-8").strip()) != str(data_dir):
            raise InstanceInUse(
                f"the Dagster instance {home} keeps the runs of data folder {recorded}, not {data_dir}: set "
                f"DAGSTER_HOME to a folder of its own for {data_dir} (or delete {owner} to move the instance along)"
            )
        config = home / "dagster.yaml"
        if not config.exists():
            write_with_atomic(config, lambda tmp: tmp.write_text(instance_yaml(os.cpu_count() or 1)))
        created = home / ".xlr-storage-created"
        if not created.exists():
            with dg.DagsterInstance.get():
                pass
            created.touch()
    return home


def concurrent_runs_of(home: Path) -> int:
    """The run queue's width in an instance's dagster.yaml (1 when it sets none)."""
    config = yaml.safe_load((home / "dagster.yaml").read_text("utf-8")) or {}
    runs = (config.get("concurrency") or {}).get("runs") or {}
    return max(1, int(runs.get("max_concurrent_runs", 1)))


def register_languages(instance: dg.DagsterInstance, lane: Lane) -> list[str]:
    """Add a partition for each caption file of the dataset; its languages (training language required)."""
    existing = set(instance.get_dynamic_partitions(lane.partitions.name))
    try:
        files, problems = lane.spec.scan_caption_files()
    except DatasetError as error:
        raise RunFailed(str(error)) from None
    if problems:
        raise RunFailed("; ".join(problems))
    new = sorted(set(files) - existing)
    if new:
        instance.add_dynamic_partitions(lane.partitions.name, new)
    languages = sorted(existing | set(new))
    if lane.train_language not in languages:
        raise RunFailed(f"dataset {lane.name!r} has no {lane.train_language!r} caption file to train on")
    return languages


def retire_languages(instance: dg.DagsterInstance, lane: Lane, languages: list[str]) -> list[str]:
    """Drop languages whose caption files were removed from the lane's partitions (their results stay in DuckDB
    as history); a language whose file is still there, or that the lane trains on, is refused."""
    files, _ = lane.spec.scan_caption_files()
    registered = set(instance.get_dynamic_partitions(lane.partitions.name))
    for language in languages:
        if language not in registered:
            raise RunFailed(f"{language!r} is not a language of {lane.name!r}; its languages: {sorted(registered)}")
        if language == lane.train_language:
            raise RunFailed(f"{language!r} is the language {lane.name!r} trains on; it cannot be retired")
        if language in files:
            raise RunFailed(
                f"{files[language]} still exists: remove it first, or the lane's sensor adds {language!r} back"
            )
    for language in languages:
        instance.delete_dynamic_partition(lane.partitions.name, language)
    return sorted(registered - set(languages))


def _first_error(result: dg.ExecuteInProcessResult) -> str:
    for event in result.all_events:
        if event.event_type == dg.DagsterEventType.STEP_FAILURE:
            error = event.step_failure_data.error
            while (
                error is not None and error.cause is not None and "DagsterExecutionStepExecutionError" in error.cls_name
            ):
                error = error.cause
            if error is None:
                return "step failed"
            message = error.message.strip()
            # A dg.Failure already carries a message naming the file and line: drop the class path before it.
            return message.split(": ", 1)[1] if error.cls_name == "Failure" and ": " in message else message
    return "run failed"


def _materialize(
    instance: dg.DagsterInstance,
    pipeline: Pipeline,
    keys: list[dg.AssetKey],
    partition: str | None,
    asset_configs: dict[str, dg.Config],
    what: str,
    console_log_level: str = "INFO",
) -> None:
    """One run of `keys`; `asset_configs` maps an asset name (e.g. projection_head) to its Config in any lane.

    The assets come from the pipeline's definitions, with its settings resource already bound."""
    ops = {
        pipeline.op_name(key): given_run_config(asset_configs[asset_name(key)])
        for key in keys
        if asset_name(key) in asset_configs
    }
    result = dg.materialize(
        pipeline.assets(),
        selection=keys,
        partition_key=partition,
        instance=instance,
        run_config=dg.RunConfig(ops=ops, loggers={"console": {"config": {"log_level": console_log_level}}}),
        raise_on_error=False,
    )
    if not result.success:
        raise RunFailed(f"{what} failed: {_first_error(result)}")


def given_run_config(config: dg.Config) -> dict:
    """An op's run config with only the fields the caller set: a field left out keeps its default in the asset,
    which for the head is the dataset's `[defaults]` (Dagster's own conversion would write every default in)."""
    values = config._convert_to_config_dictionary()
    return {"config": {name: value for name, value in values.items() if name in config.model_fields_set}}


def materialize_target(
    instance: dg.DagsterInstance,
    pipeline: Pipeline,
    target: Target,
    asset_configs: dict[str, dg.Config],
    console_log_level: str = "INFO",
) -> None:
    _materialize(instance, pipeline, [target.key], target.partition, asset_configs, target.name, console_log_level)


def head_config_of(asset_configs: dict[str, dg.Config]) -> dict:
    """The head options given (each lane puts them over its own `[defaults]`)."""
    config = asset_configs.get("projection_head") or HeadTrainingConfig()
    return config.given()


def _resolver(
    instance: dg.DagsterInstance,
    pipeline: Pipeline,
    datasets: list[str],
    asset_configs: dict[str, dg.Config],
    stages: frozenset[str] | None,
    languages_of: Callable[[Lane], list[str]],
) -> StalenessResolver:
    lanes = [pipeline.lane(name) for name in datasets]
    return StalenessResolver(
        instance,
        pipeline,
        head_config_of(asset_configs),
        {lane.name: languages_of(lane) for lane in lanes},
        pipeline.stage_assets("run") if stages is None else stages,
    )


def run_pipeline(
    instance: dg.DagsterInstance,
    pipeline: Pipeline,
    datasets: list[str],
    asset_configs: dict[str, dg.Config] | None = None,
    include_stale: bool = False,
    log: Callable[[str], None] = print,
    console_log_level: str = "INFO",
    stages: frozenset[str] | None = None,
    workers: int = 1,
) -> RunReport:
    """Materialize what is missing (and, with `include_stale`, what is stale) in the given datasets' lanes,
    one graph level at a time. What cannot run (its sources are unreadable, or an input is blocked) is
    reported and skipped; everything else still runs. `stages`: the asset names walked (default: the chain,
    `pipeline.stage_assets("run")`). With `workers` > 1, the shards of a sharded asset run as
    that many concurrent runs, each in its own process with an equal share of the cores.

    One command at a time per lane: a second one waits for the first (`cache/locks/<dataset>.lock` in the data
    dir), then finds what is still missing or stale, so the head on disk, in the instance and in DuckDB agree."""
    with exclusive_lanes(pipeline.settings.root / "cache" / "locks", datasets, log):
        return _run_levels(
            instance, pipeline, datasets, asset_configs or {}, include_stale, log, console_log_level, stages, workers
        )


def _run_levels(
    instance: dg.DagsterInstance,
    pipeline: Pipeline,
    datasets: list[str],
    asset_configs: dict[str, dg.Config],
    include_stale: bool,
    log: Callable[[str], None],
    console_log_level: str,
    stages: frozenset[str] | None,
    workers: int,
) -> RunReport:
    resolver = _resolver(
        instance, pipeline, datasets, asset_configs, stages, lambda lane: register_languages(instance, lane)
    )
    wanted = {"missing", "stale"} if include_stale else {"missing"}
    report = RunReport()
    blocked: set[Target] = set()
    for level in resolver.levels():
        for key in level:
            due: list[Target] = []
            for target in resolver.targets(key):
                status = resolver.status(target, blocked=blocked)
                if status.state in ("error", "blocked", "waiting"):
                    blocked.add(target)
                    report.blocked.append(status)
                    if status.state != "blocked":  # the root cause; what it blocks is listed at the end
                        log(f"cannot run {target.name}: {'; '.join(status.causes)}")
                if status.state not in wanted:
                    report.skipped.append((key.to_user_string(), target.partition))
                    continue
                log(f"materializing {target.name} ({'; '.join(status.causes)}) ...")
                due.append(target)
            if workers > 1 and len(due) > 1 and resolver.is_sharded(key):
                timings = materialize_concurrently(instance, pipeline, due, workers, console_log_level)
            elif workers > 1 and has_parallel_steps(pipeline, key):
                timings = (
                    (
                        target,
                        _timed(materialize_with_parallel_steps, instance, pipeline, target, workers, console_log_level),
                    )
                    for target in due
                )
            else:
                timings = (
                    (target, _timed(materialize_target, instance, pipeline, target, asset_configs, console_log_level))
                    for target in due
                )
            for target, elapsed in timings:
                resolver.forget(target)
                report.executed.append((key.to_user_string(), target.partition, elapsed))
                log(f"  {target.name} done in {elapsed:.1f} s")
    return report


def _timed(function: Callable, *args) -> float:
    started = time.perf_counter()
    function(*args)
    return time.perf_counter() - started


def has_parallel_steps(pipeline: Pipeline, key: dg.AssetKey) -> bool:
    """Whether one run of `key` has steps that can run side by side: a graph-backed asset (e.g. a language's
    caption shards)."""
    node = pipeline.definitions.get_repository_def().assets_defs_by_key[key].node_def
    return isinstance(node, dg.GraphDefinition)


def _settings_for_workers(settings: XlrSettings, workers: int) -> dict:
    """The settings as fields, with each of `workers` processes given an equal share of the cores."""
    fields = {name: getattr(settings, name) for name in type(settings).model_fields}
    fields["step_threads"] = max(1, (settings.step_threads or available_cores()) // workers)
    return fields


def parallel_steps_job(settings: str, key: list[str]) -> dg.JobDefinition:
    """A job of one asset over the settings (JSON) of the `xlr` command that launched it, as each step process of
    Dagster's multiprocess executor rebuilds it (`build_reconstructable_job` passes both arguments along)."""
    pipeline = build_pipeline(XlrSettings(**json.loads(settings)))
    job = dg.define_asset_job("xlr_parallel_steps", selection=[dg.AssetKey(key)], executor_def=dg.multiprocess_executor)
    return dg.Definitions.merge(pipeline.definitions, dg.Definitions(jobs=[job])).resolve_job_def("xlr_parallel_steps")


def materialize_with_parallel_steps(
    instance: dg.DagsterInstance, pipeline: Pipeline, target: Target, workers: int, console_log_level: str = "INFO"
) -> None:
    """One run of `target` whose steps run in up to `workers` processes (Dagster's multiprocess executor), each
    with 1/workers of the cores."""
    settings = json.dumps(_settings_for_workers(pipeline.settings, workers))
    result = dg.execute_job(
        dg.build_reconstructable_job(
            __name__, parallel_steps_job.__name__, reconstructable_args=(settings, list(target.key.path))
        ),
        instance,
        run_config={
            "execution": {"config": {"max_concurrent": workers}},
            "loggers": {"console": {"config": {"log_level": console_log_level}}},
        },
        tags={"dagster/partition": target.partition} if target.partition else None,
        raise_on_error=False,
    )
    if not result.success:
        raise RunFailed(f"{target.name} failed: {_first_error(result)}")


def _materialize_in_worker(instance_ref, settings: dict, specs: list, target: Target, console_log_level: str) -> float:
    """One shard's run in a spawned process: its own pipeline over the same datasets, the same instance."""
    pipeline = build_pipeline(XlrSettings(**settings), specs)
    with dg.DagsterInstance.from_ref(instance_ref) as instance:
        return _timed(materialize_target, instance, pipeline, target, {}, console_log_level)


def materialize_concurrently(
    instance: dg.DagsterInstance,
    pipeline: Pipeline,
    targets: list[Target],
    workers: int,
    console_log_level: str = "INFO",
) -> list[tuple[Target, float]]:
    """Run `targets` (independent partitions) as concurrent runs in `workers` spawned processes; each gets
    1/workers of the cores for torch and BLAS, so together they never oversubscribe the machine."""
    workers = min(workers, len(targets))
    fields = _settings_for_workers(pipeline.settings, workers)
    specs = [lane.spec for lane in pipeline.lanes.values()]
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [
            pool.submit(_materialize_in_worker, instance.get_ref(), fields, specs, target, console_log_level)
            for target in targets
        ]
        return [(target, future.result()) for target, future in zip(targets, futures)]


def head_run_ids(instance: dg.DagsterInstance, pipeline: Pipeline, datasets: list[str]) -> dict[str, str]:
    """Each dataset's current head's experiment run id, from its latest materialization's metadata (the head's
    provenance, recorded there; read without loading the head, so a no-op command never imports torch)."""
    found = {}
    for dataset in datasets:
        records = instance.fetch_materializations(pipeline.lane(dataset).key("projection_head"), limit=1).records
        entry = records[0].asset_materialization.metadata.get("run_id") if records else None
        if entry is not None:
            found[dataset] = entry.value
    return found


def evaluate_languages(
    instance: dg.DagsterInstance,
    pipeline: Pipeline,
    dataset: str,
    languages: list[str],
    log: Callable[[str], None] = print,
    console_log_level: str = "INFO",
) -> None:
    """Re-ingest, re-embed and re-evaluate the given languages of one dataset with its current head (one run each)."""
    lane = pipeline.lane(dataset)
    known = set(register_languages(instance, lane))
    unknown = sorted(set(languages) - known)
    if unknown:
        raise RunFailed(f"no caption file for {unknown} in dataset {dataset!r}; languages: {sorted(known)}")
    with exclusive_lanes(pipeline.settings.root / "cache" / "locks", [dataset], log):
        for language in languages:
            log(f"re-evaluating {dataset} {language} ...")
            _materialize(
                instance,
                pipeline,
                pipeline.language_keys(lane),
                language,
                {},
                f"re-evaluating {dataset} {language}",
                console_log_level,
            )
        log("  done")


def current_statuses(
    instance: dg.DagsterInstance,
    pipeline: Pipeline,
    datasets: list[str],
    asset_configs: dict[str, dg.Config] | None = None,
    stages: frozenset[str] | None = None,
) -> list[Status]:
    """`xlr status`: every asset partition of the datasets with its state and causes, before anything runs."""

    def languages(lane: Lane) -> list[str]:
        return sorted(
            set(instance.get_dynamic_partitions(lane.partitions.name)) | set(lane.spec.scan_caption_files()[0])
        )

    return _resolver(instance, pipeline, datasets, asset_configs or {}, stages, languages).plan()

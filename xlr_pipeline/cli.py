"""The `xlr` command: run, status, grid, tagging, tag, search, serve, evaluate, retire, alignment, datasets, sql and
dev (`xlr --help`).

Only light modules are imported at the top: `xlr sql` and `--help` start without torch or Dagster.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

from xlr_pipeline.core.models.inference import BACKENDS, DEFAULT_BACKEND
from xlr_pipeline.core.models.threads import available_cores
from xlr_pipeline.core.search.limits import DEFAULT_PORT, MAX_RESULTS
from xlr_pipeline.core.storage.outputs import DEFAULT_DATA_DIR
from xlr_pipeline.core.training.choices import (
    ARCHITECTURES,
    CHAIN_AUGMENTATIONS,
    DEFAULT_IMAGE_MODEL,
    DEFAULT_TEXT_MODEL,
    HUBNESS,
    OBJECTIVES,
)

# Head hyperparameters settable from the command line (the rest through the Dagster launchpad).
HEAD_OPTIONS = {
    "objective": OBJECTIVES,
    "seed": int,
    "epochs": int,
    "margin": float,
    "architecture": ARCHITECTURES,
    "learning_rate": float,
    "embed_dim": int,
    "hubness": HUBNESS,
    "hubness_parameter": float,
    "augmentation": CHAIN_AUGMENTATIONS,  # training data, not a head hyperparameter
}


def head_training_config(args: argparse.Namespace):
    """The head options given on the command line, each checked against its range before anything runs."""
    from xlr_pipeline.core.training.configs import ConfigError, HeadConfig
    from xlr_pipeline.defs.train import HeadTrainingConfig

    given = {name: getattr(args, name) for name in HEAD_OPTIONS if getattr(args, name) is not None}
    try:
        HeadConfig(**{name: value for name, value in given.items() if name != "augmentation"})
    except ConfigError as error:
        print(
            f"xlr: error: --{error.option.replace('_', '-')} {error.requirement}, not {error.value!r}", file=sys.stderr
        )
        raise SystemExit(2) from None
    return HeadTrainingConfig(**given)


DEFAULT_DATASET = "emoji_cldr"


def _settings_flags(args: argparse.Namespace) -> dict:
    """The settings a command's flags give (those it has and the user set); see `settings_sources.py`."""
    from xlr_pipeline.settings_sources import ENVIRONMENT_VARIABLES

    flags = {field: getattr(args, field, None) for field in ENVIRONMENT_VARIABLES}
    return flags | {"dataset_roots": getattr(args, "dataset_root", None)}


def _settings(args: argparse.Namespace):
    """Settings from the command's flags, the environment and the defaults (`settings_sources.py`)."""
    from pydantic import ValidationError

    from xlr_pipeline.defs.resources import XlrSettings
    from xlr_pipeline.settings_sources import settings_values

    try:
        return XlrSettings(**settings_values(_settings_flags(args)))
    except ValidationError as error:
        raise SystemExit(f"xlr: invalid option: {error}") from None


def _pipeline(args: argparse.Namespace):
    """The lanes of every dataset under the data dir and the dataset roots, with the chosen models and backend."""
    from xlr_pipeline.defs.pipeline import build_pipeline

    pipeline = build_pipeline(_settings(args))
    for message in pipeline.broken.values():
        print(f"warning: dataset skipped: {message}", file=sys.stderr)
    return pipeline


def _datasets(args: argparse.Namespace, pipeline, all_by_default: bool) -> list[str]:
    """The lanes a command covers: --dataset, else every lane or the default dataset; unknown names are refused."""
    if args.dataset is None:
        return sorted(pipeline.lanes) if all_by_default else [DEFAULT_DATASET]
    pipeline.lane(args.dataset)
    return [args.dataset]


def _console_level(args: argparse.Namespace) -> str:
    """Dagster's console log in full with --verbose; otherwise only our progress lines and one line per failure."""
    if args.verbose:
        return "INFO"
    import logging

    progress = logging.getLogger("xlr_pipeline.progress")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("    %(message)s"))
    progress.handlers = [handler]  # this command's stderr (main() may run several times in one process)
    progress.setLevel(logging.INFO)
    progress.propagate = False
    return "CRITICAL"


def _instance_home(args: argparse.Namespace) -> Path:
    """The Dagster home this command's data folder uses (refused, exit 2, when it keeps another folder's runs)."""
    from xlr_pipeline.runner import InstanceInUse, ensure_instance_home
    from xlr_pipeline.settings_sources import data_dir_of

    try:
        return ensure_instance_home(data_dir_of(_settings_flags(args)))
    except InstanceInUse as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None


def _fail(error: Exception) -> int:
    print(f"error: {error.args[0] if isinstance(error, KeyError) else error}", file=sys.stderr)
    return 1


def command_run(args: argparse.Namespace) -> int:
    import dagster as dg

    from xlr_pipeline.core.data.datasets import DatasetError
    from xlr_pipeline.core.reporting.report import recall_by_language, to_markdown
    from xlr_pipeline.core.training.defaults import DefaultsError
    from xlr_pipeline.runner import RunFailed, head_run_ids, run_pipeline

    home = _instance_home(args)
    try:
        pipeline = _pipeline(args)
        datasets = _datasets(args, pipeline, all_by_default=args.stale)
        head_config = head_training_config(args)
        settings = pipeline.settings
        for dataset in datasets:
            lane = pipeline.lane(dataset)
            if settings.trains_ensemble(lane.spec):
                lane.spec.defaults.check_ensemble_options(head_config.given())
            lane_settings = lane.settings(settings)
            print(f"{dataset}: image {lane_settings.image_model} | text {lane_settings.text_model}")
        print(f"DAGSTER_HOME={home}")
        with dg.DagsterInstance.get() as instance:
            report = run_pipeline(
                instance,
                pipeline,
                datasets,
                {"projection_head": head_config},
                include_stale=args.stale,
                console_log_level=_console_level(args),
                workers=args.workers,
            )
            run_ids = head_run_ids(instance, pipeline, datasets)
    except (RunFailed, DatasetError, DefaultsError, KeyError) as error:
        return _fail(error)
    total = sum(seconds for _, _, seconds in report.executed)
    print(
        f"\n{len(report.executed)} materializations in {total:.0f} s; {len(report.skipped)} already up to date or unable to run"
    )
    # A lane waiting for its images (xtd10 as shipped) fails the command only when it was asked for by name.
    waiting = {status.target.key.path[0]: status for status in report.blocked if status.state == "waiting"}
    excused = set() if args.dataset else set(waiting)
    incomplete = sorted({status.target.key.path[0] for status in report.blocked} - excused)
    for status in report.blocked:
        if status.target.key.path[0] not in excused:
            print(f"  not run: {status.target.name}: {'; '.join(status.causes)}")
    for dataset in sorted(excused):
        print(f"  {dataset}: {'; '.join(waiting[dataset].causes)}")
    for dataset in datasets:
        for line in quarantine_summary(settings.outputs(dataset), dataset):
            print(line)
        run_id = run_ids.get(dataset)
        if (
            dataset not in incomplete
            and run_id
            and settings.outputs(dataset).head_path.exists()
            and settings.results_db.exists()
        ):
            print(f"\nRecall on the {dataset} test split, run {run_id} (results in {settings.results_db}):\n")
            print(to_markdown(recall_by_language(settings.results_db, run_id)))
    if incomplete:
        print(
            f"error: not everything could be brought up to date in {', '.join(incomplete)} (see 'not run' above)",
            file=sys.stderr,
        )
        return 1
    return 0


def quarantine_summary(outputs, dataset: str) -> list[str]:
    """One line per language whose caption file had rows set aside, naming the table that lists them."""
    from xlr_pipeline.core.storage.locations import read_parquet

    lines = []
    for path in sorted(outputs.root.glob("captions/*.quarantine.parquet")):
        rows = read_parquet(path).height
        if rows:
            lines.append(
                f"  quarantined: {rows} row(s) of {dataset} {path.name.split('.')[0]} captions, listed with file and line in {path}"
            )
    return lines


def command_grid(args: argparse.Namespace) -> int:
    import dagster as dg

    from xlr_pipeline.core.data.datasets import DatasetError
    from xlr_pipeline.defs.experiments import AugmentationConfig, GridConfig
    from xlr_pipeline.runner import RunFailed, materialize_target, run_pipeline
    from xlr_pipeline.staleness import Target

    _instance_home(args)
    try:
        pipeline = _pipeline(args)
        (dataset,) = _datasets(args, pipeline, all_by_default=False)
        lane = pipeline.lane(dataset)
        grid = GridConfig(
            **{k: v for k, v in (("seeds", args.seeds), ("objectives", args.objectives), ("epochs", args.epochs)) if v}
        )
        configs = {"projection_head": head_training_config(args), "experiment_grid": grid}
        if args.seeds:  # SALT copies are drawn per seed: the augmentation asset draws the grid's seeds
            configs["text_augmentations"] = AugmentationConfig(seeds=args.seeds)
        with dg.DagsterInstance.get() as instance:
            report = run_pipeline(
                instance,
                pipeline,
                [dataset],
                configs,
                include_stale=True,
                stages=pipeline.stage_assets("run", "grid"),
                console_log_level=_console_level(args),
                workers=args.workers,
            )
            ran = {asset for asset, _, _ in report.executed}
            if args.rerun and lane.key("experiment_grid").to_user_string() not in ran:
                for asset in ("experiment_grid", "grid_report"):
                    print(f"materializing {dataset}/{asset} (--rerun) ...")
                    materialize_target(instance, pipeline, Target(lane.key(asset), None), configs, _console_level(args))
    except (RunFailed, DatasetError, KeyError, ValueError) as error:
        return _fail(error)
    report_path = lane.reports_dir(pipeline.settings) / "report.md"
    print(report_path.read_text("utf-8") if report_path.exists() else "no report yet")
    return adopt_validation_choice(lane.spec, lane.outputs(pipeline.settings)) if args.adopt else 0


def adopt_validation_choice(spec, outputs) -> int:
    """Write the grid's validation choice into the dataset's `[defaults]`: what `xlr run` trains from now on."""
    from xlr_pipeline.core.experiments.tuning import validation_choice
    from xlr_pipeline.core.storage.locations import read_parquet, write_with_atomic
    from xlr_pipeline.core.training.defaults import DefaultsError, with_defaults_table

    validation, tuning = outputs.grid_validation_path, outputs.tuning_path
    if not validation.is_file():
        return _fail(ValueError(f"{validation}: no validation results to choose from (the dataset needs a val split)"))
    declaration = spec.root / "dataset.toml"
    try:
        chosen = validation_choice(read_parquet(validation), read_parquet(tuning) if tuning.is_file() else None)
        text = with_defaults_table(declaration.read_text("utf-8"), chosen)
    except DefaultsError as error:
        return _fail(error)
    write_with_atomic(declaration, lambda tmp: tmp.write_text(text, "utf-8"))
    print(f"\nadopted the validation choice into {declaration}:\n\n{chosen.as_toml()}\n`xlr run --stale` trains it")
    return 0


def command_tagging(args: argparse.Namespace) -> int:
    import dagster as dg

    from xlr_pipeline.core.data.datasets import DatasetError
    from xlr_pipeline.defs.tagging import TaggingReportConfig
    from xlr_pipeline.runner import RunFailed, run_pipeline

    _instance_home(args)
    try:
        pipeline = _pipeline(args)
        (dataset,) = _datasets(args, pipeline, all_by_default=False)
        report = {"tagging_report": TaggingReportConfig(**({"seeds": args.seeds} if args.seeds else {}))}
        configs = {"projection_head": head_training_config(args), **report}
        with dg.DagsterInstance.get() as instance:
            run_pipeline(
                instance,
                pipeline,
                [dataset],
                configs,
                include_stale=True,
                stages=pipeline.stage_assets("run", "tagging"),
                console_log_level=_console_level(args),
                workers=args.workers,
            )
    except (RunFailed, DatasetError, KeyError, ValueError) as error:
        return _fail(error)
    report_path = pipeline.lane(dataset).reports_dir(pipeline.settings) / "tagging.md"
    print(report_path.read_text("utf-8") if report_path.exists() else "no tagging report yet")
    return 0


def command_tag(args: argparse.Namespace) -> int:
    import numpy as np

    from xlr_pipeline.core.data.datasets import DatasetError
    from xlr_pipeline.core.data.languages import UnknownLanguageError, normalize_language
    from xlr_pipeline.core.models.embeddings import vectors_of
    from xlr_pipeline.core.models.encoders import EncoderError, ImageFileError, load_image
    from xlr_pipeline.core.scoring.tagging import tag_image_files
    from xlr_pipeline.core.storage.locations import read_parquet
    from xlr_pipeline.core.training.head import head_from_bytes

    try:
        pipeline = _pipeline(args)
        (dataset,) = _datasets(args, pipeline, all_by_default=False)
        outputs = pipeline.settings.outputs(dataset)
        language = normalize_language(args.lang, "--lang")
        vocabulary_path = outputs.tag_vocabulary_path(language)
        if not outputs.head_path.is_file() or not vocabulary_path.is_file():
            known = sorted(
                p.name.removesuffix(".vocabulary.parquet") for p in vocabulary_path.parent.glob("*.vocabulary.parquet")
            )
            raise DatasetError(
                f"no tagger for {language!r} in dataset {dataset!r} yet (tag vocabularies: {known or 'none'}): "
                f"run `xlr tagging --dataset {dataset}` first"
            )
        missing = [path for path in args.images if not Path(path).is_file()]
        if missing:
            raise DatasetError(f"{missing[0]}: no such image file")
        head, provenance = head_from_bytes(outputs.head_path.read_bytes())
        encoder = pipeline.settings.image_encoder(provenance["image_model"])
        vocabulary = read_parquet(vocabulary_path)
        tags, tag_vectors = vocabulary["tag"].to_list(), vectors_of(vocabulary)
        batch = pipeline.settings.image_batch_size
        for start in range(0, len(args.images), batch):  # decoded a batch at a time: memory stays flat
            paths = args.images[start : start + batch]
            features = np.asarray(encoder.encode([load_image(Path(path)) for path in paths]), dtype=np.float32)
            for path, ranked in zip(paths, tag_image_files(head, features, tags, tag_vectors, args.top), strict=True):
                print(f"{path}: " + ", ".join(f"{tag} ({score:.2f})" for tag, score in ranked), flush=True)
    except (DatasetError, KeyError, UnknownLanguageError, ImageFileError, EncoderError) as error:
        return _fail(error)
    return 0


def _print_answer(answer) -> None:
    print(f"{answer.dataset} · captions in {answer.language} · head run {answer.head_run_id} · {answer.index_type}")
    for hit in answer.images:
        print(f"{hit.rank:>3}  {hit.score:+.4f}  {hit.image_id:<16} {hit.path}  {hit.caption or ''}")
    if answer.captions:
        print(f"best {answer.language} captions:")
        for hit in answer.captions:
            print(f"{hit.rank:>3}  {hit.score:+.4f}  {hit.image_id:<16} {hit.caption}")
    if answer.tags:
        print("tags: " + ", ".join(f"{tag} ({score:.2f})" for tag, score in answer.tags))


def command_search(args: argparse.Namespace) -> int:
    import json

    from xlr_pipeline.core.data.datasets import DatasetError
    from xlr_pipeline.core.search.service import SearchError, decode_query_image

    if (args.query is None) == (args.image is None):
        print("error: give a query text or --image PATH (one of them)", file=sys.stderr)
        return 2
    try:
        service = _settings(args).search_service()
        dataset = args.dataset or DEFAULT_DATASET
        if args.image is not None:
            path = Path(args.image)
            if not path.is_file():
                raise SearchError(f"{path}: no such image file")
            answer = service.similar(decode_query_image(path.read_bytes(), str(path)), dataset, args.lang, args.top)
        else:
            answer = service.search(args.query, dataset, args.lang, args.top)
    except (SearchError, DatasetError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(answer.as_dict(), ensure_ascii=False, indent=2))
    else:
        _print_answer(answer)
    return 0


def command_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from xlr_pipeline.core.data.datasets import DatasetError
    from xlr_pipeline.web.app import create_app

    try:
        service = _settings(args).search_service()
    except DatasetError as error:
        return _fail(error)
    print(f"xlr search on http://{args.host}:{args.port}/ (API docs: /docs)", file=sys.stderr)
    uvicorn.run(
        create_app(service, args.dataset or DEFAULT_DATASET), host=args.host, port=args.port, log_level="warning"
    )
    return 0


def command_retire(args: argparse.Namespace) -> int:
    import dagster as dg

    from xlr_pipeline.core.data.datasets import DatasetError
    from xlr_pipeline.core.data.languages import UnknownLanguageError, normalize_language
    from xlr_pipeline.runner import RunFailed, retire_languages

    _instance_home(args)
    try:
        pipeline = _pipeline(args)
        (dataset,) = _datasets(args, pipeline, all_by_default=False)
        languages = [normalize_language(code, "languages") for code in args.languages]
        with dg.DagsterInstance.get() as instance:
            remaining = retire_languages(instance, pipeline.lane(dataset), languages)
    except (RunFailed, DatasetError, KeyError, UnknownLanguageError) as error:
        return _fail(error)
    print(
        f"retired {', '.join(languages)} from {dataset}; its languages: {' '.join(remaining)} (past results stay in DuckDB)"
    )
    return 0


def command_evaluate(args: argparse.Namespace) -> int:
    import dagster as dg

    from xlr_pipeline.core.data.datasets import DatasetError
    from xlr_pipeline.runner import RunFailed, evaluate_languages

    _instance_home(args)
    try:
        pipeline = _pipeline(args)
        (dataset,) = _datasets(args, pipeline, all_by_default=False)
        with dg.DagsterInstance.get() as instance:
            evaluate_languages(instance, pipeline, dataset, args.languages, console_log_level=_console_level(args))
    except (RunFailed, DatasetError, KeyError) as error:
        return _fail(error)
    return 0


ALIGNMENT_SUMMARY = """
    SELECT language, text_model,
           max(recall) FILTER (NOT centred AND k = 1) AS r1_raw,
           max(recall) FILTER (centred AND k = 1) AS r1_centred,
           max(recall) FILTER (NOT centred AND k = 10) AS r10_raw,
           max(recall) FILTER (centred AND k = 10) AS r10_centred,
           any_value(n_queries) AS n
    FROM text_alignment WHERE run_id = ? AND direction = 'to_pivot'
    GROUP BY ALL ORDER BY text_model, language"""


def command_alignment(args: argparse.Namespace) -> int:
    import dagster as dg
    import duckdb
    import polars as pl

    from xlr_pipeline.core.data.datasets import DatasetError
    from xlr_pipeline.core.reporting.report import to_markdown
    from xlr_pipeline.defs.alignment import TextAlignmentConfig
    from xlr_pipeline.runner import RunFailed, materialize_target
    from xlr_pipeline.staleness import Target

    _instance_home(args)
    try:
        pipeline = _pipeline(args)
        (dataset,) = _datasets(args, pipeline, all_by_default=False)
        config = TextAlignmentConfig(**({"text_models": args.text_models} if args.text_models else {}))
        target = Target(pipeline.lane(dataset).key("text_alignment"), None)
        with dg.DagsterInstance.get() as instance:
            materialize_target(instance, pipeline, target, {"text_alignment": config}, _console_level(args))
            run_id = instance.get_latest_materialization_event(target.key).run_id
    except (DatasetError, RunFailed, KeyError, ValueError) as error:
        return _fail(error)
    with duckdb.connect(str(pipeline.settings.results_db), read_only=True) as connection:
        frame = pl.from_arrow(connection.sql(ALIGNMENT_SUMMARY, params=[run_id]).to_arrow_table())
    print(
        f"{dataset}: captions of each language retrieving the {pipeline.lane(dataset).train_language} captions of the same "
        f"images (R@k, raw and centred), run {run_id}:\n"
    )
    print(to_markdown(frame))
    return 0


def command_status(args: argparse.Namespace) -> int:
    import dagster as dg
    import polars as pl

    from xlr_pipeline.core.data.datasets import DatasetError
    from xlr_pipeline.core.reporting.report import to_markdown
    from xlr_pipeline.runner import current_statuses

    _instance_home(args)
    try:
        pipeline = _pipeline(args)
        datasets = _datasets(args, pipeline, all_by_default=True)
        with dg.DagsterInstance.get() as instance:
            statuses = current_statuses(instance, pipeline, datasets, {"projection_head": head_training_config(args)})
    except (DatasetError, KeyError) as error:
        return _fail(error)
    shown = [s for s in statuses if args.all or s.state != "fresh"]
    if not shown:
        print(f"all {len(statuses)} asset partitions of {', '.join(datasets)} are up to date")
        return 0
    frame = pl.DataFrame(
        {
            "asset": [s.target.key.to_user_string() for s in shown],
            "partition": [s.target.partition or "" for s in shown],
            "state": [s.state for s in shown],
            "causes": ["; ".join(s.causes) for s in shown],
        }
    )
    print(to_markdown(frame))
    stale = sum(s.state in ("missing", "stale") for s in statuses)
    print(f"\n{stale} of {len(statuses)} asset partitions would run with `xlr run --stale`")
    return 0


def command_datasets(args: argparse.Namespace) -> int:
    import polars as pl

    from xlr_pipeline.core.data.datasets import DatasetError
    from xlr_pipeline.core.reporting.report import to_markdown

    try:
        pipeline = _pipeline(args)
    except DatasetError as error:
        return _fail(error)
    rows = []
    for name, lane in sorted(pipeline.lanes.items()):
        files, problems = lane.spec.scan_caption_files()
        rows.append(
            {
                "dataset": name,
                "folder": str(lane.spec.root),
                "languages": " ".join(sorted(files)),
                "train_language": lane.train_language,
                "captions": f"{lane.spec.caption_format}: {lane.spec.captions}",
                "image_list": f"{lane.spec.image_list_format}: {lane.spec.image_list}",
                "images": (
                    f"COCO 2014 (+{pipeline.settings.train_image_count(lane.spec.coco_train_images)} train2014 for training)"
                    if lane.spec.coco_sourced
                    else lane.spec.images
                ),
                "problems": "; ".join(problems),
            }
        )
    empty = dict.fromkeys(["dataset", "languages", "train_language", "captions", "image_list", "images"], "")
    rows += [
        {**empty, "dataset": "(unusable)", "folder": str(Path(file).parent), "problems": message}
        for file, message in sorted(pipeline.broken.items())
    ]
    print(to_markdown(pl.DataFrame(rows)))
    return 0


def command_sql(args: argparse.Namespace) -> int:
    from xlr_pipeline.core.reporting.sql import QueryError, describe, render, run_sql
    from xlr_pipeline.settings_sources import data_dir_of

    db_path = data_dir_of(_settings_flags(args)) / "results.duckdb"
    try:
        if args.file:
            query = Path(args.file).read_text("utf-8")
        else:
            query = args.query
        frame = run_sql(db_path, query, args.timeout or None) if query else describe(db_path)
    except (QueryError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    text = render(frame, args.format)
    print(text, end="" if text.endswith("\n") else "\n")
    return 0


def command_dev(args: argparse.Namespace) -> int:
    from xlr_pipeline.runner import concurrent_runs_of
    from xlr_pipeline.settings_sources import environment_of

    home = _instance_home(args)
    os.environ.update(environment_of(_settings_flags(args)))  # --data-dir and friends reach the code location
    if not os.environ.get("XLR_STEP_THREADS"):
        # Runs the UI launches share the cores: each embedding step gets its share of the run queue's width.
        os.environ["XLR_STEP_THREADS"] = str(max(1, available_cores() // concurrent_runs_of(home)))
    # A backgrounded `dagster dev` ignores SIGINT unless its default handler is restored before exec.
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    workspace = Path(__file__).resolve().parents[1] / "workspace.yaml"
    # The dagster script installed beside this interpreter, so an un-activated venv works too.
    dagster = Path(sys.executable).parent / "dagster"
    os.execv(dagster, [str(dagster), "dev", "-w", str(workspace), "-h", args.host, "-p", str(args.port)])
    return 0


WORKERS_PER_CORE = 4  # more concurrent runs than this per core only thrash


def _workers(text: str) -> int:
    value = int(text)
    most = WORKERS_PER_CORE * available_cores()
    if not 1 <= value <= most:
        raise argparse.ArgumentTypeError(f"must be between 1 and {most} ({WORKERS_PER_CORE} per core), not {value}")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _whole_number(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, not {value}")
    return value


def _seconds(text: str) -> float:
    value = float(text)
    if not (value >= 0 and value != float("inf")):
        raise argparse.ArgumentTypeError(f"must be a number of seconds ≥ 0, not {text}")
    return value


def _results_count(text: str) -> int:
    value = int(text)
    if not 1 <= value <= MAX_RESULTS:
        raise argparse.ArgumentTypeError(f"must be between 1 and {MAX_RESULTS}, not {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="xlr", description="Zero-shot cross-lingual image retrieval pipeline")
    commands = parser.add_subparsers(dest="command", required=True)

    location_options = argparse.ArgumentParser(add_help=False)
    location_options.add_argument(
        "--data-dir",
        help=f"folder with datasets, outputs and results.duckdb (default: XLR_DATA_DIR, else {DEFAULT_DATA_DIR})",
    )
    location_options.add_argument(
        "--dataset-root",
        action="append",
        default=[],
        help="another folder holding datasets (repeatable; also XLR_DATASET_ROOTS)",
    )
    location_options.add_argument(
        "--storage-url",
        help="where dataset outputs and rank files live: a folder or an fsspec URL such as s3://bucket/prefix "
        "(default: XLR_STORAGE_URL, else the data dir)",
    )
    pipeline_options = argparse.ArgumentParser(add_help=False, parents=[location_options])
    pipeline_options.add_argument(
        "--dataset",
        help=f"the dataset (lane) by its declared name (default: {DEFAULT_DATASET}; all datasets for status and run --stale)",
    )
    pipeline_options.add_argument(
        "--image-model", help=f"image encoder id (default: XLR_IMAGE_MODEL, else {DEFAULT_IMAGE_MODEL})"
    )
    pipeline_options.add_argument(
        "--text-model", help=f"text encoder id (default: XLR_TEXT_MODEL, else {DEFAULT_TEXT_MODEL})"
    )
    pipeline_options.add_argument(
        "--encoder-backend",
        choices=BACKENDS,
        help=f"how frozen encoders run (default: XLR_ENCODER_BACKEND, else {DEFAULT_BACKEND}); switching re-embeds",
    )
    pipeline_options.add_argument(
        "--verbose", action="store_true", help="show Dagster's full console log, with the trace of every failure"
    )
    coco = pipeline_options.add_argument_group("COCO-sourced datasets (xtd10)")
    coco.add_argument(
        "--coco-dir", help="local COCO folder: train2014/ + val2014/, flat COCO_*2014_*.jpg, or train2017/ + val2017/"
    )
    coco.add_argument(
        "--download",
        dest="coco_download",
        action="store_true",
        help="download the COCO images and captions not found locally",
    )
    coco.add_argument(
        "--coco-train-images",
        type=_whole_number,
        help="English COCO train2014 images to train on (xtd10 default 10000)",
    )
    coco.add_argument("--coco-image-url", help="base URL of COCO images (default http://images.cocodataset.org)")
    coco.add_argument("--coco-annotations-url", help="URL of the COCO 2014 annotations zip or captions_train2014.json")
    for option, kind in HEAD_OPTIONS.items():
        choices = {"choices": kind} if isinstance(kind, tuple) else {"type": kind}
        pipeline_options.add_argument(f"--{option.replace('_', '-')}", help=f"head {option}", **choices)

    worker_options = argparse.ArgumentParser(add_help=False)
    worker_options.add_argument(
        "--workers",
        type=_workers,
        default=1,
        help="embed image shards (image_shards in dataset.toml) as this many concurrent runs, and a language's caption "
        "shards (caption_shards) as this many step processes, each with an equal share of the cores",
    )

    run = commands.add_parser(
        "run",
        parents=[pipeline_options, worker_options],
        help="materialize what is missing and print per-language Recall",
    )
    run.add_argument("--stale", action="store_true", help="also rerun what is stale (changed code, config, inputs)")
    run.set_defaults(handler=command_run)

    status = commands.add_parser(
        "status", parents=[pipeline_options], help="list missing and stale asset partitions with causes"
    )
    status.add_argument("--all", action="store_true", help="list fresh ones too")
    status.set_defaults(handler=command_status)

    grid = commands.add_parser(
        "grid",
        parents=[pipeline_options, worker_options],
        help="bring the chain and the experiment grid (objectives x augmentation x seeds) up to date; print the report",
    )
    grid.add_argument(
        "--seeds", type=int, nargs="+", help="seeds per cell (default 0 1 2 3 4); SALT copies are drawn per seed"
    )
    grid.add_argument("--objectives", nargs="+", choices=OBJECTIVES, help="objectives (default all)")
    grid.add_argument(
        "--rerun", action="store_true", help="retrain the grid even if it exists (e.g. after changing --seeds)"
    )
    grid.add_argument(
        "--adopt",
        action="store_true",
        help="write the configuration chosen on validation into the dataset's dataset.toml [defaults] (what xlr run trains)",
    )
    grid.set_defaults(handler=command_grid)

    tagging = commands.add_parser(
        "tagging",
        parents=[pipeline_options, worker_options],
        help="bring the chain and zero-shot tagging (tags per language, report against the translation baseline) up to date",
    )
    tagging.add_argument("--seeds", type=int, nargs="+", help="heads evaluated in the report (default 0 1 2)")
    tagging.set_defaults(handler=command_tagging)

    tag = commands.add_parser("tag", parents=[location_options], help="print the top tags of image files in a language")
    tag.add_argument("images", nargs="+", help="image files")
    tag.add_argument("--lang", required=True, help="language of the tags (ISO 639-1, e.g. de)")
    tag.add_argument("--top", type=_positive_int, default=10, help="how many tags (default 10)")
    tag.add_argument("--dataset", help=f"whose head and vocabulary (default: {DEFAULT_DATASET})")
    tag.set_defaults(handler=command_tag)

    backend_option = argparse.ArgumentParser(add_help=False, parents=[location_options])
    backend_option.add_argument(
        "--encoder-backend",
        choices=BACKENDS,
        help=f"how the query encoders run (default: XLR_ENCODER_BACKEND, else {DEFAULT_BACKEND})",
    )
    search = commands.add_parser(
        "search",
        parents=[backend_option],
        help="rank a dataset's images for a text in any language, or for an image (--image)",
    )
    search.add_argument("query", nargs="?", help='the query text, e.g. "un chat qui rit"')
    search.add_argument("--image", help="find images like this image file, and its best captions and tags")
    search.add_argument("--dataset", help=f"whose head and index (default: {DEFAULT_DATASET})")
    search.add_argument("--lang", help="language of the captions shown (default: the dataset's training language)")
    search.add_argument("--top", type=_results_count, default=10, help="how many images (default 10, at most 100)")
    search.add_argument("--json", action="store_true", help="print the answer as JSON")
    search.set_defaults(handler=command_search)

    serve = commands.add_parser(
        "serve", parents=[backend_option], help="the search page and HTTP API (127.0.0.1 by default)"
    )
    serve.add_argument(
        "--host", default="127.0.0.1", help="interface to listen on (default 127.0.0.1: this machine only)"
    )
    serve.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"(default {DEFAULT_PORT})")
    serve.add_argument("--dataset", help=f"the dataset the page opens on (default: {DEFAULT_DATASET})")
    serve.set_defaults(handler=command_serve)

    evaluate = commands.add_parser(
        "evaluate",
        parents=[pipeline_options],
        help="re-evaluate languages with the current head (the reevaluate_language job)",
    )
    evaluate.add_argument("languages", nargs="+", help="ISO 639-1 codes, e.g. ja de")
    evaluate.set_defaults(handler=command_evaluate)

    retire = commands.add_parser(
        "retire",
        parents=[location_options],
        help="drop languages whose caption files you removed from a dataset's lane",
    )
    retire.add_argument("languages", nargs="+", help="ISO 639-1 codes, e.g. tr")
    retire.add_argument("--dataset", help=f"the dataset (default: {DEFAULT_DATASET})")
    retire.set_defaults(handler=command_retire)

    alignment = commands.add_parser(
        "alignment",
        parents=[pipeline_options],
        help="text-alignment diagnostic: each language's captions retrieve the training language's (no images needed)",
    )
    alignment.add_argument("--text-models", nargs="+", help="text encoder ids (default: every offline one)")
    alignment.set_defaults(handler=command_alignment)

    datasets = commands.add_parser(
        "datasets", parents=[location_options], help="list the datasets found (each one a lane in the graph)"
    )
    datasets.set_defaults(handler=command_datasets)

    sql = commands.add_parser("sql", help="query the results DuckDB read-only; with no query, list tables and views")
    sql.add_argument("query", nargs="?", help="SQL text (several statements allowed; the last one's rows are printed)")
    sql.add_argument("--file", help="read the SQL from this file")
    sql.add_argument("--format", choices=["table", "csv", "json", "markdown"], default="table")
    sql.add_argument(
        "--timeout",
        type=_seconds,
        default=60.0,
        help="stop a query running longer than this (seconds; 0: never; default 60)",
    )
    sql.add_argument(
        "--data-dir", help="folder holding results.duckdb (default: XLR_DATA_DIR, else the shipped data dir)"
    )
    sql.set_defaults(handler=command_sql)

    dev = commands.add_parser(
        "dev", parents=[backend_option], help="start the Dagster UI on the instance `xlr run` uses"
    )
    dev.add_argument("--host", default="127.0.0.1")
    dev.add_argument("--port", type=int, default=3000)
    dev.set_defaults(handler=command_dev)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())

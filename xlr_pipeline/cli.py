"""The `xlr` command: `xlr run` (main job), `xlr sql` (query results), `xlr dev` (Dagster UI)."""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

from xlr_pipeline.core.encoders import DEFAULT_IMAGE_MODEL, DEFAULT_TEXT_MODEL
from xlr_pipeline.defs.resources import DEFAULT_DATA_DIR

# Head hyperparameters settable from the command line (the rest through the Dagster launchpad).
HEAD_OPTIONS = {
    "objective": str,
    "seed": int,
    "epochs": int,
    "margin": float,
    "architecture": str,
    "learning_rate": float,
    "embed_dim": int,
}


def head_training_config(args: argparse.Namespace):
    from xlr_pipeline.defs.train import HeadTrainingConfig

    return HeadTrainingConfig(**{name: getattr(args, name) for name in HEAD_OPTIONS if getattr(args, name) is not None})


def _settings(args: argparse.Namespace):
    from xlr_pipeline.defs.resources import XlrSettings

    return XlrSettings(
        data_dir=str(Path(args.data_dir).resolve()),
        dataset=args.dataset,
        image_model=args.image_model,
        text_model=args.text_model,
    )


def command_run(args: argparse.Namespace) -> int:
    import dagster as dg

    from xlr_pipeline.core.head import head_from_bytes
    from xlr_pipeline.core.report import recall_by_language, to_markdown
    from xlr_pipeline.runner import RunFailed, ensure_instance_home, run_pipeline

    home = ensure_instance_home()
    settings = _settings(args)
    head_config = head_training_config(args)
    print(f"dataset {settings.dataset} | image {settings.image_model} | text {settings.text_model} | DAGSTER_HOME={home}")
    try:
        with dg.DagsterInstance.get() as instance:
            report = run_pipeline(instance, settings, {"projection_head": head_config}, include_stale=args.stale)
    except RunFailed as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    total = sum(seconds for _, _, seconds in report.executed)
    print(f"\n{len(report.executed)} materializations in {total:.0f} s; {len(report.skipped)} already up to date")
    if settings.head_path.exists() and settings.results_db.exists():
        _, provenance = head_from_bytes(settings.head_path.read_bytes())
        print(f"\nRecall on the {settings.dataset} test split, run {provenance['run_id']} (results in {settings.results_db}):\n")
        print(to_markdown(recall_by_language(settings.results_db, provenance["run_id"])))
    return 0


def command_grid(args: argparse.Namespace) -> int:
    import dagster as dg

    from xlr_pipeline.defs.experiments import GridConfig
    from xlr_pipeline.defs.versions import ASSET_GROUP, EXPERIMENT_GROUP
    from xlr_pipeline.runner import RunFailed, ensure_instance_home, materialize_target, run_pipeline
    from xlr_pipeline.staleness import Target

    ensure_instance_home()
    settings = _settings(args)
    grid = GridConfig(**{k: v for k, v in (("seeds", args.seeds), ("objectives", args.objectives), ("epochs", args.epochs)) if v})
    configs = {"projection_head": head_training_config(args), "experiment_grid": grid}
    try:
        with dg.DagsterInstance.get() as instance:
            report = run_pipeline(
                instance, settings, configs, include_stale=True, groups=frozenset({ASSET_GROUP, EXPERIMENT_GROUP})
            )
            ran = {asset for asset, _, _ in report.executed}
            if args.rerun and "experiment_grid" not in ran:
                for asset in ("experiment_grid", "grid_report"):
                    print(f"materializing {asset} (--rerun) ...")
                    materialize_target(instance, settings, Target(dg.AssetKey(asset), None), configs)
    except RunFailed as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    report_path = settings.root / "reports" / settings.dataset_spec().name / "report.md"
    print(report_path.read_text("utf-8") if report_path.exists() else "no report yet")
    return 0


def command_evaluate(args: argparse.Namespace) -> int:
    import dagster as dg

    from xlr_pipeline.runner import RunFailed, ensure_instance_home, evaluate_languages

    ensure_instance_home()
    try:
        with dg.DagsterInstance.get() as instance:
            evaluate_languages(instance, _settings(args), args.languages)
    except RunFailed as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


def command_status(args: argparse.Namespace) -> int:
    import dagster as dg
    import polars as pl

    from xlr_pipeline.core.datasets import DatasetError
    from xlr_pipeline.core.report import to_markdown
    from xlr_pipeline.runner import current_statuses, ensure_instance_home

    ensure_instance_home()
    try:
        with dg.DagsterInstance.get() as instance:
            statuses = current_statuses(instance, _settings(args), {"projection_head": head_training_config(args)})
    except DatasetError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    shown = [s for s in statuses if args.all or s.state != "fresh"]
    if not shown:
        print(f"all {len(statuses)} asset partitions are up to date")
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


def command_sql(args: argparse.Namespace) -> int:
    from xlr_pipeline.core.sql import QueryError, describe, render, run_sql

    db_path = Path(args.data_dir).resolve() / "results.duckdb"
    try:
        if args.file:
            query = Path(args.file).read_text("utf-8")
        else:
            query = args.query
        frame = run_sql(db_path, query) if query else describe(db_path)
    except (QueryError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    text = render(frame, args.format)
    print(text, end="" if text.endswith("\n") else "\n")
    return 0


def command_dev(args: argparse.Namespace) -> int:
    from xlr_pipeline.runner import ensure_instance_home

    ensure_instance_home()
    # A backgrounded `dagster dev` ignores SIGINT unless its default handler is restored before exec.
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    workspace = Path(__file__).resolve().parents[1] / "workspace.yaml"
    # The dagster script installed beside this interpreter, so an un-activated venv works too.
    dagster = Path(sys.executable).parent / "dagster"
    os.execv(dagster, [str(dagster), "dev", "-w", str(workspace), "-h", args.host, "-p", str(args.port)])
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="xlr", description="Zero-shot cross-lingual image retrieval pipeline")
    commands = parser.add_subparsers(dest="command", required=True)

    pipeline_options = argparse.ArgumentParser(add_help=False)
    pipeline_options.add_argument("--data-dir", default=str(DEFAULT_DATA_DIR), help="folder with datasets, outputs and results.duckdb")
    pipeline_options.add_argument("--dataset", default="emoji_cldr", help="dataset folder under --data-dir (default: emoji_cldr)")
    pipeline_options.add_argument("--image-model", default=DEFAULT_IMAGE_MODEL, help="image encoder id")
    pipeline_options.add_argument("--text-model", default=DEFAULT_TEXT_MODEL, help="text encoder id")
    for option in HEAD_OPTIONS:
        pipeline_options.add_argument(f"--{option.replace('_', '-')}", type=HEAD_OPTIONS[option], help=f"head {option}")

    run = commands.add_parser("run", parents=[pipeline_options], help="materialize what is missing and print per-language Recall")
    run.add_argument("--stale", action="store_true", help="also rerun what is stale (changed code, config, inputs)")
    run.set_defaults(handler=command_run)

    status = commands.add_parser("status", parents=[pipeline_options], help="list missing and stale asset partitions with causes")
    status.add_argument("--all", action="store_true", help="list fresh ones too")
    status.set_defaults(handler=command_status)

    grid = commands.add_parser(
        "grid",
        parents=[pipeline_options],
        help="bring the chain and the experiment grid (objectives x augmentation x seeds) up to date; print the report",
    )
    grid.add_argument("--seeds", type=int, nargs="+", help="seeds per cell (default 0 1 2)")
    grid.add_argument("--objectives", nargs="+", choices=["patr", "m3", "infonce"], help="objectives (default all three)")
    grid.add_argument("--rerun", action="store_true", help="retrain the grid even if it exists (e.g. after changing --seeds)")
    grid.set_defaults(handler=command_grid)

    evaluate = commands.add_parser(
        "evaluate", parents=[pipeline_options], help="re-evaluate languages with the current head (the reevaluate_language job)"
    )
    evaluate.add_argument("languages", nargs="+", help="ISO 639-1 codes, e.g. ja de")
    evaluate.set_defaults(handler=command_evaluate)

    sql = commands.add_parser("sql", help="query the results DuckDB read-only; with no query, list tables and views")
    sql.add_argument("query", nargs="?", help="SQL text (several statements allowed; the last one's rows are printed)")
    sql.add_argument("--file", help="read the SQL from this file")
    sql.add_argument("--format", choices=["table", "csv", "json", "markdown"], default="table")
    sql.add_argument("--data-dir", default=str(DEFAULT_DATA_DIR), help="folder holding results.duckdb")
    sql.set_defaults(handler=command_sql)

    dev = commands.add_parser("dev", help="start the Dagster UI on the instance `xlr run` uses")
    dev.add_argument("--host", default="127.0.0.1")
    dev.add_argument("--port", type=int, default=3000)
    dev.set_defaults(handler=command_dev)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())

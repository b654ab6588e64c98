"""Small helpers shared by assets for data versions and metadata previews."""

from __future__ import annotations

import logging
from pathlib import Path

import dagster as dg
import polars as pl

from xlr_pipeline.core.report import to_markdown
from xlr_pipeline.defs.lineage import file_version


def file_data_version(path: Path) -> dg.DataVersion:
    """Content-derived: a rerun that writes identical bytes does not make downstream assets stale."""
    return dg.DataVersion(file_version(path))


def markdown_preview(frame: pl.DataFrame, rows: int = 5) -> dg.MetadataValue:
    return dg.MetadataValue.md(to_markdown(frame.head(rows), digits=6, max_chars=80))


# Progress of long stages also goes to this Python logger: the CLI shows it when Dagster's own console
# output (which repeats every failure with its trace) is turned down.
PROGRESS = logging.getLogger("xlr_pipeline.progress")


def progress_logger(context: dg.AssetExecutionContext, what: str):
    """Log encoding progress about every 10% so long stages show they are moving."""
    last = {"tenth": -1}

    def report(done: int, total: int) -> None:
        tenth = (10 * done) // max(total, 1)
        if tenth != last["tenth"]:
            last["tenth"] = tenth
            context.log.info(f"{what}: encoded {done}/{total}")
            PROGRESS.info(f"{what}: encoded {done}/{total}")

    return report

"""Small helpers shared by assets for data versions and metadata previews."""

from __future__ import annotations

import base64
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dagster as dg
import polars as pl

from xlr_pipeline.core.reporting.report import to_markdown
from xlr_pipeline.defs.lineage import VERSION_KEY, file_version


def file_data_version(path: Path) -> dg.DataVersion:
    """Content-derived: a rerun that writes identical bytes does not make downstream assets stale."""
    return dg.DataVersion(file_version(path))


def markdown_preview(frame: pl.DataFrame, rows: int = 5) -> dg.MetadataValue:
    return dg.MetadataValue.md(to_markdown(frame.head(rows), digits=6, max_chars=80))


def png_metadata(png: bytes, alt: str) -> dg.MetadataValue:
    """A chart shown inline on the asset's page (Markdown with a data-URI image, as Dagster's docs do)."""
    return dg.MetadataValue.md(f"![{alt}](data:image/png;base64,{base64.b64encode(png).decode()})")


def sql_hint(query: str) -> dg.MetadataValue:
    """A copy-paste command that reads the full-precision rows behind rounded metadata."""
    return dg.MetadataValue.md(f'```\nxlr sql "{query}"\n```')


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


@dataclass
class PartitionOutcome:
    """What one language of a partitioned asset produced: its metadata, content version and check results."""

    metadata: dict[str, Any]
    version: str | None = None
    checks: list[dg.AssetCheckResult] = field(default_factory=list)


def materialize_partitions(
    context: dg.AssetExecutionContext,
    materialize_one: Callable[[str], PartitionOutcome],
    metadata: dict[str, Any] | None = None,
) -> dg.MaterializeResult:
    """Run `materialize_one` for each partition of this run: one language, or a range when a backfill runs as
    a single run (the assets' `BackfillPolicy`). Metadata and versions are partition-scoped, so every language
    keeps its own lineage; check results, one per check and run, are combined over the languages. `metadata`
    goes on every partition."""
    outcomes = {language: materialize_one(language) for language in context.partition_keys}
    for language, outcome in outcomes.items():
        versioned = {VERSION_KEY: outcome.version} if outcome.version else {}
        context.add_asset_metadata({**outcome.metadata, **versioned}, partition_key=language)
    if len(outcomes) == 1:
        (only,) = outcomes.values()
        return dg.MaterializeResult(
            data_version=dg.DataVersion(only.version) if only.version else None,
            metadata=metadata,
            check_results=only.checks,
        )
    return dg.MaterializeResult(
        metadata={**(metadata or {}), "languages_in_run": ", ".join(outcomes)}, check_results=combine_checks(outcomes)
    )


def combine_checks(outcomes: dict[str, PartitionOutcome]) -> list[dg.AssetCheckResult]:
    """One result per check over several languages: it passes when it passed for each, and names the ones
    where it did not, with every language's own metadata in a table."""
    by_check: dict[str, dict[str, dg.AssetCheckResult]] = {}
    for language, outcome in outcomes.items():
        for result in outcome.checks:
            by_check.setdefault(result.check_name, {})[language] = result
    combined = []
    for name, results in by_check.items():
        first = next(iter(results.values()))
        failed = [language for language, result in results.items() if not result.passed]
        rows = ["| language | passed | details |", "|---|---|---|"] + [
            f"| {language} | {result.passed} | "
            + "; ".join(
                f"{key}={value.value}"
                for key, value in result.metadata.items()
                if not isinstance(value, dg.MarkdownMetadataValue)
            )
            + " |"
            for language, result in results.items()
        ]
        combined.append(
            dg.AssetCheckResult(
                asset_key=first.asset_key,
                check_name=name,
                passed=not failed,
                severity=first.severity,
                metadata={
                    "failed_languages": ", ".join(failed) or "none",
                    "per_language": dg.MetadataValue.md("\n".join(rows)),
                },
            )
        )
    return combined

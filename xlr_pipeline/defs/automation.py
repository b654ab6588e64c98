"""New-language sensor, weekly re-evaluation schedule and the one-language re-evaluation job."""

from __future__ import annotations

import json
import os

import dagster as dg

from xlr_pipeline.core.datasets import DatasetError, read_captions
from xlr_pipeline.core.storage import sha256_file
from xlr_pipeline.defs.partitions import language_partitions
from xlr_pipeline.defs.resources import XlrSettings

LANGUAGE_ASSETS = ["captions", "text_embeddings", "retrieval_metrics"]
DEFAULT_REEVALUATION_CRON = "0 3 * * 1"  # Mondays 03:00

reevaluate_language_job = dg.define_asset_job(
    "reevaluate_language",
    selection=dg.AssetSelection.assets(*LANGUAGE_ASSETS),
    description="Re-ingest, re-embed (cached) and re-evaluate one language with the current head.",
)


def _head_ready(instance: dg.DagsterInstance) -> bool:
    return all(instance.get_latest_materialization_event(dg.AssetKey(key)) for key in ("projection_head", "image_index"))


def _scan(settings: XlrSettings) -> tuple[dict[str, str], set[str], list[str]]:
    """(usable caption files as language → content hash, languages whose file is invalid, messages)."""
    spec = settings.dataset_spec()
    files, problems = spec.scan_caption_files()
    records = spec.image_records()
    usable, invalid = {}, set()
    for language, path in files.items():
        try:
            read_captions(spec, language, path, records)
        except DatasetError as error:
            problems.append(f"not evaluated: {error}")
            invalid.add(language)
            continue
        usable[language] = sha256_file(path)
    return usable, invalid, problems


@dg.sensor(
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.RUNNING,
    asset_selection=dg.AssetSelection.assets(*LANGUAGE_ASSETS),
)
def language_files_sensor(context: dg.SensorEvaluationContext, settings: XlrSettings) -> dg.SensorResult | dg.SkipReason:
    """Picks up new or changed caption files: adds the language partition and evaluates just that language.

    The cursor remembers each file's content hash. Invalid files and removed languages are reported in
    the tick and change nothing already stored; metrics are requested only once a head is trained.
    """
    try:
        current, invalid, problems = _scan(settings)
    except DatasetError as error:
        return dg.SkipReason(str(error))
    seen: dict[str, str] = json.loads(context.cursor) if context.cursor else {}
    existing = set(context.instance.get_dynamic_partitions(language_partitions.name))
    if not context.cursor:  # first tick: languages already materialized elsewhere are not rerun
        seen = {language: digest for language, digest in current.items() if language in existing}
    new = sorted(set(current) - existing)
    changed = sorted(language for language in current if language in existing and seen.get(language) != current[language])
    removed = sorted(set(seen) - set(current) - invalid)
    problems += [f"caption file for {language!r} was removed; its partition and stored results are kept" for language in removed]
    for message in problems:
        context.log.warning(message)
    cursor = json.dumps({**{k: v for k, v in seen.items() if k in current}, **{k: current[k] for k in new + changed}}, sort_keys=True)
    if not new and not changed:
        return dg.SensorResult(skip_reason="; ".join(problems) or "no new or changed caption files", cursor=cursor)
    selection = LANGUAGE_ASSETS if _head_ready(context.instance) else LANGUAGE_ASSETS[:2]
    return dg.SensorResult(
        run_requests=[
            dg.RunRequest(
                run_key=f"{language}:{current[language][:16]}",
                partition_key=language,
                asset_selection=[dg.AssetKey(key) for key in selection],
            )
            for language in new + changed
        ],
        dynamic_partitions_requests=[language_partitions.build_add_request(new)] if new else [],
        cursor=cursor,
    )


def reevaluation_cron() -> str:
    """Cron of the re-evaluation schedule; XLR_REEVALUATE_CRON overrides the weekly default."""
    return os.environ.get("XLR_REEVALUATE_CRON", DEFAULT_REEVALUATION_CRON)


@dg.schedule(job=reevaluate_language_job, cron_schedule=reevaluation_cron(), default_status=dg.DefaultScheduleStatus.RUNNING)
def reevaluate_all_languages(context: dg.ScheduleEvaluationContext):
    """Re-evaluates every language partition (one run each) with the current head."""
    if not _head_ready(context.instance):
        return dg.SkipReason("no trained projection_head and image_index yet")
    languages = sorted(context.instance.get_dynamic_partitions(language_partitions.name))
    stamp = context.scheduled_execution_time.isoformat()
    return [dg.RunRequest(run_key=f"{language}:{stamp}", partition_key=language) for language in languages]

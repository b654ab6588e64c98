"""Per dataset: the new-language sensor, the re-evaluation schedule and the one-language re-evaluation job."""

from __future__ import annotations

import json
import os

import dagster as dg

from xlr_pipeline.core.data.datasets import DatasetError, read_captions
from xlr_pipeline.core.storage.locations import sha256_file
from xlr_pipeline.defs.lane import Lane

DEFAULT_REEVALUATION_CRON = "0 3 * * 1"  # Mondays 03:00


def reevaluation_cron() -> str:
    """Cron of the re-evaluation schedules; XLR_REEVALUATE_CRON overrides the weekly default."""
    return os.environ.get("XLR_REEVALUATE_CRON", DEFAULT_REEVALUATION_CRON)


def _head_ready(instance: dg.DagsterInstance, lane: Lane) -> bool:
    return all(
        instance.get_latest_materialization_event(lane.key(asset)) for asset in ("projection_head", "image_index")
    )


def _scan(lane: Lane) -> tuple[dict[str, str], set[str], list[str]]:
    """(usable caption files as language → content hash, languages whose file is invalid, messages)."""
    files, problems = lane.spec.scan_caption_files()
    records = lane.spec.image_records()
    usable, invalid = {}, set()
    for language, path in files.items():
        try:
            read_captions(lane.spec, language, path, records)
        except DatasetError as error:
            problems.append(f"not evaluated: {error}")
            invalid.add(language)
            continue
        usable[language] = sha256_file(path)
    return usable, invalid, problems


def _images_missing(instance: dg.DagsterInstance, lane: Lane) -> str | None:
    """Why a language of this lane cannot be ingested yet, if it cannot: a COCO-sourced lane's captions read
    its `images` asset (its training captions come from there); other lanes need their images folder."""
    if lane.spec.coco_sourced:
        if not instance.get_latest_materialization_event(lane.key("images")):
            return f"{lane.name}/images was never materialized (its COCO images are found locally or downloaded there)"
    elif not lane.spec.images_dir.is_dir():
        return f"{lane.spec.images_dir}: images folder not found"
    return None


def build_automation(
    lane: Lane, language_keys: list[dg.AssetKey]
) -> tuple[list[dg.SensorDefinition], dg.ScheduleDefinition, dg.UnresolvedAssetJobDefinition]:
    """`language_keys`: what one language runs (`language_asset_keys`)."""
    job = dg.define_asset_job(
        f"{lane.name}_reevaluate_language",
        selection=dg.AssetSelection.assets(*language_keys),
        description=f"Re-ingest, re-embed (cached) and re-evaluate one {lane.name} language with the current head.",
    )

    @dg.sensor(
        name=f"{lane.name}_language_files",
        minimum_interval_seconds=30,
        default_status=dg.DefaultSensorStatus.RUNNING,
        asset_selection=dg.AssetSelection.assets(*language_keys),
    )
    def language_files_sensor(context: dg.SensorEvaluationContext) -> dg.SensorResult | dg.SkipReason:
        """Picks up new or changed caption files of this dataset: adds the language partition and evaluates
        just that language.

        The cursor remembers each file's content hash. The first tick only registers the files it finds (their
        partitions), so starting the UI and then materializing the lane does every language once, not twice;
        from then on a new or changed file is evaluated alone. Invalid files and removed languages are
        reported in the tick and change nothing already stored; metrics are requested only once a head is
        trained. A dataset whose images are not in place (no images folder; for XTD10, an `images` asset never
        materialized) gets its language partitions and nothing else until they are.
        """
        try:
            current, invalid, problems = _scan(lane)
        except DatasetError as error:
            return dg.SkipReason(str(error))
        existing = set(context.instance.get_dynamic_partitions(lane.partitions.name))
        waiting_for = _images_missing(context.instance, lane)
        if waiting_for:
            new = sorted(set(current) - existing)
            return dg.SensorResult(
                skip_reason=f"no runs until the images are in place: {waiting_for}",
                dynamic_partitions_requests=[lane.partitions.build_add_request(new)] if new else [],
                cursor=context.cursor,
            )
        new = sorted(set(current) - existing)
        if not context.cursor:
            return dg.SensorResult(
                skip_reason="; ".join(
                    [
                        f"registered {lane.name} languages {sorted(current)}: materialize the lane to evaluate them; "
                        "new or changed caption files are evaluated from now on",
                        *problems,
                    ]
                ),
                dynamic_partitions_requests=[lane.partitions.build_add_request(new)] if new else [],
                cursor=json.dumps(current, sort_keys=True),
            )
        seen: dict[str, str] = json.loads(context.cursor)
        changed = sorted(
            language for language in current if language in existing and seen.get(language) != current[language]
        )
        removed = sorted(set(seen) - set(current) - invalid)
        problems += [
            f"caption file for {language!r} was removed; its partition and stored results are kept"
            for language in removed
        ]
        for message in problems:
            context.log.warning(message)
        cursor = json.dumps(
            {**{k: v for k, v in seen.items() if k in current}, **{k: current[k] for k in new + changed}},
            sort_keys=True,
        )
        if not new and not changed:
            return dg.SensorResult(skip_reason="; ".join(problems) or "no new or changed caption files", cursor=cursor)
        selection = language_keys if _head_ready(context.instance, lane) else language_keys[:2]
        return dg.SensorResult(
            run_requests=[
                dg.RunRequest(
                    run_key=f"{language}:{current[language][:16]}", partition_key=language, asset_selection=selection
                )
                for language in new + changed
            ],
            dynamic_partitions_requests=[lane.partitions.build_add_request(new)] if new else [],
            cursor=cursor,
        )

    @dg.schedule(
        name=f"{lane.name}_reevaluate_all_languages",
        job=job,
        cron_schedule=reevaluation_cron(),
        default_status=dg.DefaultScheduleStatus.RUNNING,
    )
    def reevaluate_all_languages(context: dg.ScheduleEvaluationContext):
        """Re-evaluates every language partition of this dataset (one run each) with the current head."""
        if not _head_ready(context.instance, lane):
            return dg.SkipReason(f"no trained {lane.name}/projection_head and {lane.name}/image_index yet")
        languages = sorted(context.instance.get_dynamic_partitions(lane.partitions.name))
        stamp = context.scheduled_execution_time.isoformat()
        return [dg.RunRequest(run_key=f"{language}:{stamp}", partition_key=language) for language in languages]

    # Dagster's default automation sensor starts stopped; this one runs, so a head retrained from the launchpad
    # brings its index and metrics up to date (their eager conditions) without the user knowing the graph.
    follow_head = dg.AutomationConditionSensorDefinition(
        f"{lane.name}_follow_head",
        target=dg.AssetSelection.assets(*lane.keys(("image_index", "retrieval_metrics"))),
        default_status=dg.DefaultSensorStatus.RUNNING,
        minimum_interval_seconds=15,
        description=f"Rebuilds {lane.name}/image_index and re-evaluates every language after the head or embeddings change.",
    )
    return [language_files_sensor, follow_head], reevaluate_all_languages, job

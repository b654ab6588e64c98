import dagster as dg

from xlr_pipeline.core.datasets import DatasetError
from xlr_pipeline.defs.partitions import language_partitions
from xlr_pipeline.defs.resources import XlrSettings


def language_partition_requests(settings: XlrSettings, existing: set[str]) -> tuple[list[str], list[str]]:
    """(languages with a caption file but no partition yet, problems found while scanning)."""
    try:
        files, problems = settings.dataset_spec().scan_caption_files()
    except DatasetError as error:
        return [], [str(error)]
    return sorted(set(files) - existing), problems


@dg.sensor(minimum_interval_seconds=30, default_status=dg.DefaultSensorStatus.RUNNING)
def language_files_sensor(context: dg.SensorEvaluationContext, settings: XlrSettings) -> dg.SensorResult | dg.SkipReason:
    """Adds a `languages` partition for every caption file in the dataset's caption folder."""
    existing = set(context.instance.get_dynamic_partitions(language_partitions.name))
    new, problems = language_partition_requests(settings, existing)
    if not new:
        return dg.SkipReason("; ".join(problems) or "no new caption files")
    if problems:
        context.log.warning("; ".join(problems))
    return dg.SensorResult(dynamic_partitions_requests=[language_partitions.build_add_request(new)])

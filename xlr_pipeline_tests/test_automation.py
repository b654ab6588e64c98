"""The language-file sensor, through Dagster's sensor testing API."""

import dagster as dg

from xlr_pipeline.defs.automation import language_files_sensor
from xlr_pipeline.defs.partitions import language_partitions
from xlr_pipeline_tests.conftest import SUBSET_LANGUAGES, settings_for


def _tick(instance, data_dir):
    context = dg.build_sensor_context(instance=instance, resources={"settings": settings_for(data_dir)})
    return language_files_sensor(context)


def test_sensor_adds_a_partition_per_caption_file_once(fresh_data_dir, instance):
    result = _tick(instance, fresh_data_dir)
    (request,) = result.dynamic_partitions_requests
    assert request.partitions_def_name == language_partitions.name
    assert sorted(request.partition_keys) == sorted(SUBSET_LANGUAGES)
    instance.add_dynamic_partitions(language_partitions.name, list(request.partition_keys))
    assert isinstance(_tick(instance, fresh_data_dir), dg.SkipReason)


def test_sensor_reads_aliases_and_reports_unknown_codes(fresh_data_dir, instance):
    instance.add_dynamic_partitions(language_partitions.name, list(SUBSET_LANGUAGES))
    captions = fresh_data_dir / "emoji_small" / "captions"
    (captions / "kr.tsv").write_bytes((captions / "de.tsv").read_bytes())
    (captions / "xx.tsv").write_bytes((captions / "de.tsv").read_bytes())
    result = _tick(instance, fresh_data_dir)
    assert list(result.dynamic_partitions_requests[0].partition_keys) == ["ko"]
    (captions / "kr.tsv").unlink()
    skip = _tick(instance, fresh_data_dir)
    assert isinstance(skip, dg.SkipReason) and "unknown language code 'xx'" in skip.skip_message and "xx.tsv" in skip.skip_message

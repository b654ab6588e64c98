"""Shards: stable hash buckets whose union is the unsharded table — image shards embedded by concurrent runs,
caption shards by parallel steps of one run."""

import os

import dagster as dg
import polars as pl
import pytest

from xlr_pipeline.core.data.datasets import DatasetError, DatasetSpec
from xlr_pipeline.core.data.image_sources import ImageSet
from xlr_pipeline.core.data.shards import parse_shard_key, shard_indices, shard_keys, shard_of
from xlr_pipeline.core.models.embeddings import union_of_shards
from xlr_pipeline.core.models.threads import available_cores
from xlr_pipeline.defs.embed import CAPTION_SHARDS, caption_hashes
from xlr_pipeline.runner import run_pipeline
from xlr_pipeline_tests.conftest import DATASET, location_job, make_emoji_subset, outputs_for, pipeline_for

pytestmark = pytest.mark.slow  # runs shards in processes

IMAGE_STAGES = frozenset({"images", "image_embedding_shards", "image_embeddings"})


def test_shards_are_stable_hash_buckets_that_hold_every_image_once():
    ids = [f"img{i}" for i in range(1000)]
    image_set = ImageSet(pl.DataFrame({"image_id": ids, "status": "ok"}))
    parts = image_set.split(4)
    assert sorted(id_ for part in parts for id_ in part.frame["image_id"]) == sorted(ids)  # each image once
    assert all(180 < part.frame.height < 320 for part in parts)  # about a quarter each
    assert all(
        part.frame["image_id"].to_list() == sorted(part.frame["image_id"], key=ids.index) for part in parts
    )  # in order
    assert [shard_indices(part.frame["image_id"].to_list(), 4) for part in parts][2] == [2] * parts[2].frame.height
    assert image_set.split(1)[0] is image_set
    # sha256 of the id, not Python's salted hash(): the same buckets in every process and on every machine
    assert [shard_of(f"img{i}", 4) for i in range(8)] == [0, 3, 1, 0, 1, 0, 3, 0]
    assert shard_keys(2) == ["000-of-002", "001-of-002"] and parse_shard_key("003-of-004") == (3, 4)
    for bad in ("4-of-4", "x-of-2", "000"):
        with pytest.raises(ValueError, match="is not a shard key"):
            parse_shard_key(bad)


@pytest.mark.parametrize("field", ["image_shards", "caption_shards"])
@pytest.mark.parametrize("value", ["0", "-1", '"4"', "2.5", "true", "5000"])
def test_a_bad_shard_count_is_refused_naming_the_file(tmp_path, field, value):
    dataset = make_emoji_subset(tmp_path, n_train=2, n_test=2)
    spec_file = dataset / "dataset.toml"
    with open(spec_file, "a", encoding="utf-8") as spec:
        spec.write(f"{field} = {value}\n")
    with pytest.raises(DatasetError, match=rf"{spec_file}: {field} must be a whole number from 1 to 4096"):
        DatasetSpec.load(dataset)


def _image_stages(root, shards: int, workers: int, step_threads: int = 0) -> pl.DataFrame:
    make_emoji_subset(root, n_train=60, n_test=20)
    with open(root / DATASET / "dataset.toml", "a", encoding="utf-8") as spec:
        spec.write(f"image_shards = {shards}\n")
    with dg.instance_for_test() as instance:
        pipeline = pipeline_for(root, step_threads=step_threads)
        report = run_pipeline(instance, pipeline, [DATASET], stages=IMAGE_STAGES, workers=workers, log=lambda _: None)
        executed = [partition for asset, partition, _ in report.executed if asset.endswith("/image_embedding_shards")]
        assert executed == (shard_keys(shards) if shards > 1 else [None])  # one shard: an unpartitioned asset
        records = instance.fetch_materializations(dg.AssetKey([DATASET, "image_embedding_shards"]), limit=10).records
        threads = {record.asset_materialization.metadata["step_threads"].value for record in records}
    assert threads == {max(1, (step_threads or available_cores()) // workers)}  # concurrent shard runs share the cores
    return pl.read_parquet(outputs_for(root).image_embeddings_path)


def test_two_shards_in_two_processes_give_the_unsharded_table(tmp_path):
    unsharded = _image_stages(tmp_path / "one_shard", shards=1, workers=1)
    half = max(1, available_cores() // 2)
    sequential = _image_stages(tmp_path / "two_shards_one_process", shards=2, workers=1, step_threads=half)
    concurrent = _image_stages(tmp_path / "two_shards_two_processes", shards=2, workers=2)
    # The same shards with the same thread count embed to the same bytes whether their runs share a process or not.
    assert sequential.height == 80
    assert (
        outputs_for(tmp_path / "two_shards_one_process").image_embeddings_path.read_bytes()
        == outputs_for(tmp_path / "two_shards_two_processes").image_embeddings_path.read_bytes()
    )
    assert concurrent.height == 80 and concurrent.equals(unsharded)  # other batches, same bits: each image alone


def test_shards_that_do_not_match_the_images_are_refused_and_nothing_is_overwritten(tmp_path):
    _image_stages(tmp_path, shards=2, workers=1)
    outputs = outputs_for(tmp_path)
    before = outputs.image_embeddings_path.read_bytes()
    shard_file = outputs.image_embedding_shard_path("001-of-002")
    shard = pl.read_parquet(shard_file)
    shard.head(shard.height - 1).write_parquet(shard_file)  # one image's vector lost
    pipeline = pipeline_for(tmp_path)
    with dg.instance_for_test() as instance:
        result = dg.materialize(
            pipeline.assets(),
            selection=[pipeline.lane(DATASET).key("image_embeddings")],
            instance=instance,
            raise_on_error=False,
        )
    message = next(
        e.step_failure_data.error.message for e in result.all_events if e.event_type == dg.DagsterEventType.STEP_FAILURE
    )
    assert "the image shards (2 files, 79 rows) do not match the 80 usable images" in message
    assert "materialize image_embedding_shards again" in message
    assert outputs.image_embeddings_path.read_bytes() == before


TEXT_EMBEDDINGS = dg.AssetKey([DATASET, "text_embeddings"])
CAPTION_STAGES = frozenset({"captions", "text_embeddings"})


def text_embeddings_job() -> dg.JobDefinition:
    return location_job("text_embeddings", TEXT_EMBEDDINGS)


def _caption_subset(root, shards: int):
    make_emoji_subset(root, n_train=60, n_test=20)
    with open(root / DATASET / "dataset.toml", "a", encoding="utf-8") as spec:
        spec.write(f"caption_shards = {shards}\n")


def test_caption_shards_run_as_parallel_steps_and_give_the_unsharded_table(tmp_path, monkeypatch):
    unsharded_dir, sharded_dir = tmp_path / "unsharded", tmp_path / "sharded"
    _caption_subset(unsharded_dir, shards=1)
    with dg.instance_for_test() as instance:
        run_pipeline(instance, pipeline_for(unsharded_dir), [DATASET], stages=CAPTION_STAGES, log=lambda _: None)

    # Two caption shards of one language as two steps of one run, on the multiprocess executor: two processes.
    _caption_subset(sharded_dir, shards=2)
    monkeypatch.setenv("XLR_DATA_DIR", str(sharded_dir))
    monkeypatch.setenv("XLR_EXECUTOR", "multiprocess")
    (tmp_path / "dagster_home").mkdir()  # the step processes reach the run through a persistent instance
    with dg.instance_for_test(temp_dir=str(tmp_path / "dagster_home")) as instance:
        pipeline = pipeline_for(sharded_dir)
        run_pipeline(instance, pipeline, [DATASET], stages=frozenset({"captions"}), log=lambda _: None)
        result = dg.execute_job(
            dg.reconstructable(text_embeddings_job), instance, tags={"dagster/partition": "de"}, raise_on_error=False
        )
        assert result.success
        _assert_shards_ran_in_two_processes(result.all_events)
        materialization = instance.fetch_materializations(TEXT_EMBEDDINGS, limit=1).records[0].asset_materialization
        assert materialization.partition == "de" and materialization.metadata["shards"].value == 2
        checks = [
            e.asset_check_evaluation_data
            for e in result.all_events
            if e.event_type == dg.DagsterEventType.ASSET_CHECK_EVALUATION
        ]
        assert {check.check_name for check in checks} == {"vectors_valid", "row_count_matches_source"} and all(
            c.passed for c in checks
        )
        # The same asset and lineage as unsharded: the other languages are missing, `de` is fresh; `xlr run
        # --workers 2` runs each language's shard steps in two processes too.
        rerun = run_pipeline(
            instance, pipeline, [DATASET], stages=CAPTION_STAGES, include_stale=True, workers=2, log=lambda _: None
        )
        assert sorted(partition for _, partition, _ in rerun.executed) == ["en", "ja"]
        for run in instance.get_runs(limit=2):
            _assert_shards_ran_in_two_processes(
                [entry.dagster_event for entry in instance.all_logs(run.run_id) if entry.dagster_event]
            )

    outputs = outputs_for(sharded_dir)
    assert all(outputs.text_embedding_shard_path("de", shard).is_file() for shard in shard_keys(2))
    sharded = pl.read_parquet(outputs.text_embeddings_path("de"))
    unsharded = pl.read_parquet(outputs_for(unsharded_dir).text_embeddings_path("de"))
    assert sharded.height == unsharded.height > 0 and sharded.equals(unsharded)  # other batches, same bits


def _assert_shards_ran_in_two_processes(events) -> None:
    pids = {event.step_key: event.pid for event in events if event.is_step_start and "embed_shard" in event.step_key}
    assert sorted(key.rsplit("[", 1)[1] for key in pids) == ["000_of_002]", "001_of_002]"]
    assert len(set(pids.values()) | {os.getpid()}) == 3  # each shard in its own process


def test_caption_shards_that_do_not_cover_the_captions_are_refused(tmp_path):
    _caption_subset(tmp_path, shards=2)
    with dg.instance_for_test() as instance:
        run_pipeline(instance, pipeline_for(tmp_path), [DATASET], stages=CAPTION_STAGES, log=lambda _: None)
    outputs = outputs_for(tmp_path)
    captions = pl.read_parquet(outputs.captions_path("de")).filter(pl.col("split") == "test")
    paths = [outputs.text_embedding_shard_path("de", shard) for shard in shard_keys(2)]
    pipeline = pipeline_for(tmp_path)
    model = pipeline.lane(DATASET).settings(pipeline.settings).text_model
    assert union_of_shards(caption_hashes(captions), paths, model, CAPTION_SHARDS).height == captions.height
    with pytest.raises(
        DatasetError,
        match=rf"do not match the {captions.height} needed captions embedded by another:model \(e\.g\. \['",
    ):
        union_of_shards(
            caption_hashes(captions), paths, "another:model", CAPTION_SHARDS
        )  # every row, but from another model
    shard = pl.read_parquet(paths[1])
    shard.head(shard.height - 1).write_parquet(paths[1])  # one caption's vector lost
    with pytest.raises(
        DatasetError,
        match=rf"the caption shards \(2 files, {captions.height - 1} rows\) do not match the {captions.height} needed",
    ):
        union_of_shards(caption_hashes(captions), paths, model, CAPTION_SHARDS)


def test_more_caption_shards_than_captions_leaves_empty_shards_and_a_whole_table(tmp_path):
    make_emoji_subset(tmp_path, n_train=2, n_test=2, languages=("en", "de"))
    with open(tmp_path / DATASET / "dataset.toml", "a", encoding="utf-8") as spec:
        spec.write("caption_shards = 8\n")
    with dg.instance_for_test() as instance:
        run_pipeline(instance, pipeline_for(tmp_path), [DATASET], stages=CAPTION_STAGES, log=lambda _: None)
    outputs = outputs_for(tmp_path)
    sizes = [pl.read_parquet(outputs.text_embedding_shard_path("de", shard)).height for shard in shard_keys(8)]
    table = pl.read_parquet(outputs.text_embeddings_path("de"))
    assert sum(sizes) == table.height == 2 and sizes.count(0) >= 6  # at most two shards hold de's two test captions
    test_captions = pl.read_parquet(outputs.captions_path("de")).filter(pl.col("split") == "test")
    assert table["caption_id"].to_list() == test_captions["caption_id"].to_list()  # the captions' order

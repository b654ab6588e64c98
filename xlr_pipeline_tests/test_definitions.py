"""Guards on the asset graph as a whole: one lane per dataset, built from its declaration."""

import dagster as dg
import pytest

from xlr_pipeline.core.data.datasets import DatasetError
from xlr_pipeline.defs.lane import STAGE_TAG
from xlr_pipeline.defs.pipeline import DECLARATIONS, build_pipeline
from xlr_pipeline.defs.resources import XlrSettings
from xlr_pipeline_tests.conftest import DATASET, make_emoji_subset, pipeline_for

SHIPPED_PIPELINE = build_pipeline(XlrSettings())


def test_the_code_location_loads_a_lane_per_shipped_dataset():
    from xlr_pipeline.definitions import defs

    graph = defs().get_repository_def().asset_graph
    assert {key.path[0] for key in graph.get_all_asset_keys()} == {"emoji_cldr", "xtd10"}


CHAIN = {
    "images",
    "captions",
    "image_embedding_shards",
    "image_embeddings",
    "text_embeddings",
    "projection_head",
    "image_index",
    "retrieval_metrics",
}


def test_every_asset_is_built_from_its_one_declaration():
    """Code version, stage (and so group) come from the declaration beside the asset; the lists the runner, the
    staleness walk and the browser test use are read off the graph built from them."""
    graph = SHIPPED_PIPELINE.definitions.get_repository_def().asset_graph
    for key in graph.get_all_asset_keys():
        declaration = SHIPPED_PIPELINE.declaration(key)
        node = graph.get(key)
        assert (node.code_version, node.tags[STAGE_TAG]) == (declaration.code_version, declaration.stage)
        assert node.group_name == declaration.asset_args(SHIPPED_PIPELINE.lane_of(key))["group_name"]
    for dataset in SHIPPED_PIPELINE.lanes:
        assert {key.path[-1] for key in graph.get_all_asset_keys() if key.path[0] == dataset} == set(DECLARATIONS)
    assert SHIPPED_PIPELINE.stage_assets("run") == CHAIN
    assert SHIPPED_PIPELINE.stage_assets("grid") == {
        "text_augmentations",
        "text_encoder_finetuning",
        "experiment_grid",
        "grid_report",
        "target_diagnostics",
    }
    assert SHIPPED_PIPELINE.stage_assets("alignment", "tagging") == {"text_alignment", "tags", "tagging_report"}
    lane = SHIPPED_PIPELINE.lane("emoji_cldr")
    assert {key.path[-1] for key in SHIPPED_PIPELINE.language_keys(lane)} == {
        "captions",
        "text_embeddings",
        "retrieval_metrics",
    }


@pytest.mark.parametrize("dataset", ["emoji_cldr", "xtd10"])
def test_each_lane_has_the_expected_graph(dataset):
    graph = SHIPPED_PIPELINE.definitions.get_repository_def().asset_graph
    lane = SHIPPED_PIPELINE.lane(dataset)
    groups = {key.path[-1]: graph.get(key).group_name for key in graph.get_all_asset_keys() if key.path[0] == dataset}
    assert {name for name, group in groups.items() if group == dataset} == CHAIN
    assert {
        name for name, group in groups.items() if group == f"{dataset}_experiments"
    } == SHIPPED_PIPELINE.stage_assets("grid", "alignment")
    assert {name for name, group in groups.items() if group == f"{dataset}_tagging"} == SHIPPED_PIPELINE.stage_assets(
        "tagging"
    )

    def parents(asset: str) -> set[str]:
        return {p.to_user_string() for p in graph.get(lane.key(asset)).parent_keys}

    assert parents("text_embeddings") == {f"{dataset}/captions"}
    assert parents("image_embedding_shards") == {f"{dataset}/images"}
    assert parents("image_embeddings") == {f"{dataset}/image_embedding_shards"}
    # Only a COCO-sourced dataset's captions read the images asset (its English training captions come from it).
    assert parents("captions") == ({f"{dataset}/images"} if dataset == "xtd10" else set())
    assert parents("projection_head") == {
        f"{dataset}/captions",
        f"{dataset}/image_embeddings",
        f"{dataset}/text_embeddings",
    }
    assert parents("retrieval_metrics") == {
        f"{dataset}/{asset}" for asset in ("text_embeddings", "image_embeddings", "projection_head", "image_index")
    }
    for asset in DECLARATIONS:
        node = graph.get(lane.key(asset))
        assert node.code_version and node.description
        if asset == "image_embedding_shards":  # the shipped datasets declare one shard: not partitioned
            assert lane.spec.image_shards == 1 and node.assets_def.partitions_def is None
        elif node.assets_def.partitions_def is not None:
            assert node.assets_def.partitions_def.name == f"{dataset}_languages"
    checked = {key.asset_key.path[-1] for key in graph.asset_check_keys if key.asset_key.path[0] == dataset}
    assert checked == CHAIN


def test_head_depends_on_the_training_language_partition_only(tmp_path):
    make_emoji_subset(tmp_path, n_train=4, n_test=4)
    spec_file = tmp_path / DATASET / "dataset.toml"
    spec_file.write_text(
        spec_file.read_text("utf-8").replace('train_language = "en"', 'train_language = "de"'), "utf-8"
    )
    for pipeline, language in ((SHIPPED_PIPELINE, "en"), (pipeline_for(tmp_path), "de")):
        name = "emoji_cldr" if pipeline is SHIPPED_PIPELINE else DATASET
        head = pipeline.definitions.get_repository_def().assets_defs_by_key[dg.AssetKey([name, "projection_head"])]
        for parent in ("text_embeddings", "captions"):  # the captions: their keywords
            mapping = head.get_partition_mapping(dg.AssetKey([name, parent]))
            assert isinstance(mapping, dg.SpecificPartitionsPartitionMapping)
            assert list(mapping.partition_keys) == [language]


def test_every_lane_has_its_sensor_schedule_and_job():
    repository = SHIPPED_PIPELINE.definitions.get_repository_def()
    for dataset in ("emoji_cldr", "xtd10"):
        assert repository.get_sensor_def(f"{dataset}_language_files")
        assert (
            repository.get_schedule_def(f"{dataset}_reevaluate_all_languages").job_name
            == f"{dataset}_reevaluate_language"
        )


def test_a_new_dataset_folder_becomes_a_lane_without_code_changes(tmp_path):
    make_emoji_subset(tmp_path, n_train=4, n_test=4)
    before = set(pipeline_for(tmp_path).lanes)
    make_emoji_subset(tmp_path, n_train=4, n_test=4, name="second_set")
    extra_root = tmp_path / "elsewhere"
    make_emoji_subset(extra_root, n_train=4, n_test=4, name="third_set")
    assert before == {DATASET}
    assert set(pipeline_for(tmp_path).lanes) == {DATASET, "second_set"}
    assert set(pipeline_for(tmp_path, dataset_roots=[str(extra_root)]).lanes) == {DATASET, "second_set", "third_set"}


def test_two_datasets_with_one_name_are_refused_naming_both_files(tmp_path):
    make_emoji_subset(tmp_path, n_train=4, n_test=4)
    make_emoji_subset(tmp_path / "other", n_train=4, n_test=4)
    with pytest.raises(DatasetError, match=rf"dataset name '{DATASET}' is already used by .*{DATASET}/dataset.toml"):
        pipeline_for(tmp_path, dataset_roots=[str(tmp_path / "other")])

"""Guards on the asset graph as a whole."""

import dagster as dg

from xlr_pipeline.definitions import defs
from xlr_pipeline.defs.versions import ASSET_GROUP, EXPERIMENT_GROUP


def test_definitions_load_with_the_expected_graph():
    graph = defs.get_repository_def().asset_graph
    groups = {key.to_user_string(): graph.get(key).group_name for key in graph.get_all_asset_keys()}
    chain = {"captions", "image_embeddings", "text_embeddings", "projection_head", "image_index", "retrieval_metrics"}
    assert {name for name, group in groups.items() if group == ASSET_GROUP} == chain
    assert {name for name, group in groups.items() if group == EXPERIMENT_GROUP} == {
        "text_augmentations", "experiment_grid", "grid_report"
    }
    parents = {key.to_user_string(): {p.to_user_string() for p in graph.get(key).parent_keys} for key in graph.get_all_asset_keys()}
    assert parents["text_embeddings"] == {"captions"}
    assert parents["projection_head"] == {"image_embeddings", "text_embeddings"}
    assert parents["retrieval_metrics"] == {"text_embeddings", "image_embeddings", "projection_head", "image_index"}
    for key in graph.get_all_asset_keys():
        node = graph.get(key)
        assert node.code_version and node.description


def test_head_depends_on_the_english_partition_only():
    head = next(a for a in defs.assets if dg.AssetKey("projection_head") in a.keys)
    mapping = head.get_partition_mapping(dg.AssetKey("text_embeddings"))
    assert isinstance(mapping, dg.SpecificPartitionsPartitionMapping) and list(mapping.partition_keys) == ["en"]


def test_every_chain_asset_has_checks():
    checked = {key.asset_key.to_user_string() for key in defs.get_repository_def().asset_graph.asset_check_keys}
    assert checked == {"captions", "image_embeddings", "text_embeddings", "projection_head", "image_index", "retrieval_metrics"}

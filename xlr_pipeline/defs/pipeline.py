"""The code location for one settings object: a lane per dataset (the lane factory) merged into one `Pipeline`."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import dagster as dg

from xlr_pipeline.core.data.datasets import DatasetSpec, discover_datasets
from xlr_pipeline.defs.alignment import TEXT_ALIGNMENT, build_text_alignment
from xlr_pipeline.defs.automation import build_automation
from xlr_pipeline.defs.diagnostics import TARGET_DIAGNOSTICS, build_target_diagnostics
from xlr_pipeline.defs.embed import (
    IMAGE_EMBEDDING_SHARDS,
    IMAGE_EMBEDDINGS,
    TEXT_EMBEDDINGS,
    build_image_embedding_shards,
    build_image_embeddings,
    build_text_embeddings,
)
from xlr_pipeline.defs.evaluate import RETRIEVAL_METRICS, build_retrieval_metrics
from xlr_pipeline.defs.experiments import (
    EXPERIMENT_GRID,
    GRID_REPORT,
    TEXT_AUGMENTATIONS,
    TEXT_ENCODER_FINETUNING,
    build_experiments,
)
from xlr_pipeline.defs.images import IMAGES, build_images
from xlr_pipeline.defs.index import IMAGE_INDEX, build_image_index
from xlr_pipeline.defs.ingest import CAPTIONS, build_captions
from xlr_pipeline.defs.lane import STAGE_TAG, AssetDeclaration, Lane, Stage, asset_name, language_asset_keys
from xlr_pipeline.defs.resources import XlrSettings
from xlr_pipeline.defs.tagging import TAGGING_REPORT, TAGS, build_tagging
from xlr_pipeline.defs.train import PROJECTION_HEAD, build_projection_head

# Every asset's declaration (beside its definition), by name: what the staleness walk asks for its configuration.
DECLARATIONS: dict[str, AssetDeclaration] = {
    declaration.name: declaration
    for declaration in (
        IMAGES,
        CAPTIONS,
        IMAGE_EMBEDDING_SHARDS,
        IMAGE_EMBEDDINGS,
        TEXT_EMBEDDINGS,
        PROJECTION_HEAD,
        IMAGE_INDEX,
        RETRIEVAL_METRICS,
        TEXT_AUGMENTATIONS,
        TEXT_ENCODER_FINETUNING,
        EXPERIMENT_GRID,
        GRID_REPORT,
        TARGET_DIAGNOSTICS,
        TEXT_ALIGNMENT,
        TAGS,
        TAGGING_REPORT,
    )
}


def lane_definitions(lane: Lane) -> dg.Definitions:
    images = build_images(lane)
    captions = build_captions(lane, images)
    image_embedding_shards = build_image_embedding_shards(lane, images)
    image_embeddings = build_image_embeddings(lane, image_embedding_shards)
    text_embeddings = build_text_embeddings(lane, captions)
    projection_head = build_projection_head(lane, captions, image_embeddings, text_embeddings)
    image_index = build_image_index(lane, projection_head, image_embeddings)
    code_versions = {name: declaration.code_version for name, declaration in DECLARATIONS.items()}
    retrieval_metrics = build_retrieval_metrics(
        lane, code_versions, text_embeddings, image_embeddings, projection_head, image_index
    )
    experiments = [
        *build_experiments(lane, code_versions, captions, image_embeddings, text_embeddings),
        build_target_diagnostics(lane, captions, image_embeddings, text_embeddings),
        build_text_alignment(lane),
    ]
    tagging = build_tagging(lane, captions, image_embeddings, text_embeddings, projection_head)
    assets = [
        images,
        captions,
        image_embedding_shards,
        image_embeddings,
        text_embeddings,
        projection_head,
        image_index,
        retrieval_metrics,
        *experiments,
        *tagging,
    ]
    sensors, schedule, job = build_automation(lane, language_asset_keys(assets, lane))
    return dg.Definitions(
        assets=assets,
        sensors=sensors,
        schedules=[schedule],
        jobs=[job],
    )


@dataclass(frozen=True)
class Pipeline:
    """The code location for one settings object: a lane per discovered dataset, merged into one Definitions."""

    settings: XlrSettings
    lanes: dict[str, Lane]
    definitions: dg.Definitions
    broken: dict[str, str] = field(default_factory=dict)  # declaration file → why it has no lane

    def lane(self, name: str) -> Lane:
        if name not in self.lanes:
            roots = ", ".join(str(root) for root in self.settings.roots())
            unusable = f"; unusable declarations: {'; '.join(self.broken.values())}" if self.broken else ""
            raise KeyError(f"no dataset named {name!r} under {roots}; datasets: {sorted(self.lanes)}{unusable}")
        return self.lanes[name]

    def lane_of(self, key: dg.AssetKey) -> Lane:
        return self.lanes[key.path[0]]

    def assets(self) -> list[dg.AssetsDefinition]:
        """Every lane's assets with the settings resource bound, ready for `dg.materialize`."""
        return list(dict.fromkeys(self.definitions.get_repository_def().assets_defs_by_key.values()))

    def declaration(self, key: dg.AssetKey) -> AssetDeclaration:
        return DECLARATIONS[asset_name(key)]

    def stage_assets(self, *stages: Stage) -> frozenset[str]:
        """Names of the assets that the given commands bring up to date, read off the graph's stage tags."""
        graph = self.definitions.get_repository_def().asset_graph
        return frozenset(
            asset_name(key) for key in graph.get_all_asset_keys() if graph.get(key).tags.get(STAGE_TAG) in stages
        )

    def language_keys(self, lane: Lane) -> list[dg.AssetKey]:
        """What a new language of `lane` runs: its chain assets partitioned by language."""
        return language_asset_keys(self.assets(), lane)

    def op_name(self, key: dg.AssetKey) -> str:
        """The op that materializes `key`: what run config (e.g. a projection_head Config) is keyed by."""
        return self.definitions.get_repository_def().assets_defs_by_key[key].node_def.name


def build_pipeline(
    settings: XlrSettings,
    specs: list[DatasetSpec] | None = None,
    executor: dg.ExecutorDefinition = dg.in_process_executor,
) -> Pipeline:
    """Lanes for `specs`, or for every dataset found under the settings' roots; runs use `executor`
    (`defs/executors.py`). A broken declaration gets no lane and is logged and kept in `Pipeline.broken`: the
    other datasets still load."""
    broken: dict[str, str] = {}
    found = discover_datasets(settings.roots(), broken) if specs is None else specs
    for message in broken.values():
        logging.getLogger("xlr_pipeline").warning("dataset skipped: %s", message)
    lanes = {spec.name: Lane.of(spec) for spec in found}
    definitions = dg.Definitions.merge(
        *(lane_definitions(lane) for lane in lanes.values()),
        dg.Definitions(resources={"settings": settings}, executor=executor),
    )
    return Pipeline(settings, lanes, definitions, broken)

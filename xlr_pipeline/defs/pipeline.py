"""The code location for one settings object: a lane per dataset (the lane factory) merged into one `Pipeline`."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import dagster as dg

from xlr_pipeline.core.data.datasets import DatasetSpec, discover_datasets
from xlr_pipeline.defs.alignment import build_text_alignment
from xlr_pipeline.defs.automation import build_automation
from xlr_pipeline.defs.embed import build_image_embedding_shards, build_image_embeddings, build_text_embeddings
from xlr_pipeline.defs.evaluate import build_retrieval_metrics
from xlr_pipeline.defs.experiments import build_experiments
from xlr_pipeline.defs.images import build_images
from xlr_pipeline.defs.index import build_image_index
from xlr_pipeline.defs.ingest import build_captions
from xlr_pipeline.defs.lane import Lane
from xlr_pipeline.defs.resources import XlrSettings
from xlr_pipeline.defs.tagging import build_tagging
from xlr_pipeline.defs.train import build_projection_head


def lane_definitions(lane: Lane) -> dg.Definitions:
    images = build_images(lane)
    captions = build_captions(lane, images)
    image_embedding_shards = build_image_embedding_shards(lane, images)
    image_embeddings = build_image_embeddings(lane, image_embedding_shards)
    text_embeddings = build_text_embeddings(lane, captions)
    projection_head = build_projection_head(lane, image_embeddings, text_embeddings)
    image_index = build_image_index(lane, projection_head, image_embeddings)
    retrieval_metrics = build_retrieval_metrics(lane, text_embeddings, image_embeddings, projection_head, image_index)
    experiments = [*build_experiments(lane, captions, image_embeddings, text_embeddings), build_text_alignment(lane)]
    tagging = build_tagging(lane, captions, image_embeddings, text_embeddings, projection_head)
    sensors, schedule, job = build_automation(lane)
    return dg.Definitions(
        assets=[
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
        ],
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

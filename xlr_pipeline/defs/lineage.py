"""What each asset's output depends on besides code: its configuration and the inputs it read.

Every asset records both in its materialization metadata (`xlr/config`, `xlr/inputs`); the staleness
walk (`xlr_pipeline/staleness.py`) recomputes the current values with the same functions and compares.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import dagster as dg

from xlr_pipeline.core.datasets import ImageRecord
from xlr_pipeline.core.storage import combined_hash, sha256_file
from xlr_pipeline.defs.lane import Lane
from xlr_pipeline.defs.resources import XlrSettings

CONFIG_KEY = "xlr/config"
INPUTS_KEY = "xlr/inputs"
OUTPUTS_KEY = "xlr/outputs"
# A partition's own content version. Dagster's data version is one per materialization event batch, shared by
# every partition of a ranged run; consumers record and compare this one.
VERSION_KEY = "xlr/version"


def _captions_config(settings: XlrSettings, lane: Lane, partition: str | None, head_config: dict) -> dict:
    spec = lane.spec
    return {
        "dataset": spec.name,
        "source_sha256": sha256_file(spec.caption_file(partition)),
        "image_list_sha256": sha256_file(spec.image_list_path),
    }


def image_set_config(dataset: str, image_model: str, records: list[ImageRecord], file_hashes: list[str]) -> dict:
    """The image side's configuration, from file hashes the caller already has."""
    return {
        "dataset": dataset,
        "image_model": image_model,
        "images_sha256": combined_hash(f"{r.image_id}:{r.split}:{digest}" for r, digest in zip(records, file_hashes)),
    }


def _image_embeddings_config(settings: XlrSettings, lane: Lane, partition: str | None, head_config: dict) -> dict:
    records = lane.spec.image_records()
    paths = lane.spec.image_paths(records)
    return image_set_config(lane.name, settings.image_model, records, [sha256_file(paths[r.image_id]) for r in records])


def _text_model_config(settings: XlrSettings, lane: Lane, partition: str | None, head_config: dict) -> dict:
    """Text embeddings and the grid's augmentations: the dataset, its training language and the text model."""
    return {"dataset": lane.name, "train_language": lane.train_language, "text_model": settings.text_model}


def _head_config(settings: XlrSettings, lane: Lane, partition: str | None, head_config: dict) -> dict:
    return {"train_language": lane.train_language, **head_config}


def _tags_config(settings: XlrSettings, lane: Lane, partition: str | None, head_config: dict) -> dict:
    declared = lane.spec.tag_file(partition) if partition else None
    return {"text_model": settings.text_model, "tag_file_sha256": sha256_file(declared) if declared else ""}


def _no_config(settings: XlrSettings, lane: Lane, partition: str | None, head_config: dict) -> dict:
    return {}


CURRENT_CONFIG: dict[str, Callable[[XlrSettings, Lane, str | None, dict], dict]] = {
    "captions": _captions_config,
    "image_embeddings": _image_embeddings_config,
    "text_embeddings": _text_model_config,
    "projection_head": _head_config,
    "image_index": _no_config,
    "retrieval_metrics": _no_config,
    "text_augmentations": _text_model_config,
    "experiment_grid": _text_model_config,
    "grid_report": _no_config,
    "tags": _tags_config,
    "tagging_report": _text_model_config,
}


def lineage_metadata(
    config: dict, inputs: dict[str, str], outputs: Sequence[Path], data_dir: Path
) -> dict[str, dg.MetadataValue]:
    """`inputs` maps `asset` or `asset[partition]` to the data version of what was actually read; `outputs`
    are the files written (recorded relative to the data dir, with their content version) so that a deleted
    or altered output makes the asset stale."""
    return {
        CONFIG_KEY: dg.MetadataValue.json(config),
        INPUTS_KEY: dg.MetadataValue.json(inputs),
        OUTPUTS_KEY: dg.MetadataValue.json({path.relative_to(data_dir).as_posix(): file_version(path) for path in outputs}),
    }


def input_name(asset: str, partition: str | None = None) -> str:
    return f"{asset}[{partition}]" if partition else asset


def file_version(path: Path) -> str:
    """The data version an asset reports for a file it wrote (and a consumer records for a file it read)."""
    return sha256_file(path)[:16]

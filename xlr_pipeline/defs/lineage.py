"""What each asset's output depends on besides code: its configuration and the inputs it read.

Every asset records both in its materialization metadata (`xlr/config`, `xlr/inputs`); the staleness
walk (`xlr_pipeline/staleness.py`) recomputes the current values with the same functions and compares.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import dagster as dg

from xlr_pipeline.core.data.datasets import DatasetError
from xlr_pipeline.core.data.image_sources import ContentHashes, folders_fingerprint, locate_images
from xlr_pipeline.core.data.readers import ImagesNotAvailable
from xlr_pipeline.core.models.encoders import backend_of
from xlr_pipeline.core.storage.locations import Location, is_remote, sha256_file, storage_location
from xlr_pipeline.defs.lane import Lane
from xlr_pipeline.defs.resources import XlrSettings

CONFIG_KEY = "xlr/config"
INPUTS_KEY = "xlr/inputs"
OUTPUTS_KEY = "xlr/outputs"
# The warehouse rows an evaluation wrote: a results file without them makes it stale like a missing output file.
WAREHOUSE_KEY = "xlr/warehouse_rows"
# A partition's own content version. Dagster's data version is one per materialization event batch, shared by
# every partition of a ranged run; consumers record and compare this one.
VERSION_KEY = "xlr/version"


def _images_config(settings: XlrSettings, lane: Lane, partition: str | None, head_config: dict) -> dict:
    """The image list, where images are looked for (by names, sizes and times of the files there) and the
    COCO options. A COCO-sourced dataset with no test image on disk and downloads off cannot run: an error."""
    spec = lane.spec
    coco = settings.coco_source(spec)
    folders = settings.image_folders(spec)
    config = {
        "dataset": spec.name,
        "image_list_sha256": sha256_file(spec.image_list_path),
        "files": folders_fingerprint(
            folders, settings.root, ContentHashes(settings.root / "cache" / "file_hashes.sqlite")
        ),
    }
    if coco is not None:
        config |= {
            "coco_train_images": settings.train_image_count(spec.coco_train_images),
            "coco_download": coco.download,
        }
        if not coco.download:
            tests = [record for record in spec.image_records() if record.split == "test"]
            if not locate_images(tests, spec.images_dir, coco):
                raise ImagesNotAvailable(
                    f"no {spec.name} test image in {', '.join(map(str, folders))}: "
                    f"`xlr run --dataset {spec.name} --download`, or point --coco-dir (XLR_COCO_DIR) at a COCO folder"
                )
    elif not spec.images_dir.is_dir():
        raise DatasetError(f"{spec.images_dir}: images folder not found for dataset {spec.name!r}")
    return config


def _captions_config(settings: XlrSettings, lane: Lane, partition: str | None, head_config: dict) -> dict:
    """The caption file and the image list, whose split column every caption row carries."""
    spec = lane.spec
    return {
        "dataset": spec.name,
        "source_sha256": sha256_file(spec.caption_file(partition)),
        "image_list_sha256": sha256_file(spec.image_list_path),
    }


def _image_embeddings_config(settings: XlrSettings, lane: Lane, partition: str | None, head_config: dict) -> dict:
    settings = lane.settings(settings)
    return {
        "dataset": lane.name,
        "image_model": settings.image_model,
        "image_backend": backend_of(settings.image_model, settings.encoder_backend),
    }


def _text_model_config(settings: XlrSettings, lane: Lane, partition: str | None, head_config: dict) -> dict:
    """Text embeddings and the grid's augmentations: the dataset, its training language and the text model."""
    settings = lane.settings(settings)
    return {
        "dataset": lane.name,
        "train_language": lane.train_language,
        "text_model": settings.text_model,
        "text_backend": backend_of(settings.text_model, settings.encoder_backend),
    }


def _head_config(settings: XlrSettings, lane: Lane, partition: str | None, head_config: dict) -> dict:
    return {"train_language": lane.train_language, **lane.head_config(head_config).as_dict()}


def _tags_config(settings: XlrSettings, lane: Lane, partition: str | None, head_config: dict) -> dict:
    settings = lane.settings(settings)
    declared = lane.spec.tag_file(partition) if partition else None
    return {"text_model": settings.text_model, "tag_file_sha256": sha256_file(declared) if declared else ""}


def _no_config(settings: XlrSettings, lane: Lane, partition: str | None, head_config: dict) -> dict:
    return {}


CURRENT_CONFIG: dict[str, Callable[[XlrSettings, Lane, str | None, dict], dict]] = {
    "images": _images_config,
    "captions": _captions_config,
    "image_embedding_shards": _image_embeddings_config,
    "image_embeddings": _image_embeddings_config,
    "text_embeddings": _text_model_config,
    "projection_head": _head_config,
    "image_index": _no_config,
    "retrieval_metrics": _no_config,
    "text_augmentations": _text_model_config,
    "text_encoder_finetuning": _no_config,
    "experiment_grid": _text_model_config,
    "grid_report": _no_config,
    "tags": _tags_config,
    "tagging_report": _text_model_config,
}


def lineage_metadata(
    config: dict, inputs: dict[str, str], outputs: Sequence[Location], data_dir: Path
) -> dict[str, dg.MetadataValue]:
    """`inputs` maps `asset` or `asset[partition]` to the data version of what was actually read; `outputs`
    are the files written (with their content version) so that a deleted or altered output makes the asset stale."""
    return {
        CONFIG_KEY: dg.MetadataValue.json(config),
        INPUTS_KEY: dg.MetadataValue.json(inputs),
        OUTPUTS_KEY: dg.MetadataValue.json({output_key(path, data_dir): file_version(path) for path in outputs}),
    }


def warehouse_rows_metadata(results_db: Path, data_dir: Path, **key: str) -> dict[str, dg.MetadataValue]:
    """Record which `recall` rows (by their key) a materialization wrote, and to which results file."""
    return {WAREHOUSE_KEY: dg.MetadataValue.json({"results_db": output_key(results_db, data_dir), **key})}


def output_key(path: Location, data_dir: Path) -> str:
    """How an output is recorded: relative to the data dir when inside it (records survive moving the folder),
    else its absolute path or storage URL."""
    if not is_remote(path) and path.is_relative_to(data_dir):
        return path.relative_to(data_dir).as_posix()
    return str(path)


def output_location(key: str, data_dir: Path) -> Location:
    return storage_location(key) if "://" in key or Path(key).is_absolute() else data_dir / key


def input_name(asset: str, partition: str | None = None) -> str:
    return f"{asset}[{partition}]" if partition else asset


def file_version(path: Location) -> str:
    """The data version an asset reports for a file it wrote (and a consumer records for a file it read)."""
    return sha256_file(path)[:16]

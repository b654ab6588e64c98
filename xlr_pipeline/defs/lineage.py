"""What each asset's output depends on besides code: its configuration and the inputs it read.

Every asset records both in its materialization metadata (`xlr/config`, `xlr/inputs`); the staleness
walk (`xlr_pipeline/staleness.py`) recomputes the current configuration with its declaration's function
(`AssetDeclaration.config`, beside each asset; those several assets share are here) and compares.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import dagster as dg

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


def image_model_config(settings: XlrSettings, lane: Lane, partition: str | None, head_config: dict) -> dict:
    """Image embeddings: the dataset and its image model on its backend."""
    settings = lane.settings(settings)
    return {
        "dataset": lane.name,
        "image_model": settings.image_model,
        "image_backend": backend_of(settings.image_model, settings.encoder_backend),
    }


def text_model_config(settings: XlrSettings, lane: Lane, partition: str | None, head_config: dict) -> dict:
    """Text embeddings and tagging: the dataset, its training language and the chain's text model."""
    return _text_model(lane.settings(settings), lane)


def grid_text_model_config(settings: XlrSettings, lane: Lane, partition: str | None, head_config: dict) -> dict:
    """The grid's assets: as `text_model_config`, with the text model the grid compares others with."""
    return _text_model(lane.grid_settings(settings), lane)


def _text_model(settings: XlrSettings, lane: Lane) -> dict:
    return {
        "dataset": lane.name,
        "train_language": lane.train_language,
        "text_model": settings.text_model,
        "text_backend": backend_of(settings.text_model, settings.encoder_backend),
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

"""Settings resource: where data lives and which frozen encoders are used. Assets never hard-code paths."""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import dagster as dg
from pydantic import Field

from xlr_pipeline.core.datasets import DatasetError, DatasetSpec
from xlr_pipeline.core.embeddings import EmbeddingCache
from xlr_pipeline.core.encoders import (
    DEFAULT_IMAGE_MODEL,
    DEFAULT_TEXT_MODEL,
    EncoderError,
    ImageFileError,
)

# The repository's data/ folder (the package is installed in editable mode from the repository).
DEFAULT_DATA_DIR = Path(__file__).resolve().parents[2] / "data"


class XlrSettings(dg.ConfigurableResource):
    """Dataset, encoders and storage locations shared by every asset."""

    data_dir: str = Field(default=str(DEFAULT_DATA_DIR), description="Folder holding datasets, outputs, caches and results.duckdb")
    dataset: str = Field(default="emoji_cldr", description="Dataset folder name under data_dir (with a dataset.toml), or a path")
    image_model: str = Field(default=DEFAULT_IMAGE_MODEL, description="Frozen image encoder id, e.g. torchvision:resnet50")
    text_model: str = Field(default=DEFAULT_TEXT_MODEL, description="Frozen text encoder id, e.g. sentence-transformers:sentence-transformers/LaBSE")
    image_batch_size: int = Field(default=32, description="Images per encoder batch")
    text_batch_size: int = Field(default=64, description="Captions per encoder batch")

    @property
    def root(self) -> Path:
        return Path(self.data_dir).expanduser().resolve()

    def dataset_spec(self) -> DatasetSpec:
        candidate = Path(self.dataset).expanduser()
        folder = candidate if candidate.is_absolute() or candidate.exists() else self.root / self.dataset
        return DatasetSpec.load(folder.resolve())

    @property
    def outputs(self) -> Path:
        return self.root / "outputs" / Path(self.dataset).name

    @property
    def results_db(self) -> Path:
        return self.root / "results.duckdb"

    def captions_path(self, language: str) -> Path:
        return self.outputs / "captions" / f"{language}.parquet"

    def quarantine_path(self, language: str) -> Path:
        return self.outputs / "captions" / f"{language}.quarantine.parquet"

    @property
    def image_embeddings_path(self) -> Path:
        return self.outputs / "image_embeddings.parquet"

    def text_embeddings_path(self, language: str) -> Path:
        return self.outputs / "text_embeddings" / f"{language}.parquet"

    @property
    def head_path(self) -> Path:
        return self.outputs / "projection_head" / "head.pt"

    @property
    def loss_history_path(self) -> Path:
        return self.outputs / "projection_head" / "loss_history.parquet"

    @property
    def index_path(self) -> Path:
        return self.outputs / "image_index" / "images.faiss"

    @property
    def index_ids_path(self) -> Path:
        return self.outputs / "image_index" / "image_ids.parquet"

    def embedding_cache(self, model_id: str) -> EmbeddingCache:
        return EmbeddingCache(self.root / "cache" / "embeddings", model_id)


def settings_from_environment() -> XlrSettings:
    """Settings for the code location; XLR_DATA_DIR / XLR_DATASET / XLR_IMAGE_MODEL / XLR_TEXT_MODEL override defaults.

    Read when the code location loads, so `dagster dev` can be pointed at another data dir or dataset
    without editing code (launchpad resource config overrides these per run).
    """
    overrides = {
        field: os.environ[variable]
        for field, variable in (
            ("data_dir", "XLR_DATA_DIR"),
            ("dataset", "XLR_DATASET"),
            ("image_model", "XLR_IMAGE_MODEL"),
            ("text_model", "XLR_TEXT_MODEL"),
        )
        if os.environ.get(variable)
    }
    return XlrSettings(**overrides)


@contextmanager
def clear_failures() -> Iterator[None]:
    """Turn bad-input errors (which already name the file and line) into a Dagster Failure without a deep traceback."""
    try:
        yield
    except (DatasetError, ImageFileError, EncoderError, FileNotFoundError) as error:
        raise dg.Failure(description=str(error), allow_retries=False) from None


def require_file(path: Path, producer: str) -> Path:
    if not path.is_file():
        raise dg.Failure(description=f"{path} is missing: materialize `{producer}` first", allow_retries=False)
    return path

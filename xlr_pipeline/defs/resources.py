"""Settings resource: where data lives and which frozen encoders are used. Assets never hard-code paths."""

from __future__ import annotations

import os
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import dagster as dg
import numpy as np
from pydantic import Field

from xlr_pipeline.core.choices import DEFAULT_IMAGE_MODEL, DEFAULT_TEXT_MODEL
from xlr_pipeline.core.datasets import DatasetError
from xlr_pipeline.core.embeddings import EmbeddingCache, embed_with_cache
from xlr_pipeline.core.encoders import EncoderError, ImageFileError, load_text_encoder
from xlr_pipeline.core.storage import sha256_text
from xlr_pipeline.core.outputs import DEFAULT_DATA_DIR, DatasetOutputs
from xlr_pipeline.core.warehouse import WarehouseError



class XlrSettings(dg.ConfigurableResource):
    """Where data lives and which frozen encoders are used; shared by every dataset's lane."""

    data_dir: str = Field(default=str(DEFAULT_DATA_DIR), description="Folder holding datasets, outputs, caches and results.duckdb")
    dataset_roots: list[str] = Field(
        default=[], description="More folders holding datasets (each a folder with a dataset.toml, or one such folder)"
    )
    image_model: str = Field(default=DEFAULT_IMAGE_MODEL, description="Frozen image encoder id, e.g. torchvision:resnet50")
    text_model: str = Field(default=DEFAULT_TEXT_MODEL, description="Frozen text encoder id, e.g. sentence-transformers:sentence-transformers/LaBSE")
    image_batch_size: int = Field(default=32, description="Images per encoder batch")
    text_batch_size: int = Field(default=64, description="Captions per encoder batch")

    @property
    def root(self) -> Path:
        return Path(self.data_dir).expanduser().resolve()

    def roots(self) -> list[Path]:
        """Every folder searched for datasets: the data dir first, then `dataset_roots`."""
        return [self.root, *(Path(extra).expanduser().resolve() for extra in self.dataset_roots)]

    def outputs(self, dataset: str) -> DatasetOutputs:
        return DatasetOutputs(self.root / "outputs" / dataset)

    def reports_dir(self, dataset: str) -> Path:
        return self.root / "reports" / dataset

    @property
    def results_db(self) -> Path:
        return self.root / "results.duckdb"

    def embedding_cache(self, model_id: str) -> EmbeddingCache:
        return EmbeddingCache(self.root / "cache" / "embeddings", model_id)

    def cached_text_encoder(self, model_id: str | None = None) -> Callable[[list[str]], np.ndarray]:
        """A text model (default: the configured one) loaded once, as a function from texts to vectors that
        goes through the embedding cache."""
        encoder = load_text_encoder(model_id or self.text_model)
        cache = self.embedding_cache(encoder.model_id)

        def encode(texts: list[str]) -> np.ndarray:
            return embed_with_cache(texts, [sha256_text(t) for t in texts], encoder.encode, cache, self.text_batch_size)[0]

        return encode


def settings_from_environment() -> XlrSettings:
    """Settings for the code location; XLR_DATA_DIR / XLR_DATASET_ROOTS / XLR_IMAGE_MODEL / XLR_TEXT_MODEL override defaults.

    Read when the code location loads, so `dagster dev` can be pointed at other data or datasets without
    editing code (launchpad resource config overrides the models per run). XLR_DATASET_ROOTS lists more
    dataset folders, separated like PATH.
    """
    overrides: dict = {
        field: os.environ[variable]
        for field, variable in (("data_dir", "XLR_DATA_DIR"), ("image_model", "XLR_IMAGE_MODEL"), ("text_model", "XLR_TEXT_MODEL"))
        if os.environ.get(variable)
    }
    roots = [root for root in os.environ.get("XLR_DATASET_ROOTS", "").split(os.pathsep) if root]
    return XlrSettings(**overrides, dataset_roots=roots)


@contextmanager
def clear_failures() -> Iterator[None]:
    """Turn bad-input errors (which already name the file and line) into a Dagster Failure without a deep traceback."""
    try:
        yield
    except (DatasetError, ImageFileError, EncoderError, WarehouseError, FileNotFoundError) as error:
        raise dg.Failure(description=str(error), allow_retries=False) from None


def require_file(path: Path, producer: str) -> Path:
    if not path.is_file():
        raise dg.Failure(description=f"{path} is missing: materialize `{producer}` first", allow_retries=False)
    return path

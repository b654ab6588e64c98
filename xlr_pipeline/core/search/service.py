"""Search a lane's images with its trained head and FAISS index: text → images in any language, image → similar
images, captions and tags. One code path for `xlr search`, the HTTP API and the web page.

A lane is loaded once (head, index, image table) and reloaded when its head or index files change; a head and an
index built from different heads are never served together.
"""

from __future__ import annotations

import io
import threading
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import polars as pl
from PIL import Image, UnidentifiedImageError

from xlr_pipeline.core.models.embeddings import vectors_of
from xlr_pipeline.core.models.encoders import ImageEncoder, TextEncoder, rgb_of
from xlr_pipeline.core.search.limits import MAX_QUERY_CHARS, MAX_QUERY_PIXELS, MAX_RESULTS, MAX_UPLOAD_BYTES
from xlr_pipeline.core.storage.locations import Location, read_parquet
from xlr_pipeline.core.storage.outputs import DatasetOutputs

if TYPE_CHECKING:
    import faiss

    from xlr_pipeline.core.training.head import ProjectionHead

TOP_CAPTIONS = 5
TOP_TAGS = 10


class SearchError(ValueError):
    """A request that cannot be answered as asked; `status` is its HTTP code, the message says what to do."""

    status = 400


class UnknownName(SearchError):
    status = 404


class LaneNotReady(SearchError):
    status = 409


class UploadTooLarge(SearchError):
    status = 413


class NotAnImage(SearchError):
    status = 415


@dataclass(frozen=True)
class SearchLane:
    """What the service needs of one dataset: its outputs and the folder its image paths are relative to."""

    name: str
    outputs: DatasetOutputs
    data_root: Path
    train_language: str = "en"


@dataclass(frozen=True)
class ImageHit:
    rank: int
    image_id: str
    path: str  # as the lane's image table records it (relative to the data dir, or absolute)
    score: float
    caption: str | None  # the image's first caption in the answer's language, if it has one


@dataclass(frozen=True)
class CaptionHit:
    rank: int
    caption_id: str
    image_id: str
    caption: str
    score: float


@dataclass(frozen=True)
class Answer:
    dataset: str
    language: str
    head_run_id: str
    index_type: str
    images: list[ImageHit]
    captions: list[CaptionHit] = field(default_factory=list)  # image queries only
    tags: list[tuple[str, float]] = field(default_factory=list)  # image queries of a lane with a tag vocabulary
    timings_ms: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {
            "dataset": self.dataset,
            "language": self.language,
            "head_run_id": self.head_run_id,
            "index_type": self.index_type,
            "images": [hit.__dict__ for hit in self.images],
            "captions": [hit.__dict__ for hit in self.captions],
            "tags": [{"tag": tag, "score": score} for tag, score in self.tags],
            "timings_ms": self.timings_ms,
        }


def _signature(path: Location) -> tuple | None:
    """Size and modification time, or None for a missing file: a change of either means reload."""
    try:
        stat = path.stat()
    except FileNotFoundError:
        return None
    return stat.st_size, getattr(stat, "st_mtime_ns", stat.st_mtime)


@dataclass(frozen=True)
class LoadedLane:
    """One consistent snapshot of a lane: the head, the index built from it, and the indexed images in index order."""

    head: ProjectionHead
    run_id: str
    text_model: str
    image_model: str
    index: faiss.Index
    image_ids: list[str]
    paths: dict[str, str]  # every usable image of the lane's table (what may be served), by id
    signature: tuple


def _lane_signature(outputs: DatasetOutputs) -> tuple:
    """What a loaded lane depends on: its head, index and index ids files."""
    return tuple(_signature(p) for p in (outputs.head_path, outputs.index_path, outputs.index_ids_path))


def _load_lane(lane: SearchLane, signature: tuple) -> LoadedLane:
    from xlr_pipeline.core.scoring.index import load_index
    from xlr_pipeline.core.training.head import head_from_bytes

    outputs = lane.outputs
    missing = [
        p
        for p in (outputs.head_path, outputs.index_path, outputs.index_ids_path, outputs.images_path)
        if not p.exists()
    ]
    if missing:
        raise LaneNotReady(
            f"dataset {lane.name!r} has no trained head and image index yet: run `xlr run --dataset {lane.name}` first"
        )
    head, provenance = head_from_bytes(outputs.head_path.read_bytes())
    ids = read_parquet(outputs.index_ids_path)
    index = load_index(outputs.index_path)
    indexed_by = ids["head_run_id"][0] if ids.height else None
    if indexed_by != provenance["run_id"] or index.ntotal != ids.height:
        raise LaneNotReady(
            f"the image index of {lane.name!r} was built from head run {indexed_by} but the head is run "
            f"{provenance['run_id']}: run `xlr run --dataset {lane.name}` to rebuild it"
        )
    images = read_parquet(outputs.images_path).filter(pl.col("status") == "ok")
    return LoadedLane(
        head=head,
        run_id=provenance["run_id"],
        text_model=provenance["text_model"],
        image_model=provenance["image_model"],
        index=index,
        image_ids=ids["image_id"].to_list(),
        paths=dict(zip(images["image_id"].to_list(), images["path"].to_list())),
        signature=signature,
    )


@dataclass(frozen=True)
class LanguageCaptions:
    text: dict[str, str]  # caption id → caption
    first_of_image: dict[str, str]  # image id → its first caption in the file, what a hit shows

    @classmethod
    def of(cls, captions: pl.DataFrame) -> LanguageCaptions:
        first = captions.unique("image_id", keep="first", maintain_order=True)
        return cls(
            dict(captions.select("caption_id", "caption").iter_rows()),
            dict(first.select("image_id", "caption").iter_rows()),
        )


class _LaneState:
    """A lane's current snapshot, reloaded when its files change; a torn update keeps the previous consistent one."""

    def __init__(self, lane: SearchLane):
        self.lane = lane
        self._loaded: LoadedLane | None = None
        self._lock = threading.Lock()
        self._captions: dict[str, tuple[tuple, LanguageCaptions]] = {}
        # the last (language, file signature, head run) whose test captions were projected: (rows, vectors)
        self.caption_vectors: dict[tuple, tuple] = {}

    def current(self) -> LoadedLane:
        signature = _lane_signature(self.lane.outputs)
        loaded = self._loaded
        if loaded is not None and loaded.signature == signature:
            return loaded
        with self._lock:
            if self._loaded is None or self._loaded.signature != signature:
                try:
                    self._loaded = _load_lane(self.lane, signature)
                except LaneNotReady:
                    if self._loaded is None:
                        raise
                    # head rewritten, index not yet: the previous head and index still belong together
            return self._loaded

    def captions(self, language: str) -> LanguageCaptions:
        """The lane's captions of one language, reread when the file changes."""
        path = self.lane.outputs.captions_path(language)
        signature = _signature(path)
        cached = self._captions.get(language)
        if cached is not None and cached[0] == signature:
            return cached[1]
        if signature is None:
            raise UnknownName(
                f"dataset {self.lane.name!r} has no captions in {language!r}; languages: {self.languages()}"
            )
        captions = LanguageCaptions.of(read_parquet(path))
        self._captions[language] = (signature, captions)
        return captions

    def languages(self) -> list[str]:
        folder = self.lane.outputs.captions_path("en").parent
        if not folder.exists():
            return []
        return sorted(
            p.name.removesuffix(".parquet")
            for p in folder.iterdir()
            if p.name.endswith(".parquet") and p.name.count(".") == 1
        )


def _index_query(head: ProjectionHead, vector: np.ndarray) -> np.ndarray:
    """A projected query as the lane's index expects it: with the hubness dimension where the head has one."""
    if head.hubness_reduction() is None:
        return vector
    from xlr_pipeline.core.scoring.hubness import offset_queries

    return offset_queries(vector)


def decode_query_image(data: bytes, name: str) -> Image.Image:
    """An uploaded or named query image as RGB: size and pixel count are checked before anything is decoded."""
    if len(data) > MAX_UPLOAD_BYTES:
        raise UploadTooLarge(f"{name}: {len(data):,} bytes; the limit is {MAX_UPLOAD_BYTES:,}")
    if not data:
        raise NotAnImage(f"{name}: empty file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the size is checked here, from the header
            image = Image.open(io.BytesIO(data))
        with image:
            width, height = image.size
            if width * height > MAX_QUERY_PIXELS:
                raise UploadTooLarge(
                    f"{name}: {width}×{height} = {width * height:,} pixels; the limit is {MAX_QUERY_PIXELS:,}"
                )
            image.load()
            return rgb_of(image)
    except Image.DecompressionBombError as error:
        raise UploadTooLarge(f"{name}: {error}") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        if isinstance(error, SearchError):
            raise
        reason = "unknown image format" if isinstance(error, UnidentifiedImageError) else str(error)
        raise NotAnImage(f"{name}: not a readable image ({reason})") from None


class SearchService:
    """Answers text and image queries over every lane given; encoders are loaded once per model id and shared."""

    def __init__(
        self,
        lanes: Mapping[str, SearchLane],
        text_encoder: Callable[[str], TextEncoder],
        image_encoder: Callable[[str], ImageEncoder],
    ):
        self._lanes = {name: _LaneState(lane) for name, lane in lanes.items()}
        self._load = {"text": text_encoder, "image": image_encoder}
        self._encoders: dict[tuple[str, str], tuple[threading.Lock, object]] = {}
        self._encoders_lock = threading.Lock()

    def _encode(self, modality: str, model_id: str, items: list) -> np.ndarray:
        with self._encoders_lock:
            if (modality, model_id) not in self._encoders:
                self._encoders[(modality, model_id)] = (threading.Lock(), self._load[modality](model_id))
            lock, encoder = self._encoders[(modality, model_id)]
        with lock:  # one batch at a time per encoder: its threads already use the cores
            return np.asarray(encoder.encode(items), dtype=np.float32)

    def _state(self, dataset: str) -> _LaneState:
        if dataset not in self._lanes:
            raise UnknownName(f"no dataset named {dataset!r}; datasets: {sorted(self._lanes)}")
        return self._lanes[dataset]

    def _language(self, state: _LaneState, language: str | None) -> str:
        from xlr_pipeline.core.data.languages import UnknownLanguageError, normalize_language

        if language is None or language == "":
            return state.lane.train_language
        try:
            code = normalize_language(language, "lang")
        except UnknownLanguageError as error:
            raise UnknownName(str(error)) from None
        state.captions(code)  # refuses a language the lane has no captions in, naming those it has
        return code

    @staticmethod
    def _k(k: int) -> int:
        if not 1 <= k <= MAX_RESULTS:
            raise SearchError(f"k must be between 1 and {MAX_RESULTS}, not {k}")
        return k

    def datasets(self) -> list[dict]:
        """Every lane: its languages, and whether it can be searched (and if so, with which head)."""
        listed = []
        for name, state in sorted(self._lanes.items()):
            entry = {"name": name, "languages": state.languages(), "train_language": state.lane.train_language}
            try:
                loaded = state.current()
                entry |= {
                    "ready": True,
                    "head_run_id": loaded.run_id,
                    "indexed_images": len(loaded.image_ids),
                    "text_model": loaded.text_model,
                    "image_model": loaded.image_model,
                }
            except LaneNotReady as error:
                entry |= {"ready": False, "reason": str(error)}
            listed.append(entry)
        return listed

    def image_path(self, dataset: str, image_id: str) -> Path:
        """The file of an image listed in the lane's image table; nothing else is ever served."""
        state = self._state(dataset)
        stored = state.current().paths.get(image_id)
        if stored is None:
            raise UnknownName(f"dataset {dataset!r} lists no image {image_id!r}")
        path = Path(stored) if Path(stored).is_absolute() else state.lane.data_root / stored
        if not path.is_file():
            raise UnknownName(f"image {image_id!r} of dataset {dataset!r} is listed, but its file {path} is gone")
        return path

    def _hits(
        self, state: _LaneState, loaded: LoadedLane, language: str, scores: np.ndarray, rows: np.ndarray
    ) -> list[ImageHit]:
        first = state.captions(language).first_of_image
        hits = []
        for rank, (row, score) in enumerate(zip(rows.tolist(), scores.tolist()), start=1):
            if row < 0:  # an approximate index may return fewer than k
                break
            image_id = loaded.image_ids[row]
            hits.append(ImageHit(rank, image_id, loaded.paths.get(image_id, ""), float(score), first.get(image_id)))
        return hits

    def search(self, query: str, dataset: str, language: str | None = None, k: int = 10) -> Answer:
        """The lane's indexed images ranked for a text in any language (the language picks the captions shown)."""
        text = query.strip()
        if not text:
            raise SearchError("the query is empty")
        if len(text) > MAX_QUERY_CHARS:
            raise SearchError(f"the query has {len(text)} characters; the limit is {MAX_QUERY_CHARS}")
        if "\x00" in text:
            raise SearchError("the query contains a NUL character")
        state, k = self._state(dataset), self._k(k)
        loaded = state.current()
        language = self._language(state, language)
        from xlr_pipeline.core.training.head import project

        started = time.perf_counter()
        vector = project(loaded.head, self._encode("text", loaded.text_model, [text]), "text")
        encoded = time.perf_counter()
        scores, rows = loaded.index.search(_index_query(loaded.head, vector), min(k, loaded.index.ntotal))
        searched = time.perf_counter()
        return Answer(
            dataset,
            language,
            loaded.run_id,
            type(loaded.index).__name__,
            self._hits(state, loaded, language, scores[0], rows[0]),
            timings_ms={"encode": 1e3 * (encoded - started), "search": 1e3 * (searched - encoded)},
        )

    def similar(self, image: Image.Image, dataset: str, language: str | None = None, k: int = 10) -> Answer:
        """Images like `image`, the lane's test captions of `language` that describe it best, and its top tags
        from the lane's tag vocabulary of that language (where tagging has been run)."""
        from xlr_pipeline.core.training.head import project

        state, k = self._state(dataset), self._k(k)
        loaded = state.current()
        language = self._language(state, language)
        started = time.perf_counter()
        features = self._encode("image", loaded.image_model, [image])
        vector = project(loaded.head, features, "image")
        encoded = time.perf_counter()
        scores, rows = loaded.index.search(_index_query(loaded.head, vector), min(k, loaded.index.ntotal))
        images = self._hits(state, loaded, language, scores[0], rows[0])
        captions = self._best_captions(state, loaded, language, vector[0])
        tags = self._tags(state, loaded, language, features)
        return Answer(
            dataset,
            language,
            loaded.run_id,
            type(loaded.index).__name__,
            images,
            captions,
            tags,
            timings_ms={"encode": 1e3 * (encoded - started), "search": 1e3 * (time.perf_counter() - encoded)},
        )

    def _best_captions(
        self, state: _LaneState, loaded: LoadedLane, language: str, image_vector: np.ndarray
    ) -> list[CaptionHit]:
        from xlr_pipeline.core.training.head import project

        path = state.lane.outputs.text_embeddings_path(language)
        key = (language, _signature(path), loaded.run_id)
        if key not in state.caption_vectors:  # read and projected once per file and head, not per query
            embedded = read_parquet(path).filter(pl.col("model_id") == loaded.text_model) if key[1] else None
            state.caption_vectors = {
                key: (embedded, project(loaded.head, vectors_of(embedded), "text"))
                if embedded is not None and embedded.height
                else (None, None)
            }
        embedded, projected = state.caption_vectors[key]
        if embedded is None:
            return []
        scores = projected @ image_vector
        top = np.argsort(-scores, kind="stable")[:TOP_CAPTIONS]
        text = state.captions(language).text
        ids, image_ids = embedded["caption_id"].to_list(), embedded["image_id"].to_list()
        return [
            CaptionHit(rank, ids[i], image_ids[i], text.get(ids[i], ""), float(scores[i]))
            for rank, i in enumerate(top.tolist(), 1)
        ]

    def _tags(
        self, state: _LaneState, loaded: LoadedLane, language: str, features: np.ndarray
    ) -> list[tuple[str, float]]:
        """The image's top tags in `language`, as `xlr tag` gives them (the vocabulary the tags asset embedded)."""
        from xlr_pipeline.core.scoring.tagging import tag_image_files

        path = state.lane.outputs.tag_vocabulary_path(language)
        if not path.exists():
            return []
        vocabulary = read_parquet(path)
        return tag_image_files(loaded.head, features, vocabulary["tag"].to_list(), vectors_of(vocabulary), TOP_TAGS)[0]

"""Every shipped encoder gives the same bits for the same input whatever the batch size, the batch's other items,
their order, the thread count, the backend's engine and which items the embedding cache already held: each item is
encoded alone (`each_alone`), so a rerun of the grid on a cold cache reproduces every vector exactly."""

import numpy as np
import pytest

from xlr_pipeline.core.models.embeddings import EmbeddingCache, embed_with_cache
from xlr_pipeline.core.models.encoders import load_image, load_image_encoder, load_text_encoder
from xlr_pipeline.core.models.inference import EncoderRuntime
from xlr_pipeline.core.storage.locations import sha256_text
from xlr_pipeline.core.training.choices import (
    DEFAULT_IMAGE_MODEL,
    DEFAULT_TEXT_MODEL,
    ENGLISH_ONLY_TEXT_MODEL,
    LITE2_IMAGE_MODEL,
    MUSE_TEXT_MODEL,
)
from xlr_pipeline_tests.conftest import SHIPPED

pytestmark = pytest.mark.slow  # loads every shipped encoder on both backends and both thread counts

LANGUAGES = ("en", "de", "ja", "zh", "ru", "tr")
E5_TORCH = "e5torch:multilingual-e5-small"


def _captions() -> list[str]:
    captions = []
    for language in LANGUAGES:
        lines = (SHIPPED / "emoji_cldr" / "captions" / f"{language}.tsv").read_text("utf-8").splitlines()[1:7]
        captions += [line.split("\t", 1)[1] for line in lines]
    return captions


def _images() -> list:
    return [load_image(path) for path in sorted((SHIPPED / "emoji_cldr" / "images").glob("*.png"))[:12]]


def _variants(encode, items: list) -> list[np.ndarray]:
    """The same items encoded all at once, one by one, in batches of 5, and reversed."""
    return [
        encode(items),
        np.concatenate([encode([item]) for item in items]),
        np.concatenate([encode(items[start : start + 5]) for start in range(0, len(items), 5)]),
        encode(items[::-1])[::-1],
    ]


@pytest.mark.parametrize(
    ("load", "model_id", "items", "backends"),
    [
        (load_text_encoder, DEFAULT_TEXT_MODEL, _captions, ("onnxruntime",)),
        (load_text_encoder, MUSE_TEXT_MODEL, _captions, ("onnxruntime",)),
        (load_text_encoder, ENGLISH_ONLY_TEXT_MODEL, _captions, ("onnxruntime",)),
        (load_text_encoder, E5_TORCH, _captions, ("onnxruntime", "native")),
        (load_image_encoder, DEFAULT_IMAGE_MODEL, _images, ("onnxruntime", "native")),
        (load_image_encoder, LITE2_IMAGE_MODEL, _images, ("onnxruntime", "native")),
    ],
)
def test_an_encoders_vectors_do_not_depend_on_batching_order_or_threads(load, model_id, items, backends, tmp_path):
    inputs = items()
    for backend in backends:
        vectors = [
            variant
            for threads in (1, 2)
            for variant in _variants(load(model_id, EncoderRuntime(backend, tmp_path, threads)).encode, inputs)
        ]
        for variant in vectors[1:]:
            assert np.array_equal(variant, vectors[0]), f"{model_id} on {backend}: vectors differ"


def test_what_the_cache_already_holds_does_not_change_a_vector(tmp_path):
    captions = _captions()
    hashes = [sha256_text(caption) for caption in captions]
    encoder = load_text_encoder(MUSE_TEXT_MODEL, EncoderRuntime(threads=2))
    cold, _ = embed_with_cache(captions, hashes, encoder.encode, EmbeddingCache(tmp_path / "cold", "m", "b"), 64)
    warm_cache = EmbeddingCache(tmp_path / "warm", "m", "b")
    embed_with_cache(captions[::3], hashes[::3], encoder.encode, warm_cache, 7)  # an earlier run, other batches
    warm, encoded = embed_with_cache(captions, hashes, encoder.encode, warm_cache, 64)
    assert encoded == len(set(hashes) - set(hashes[::3]))
    assert np.array_equal(cold, warm)

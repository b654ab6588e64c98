"""Every shipped encoder gives the same vectors for the same input whatever the batch size, the batch's other items,
their order and the thread count — exactly where the library allows, else within EMBEDDING_TOLERANCE, the bound
the grid report states (float32 kernels of different batch shapes sum in different orders)."""

import numpy as np
import pytest

from xlr_pipeline.core.models.encoders import load_image, load_image_encoder, load_text_encoder
from xlr_pipeline.core.models.inference import EMBEDDING_TOLERANCE, EncoderRuntime
from xlr_pipeline.core.training.choices import (
    DEFAULT_IMAGE_MODEL,
    DEFAULT_TEXT_MODEL,
    ENGLISH_ONLY_TEXT_MODEL,
    LITE2_IMAGE_MODEL,
    MUSE_TEXT_MODEL,
)
from xlr_pipeline_tests.conftest import SHIPPED

pytestmark = pytest.mark.slow  # loads every shipped encoder twice

LANGUAGES = ("en", "de", "ja", "zh", "ru", "tr")


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
    ("load", "model_id", "items"),
    [
        (load_text_encoder, DEFAULT_TEXT_MODEL, _captions),
        (load_text_encoder, MUSE_TEXT_MODEL, _captions),
        (load_text_encoder, ENGLISH_ONLY_TEXT_MODEL, _captions),
        (load_image_encoder, DEFAULT_IMAGE_MODEL, _images),
        (load_image_encoder, LITE2_IMAGE_MODEL, _images),
    ],
)
def test_an_encoders_vectors_do_not_depend_on_batching_order_or_threads(load, model_id, items):
    inputs = items()
    vectors = [
        variant
        for threads in (1, 2)
        for variant in _variants(load(model_id, EncoderRuntime(threads=threads)).encode, inputs)
    ]
    reference = vectors[0]
    worst = max(float(np.abs(variant - reference).max()) for variant in vectors)
    assert worst <= EMBEDDING_TOLERANCE, f"{model_id}: vectors differ by up to {worst:.1e}"

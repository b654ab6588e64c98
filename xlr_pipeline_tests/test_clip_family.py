"""Aligned image–text encoders through real open_clip and sentence-transformers code, with tiny randomly
initialised configurations (no CLIP weights exist offline: the plumbing is tested, no number is claimed)."""

from __future__ import annotations

import json
import shutil

import dagster as dg
import duckdb
import numpy as np
import pytest
from PIL import Image

from xlr_pipeline.core.models.encoders import EncoderError, load_image_encoder, load_text_encoder
from xlr_pipeline.core.training.head import HeadConfig, train_head
from xlr_pipeline.defs.train import HeadTrainingConfig
from xlr_pipeline.runner import run_pipeline
from xlr_pipeline_tests.conftest import DATASET, SUBSET_LANGUAGES, pipeline_for, shared_runtime

pytestmark = pytest.mark.slow  # runs lanes with open_clip models

TINY_OPEN_CLIP = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 16},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


@pytest.fixture(scope="module")
def tiny_open_clip(tmp_path_factory) -> str:
    """An open_clip model id for a tiny architecture registered from its config file, randomly initialised."""
    path = tmp_path_factory.mktemp("open_clip") / "tiny-clip-test.json"
    path.write_text(json.dumps(TINY_OPEN_CLIP))
    return f"open_clip:{path}@random"


def tiny_sentence_transformers_clip(folder) -> str:
    """A sentence-transformers CLIP model folder: a tiny transformers CLIPModel with a byte-level tokenizer."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.models import CLIPModel as SentenceTransformersClip
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    printable = [chr(c) for c in (*range(33, 127), *range(161, 173), *range(174, 256))]
    alphabet = printable + [chr(256 + n) for n in range(256 - len(printable))]
    vocab = {symbol: i for i, symbol in enumerate(alphabet)} | {
        symbol + "</w>": 256 + i for i, symbol in enumerate(alphabet)
    }
    vocab |= {"<|startoftext|>": 512, "<|endoftext|>": 513}
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"))
    tiny = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2}
    config = CLIPConfig(
        text_config={
            **tiny,
            "vocab_size": 514,
            "max_position_embeddings": 32,
            "bos_token_id": 512,
            "eos_token_id": 513,
        },
        vision_config={**tiny, "image_size": 32, "patch_size": 16},
        projection_dim=16,
    )
    processor = CLIPProcessor(
        CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}), tokenizer
    )
    CLIPModel(config).save_pretrained(folder / "clip")
    processor.save_pretrained(folder / "clip")
    SentenceTransformer(modules=[SentenceTransformersClip(str(folder / "clip"))], device="cpu").save(
        str(folder / "model")
    )
    return f"sentence-transformers:{folder / 'model'}"


def test_open_clip_model_embeds_images_and_texts_into_one_space(tiny_open_clip):
    images, texts = (
        load_image_encoder(tiny_open_clip, shared_runtime()),
        load_text_encoder(tiny_open_clip, shared_runtime()),
    )
    image_vectors = images.encode([Image.new("RGB", (50, 40), (200, 30, 30)), Image.new("RGB", (64, 64), (0, 0, 255))])
    text_vectors = texts.encode(["a red square", "ein blaues Quadrat", "青い四角"])
    assert images.dim == texts.dim == 32 and image_vectors.shape == (2, 32) and text_vectors.shape == (3, 32)
    assert np.allclose(np.linalg.norm(np.vstack([image_vectors, text_vectors]), axis=1), 1.0, atol=1e-5)
    assert not np.allclose(image_vectors[0], image_vectors[1])


def test_open_clip_needs_weights_named_and_a_known_architecture(tiny_open_clip):
    with pytest.raises(EncoderError, match="say which weights"):
        load_text_encoder(tiny_open_clip.removesuffix("@random"))
    with pytest.raises(EncoderError, match="open_clip has no model 'no-such-clip'"):
        load_image_encoder("open_clip:no-such-clip@laion2b")


def test_sentence_transformers_clip_embeds_images_and_texts(tmp_path):
    model_id = tiny_sentence_transformers_clip(tmp_path)
    images, texts = load_image_encoder(model_id, shared_runtime()), load_text_encoder(model_id, shared_runtime())
    vectors = images.encode([Image.new("RGB", (40, 30), (10, 200, 10))])
    assert (
        images.dim == texts.dim == 16 and vectors.shape == (1, 16) and texts.encode(["a green square"]).shape == (1, 16)
    )


def test_identity_head_refuses_encoders_of_two_spaces():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="one shared space; got 8-d images and 4-d texts"):
        train_head(rng.normal(size=(5, 4)), rng.normal(size=(5, 8)), np.arange(5), HeadConfig(architecture="identity"))


def test_aligned_encoders_are_evaluated_as_they_are_and_with_our_head(tmp_path, subset_data_dir, tiny_open_clip):
    """The chain on the emoji subset with one open_clip id for both sides: once with no head (the published
    systems' setting), once with an English-trained linear head on top; both land in DuckDB under the model's
    family, which `vs_published` matches against published rows of that family."""
    shutil.copytree(subset_data_dir / DATASET, tmp_path / DATASET)
    pipeline = pipeline_for(tmp_path, image_model=tiny_open_clip, text_model=tiny_open_clip)
    with dg.instance_for_test() as instance:
        for head in (HeadTrainingConfig(architecture="identity"), HeadTrainingConfig(architecture="linear", epochs=3)):
            run_pipeline(
                instance, pipeline, [DATASET], {"projection_head": head}, include_stale=True, log=lambda _: None
            )
    with duckdb.connect(str(pipeline.settings.results_db), read_only=True) as connection:
        runs = connection.execute(
            "SELECT objective, head_config->>'architecture', baseline_of IS NULL, image_model = text_model FROM runs ORDER BY created_at"
        ).fetchall()
        languages = connection.execute(
            "SELECT count(DISTINCT language) FROM latest WHERE objective = 'aligned_encoders' AND k = 10"
        ).fetchall()[0][0]
        family = connection.execute(
            "SELECT DISTINCT CASE WHEN image_model = text_model THEN image_model END FROM runs"
        ).fetchall()
    assert runs[0] == ("aligned_encoders", "identity", True, True)  # no random-head twin: nothing was trained
    assert ("hinge", "linear", True, True) in runs and ("random_init", "linear", False, True) in runs
    assert languages == len(SUBSET_LANGUAGES) and family == [(tiny_open_clip,)]

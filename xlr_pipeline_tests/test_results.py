import duckdb
import pytest

from xlr_pipeline.core.reporting.results import (
    RankRecord,
    RecallRecord,
    RunRecord,
    record_evaluation,
)


def _run(run_id="run-1"):
    return RunRecord(
        run_id=run_id,
        dataset="d",
        image_model="i",
        text_model="t",
        train_language="en",
        objective="patr",
        augmentation="none",
        head_config={"margin": 0.1},
        seed=0,
        code_versions={"a": "1"},
        train_captions_hash="c",
        images_hash="h",
        baseline_of=None,
        dagster_run_id=run_id,
    )


def _recall(value, captions_hash="c1", run_id="run-1", gallery_hash="g1"):
    return [
        RecallRecord(run_id, "d", "de", "test", "text_to_image", k, value, 10, captions_hash, "1", "dr", gallery_hash)
        for k in (1, 5, 10)
    ]


def test_history_is_append_only_and_idempotent(tmp_path):
    db = tmp_path / "results.duckdb"
    ranks = [RankRecord("run-1", "d", "de", "test", "text_to_image", 10, 3.0, 2.0, "c1", "dr", "g1")]
    assert record_evaluation(db, [_run()], _recall(0.5), ranks) == 3
    assert record_evaluation(db, [_run()], _recall(0.5), ranks) == 0  # same inputs: nothing new
    assert record_evaluation(db, [_run()], _recall(0.6, captions_hash="c2"), []) == 3  # new captions: appended
    assert record_evaluation(db, [_run()], _recall(0.55, gallery_hash="g2"), ranks) == 3  # a changed test image too
    with duckdb.connect(str(db), read_only=True) as connection:
        assert connection.execute("SELECT count(*) FROM runs").fetchone()[0] == 1
        assert sorted(connection.execute("SELECT DISTINCT recall FROM recall").fetchall()) == [(0.5,), (0.55,), (0.6,)]
        assert connection.execute("SELECT head_config->>'margin' FROM runs").fetchone()[0] == "0.1"


def test_invalid_rows_roll_back_the_whole_evaluation(tmp_path):
    db = tmp_path / "results.duckdb"
    record_evaluation(db, [_run()], _recall(0.5), [])
    bad = _recall(0.7, captions_hash="c9") + [
        RecallRecord("run-1", "d", "de", "test", "sideways", 1, 0.1, 1, "c9", "1", "x", "g1")
    ]
    with pytest.raises(duckdb.ConstraintException):
        record_evaluation(db, [_run("run-2")], bad, [])
    with duckdb.connect(str(db), read_only=True) as connection:
        assert connection.execute("SELECT count(*) FROM recall").fetchone()[0] == 3
        assert connection.execute("SELECT count(*) FROM runs").fetchone()[0] == 1

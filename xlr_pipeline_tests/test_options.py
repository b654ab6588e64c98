"""Options are checked where they enter: the CLI refuses a value outside its range with one line naming the option
(exit 2), the launchpad's config refuses it before any step runs, and a head whose training diverges is never kept."""

import math

import dagster as dg
import numpy as np
import pytest
from pydantic import ValidationError

from xlr_pipeline.cli import WORKERS_PER_CORE, main
from xlr_pipeline.core.models.threads import available_cores
from xlr_pipeline.core.training.configs import HEAD_RANGES, ConfigError, HeadConfig
from xlr_pipeline.core.training.head import TrainingDiverged, train_head
from xlr_pipeline.defs.train import HeadTrainingConfig


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--embed-dim", "0"], "--embed-dim must be a finite number in [1, 8192], not 0"),
        (["--epochs", "0"], "--epochs must be a finite number in [1, 100000], not 0"),
        (["--margin", "-5"], "--margin must be a finite number in (0, 2], not -5.0"),
        (["--learning-rate", "inf"], "--learning-rate must be a finite number in (0, 10], not inf"),
        (["--learning-rate", "nan"], "--learning-rate must be a finite number in (0, 10], not nan"),
        (["--seed", "-1"], "--seed must be a finite number in [0, 4.29497e+09], not -1"),
    ],
)
def test_the_cli_refuses_a_head_option_out_of_range_in_one_line(tmp_path, capsys, monkeypatch, flags, message):
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))
    with pytest.raises(SystemExit) as exited:
        main(["run", "--data-dir", str(tmp_path), *flags])
    err = capsys.readouterr().err
    assert exited.value.code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "outputs").exists()  # nothing ran


def test_the_cli_bounds_workers_by_the_cores(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))
    most = WORKERS_PER_CORE * available_cores()
    with pytest.raises(SystemExit) as exited:
        main(["run", "--data-dir", str(tmp_path), "--workers", "1000"])
    assert (
        exited.value.code == 2
        and f"must be between 1 and {most} ({WORKERS_PER_CORE} per core), not 1000" in capsys.readouterr().err
    )


def test_every_range_is_checked_in_core_and_in_the_launchpad_config():
    for option, allowed in HEAD_RANGES.items():
        for bad in (allowed.low - 1, allowed.high * 2, math.inf, math.nan):
            with pytest.raises(ConfigError, match=f"^{option} must be a finite number in"):
                HeadConfig(**{option: bad})
            with pytest.raises(ValidationError, match=f"(?s){option}\\b.*finite number"):
                HeadTrainingConfig(**{option: bad})
    with pytest.raises(ConfigError, match=r"margin must be a finite number in \(0, 2\], not 0"):
        HeadConfig(margin=0)
    assert HeadConfig(**HeadTrainingConfig(margin=None, steps=None).given()) == HeadConfig()


def test_a_launchpad_run_with_an_infinite_learning_rate_fails_before_training():
    @dg.asset
    def head(config: HeadTrainingConfig) -> None:
        raise AssertionError("the step body must not run")

    with pytest.raises(Exception, match="learning_rate must be a finite number in \\(0, 10\\], not inf"):
        dg.materialize([head], run_config={"ops": {"head": {"config": {"learning_rate": math.inf}}}})


def test_a_diverging_head_is_refused_and_never_returned():
    rng = np.random.default_rng(0)
    text, image = rng.normal(size=(32, 6)).astype(np.float32), rng.normal(size=(32, 4)).astype(np.float32)
    text[3, 0] = np.inf  # one poisoned training vector makes the loss NaN
    with pytest.raises(TrainingDiverged, match="training diverged: the hinge loss is nan at step 1"):
        train_head(text, image, np.arange(32), HeadConfig(embed_dim=4, epochs=2, batch_size=32))


def test_a_lane_waiting_for_its_images_fails_only_the_command_that_names_it(tmp_path, capsys, monkeypatch):
    import shutil

    from xlr_pipeline_tests.conftest import SHIPPED

    shutil.copytree(SHIPPED / "xtd10", tmp_path / "data" / "xtd10", ignore=shutil.ignore_patterns("images"))
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))
    (tmp_path / "home").mkdir()
    location = ["--data-dir", str(tmp_path / "data")]
    assert main(["run", "--stale", *location]) == 0
    out = capsys.readouterr().out
    assert "xtd10: waiting for images: no xtd10 test image in" in out and "`xlr run --dataset xtd10 --download`" in out
    assert main(["run", "--stale", "--dataset", "xtd10", *location]) == 1
    assert "not everything could be brought up to date in xtd10" in capsys.readouterr().err
    assert main(["status", *location]) == 0
    assert "| xtd10/images |  | waiting | waiting for images:" in capsys.readouterr().out


def test_a_removed_language_is_retired_by_command_and_stops_failing_runs(tmp_path, capsys, monkeypatch):
    from xlr_pipeline_tests.conftest import DATASET, make_emoji_subset

    make_emoji_subset(tmp_path / "data", n_train=4, n_test=4)
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))
    (tmp_path / "home").mkdir()
    from xlr_pipeline.runner import ensure_instance_home, register_languages
    from xlr_pipeline_tests.conftest import pipeline_for

    location = ["--data-dir", str(tmp_path / "data"), "--dataset", DATASET]
    ensure_instance_home(tmp_path / "data")
    with dg.DagsterInstance.get() as instance:  # as a run or the lane's sensor does
        assert register_languages(instance, pipeline_for(tmp_path / "data").lane(DATASET)) == ["de", "en", "ja"]
    (tmp_path / "data" / DATASET / "captions" / "ja.tsv").unlink()
    assert main(["status", *location]) == 0
    assert "captions | ja | error" in capsys.readouterr().out
    capsys.readouterr()
    assert main(["retire", "de", *location]) == 1
    assert "de.tsv still exists: remove it first" in capsys.readouterr().err
    assert main(["retire", "en", *location]) == 1
    assert "is the language 'emoji_small' trains on" in capsys.readouterr().err
    assert main(["retire", "jp", *location]) == 0  # an alias of ja
    assert "retired ja from emoji_small; its languages: de en" in capsys.readouterr().out
    assert main(["status", *location]) == 0
    assert "| ja |" not in capsys.readouterr().out


def test_an_instance_keeps_one_data_folder_and_refuses_another(tmp_path, capsys, monkeypatch):
    from xlr_pipeline_tests.conftest import make_emoji_subset

    for folder in ("first", "second"):
        make_emoji_subset(tmp_path / folder, n_train=4, n_test=4)
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))
    assert main(["status", "--data-dir", str(tmp_path / "first")]) == 0
    with pytest.raises(SystemExit) as exited:
        main(["status", "--data-dir", str(tmp_path / "second")])
    err = capsys.readouterr().err
    assert (
        exited.value.code == 2
        and f"keeps the runs of data folder {tmp_path / 'first'}, not {tmp_path / 'second'}" in err
    )
    assert "set DAGSTER_HOME to a folder of its own" in err


def test_only_the_head_options_given_reach_the_run_so_the_dataset_defaults_fill_the_rest():
    from xlr_pipeline.runner import given_run_config

    assert given_run_config(HeadTrainingConfig(epochs=5, learning_rate=0.01)) == {
        "config": {"epochs": 5, "learning_rate": 0.01}
    }
    assert given_run_config(HeadTrainingConfig()) == {"config": {}}

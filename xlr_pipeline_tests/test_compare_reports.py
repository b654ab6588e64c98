"""scripts/compare_grid_reports.py: a rerun that moves numbers is told apart from one that changes a verdict."""

import re
import subprocess
import sys

import polars as pl

from xlr_pipeline_tests.conftest import SHIPPED

SCRIPT = SHIPPED.parent / "scripts" / "compare_grid_reports.py"
REPORT = SHIPPED / "reports" / "emoji_cldr" / "report.md"


def _compare(tmp_path, text: str) -> subprocess.CompletedProcess:
    rerun = tmp_path / "rerun.md"
    rerun.write_text(text, "utf-8")
    return subprocess.run([sys.executable, str(SCRIPT), str(REPORT), str(rerun)], capture_output=True, text=True)


def test_numbers_that_move_are_measured_and_a_changed_verdict_fails(tmp_path):
    committed = REPORT.read_text("utf-8")
    same = _compare(tmp_path, committed.replace("Cost: the", "Cost: (another wall time) the"))
    assert same.returncode == 0 and "verdicts changed: 0" in same.stdout and "lines differ only" in same.stdout

    value = re.search(r"R@10 (0\.\d{3}) \[", committed)[1]  # the first estimate with its interval
    numbers = _compare(tmp_path, committed.replace(f"R@10 {value} [", f"R@10 {float(value) + 0.002:.3f} [", 1))
    assert (
        numbers.returncode == 0 and "1 lines differ only in their numbers; largest difference 0.002" in numbers.stdout
    )

    verdict = next(line for line in committed.splitlines() if line.startswith("- Primary:"))
    other = "inconclusive." if verdict.endswith("gain.") else "significant gain."
    flipped = committed.replace(verdict, verdict.rsplit("—", 1)[0] + "— " + other, 1)
    changed = _compare(tmp_path, flipped)
    assert changed.returncode == 1 and "verdicts changed: 1" in changed.stdout


def test_the_grid_tables_of_two_runs_are_compared_bit_for_bit_run_ids_aside(tmp_path):
    hits = pl.DataFrame({"grid_run_id": "a", "seed": [0, 1, 2], "rank": [1, 5, 9]})
    validation = pl.DataFrame({"grid_run_id": "a", "score": [0.25, 0.5]})
    tuning = pl.DataFrame({"grid_run_id": "a", "trial": [0, 1], "score": [0.1, 0.2]})
    for run, rank, score in (("committed", 9, 0.2), ("same", 9, 0.2), ("moved", 8, 0.2000001)):
        folder = tmp_path / run
        folder.mkdir()
        weights = f"e5torch:multilingual-e5-small@/clones/{run}/finetuned/english-s0-1234.pt"  # the clone's folder
        hits.with_columns(
            pl.lit(run).alias("grid_run_id"), pl.Series("rank", [1, 5, rank]), pl.lit(weights).alias("text_model")
        ).write_parquet(folder / "grid_hits.parquet")
        validation.write_parquet(folder / "grid_validation.parquet")
        tuning.with_columns(pl.Series("score", [0.1, score])).write_parquet(folder / "tuning.parquet")
    report = tmp_path / "report.md"
    report.write_text(REPORT.read_text("utf-8"), "utf-8")

    def compare(rerun: str) -> subprocess.CompletedProcess:
        command = [sys.executable, str(SCRIPT), str(report), str(report), "--tables", str(tmp_path / "committed")]
        return subprocess.run([*command, str(tmp_path / rerun)], capture_output=True, text=True)

    same = compare("same")
    assert same.returncode == 0 and same.stdout.count("identical bit for bit") == 3
    moved = compare("moved")
    assert moved.returncode == 1
    assert (
        "`grid_hits.parquet`: 1 of 3 rows differ" in moved.stdout
        and "`tuning.parquet`: 1 of 2 rows differ" in moved.stdout
    )


def test_a_rerun_of_one_objective_is_compared_cell_by_cell_with_the_full_run(tmp_path):
    def cells(rows: list[tuple[str, str, int]]) -> pl.DataFrame:  # (objective, text model, rank)
        objective, text_model, rank = zip(*rows)
        return pl.DataFrame(
            {
                "grid_run_id": "run",
                "objective": objective,
                "augmentation": "none",
                "text_model": text_model,
                "image_model": "lite0",
                "rank": rank,
            }
        )

    full = [("hinge", "e5", 3), ("random_init", "e5", 40), ("infonce", "e5", 2), ("random_init", "e5", 41)]
    for run, rows in (
        ("full", full),
        (
            "hinge",
            [("hinge", "e5", 3), ("random_init", "e5", 40), ("hinge", "minilm", 9), ("random_init", "minilm", 50)],
        ),
        ("moved", [("hinge", "e5", 4), ("random_init", "e5", 40)]),
        ("other_twin", [("hinge", "e5", 3), ("random_init", "e5", 42)]),
    ):
        folder = tmp_path / run
        folder.mkdir()
        for name in ("grid_hits.parquet", "grid_validation.parquet", "tuning.parquet"):
            cells(rows).write_parquet(folder / name)

    def compare(rerun: str) -> subprocess.CompletedProcess:
        tables = ["--tables", str(tmp_path / "full"), str(tmp_path / rerun), "--rerun-objectives", "hinge"]
        return subprocess.run(
            [sys.executable, str(SCRIPT), str(REPORT), str(REPORT), *tables], capture_output=True, text=True
        )

    same = compare("hinge")
    assert same.returncode == 0, same.stderr
    assert same.stdout.count("1 cells of hinge in both runs: identical bit for bit (1 rows); 1 of 1 random-head") == 3
    assert "1 cells only in the rerun (hinge / none / minilm / lite0)" in same.stdout
    assert compare("moved").returncode == 1 and "different (1 rows committed, 1 rerun)" in compare("moved").stdout
    assert compare("other_twin").returncode == 1 and "0 of 1 random-head rows" in compare("other_twin").stdout

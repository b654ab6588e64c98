"""scripts/compare_grid_reports.py: a rerun that moves numbers is told apart from one that changes a verdict."""

import re
import subprocess
import sys

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

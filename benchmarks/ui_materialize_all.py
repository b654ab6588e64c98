"""Benchmark: *Materialize all* in the Dagster UI against the CLI's cold run, on the shipped emoji_cldr.

One invocation, cold starts on separate temporary copies of the data (empty embedding caches, fresh
Dagster homes prepared by xlr as for a user):
- baseline: `xlr run` (the chain, every language) as a subprocess;
- UI: `xlr dev` (webserver + daemon), then headless Chromium clicks *Materialize all…* on the `emoji_cldr`
  lineage page, partitions *All*, *Launch backfill*; timed from the click to the end of the last run.
Peak memory is the summed resident memory of each side's process group (sampled every 0.5 s; for the UI
it includes the webserver, daemon and code server). Two alternating pairs. Writes
benchmarks/results/ui_materialize_all.{json,md}.

Usage: .venv/bin/python benchmarks/ui_materialize_all.py   (needs Debian's chromium)
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from results_io import header, write_results

from xlr_pipeline.defs.resources import DEFAULT_DATA_DIR
from xlr_pipeline_tests.ui_session import chromium_page, click_materialize_all, xlr_dev

DATASET = "emoji_cldr"
REPEATS = 2


class GroupMemory:
    """Peak summed RSS (MiB) of the processes in one process group, sampled in a thread."""

    def __init__(self, group: int):
        self.group, self.peak_mib, self._stop = group, 0.0, threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def current_mib(self) -> float:
        total = 0
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                if os.getpgid(int(entry.name)) != self.group:
                    continue
                for line in (entry / "status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
            except (OSError, ProcessLookupError):
                continue
        return total / 1024

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak_mib = max(self.peak_mib, self.current_mib())
            self._stop.wait(0.5)

    def __enter__(self) -> GroupMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def fresh_copy(root: Path) -> Path:
    data_dir = root / "data"
    shutil.copytree(DEFAULT_DATA_DIR / DATASET, data_dir / DATASET)
    return data_dir


def cli_cold_run(root: Path) -> dict:
    data_dir = fresh_copy(root)
    env = {**os.environ, "DAGSTER_HOME": str(root / "home")}
    started = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "-m", "xlr_pipeline.cli", "run", "--dataset", DATASET, "--data-dir", str(data_dir)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    with GroupMemory(process.pid) as memory:
        _, errors = process.communicate()
    seconds = time.perf_counter() - started
    if process.returncode != 0:
        raise SystemExit(f"xlr run failed: {errors[-2000:]}")
    return {"seconds": round(seconds, 1), "peak_rss_mib": round(memory.peak_mib)}


def ui_materialize_all(root: Path) -> dict:
    data_dir = fresh_copy(root)
    languages = {path.stem for path in (data_dir / DATASET / "captions").glob("*.tsv")}
    with xlr_dev(data_dir, root / "home", root / "dev.log", DATASET, languages) as ui, chromium_page(root) as page:
        with GroupMemory(ui.process.pid) as memory:
            idle_mib = memory.current_mib()
            launched = click_materialize_all(page, ui, DATASET)
            runs = ui.wait_for_runs(
                lambda runs: any(r["status"] == "SUCCESS" and "retrieval_metrics" in r["assets"] for r in runs),
                3600,
                "the backfill",
            )
    return {
        "seconds": round(max(run["endTime"] for run in runs) - launched, 1),
        "peak_rss_mib": round(memory.peak_mib),
        "idle_ui_rss_mib": round(idle_mib),
        "runs": [
            {
                "assets": run["assets"],
                "seconds": round(run["endTime"] - run["startTime"], 1),
                "waited_s": round(run["startTime"] - launched, 1),
            }
            for run in sorted(runs, key=lambda run: run["startTime"])
        ],
    }


def main() -> None:
    # Alternating pairs: where the daemon's 30-s tick falls moves a UI run by up to half a minute.
    pairs = []
    with tempfile.TemporaryDirectory() as tmp:
        for attempt in range(1, REPEATS + 1):
            cli = cli_cold_run(Path(tmp) / f"cli{attempt}")
            print(f"CLI cold run {attempt}: {cli}")
            ui = ui_materialize_all(Path(tmp) / f"ui{attempt}")
            print(f"UI Materialize all {attempt}: {ui['seconds']} s, peak {ui['peak_rss_mib']} MiB")
            pairs.append(
                {
                    "cli_cold_run": cli,
                    "ui_materialize_all": ui,
                    "ratio_ui_to_cli": round(ui["seconds"] / cli["seconds"], 3),
                }
            )
    mean_ratio = sum(pair["ui_materialize_all"]["seconds"] for pair in pairs) / sum(
        pair["cli_cold_run"]["seconds"] for pair in pairs
    )
    result = {
        **header("ui_materialize_all", DATASET),
        "pairs": pairs,
        "ratio_of_totals": round(mean_ratio, 3),
        "goal": "≤ 1.5",
    }
    lines = [
        f"# UI *Materialize all* vs CLI cold run on {DATASET} ({result['date']}, {os.cpu_count()} CPUs)",
        "",
        "| pair | `xlr run` cold (s) | its peak RSS (MiB) | UI *Materialize all* cold, click to last run's end (s) "
        "| its peak RSS (MiB; idle UI) | ratio UI / CLI |",
        "|---|---|---|---|---|---|",
        *[
            f"| {i} | {p['cli_cold_run']['seconds']:.1f} | {p['cli_cold_run']['peak_rss_mib']} | "
            f"{p['ui_materialize_all']['seconds']:.1f} | {p['ui_materialize_all']['peak_rss_mib']} "
            f"({p['ui_materialize_all']['idle_ui_rss_mib']}) | {p['ratio_ui_to_cli']:.3f} |"
            for i, p in enumerate(pairs, 1)
        ],
        f"| all | | | | | **{mean_ratio:.3f}** (total UI time / total CLI time) |",
        "",
        "Runs of each UI backfill (one at a time: the instance's run queue on this machine):",
        "",
        "| pair | run | assets | started after click (s) | ran (s) |",
        "|---|---|---|---|---|",
        *[
            f"| {i} | {j} | {', '.join(r['assets'])} | {r['waited_s']:.1f} | {r['seconds']:.1f} |"
            for i, p in enumerate(pairs, 1)
            for j, r in enumerate(p["ui_materialize_all"]["runs"], 1)
        ],
        "",
    ]
    write_results(result, lines)


if __name__ == "__main__":
    main()

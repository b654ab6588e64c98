"""Benchmark: `xlr` as whole commands (process start, imports, Dagster instance, the work) on the shipped emoji_cldr.

In one invocation, on a temporary copy of emoji_cldr (empty embedding cache, new Dagster home): a cold `xlr run`
(10 languages; COPY in the table is the copied data folder), a no-op `xlr run --stale`, `xlr status`, `xlr sql`, and `xlr run --stale` after a new language's
caption file is dropped in; each as a wall time and a ratio to the cold run. The bare cost of starting Python and
importing dagster and torch is measured beside them, and the no-op run is profiled with pyinstrument
(benchmarks/results/noop_run_profile.txt), which says where its time goes.
Writes benchmarks/results/whole_commands.{json,md}.

Usage: .venv/bin/python benchmarks/whole_commands.py
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from results_io import RESULTS, emoji_copy_holding_back, header, write_results

NEW_LANGUAGE = "pl"


def timed(label: str, command: list[str], env: dict) -> dict:
    started = time.perf_counter()
    finished = subprocess.run(command, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if finished.returncode != 0:
        raise SystemExit(f"{label} failed:\n{finished.stderr[-3000:]}")
    print(f"{label}: {seconds:.2f} s", flush=True)
    shown = ["xlr", *command[3:]] if command[1:3] == ["-m", "xlr_pipeline.cli"] else ["python", *command[1:]]
    return {"step": label, "command": " ".join(shown), "seconds": round(seconds, 2), "stdout": finished.stdout}


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        data_dir, held_back, parked = emoji_copy_holding_back(Path(tmp), NEW_LANGUAGE)
        env = {**os.environ, "DAGSTER_HOME": str(Path(tmp) / "home")}
        xlr = [sys.executable, "-m", "xlr_pipeline.cli"]
        where = ["--data-dir", str(data_dir), "--dataset", "emoji_cldr"]
        steps = [
            timed("python start, nothing imported", [sys.executable, "-c", "pass"], env),
            timed("python start + import dagster", [sys.executable, "-c", "import dagster"], env),
            timed("python start + import torch", [sys.executable, "-c", "import torch"], env),
            timed("cold run (10 languages)", [*xlr, "run", *where], env),
            timed("no-op run (--stale, nothing changed)", [*xlr, "run", "--stale", *where], env),
            timed("status", [*xlr, "status", *where], env),
            timed("sql query", [*xlr, "sql", "SELECT count(*) AS rows FROM recall", "--data-dir", str(data_dir)], env),
        ]
        parked.rename(held_back)
        new_language = timed(f"new language file ({NEW_LANGUAGE}), run --stale", [*xlr, "run", "--stale", *where], env)
        steps.append(new_language)
        profile = RESULTS / "noop_run_profile.txt"
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pyinstrument",
                "--renderer",
                "text",
                "--outfile",
                str(profile),
                "-m",
                "xlr_pipeline.cli",
                "run",
                "--stale",
                *where,
            ],
            env=env,
            check=True,
            capture_output=True,
        )
        for step in steps:
            step["command"] = step["command"].replace(str(data_dir), "COPY")
    encoded_images = "image_embedding_shards" in new_language.pop("stdout")
    for step in steps:
        step.pop("stdout", None)
    cold = next(step["seconds"] for step in steps if step["step"].startswith("cold run"))
    for step in steps:
        step["ratio_to_cold"] = round(step["seconds"] / cold, 4)
    result = {**header("whole_commands", "emoji_cldr"), "steps": steps, "new_language_encoded_images": encoded_images}
    lines = [
        f"# Whole `xlr` commands on emoji_cldr ({result['date']}, {os.cpu_count()} CPUs)",
        "",
        "| step | command | wall time (s) | ratio to cold run |",
        "|---|---|---|---|",
        *[f"| {s['step']} | `{s['command']}` | {s['seconds']:.2f} | {s['ratio_to_cold']:.3f} |" for s in steps],
        "",
        f"The new-language run encoded images: {'yes' if encoded_images else 'no'}. Where the no-op run's time goes: "
        "`noop_run_profile.txt` (pyinstrument).",
        "",
    ]
    write_results(result, lines)


if __name__ == "__main__":
    main()

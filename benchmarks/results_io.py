"""What every benchmark here writes: benchmarks/results/<name>.json and .md, with the machine it ran on."""

from __future__ import annotations

import json
import os
import platform
from datetime import datetime, timezone
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def header(benchmark: str, dataset: str) -> dict:
    return {
        "benchmark": benchmark,
        "dataset": dataset,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
    }


def write_results(result: dict, markdown_lines: list[str]) -> None:
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{result['benchmark']}.json").write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    markdown = "\n".join(markdown_lines)
    (RESULTS / f"{result['benchmark']}.md").write_text(markdown)
    print(markdown)

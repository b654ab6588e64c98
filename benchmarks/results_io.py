"""What every benchmark here writes: benchmarks/results/<name>.json and .md, with the machine it ran on."""

from __future__ import annotations

import json
import os
import platform
import shutil
from datetime import UTC, datetime
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def header(benchmark: str, dataset: str) -> dict:
    return {
        "benchmark": benchmark,
        "dataset": dataset,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
    }


def emoji_copy_holding_back(tmp: Path, language: str) -> tuple[Path, Path, Path]:
    """A copy of the shipped emoji_cldr under `tmp`/data with one language's caption file moved aside: (data dir,
    where the file belongs, where it waits) — a benchmark drops it in later as a new language."""
    from xlr_pipeline.core.storage.outputs import DEFAULT_DATA_DIR

    data_dir = tmp / "data"
    shutil.copytree(DEFAULT_DATA_DIR / "emoji_cldr", data_dir / "emoji_cldr")
    held_back = data_dir / "emoji_cldr" / "captions" / f"{language}.tsv"
    parked = tmp / held_back.name
    held_back.rename(parked)
    return data_dir, held_back, parked


def write_results(result: dict, markdown_lines: list[str]) -> None:
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{result['benchmark']}.json").write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    markdown = "\n".join(markdown_lines)
    (RESULTS / f"{result['benchmark']}.md").write_text(markdown)
    print(markdown)

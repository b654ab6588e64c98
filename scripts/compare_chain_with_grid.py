"""Compare the chain's evaluation (`xlr run`) with the grid's cell of the same system: the default a grid adopted
should rank every test query exactly where that grid's seed-0 cell (or encoder ensemble) ranked it.

Usage:  python scripts/compare_chain_with_grid.py DATA_DIR GRID_HITS [--out comparison.md]
    DATA_DIR: the data folder of a finished `xlr run` (its results.duckdb and ranks/); GRID_HITS: the adopting grid
    run's `experiments/grid_hits.parquet`. The system compared is the chain's head as recorded in `runs` (objective,
    encoders, ensemble members), matched to the grid's label for it, at the head's seed.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import duckdb
import polars as pl

from xlr_pipeline.core.experiments.grid import encoder_ensemble_label
from xlr_pipeline.core.models.joined import model_parts


def chain_run(data_dir: Path, dataset: str) -> dict:
    """The latest trained (not random-baseline) run of `dataset` in the warehouse."""
    with duckdb.connect(str(data_dir / "results.duckdb"), read_only=True) as db:
        row = db.execute(
            "SELECT run_id, objective, text_model, image_model, head_config, augmentation FROM runs "
            "WHERE dataset = ? AND baseline_of IS NULL ORDER BY created_at DESC LIMIT 1",
            [dataset],
        ).fetchone()
    if row is None:
        raise SystemExit(f"{data_dir}: no trained run of {dataset} in results.duckdb")
    return dict(zip(["run_id", "objective", "text_model", "image_model", "head_config", "augmentation"], row))


def grid_label(run: dict) -> tuple[str, str, str, int]:
    """(augmentation label, main text model, main image model, seed) of the grid cell that is this run's system."""
    config = json.loads(run["head_config"]) if isinstance(run["head_config"], str) else run["head_config"]
    members = config.get("ensemble")
    if not members:
        hubness = config.get("hubness", "none")
        label = run["augmentation"] if hubness == "none" else f"{run['augmentation']} + {hubness}"
        return label, run["text_model"], run["image_model"], config["seed"]
    label = encoder_ensemble_label([(member["text_model"], member["image_model"]) for member in members[1:]])
    return label, members[0]["text_model"], members[0]["image_model"], config["seed"]


def compare(data_dir: Path, hits_path: Path, dataset: str) -> tuple[str, bool]:
    run = chain_run(data_dir, dataset)
    label, text_model, image_model, seed = grid_label(run)
    hits = pl.read_parquet(hits_path).filter(
        (pl.col("objective") == run["objective"])
        & (pl.col("augmentation") == label)
        & (pl.col("text_model") == model_parts(text_model)[0])
        & (pl.col("image_model") == model_parts(image_model)[0])
        & (pl.col("seed") == seed)
    )
    if hits.is_empty():
        raise SystemExit(f"{hits_path}: no cell {run['objective']} / {label} / seed {seed}")
    ranks = pl.concat(
        [pl.read_parquet(path) for path in sorted((data_dir / "ranks" / dataset / run["run_id"]).glob("*.parquet"))]
    )
    lines = [
        f"# `xlr run` against the grid's cell of the same system ({dataset})",
        "",
        f"Chain run `{run['run_id']}` ({data_dir}); grid cell: {run['objective']} / {label} / "
        f"{text_model} + {image_model} / seed {seed}, grid run `{hits['grid_run_id'][0]}` ({hits_path}).",
        "",
        "| language | direction | queries | ranks identical |",
        "|---|---|---|---|",
    ]
    identical = True
    for (language, direction), frame in ranks.group_by("language", "direction", maintain_order=True):
        grid = hits.filter((pl.col("language") == language) & (pl.col("direction") == direction)).sort("image")
        same = frame["rank"].to_list() == grid["rank"].to_list()
        identical &= same
        lines.append(f"| {language} | {direction} | {frame.height} | {'yes' if same else 'no'} |")
    verdict = "every rank identical" if identical else "ranks differ"
    lines += ["", f"**{verdict}** ({ranks.height} ranks)."]
    return "\n".join(lines) + "\n", identical


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data_dir", type=Path)
    parser.add_argument("grid_hits", type=Path)
    parser.add_argument("--dataset", default="emoji_cldr")
    parser.add_argument("--out", type=Path, help="also write the Markdown here")
    args = parser.parse_args()
    markdown, identical = compare(args.data_dir, args.grid_hits, args.dataset)
    print(markdown)
    if args.out:
        args.out.write_text(markdown, "utf-8")
    return 0 if identical else 1


if __name__ == "__main__":
    sys.exit(main())

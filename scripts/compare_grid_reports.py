"""Compare two grid reports (a committed one and a fresh clone's rerun): which lines match, which differ only in
their numbers (and by how much), which differ in words (a verdict, a chosen system), and whether every verdict of
"What the numbers say" and both tables of comparisons is unchanged.

Usage:  python scripts/compare_grid_reports.py COMMITTED.md RERUN.md [--out reproduction.md]
            [--committed-label TEXT] [--rerun-label TEXT]   (how the Markdown names the two reports)
            [--tables COMMITTED_DIR RERUN_DIR]   (two runs' `experiments` folders: their tables compared bit for bit)
            [--rerun-objectives OBJECTIVE ...]   (the rerun was `xlr grid --objectives ...`: only the tables of
                                                   its cells are compared; the reports cannot be)
The run ids and the wall-time ("Cost:") line are set aside: they differ by design.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

NUMBER = re.compile(r"[-+]?\d+(?:\.\d+)?(?:e[-+]?\d+)?")
RUN_ID = re.compile(r"\b[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b")
VERDICT = re.compile(r"(significant gain|significant loss|equivalent \(±[\d.]+\)|inconclusive)")
CHOICE = re.compile(r"Highest mean validation score[^*]*\*\*([^*]+)\*\* \(([\d.]+)")
COMPARISON_ROW = re.compile(r"^\| (.+?) \| (\d+) \| .* \| ([^|]+) \|$")  # comparison, k, ..., verdict


def verdicts(text: str) -> dict[tuple[str, str], str]:
    """(comparison, k) → verdict, from the rows of the comparison tables (every comparison, both families)."""
    table = {}
    for line in text.splitlines():
        match = COMPARISON_ROW.match(line)
        if match and VERDICT.fullmatch(match[3].strip()):
            table[(match[1], match[2])] = match[3].strip()
    return table


def comparable_lines(text: str) -> list[str]:
    return [RUN_ID.sub("RUN", line) for line in text.splitlines() if not line.startswith("Cost:")]


def compare(committed: str, rerun: str) -> dict:
    ours, theirs = comparable_lines(committed), comparable_lines(rerun)
    before, after = verdicts(committed), verdicts(rerun)
    choices = tuple(
        f"{match[1]} (validation score {match[2]})" if (match := CHOICE.search(text)) else "none"
        for text in (committed, rerun)
    )
    verdict_changes = sorted(
        (key, before.get(key, "absent"), after.get(key, "absent"))
        for key in before.keys() | after.keys()
        if before.get(key) != after.get(key)
    )
    if len(ours) != len(theirs):
        return {
            "same_shape": False,
            "lines": (len(ours), len(theirs)),
            "comparisons": len(before),
            "verdict_changes": verdict_changes,
            "choices": choices,
        }
    numeric, worded, largest = [], [], 0.0
    for number, (a, b) in enumerate(zip(ours, theirs), start=1):
        if a == b:
            continue
        if NUMBER.sub("#", a) == NUMBER.sub("#", b):
            delta = max(abs(float(x) - float(y)) for x, y in zip(NUMBER.findall(a), NUMBER.findall(b)))
            numeric.append((number, delta))
            largest = max(largest, delta)
        else:
            worded.append((number, a, b))
    verdicts_changed = [(n, a, b) for n, a, b in worded if VERDICT.findall(a) != VERDICT.findall(b)]
    return {
        "same_shape": True,
        "lines": (len(ours), len(theirs)),
        "identical": sum(a == b for a, b in zip(ours, theirs)),
        "numeric": numeric,
        "largest_numeric_difference": largest,
        "worded": worded,
        "verdicts_changed": verdicts_changed,
        "comparisons": len(before),
        "verdict_changes": verdict_changes,
        "choices": choices,
    }


# The tables a grid run writes (`experiments/`): every test rank, validation score and tuning trial.
GRID_TABLES = ("grid_hits.parquet", "grid_validation.parquet", "tuning.parquet")


def compare_tables(committed: Path, rerun: Path) -> tuple[list[str], bool]:
    """One line per grid table: identical bit for bit (its run id column and the folder of a fine-tuned encoder's
    weights file in model ids set aside: the clone's location; the file name carries the weights' content hash)
    or how it differs. Also whether every table is identical."""
    lines, identical = [], True
    for name in GRID_TABLES:
        ours, theirs = (comparable_table(folder / name) for folder in (committed, rerun))
        table_identical = ours.equals(theirs)
        identical = identical and table_identical
        if table_identical:
            lines.append(
                f"- `{name}`: identical bit for bit ({ours.height} rows, {ours.width} columns; run ids and the "
                "clone's folder in fine-tuned encoders' model ids aside)."
            )
        elif ours.schema != theirs.schema or ours.height != theirs.height:
            lines.append(f"- `{name}`: different shape ({ours.shape} against {theirs.shape}).")
        else:
            differing = ours.with_row_index().join(theirs.with_row_index(), on=ours.columns + ["index"], how="anti")
            lines.append(f"- `{name}`: {differing.height} of {ours.height} rows differ.")
    return lines, identical


def comparable_table(path: Path):
    """A grid table without its run id column and with the clone's folder cut from fine-tuned encoders' model ids."""
    import polars as pl

    frame = pl.read_parquet(path)
    models = [c for c in frame.columns if c.endswith("_model") and frame.schema[c] == pl.String]
    return frame.drop("grid_run_id").with_columns(pl.col(models).str.replace(r"@.*/", "@"))


# What names a cell in every grid table; a random head's rows carry objective "random_init" and its cell's
# other columns, so random twins of different objectives' cells share these columns.
CELL = ("objective", "augmentation", "text_model", "image_model")
RANDOM = "random_init"


def compare_table_cells(committed: Path, rerun: Path, objectives: list[str]) -> tuple[list[str], bool]:
    """For a rerun of some objectives only: per grid table, whether every row of those objectives' cells that
    both runs have is identical, and whether every random-head row of those cells is one of the committed run's
    (which also holds the random twins of its other objectives' cells). Cells only the rerun has (a smaller grid's
    English-only baseline is its first objective) are named, not compared. Also whether all compared rows match."""
    import polars as pl

    lines, reproduced = [], True
    for name in GRID_TABLES:
        ours, theirs = (comparable_table(folder / name) for folder in (committed, rerun))
        if ours.schema != theirs.schema:
            lines.append(f"- `{name}`: different columns ({ours.columns} against {theirs.columns}).")
            reproduced = False
            continue
        cell = [c for c in CELL if c in ours.columns]
        trained = pl.col("objective").is_in(objectives)
        shared = theirs.filter(trained).select(cell).unique().join(ours.select(cell).unique(), on=cell)
        only_rerun = theirs.filter(trained).select(cell).unique().join(shared, on=cell, how="anti").sort(cell)
        ours_trained, theirs_trained = (frame.join(shared, on=cell).sort(frame.columns) for frame in (ours, theirs))
        twins = shared.drop("objective").unique()
        rerun_random = theirs.filter(pl.col("objective") == RANDOM).join(twins, on=cell[1:])
        unmatched_random = rerun_random.join(ours, on=ours.columns, how="anti", nulls_equal=True).height
        same = ours_trained.equals(theirs_trained)
        lines.append(
            f"- `{name}`: {shared.height} cells of {', '.join(objectives)} in both runs: "
            + (
                f"identical bit for bit ({ours_trained.height} rows)"
                if same
                else f"different ({ours_trained.height} rows committed, {theirs_trained.height} rerun)"
            )
            + f"; {rerun_random.height - unmatched_random} of {rerun_random.height} random-head rows of those cells "
            f"found in the committed table; {only_rerun.height} cells only in the rerun"
            + (
                f" ({'; '.join(' / '.join(str(v) for v in row) for row in only_rerun.iter_rows())})."
                if only_rerun.height
                else "."
            )
        )
        reproduced = reproduced and same and not unmatched_random
    return lines, reproduced


def as_markdown(result: dict, committed: str, rerun: str) -> str:
    lines = [
        f"# Reproduction of {committed}",
        "",
        f"Rerun: {rerun} (compared by `scripts/compare_grid_reports.py`).",
        "",
    ]
    lines += [
        f"Configuration chosen on validation: {result['choices'][0]} → {result['choices'][1]}.",
        "",
        f"Verdicts of the {result['comparisons']} comparisons (both families, every k): "
        f"{len(result['verdict_changes'])} changed.",
        "",
        *(f"- {name}, R@{k}: {old} → {new}" for (name, k), old, new in result["verdict_changes"]),
        "",
    ]
    if not result["same_shape"]:
        return "\n".join([*lines, f"Line by line: {result['lines'][0]} lines against {result['lines'][1]}.", ""])
    total = result["lines"][0]
    lines += [
        f"- {result['identical']} of {total} lines identical (run ids and the wall-time line set aside).",
        f"- {len(result['numeric'])} lines differ only in their numbers; largest difference "
        f"{result['largest_numeric_difference']:.4g}.",
        f"- {len(result['worded'])} lines differ in words; verdicts changed: {len(result['verdicts_changed'])}.",
        "",
    ]
    for number, committed_line, rerun_line in result["worded"]:
        lines += [f"Line {number}:", "", f"    committed: {committed_line}", f"    rerun:     {rerun_line}", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("committed", type=Path)
    parser.add_argument("rerun", type=Path)
    parser.add_argument("--out", type=Path, help="write the Markdown here (default: print it)")
    parser.add_argument("--committed-label", help="how to name the committed report (default: its path)")
    parser.add_argument("--rerun-label", help="how to name the rerun (default: its path)")
    parser.add_argument("--tables", nargs=2, type=Path, metavar=("COMMITTED_DIR", "RERUN_DIR"))
    parser.add_argument("--rerun-objectives", nargs="+", metavar="OBJECTIVE")
    args = parser.parse_args(argv)
    committed_label = args.committed_label or f"`{args.committed}`"
    rerun_label = args.rerun_label or f"`{args.rerun}`"
    if args.rerun_objectives:
        if not args.tables:
            parser.error("--rerun-objectives compares the runs' tables: give --tables")
        table_lines, reproduced = compare_table_cells(*args.tables, args.rerun_objectives)
        markdown = "\n".join(
            [
                f"# Reproduction of the {', '.join(args.rerun_objectives)} cells of {committed_label}",
                "",
                f"Rerun: {rerun_label} (compared by `scripts/compare_grid_reports.py --rerun-objectives`).",
                "",
                "The grid's tables (every test rank, validation score and tuning trial of those cells):",
                "",
                *table_lines,
                "",
            ]
        )
    else:
        result = compare(args.committed.read_text("utf-8"), args.rerun.read_text("utf-8"))
        markdown = as_markdown(result, committed_label, rerun_label)
        reproduced = not result["verdict_changes"] and not result.get("verdicts_changed")
        if args.tables:
            table_lines, tables_identical = compare_tables(*args.tables)
            reproduced = reproduced and tables_identical
            heading = "The grid's tables (every test rank, validation score and tuning trial):"
            markdown = "\n".join([markdown.rstrip("\n"), "", heading, "", *table_lines, ""])
    if args.out:
        args.out.write_text(markdown, "utf-8")
    else:
        print(markdown)
    return 0 if reproduced else 1


if __name__ == "__main__":
    sys.exit(main())

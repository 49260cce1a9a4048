"""The long-range task's part of a comparison report (``hybridrnn compare ... --lengths``): for each model, the
seeds that solved each length and the longest length solved by at least half of them."""
from __future__ import annotations

import pandas as pd

from hybridrnn.tasks.long_range_config import SOLVED_CRITERIA


def longest_solved(results: pd.DataFrame, column: str, threshold: float) -> tuple[list[str], list[list[str]]]:
    """Table ``(header, rows)``: for each model, the seeds solving each length (``column`` < ``threshold``) and
    the longest length solved by at least half of the seeds."""
    lengths = sorted(results["length"].dropna().unique())
    header = ["model"] + [f"T={int(L)}" for L in lengths] + ["longest solved"]
    rows = []
    for model in dict.fromkeys(results["model"]):
        row, solved = [str(model)], []
        for L in lengths:
            values = results[(results["model"] == model) & (results["length"] == L)][column].dropna()
            k = int((values < threshold).sum())
            row.append(f"{k}/{len(values)}" if len(values) else "-")
            if len(values) and k * 2 >= len(values):
                solved.append(int(L))
        row.append(f"**{max(solved)}**" if solved else "none")
        rows.append(row)
    return header, rows


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    def row_line(cells: list[str]) -> str:
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"

    return "\n".join([row_line(header), "|" + "---|" * len(header)] + [row_line(row) for row in rows])


def solved_sections(problem: str, results: pd.DataFrame) -> list[tuple[str, str]]:
    """``[("Longest length solved", markdown)]`` for a comparison over lengths of a problem with a "solved"
    threshold (adding, copy); [] otherwise."""
    criterion = SOLVED_CRITERIA.get(problem)
    if criterion is None or "length" not in results.columns or results["length"].isna().all():
        return []
    column, threshold, description = criterion
    if column not in results.columns:
        return []
    table = markdown_table(*longest_solved(results, column, threshold))
    note = (f"Solved: {description}. Each cell: seeds that solved that length; 'longest solved': the longest "
            "length solved by at least half of the seeds.")
    return [("Longest length solved", f"{table}\n\n{note}")]

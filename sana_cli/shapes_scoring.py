"""The parts `sana shapes score` shares between images and clips: the output checks, the score table and the
per-prompt rows file."""

from __future__ import annotations

import json
from pathlib import Path

from rich.table import Table

from sana.errors import UsageError

from . import console


def check_outputs(out: Path | None, rows: Path | None, force: bool, suffixes: tuple[str, ...], kind: str,
                  hint: str) -> None:
    """Fail before the model loads: an existing output without --force, or a grid name of no known `kind`
    ("image", "clip") format."""
    for path in (out, rows):
        if path is not None and path.exists() and not force:
            raise UsageError(f"{path} exists", "pass --force to overwrite it")
    if out is not None and out.suffix.lower() not in suffixes:
        raise UsageError(f"cannot tell the {kind} format of {out}", hint)


def print_scores(report, title: str, sets: tuple[str, ...], attributes: tuple[str, ...], unit: str) -> None:
    """A row a non-empty set: its count of `unit` ("prompts", "clips"), % fully correct and % per attribute."""
    table = Table(title=title, header_style="bold")
    for column in ("set", unit, "fully correct", *attributes):
        table.add_column(column.replace("_", " "), justify="left" if column == "set" else "right")
    for name in sets:
        count = len(report.rows_of(name))
        if count:
            table.add_row(name, str(count), f"{report.percent(name):.1f}%",
                          *[f"{report.percent(name, a):.1f}%" for a in attributes])
    console.table(table)


def write_score_rows(rows: Path, report) -> None:
    """One JSON line per scored prompt."""
    rows.parent.mkdir(parents=True, exist_ok=True)
    rows.write_text("".join(json.dumps(p.row()) + "\n" for p in report.prompts), encoding="utf-8")

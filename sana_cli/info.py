"""`sana info FILE`: the generation metadata stored in an image or a clip."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table
from rich.text import Text

from . import console


def info_command(
    file: Annotated[Path, typer.Argument(help="An image (PNG, JPEG, WebP) or clip (MP4, GIF, animated WebP, "
                                              "PNG-frames folder) written by sana, or an image with A1111 "
                                              "parameters.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the full JSON record to stdout.")] = False,
) -> None:
    """Show the settings an image or clip was generated with."""
    from sana.outputs import read_metadata

    record = read_metadata(file)
    if as_json:
        # Plain write: rich would wrap long lines and colour the JSON, which breaks piping into other tools.
        typer.echo(record.to_json(indent=2))
        return
    console.table(_table(file, record))


def _table(file: Path, record) -> Table:
    table = Table(title=Text(str(file)), show_header=False, title_justify="left")
    table.add_column("field", style="bold")
    table.add_column("value", overflow="fold")
    rows: list[tuple[str, Any]] = [
        ("Prompt", record.prompt),
        ("Negative prompt", record.negative_prompt),
        ("Model", record.model),
        ("Model repo", record.model_repo if record.model_repo != record.model else None),
        ("Revision", record.model_revision),
        ("Family", record.family),
        ("Seed", record.seed),
        ("Steps", record.steps),
        ("CFG scale", record.guidance),
        ("PAG scale", f"{record.pag} (layers {', '.join(map(str, record.pag_layers))})" if record.pag else None),
        ("Sampler", record.sampler),
        ("Flow shift", record.flow_shift),
        ("Size", f"{record.width}x{record.height}" if record.width and record.height else None),
        ("Frames", record.frames),
        ("FPS", f"{record.fps:g}" if record.fps else None),
        ("Dtype", record.dtype),
        ("LoRAs", ", ".join(f"{lora['path']} x{lora.get('scale', 1.0)}" for lora in record.loras)),
        ("Version", f"sana {record.version}" if record.version else None),
    ]
    rows += [(f"Time: {phase}", f"{seconds:.2f} s") for phase, seconds in record.timings.items()]
    for key, value in record.extra.items():
        if isinstance(value, dict):  # e.g. another tool's A1111 keys: one row each
            rows += [(f"{key}: {inner}", inner_value) for inner, inner_value in value.items()]
        else:
            rows.append((key, value))
    for name, value in rows:
        if value not in (None, ""):
            # Text, not markup: prompts often contain [brackets] that rich would take for styles.
            table.add_row(Text(name), Text(str(value)))
    return table

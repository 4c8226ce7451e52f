"""Help that never cuts an option's name."""

from __future__ import annotations

from typer.core import TyperCommand, TyperGroup

# Typer's help puts an option's long name, short name and --no- name in columns that rich shrinks like any other
# when the width is short (a terminal of 80 columns, or a pipe, which rich takes for one), so `--checkpoint-every`
# printed as `--checkpoint-eve…`. Its options panel is rebuilt here with each name column as wide as its longest
# name and a flag's two names in one (`--full / --lora`, Click's own way, wrapped at the slash when long); only
# the type and help columns narrow, and they wrap instead of cutting a word off.

def _whole_names_panel(panel):
    """Typer's panel of options or arguments with no name cut; any other layout is returned as it came."""
    import copy

    from rich.columns import Columns
    from rich.panel import Panel
    from rich.table import Table
    from rich.text import Text

    table = getattr(panel, "renderable", None)
    if not isinstance(panel, Panel) or not isinstance(table, Table) or len(table.columns) not in (6, 7):
        return panel
    # Typer's columns: [required *], long names, short names, --no- names, short --no- names, type, help.
    *required, long, short, negative, negative_short, types, help_ = [list(c.cells) for c in table.columns]

    def joined(first, second):  # a flag's two names: `--full / --lora`
        return Text.assemble(first, " / ", second) if isinstance(second, Text) and second.plain else first

    # This Typer shows "<bool>" as the type of an on/off flag, which takes no value: `--json true` is an error.
    types = [Text("") if isinstance(cell, Text) and cell.plain.strip() == "<bool>" else cell for cell in types]
    names = [joined(a, b) for a, b in zip(long, negative)]
    shorts = [joined(a, b) for a, b in zip(short, negative_short)]
    for cell in types + [item for cell in help_ if isinstance(cell, Columns) for item in cell.renderables]:
        if isinstance(cell, Text):
            cell.overflow = "fold"  # a long word wraps rather than ending in "…"

    rebuilt = Table(highlight=table.highlight, show_header=False, expand=table.expand, box=table.box,
                    show_lines=table.show_lines, leading=table.leading, border_style=table.border_style,
                    row_styles=table.row_styles, pad_edge=table.pad_edge, padding=table.padding)
    kept = []
    for cells in (*required, names, shorts):
        longest = max((len(word) for cell in cells for word in str(cell).split()), default=0)
        if longest:  # an empty column would still take its padding
            rebuilt.add_column(width=longest, overflow="fold")
            kept.append(cells)
    rebuilt.add_column(overflow="fold")
    rebuilt.add_column(overflow="fold", ratio=1)  # the room left goes to the help, none between names
    for row in zip(*kept, types, help_):
        rebuilt.add_row(*row)
    panel = copy.copy(panel)
    panel.renderable = rebuilt
    return panel


def _keep_option_names_whole() -> None:
    """Typer's options panel printed through `_whole_names_panel`."""
    from typer import rich_utils

    typer_panel = getattr(rich_utils, "_print_options_panel", None)
    if typer_panel is None or getattr(typer_panel, "names_whole", False):  # another typer: its own layout stays
        return

    def options_panel(*, console, **kwargs):
        printed = []

        class Recorder:  # typer's function prints its panel: kept here to print rebuilt
            def print(self, *objects, **options):
                printed.append((objects, options))

        typer_panel(console=Recorder(), **kwargs)
        for objects, options in printed:
            console.print(*map(_whole_names_panel, objects), **options)

    options_panel.names_whole = True
    rich_utils._print_options_panel = options_panel


def _set_up_before_help(cls) -> None:
    """`_keep_option_names_whole` run when `cls` first formats help, not at start: typer.rich_utils takes a tenth
    of a second to import, which no command should pay for unless it prints help."""
    typer_format_help = cls.format_help

    def format_help(self, ctx, formatter):
        _keep_option_names_whole()
        return typer_format_help(self, ctx, formatter)

    cls.format_help = format_help


def keep_option_names_whole() -> None:
    """Every command's help (Typer's commands and groups) prints option names whole."""
    for cls in (TyperCommand, TyperGroup):
        _set_up_before_help(cls)

"""The `sana` Typer app: global options, subcommand registration and one place for error handling."""

from __future__ import annotations

import sys
from typing import Optional

import typer
from typer.core import TyperCommand, TyperGroup

from sana import __version__
from sana.errors import SanaError

from . import console
from .bench import bench
from .comfy import comfy_app
from .finetune import finetune
from .gen import gen
from .info import info_command
from .models import models_app
from .serve import serve
from .shapes import shapes_app
from .sprint import sprint
from .video import video
from .world import WorldCommand, world

app = typer.Typer(
    name="sana",
    help="Generate images and videos with NVIDIA's SANA linear diffusion transformers.",
    no_args_is_help=True,
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},  # subcommands inherit it
)
app.command("gen")(gen)
app.command("sprint")(sprint)
app.command("video")(video)
app.command("world", cls=WorldCommand)(world)
app.add_typer(models_app, name="models")
app.command("info")(info_command)
app.command("bench")(bench)
app.add_typer(shapes_app, name="shapes")
app.command("finetune")(finetune)
app.command("serve")(serve)
app.add_typer(comfy_app, name="comfy")


# ------------------------------------------------------------------------------------------- help layout
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

    typer_panel = rich_utils._print_options_panel
    if getattr(typer_panel, "names_whole", False):
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


for _cls in (TyperCommand, TyperGroup):
    _set_up_before_help(_cls)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"sana {__version__}")
        raise typer.Exit()


@app.callback()
def _global_options(
    version: Optional[bool] = typer.Option(
        None, "--version", callback=_print_version, is_eager=True, help="Print the version and exit."
    ),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="More detail; full tracebacks on errors."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Only errors and results."),
    threads: Optional[int] = typer.Option(None, "--threads", min=1, envvar="SANA_THREADS", help="CPU threads for work on the CPU (default: the idle cores)."),
) -> None:
    console.settings.verbose = verbose
    console.settings.quiet = quiet and not verbose
    if threads:
        import os

        os.environ["SANA_THREADS"] = str(threads)  # read by sana.device.pick_device (torch is not imported yet)


def main() -> None:
    """Console-script entry: runs the app and turns errors into one line and an exit code."""
    from .launch import arguments_from_parent

    from_parent = arguments_from_parent()
    if from_parent is not None:  # one of several processes: the parent's command, less --gpus
        sys.argv[1:] = from_parent
    # --verbose must be known here too: errors can be raised before the callback has run.
    verbose = any(a in ("--verbose", "-v") for a in sys.argv[1:])
    from typer import TyperException  # the base of the Click exceptions typer raises
    from typer.exceptions import Abort

    try:
        # Not standalone: Click's usage errors come here to be printed as one line like ours.
        code = app(standalone_mode=False)
    except TyperException as exc:  # unknown option (with Click's "Possible options"), bad value, ...
        if type(exc).__name__ == "NoArgsIsHelpError":  # `sana` or `sana models` alone: the help
            exc.show()
        else:
            ctx = getattr(exc, "ctx", None)
            where = f" (see {ctx.command_path} --help)" if ctx is not None else ""
            console.error(" ".join(exc.format_message().split()) + where)
        sys.exit(getattr(exc, "exit_code", 2))
    except Abort:
        console.error("aborted")
        sys.exit(1)
    except KeyboardInterrupt:
        console.error("interrupted")
        sys.exit(130)
    except SanaError as exc:
        if verbose:
            console.err.print_exception()
        console.error(str(exc))
        sys.exit(exc.exit_code)
    except Exception as exc:  # anything unexpected: one line unless --verbose
        if verbose:
            console.err.print_exception()
        console.error(f"{type(exc).__name__}: {exc} (run with --verbose for the traceback)")
        sys.exit(1)
    if code == 130:  # Ctrl-C in a command that says nothing of it itself: Click returns 130 instead of raising
        console.error("interrupted")
    sys.exit(code if isinstance(code, int) else 0)

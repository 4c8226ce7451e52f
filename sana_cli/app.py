"""The `sana` Typer app: global options, subcommand registration and one place for error handling."""

from __future__ import annotations

import sys
from typing import Optional

import typer

from sana import __version__
from sana.errors import SanaError

from . import console
from .bench import bench
from .comfy import comfy_app
from .finetune import finetune
from .gen import gen
from .help_layout import keep_option_names_whole
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

keep_option_names_whole()


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
    from sana.trace import mark

    mark("cli start")
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

"""Console output shared by every command: messages go to stderr, results to stdout. Message text is escaped, so
brackets in it (`sana-cli[serve]`, a path) print as written instead of being read as rich markup."""

from __future__ import annotations

from dataclasses import dataclass

from rich.console import Console
from rich.markup import escape


@dataclass
class Settings:
    verbose: bool = False
    quiet: bool = False
    json: bool = False  # --json: a written file is one JSON line on stdout, not its path


settings = Settings()
out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)


def table(renderable) -> None:
    """A table on stdout in full: as wide as its content needs, whatever the terminal's width (a narrow terminal
    wraps the lines; a pipe or a CI log gets every column whole instead of cut to 80 characters)."""
    from rich.measure import Measurement

    needed = Measurement.get(out, out.options.update_width(100_000), renderable).maximum
    width = out.width
    out.width = max(width, needed)  # print(width=...) cannot exceed the console's own width
    try:
        out.print(renderable, crop=False)
    finally:
        out.width = width


def notice(message: str) -> None:
    """A one-line notice (suppressed by --quiet)."""
    if not settings.quiet:
        err.print(f"[yellow]note:[/yellow] {escape(message)}", highlight=False)


def info(message: str) -> None:
    if not settings.quiet:
        err.print(escape(message), highlight=False)


def debug(message: str) -> None:
    if settings.verbose:
        err.print(f"[dim]{escape(message)}[/dim]", highlight=False)


def error(message: str) -> None:
    err.print(f"[bold red]error:[/bold red] {escape(message)}", highlight=False)

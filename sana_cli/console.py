"""Console output shared by every command: messages go to stderr, results to stdout. Message text is escaped, so
brackets in it (`sana-cli[serve]`, a path) print as written instead of being read as rich markup."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from rich.console import Console
from rich.markup import escape


@dataclass
class Settings:
    verbose: bool = False
    quiet: bool = False
    json: bool = False  # --json: a written file is one JSON line on stdout, not its path


settings = Settings()
# No emoji codes: a prompt or a file name with ":fire:" in it is printed as written.
out = Console(soft_wrap=True, emoji=False)
err = Console(stderr=True, soft_wrap=True, emoji=False)


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


def result(text: str) -> None:
    """A result on stdout (a written file's path, ...) exactly as given: no markup, no highlighting."""
    out.print(text, markup=False, highlight=False)


def json_line(data) -> None:
    """One JSON object on stdout, on one line (--json), for a script to read."""
    import json

    out.print(json.dumps(data), markup=False, highlight=False, soft_wrap=True)


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


def progress(*columns, transient: bool = False, enabled: bool = True, every_s: float = 10.0):
    """rich's `Progress` with `columns` on a terminal; where stderr is not one (a log file, a pipe, CI), a
    `ProgressLog` with the same calls, which prints each task as a plain line at most every `every_s` seconds
    (a bar redrawn into a file shows nothing until the end). `enabled=False` or --quiet: nothing."""
    from rich.progress import Progress

    if not enabled or settings.quiet:
        return Progress(*columns, console=err, disable=True)
    if err.is_terminal:
        return Progress(*columns, console=err, transient=transient)
    return ProgressLog(every_s)


@dataclass
class _LoggedTask:
    description: str
    total: float | None
    fields: dict
    completed: float = 0
    started: float = field(default_factory=time.perf_counter)
    printed: float = 0.0  # when its last line was printed (0: never)
    shown: str = ""  # what that line said (without its timing), so no line repeats it


class ProgressLog:
    """The calls of rich's `Progress` that our commands make (`add_task`, `update`, `console.print`, a `with`
    block), as plain lines: `description done/total status (elapsed, eta)`."""

    def __init__(self, every_s: float = 10.0):
        self.every_s, self.console, self.tasks = every_s, err, []

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        for task in self.tasks:  # where each task stopped, if its last line does not say so already
            if self._state(task) != task.shown:
                self._print(task)

    def add_task(self, description: str, total: float | None = None, **fields) -> int:
        self.tasks.append(_LoggedTask(description, total, fields))
        return len(self.tasks) - 1

    def update(self, task_id: int, *, completed: float | None = None, total: float | None = None,
               advance: float | None = None, description: str | None = None, **fields) -> None:
        task = self.tasks[task_id]
        if description is not None and description != task.description:
            task.description, task.started, task.printed = description, time.perf_counter(), 0.0  # a new phase
        task.total = task.total if total is None else total
        task.completed = completed if completed is not None else task.completed + (advance or 0)
        task.fields.update(fields)
        now = time.perf_counter()
        finished = task.total is not None and task.completed >= task.total
        if (finished or now - (task.printed or task.started) >= self.every_s) and self._state(task) != task.shown:
            self._print(task)

    def _print(self, task: _LoggedTask) -> None:
        task.printed, task.shown = time.perf_counter(), self._state(task)
        if settings.quiet:  # --quiet: the state is kept, nothing printed
            return
        elapsed = task.printed - task.started
        timing = f"{elapsed:.0f} s"
        if task.total and 0 < task.completed < task.total:
            timing += f", eta {elapsed / task.completed * (task.total - task.completed):.0f} s"
        err.print(escape(f"{task.shown} ({timing})"), highlight=False, soft_wrap=True)

    @staticmethod
    def _state(task: _LoggedTask) -> str:
        done = f"{task.completed:g}" + (f"/{task.total:g}" if task.total is not None else "")
        return " ".join(part for part in (task.description, done, str(task.fields.get("status") or "")) if part)

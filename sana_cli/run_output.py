"""What a generating run shows and writes as it goes: progress (a bar on a terminal, plain lines elsewhere),
output folders checked before any work, each written file announced (or as a JSON line), and a save the disk
refuses kept under a temporary name."""

from __future__ import annotations

import os
from pathlib import Path

from sana.errors import SanaError, UsageError

from . import console


def generate_with_progress(pipe, request, on_output=None, **generate_kwargs):
    """`pipe.generate(request, events, **generate_kwargs)` (an image or clip pipeline) with progress and notices on
    the console: a bar on a terminal, plain lines elsewhere (logs, pipes). `on_output(index, image, details)` as each
    image is decoded."""
    from sana.pipelines.common import Events

    if not console.err.is_terminal:
        lines = ProgressLines()
        events = Events(on_phase=lines.phase, on_step=lines.step, on_notice=console.notice, on_output=on_output)
        return pipe.generate(request, events, **generate_kwargs)

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TimeRemainingColumn(), console=console.err, transient=True, disable=console.settings.quiet) as bar:
        task = bar.add_task("encode", total=request.steps)
        events = Events(on_phase=lambda name: bar.update(task, description=name),
                        on_step=lambda done, total: bar.update(task, completed=done, total=total),
                        on_notice=console.notice, on_output=on_output)
        return pipe.generate(request, events, **generate_kwargs)


class ProgressLines:
    """Progress for output that is not a terminal: one line a phase, and a step line at most every
    `every_s` seconds (and the last step), so a CI log shows the run moving without a line a step; the
    rate-limited lines are `console.ProgressLog`'s."""

    def __init__(self, every_s: float = 5.0):
        self.log = console.ProgressLog(every_s)
        self.task = self.log.add_task("step")

    def phase(self, name: str) -> None:
        console.info(f"{name}...")
        self.log.update(self.task, description=name, completed=0, total=None)

    def step(self, done: int, total: int) -> None:
        self.log.update(self.task, completed=done, total=total)


def check_output_dirs(paths: list[Path]) -> None:
    """Every output's folder can be written (or created where it is missing), before any work: a read-only or
    missing parent fails now, in one line, not after the images are made."""
    for folder in dict.fromkeys(Path(p).expanduser().absolute().parent for p in paths):
        existing = folder
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent
        if not existing.is_dir():
            raise UsageError(f"cannot write to {folder}: {existing} is not a directory", "choose another -o")
        if not os.access(existing, os.W_OK | os.X_OK) or not _can_create_in(existing):
            raise UsageError(f"cannot write to {folder}: {existing} is not writable", "choose another -o")


def _can_create_in(folder: Path) -> bool:
    """Whether an entry can really be made in `folder`: permission bits do not tell for root, a read-only mount or
    /proc, so a scratch folder is made and removed."""
    import tempfile

    try:
        os.rmdir(tempfile.mkdtemp(prefix=".sana-write-check-", dir=folder))
    except OSError:
        return False
    return True


def print_written(path: Path, record=None) -> None:
    """A written file on stdout: its path, or with --json one JSON line a script can read (its settings from
    `record`, or read back from the file)."""
    if not console.settings.json:
        console.result(str(path))
        return
    if record is None:
        from sana.outputs import read_metadata

        record = read_metadata(path)
    line = {"path": str(path), "prompt": record.prompt, "seed": record.seed, "model": record.model,
            "width": record.width, "height": record.height, "steps": record.steps, "timings": record.timings}
    if getattr(record, "frames", None):
        line.update(frames=record.frames, fps=record.fps)
    if (record.extra or {}).get("best_of"):  # --best-of: the reward, the chosen score and every candidate's
        line["best_of"] = record.extra["best_of"]
    console.json_line(line)


def save_or_keep(save, path: Path):
    """`save(path)`; when the disk refuses it, or its format cannot hold the record (a JPEG's metadata is at most
    64 KB), the output is saved under a temporary name instead (as a PNG in the second case), and the error names
    that file (one line, never a raw exception about a hidden temporary file)."""
    import tempfile

    name = Path(path).name
    try:
        return save(path)
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
    except SanaError as exc:
        reason, name = exc.message, Path(path).stem + ".png"
    kept = Path(tempfile.gettempdir()) / f"sana-unsaved-{os.getpid()}-{name}"
    try:
        save(kept)
    except OSError:
        raise SanaError(f"could not save {path}: {reason}", "and it could not be kept elsewhere") from None
    raise SanaError(f"could not save {path}: {reason}", f"it is kept at {kept}")

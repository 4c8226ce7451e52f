"""Training checkpoints: one folder a step, written whole or not at all, the last K kept.

`checkpoints/step-000500/` holds `weights.safetensors` (the trained parameters: the adapters for a LoRA, the
whole DiT for full fine-tuning), `ema.safetensors` when EMA is on, `state.pt` (optimizer and LR schedule,
read back with `weights_only=True`), `rng-rank<N>.pt` (every random state of each rank) and `state.json`
(step, position in the data). It is assembled in a hidden folder and renamed into place, so a run killed at
any moment leaves either the previous checkpoint or the new one, never half of one. Resuming from an older
checkpoint sets what the run wrote after it aside (`set_aside_after`). torch and numpy load inside the functions
that need them: the command reads checkpoints before it imports torch.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from contextlib import contextmanager
from pathlib import Path

from ..errors import SanaError

_STEP_DIR = re.compile(r"^step-(\d{6,})$")
_SAMPLE = re.compile(r"^step-(\d{6,})-")  # validation samples: step-000500-0.png


FULL_DISK_BYTES = 64 * 2**20  # free space below which a failed write is put down to a full disk


@contextmanager
def writing(folder: Path):
    """Where a checkpoint's files are written: any failure (a full disk makes torch.save fail with "unexpected
    pos", safetensors with its own error) becomes one line naming the folder, the reason and that the last
    complete checkpoint is kept (the staged one is never renamed into place)."""
    try:
        yield
    except SanaError:
        raise
    except Exception as exc:
        reason = (exc.strerror if isinstance(exc, OSError) else None) or (str(exc).strip().splitlines() or [""])[0]
        try:
            full = shutil.disk_usage(folder).free < FULL_DISK_BYTES
        except OSError:
            full = False
        raise SanaError(f"could not write a checkpoint in {folder}: "
                        f"{'the disk is full' if full else reason or type(exc).__name__}",
                        "free space there, then --resume: the last complete checkpoint is kept") from exc


def checkpoint_root(out: Path) -> Path:
    return out / "checkpoints"


def list_checkpoints(out: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints of a run as (step, folder), oldest first."""
    return _checkpoints_in(checkpoint_root(out))


def _checkpoints_in(root: Path) -> list[tuple[int, Path]]:
    if not root.is_dir():
        return []
    found = []
    for path in root.iterdir():
        match = _STEP_DIR.match(path.name)
        if match and (path / "state.json").is_file():
            found.append((int(match.group(1)), path))
    return sorted(found)


def staging_dir(out: Path, step: int) -> Path:
    path = checkpoint_root(out) / f".step-{step:06d}.partial"
    return path


def begin(out: Path, step: int) -> Path:
    """A fresh hidden folder to assemble the checkpoint of `step` in (main rank only)."""
    path = staging_dir(out, step)
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    return path


def commit(out: Path, step: int, keep: int) -> Path:
    """Move the assembled checkpoint into place, then drop all but the newest `keep` (main rank only)."""
    final = checkpoint_root(out) / f"step-{step:06d}"
    staged = staging_dir(out, step)
    replace_folder(staged, final)  # the same step written again (a resumed run's final save) is replaced whole
    for _, path in list_checkpoints(out)[:-keep]:
        shutil.rmtree(path, ignore_errors=True)
    for stale in checkpoint_root(out).glob(".step-*"):  # leftovers of runs killed while writing
        if stale != staged:
            shutil.rmtree(stale, ignore_errors=True)
    return final


def replace_folder(staged: Path, target: Path) -> None:
    """Move a fully written folder to `target`, replacing what is there; a crash leaves one or the other."""
    if target.exists():
        old = target.with_name(f".{target.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(target, old)
        os.replace(staged, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(staged, target)


def checkpoint_step(folder: Path) -> int:
    """The step a complete checkpoint folder was written at."""
    return int(read_json(Path(folder) / "state.json")["step"])


def set_aside_after(out: Path, step: int, stamp: str, exports: tuple[str, ...] = (),
                    logs: dict[str, str] | None = None, samples: re.Pattern = _SAMPLE) -> tuple[Path, list[str]] | None:
    """Resuming from the checkpoint of `step` when the run went further: move what that abandoned history wrote
    into `checkpoints/abandoned-<stamp>/` (later checkpoints, later validation samples, the export, a copy of each
    whole log) and keep only log rows up to `step`, so the run folder tells one history and a later --resume
    continues this one. Nothing is deleted. `logs` maps each CSV log to its step column (default loss.csv's
    `step`) and `samples` matches the validation files, capturing their step. (folder, what was moved) or None
    when nothing came after `step`."""
    from .plot import read_log

    logs = {"loss.csv": "step"} if logs is None else logs
    root = checkpoint_root(out)
    later = [path for s, path in list_checkpoints(out) if s > step]
    later_rows = {name: [r for r in read_log(out / name) if r.get(column, "").isdigit() and int(r[column]) > step]
                  for name, column in logs.items()}
    later_samples = [p for p in (out / "samples").glob("*")
                     if (m := samples.match(p.name)) and int(m.group(1)) > step] if (out / "samples").is_dir() else []
    if not later and not any(later_rows.values()) and not later_samples:
        return None
    aside, n = root / f"abandoned-{stamp}", 1
    while aside.exists():  # two branches within a second: never mix their histories
        n += 1
        aside = root / f"abandoned-{stamp}-{n}"
    aside.mkdir(parents=True)
    from .config import CONFIG_NAME

    if (out / CONFIG_NAME).is_file():  # the settings that history ran with, for a later return to it
        shutil.copy2(out / CONFIG_NAME, aside / CONFIG_NAME)
    moved = []
    for path in later:
        os.replace(path, aside / path.name)
    if later:
        moved.append("checkpoint(s) " + ", ".join(p.name for p in later))
    if later_samples:
        (aside / "samples").mkdir(exist_ok=True)
        for path in later_samples:
            os.replace(path, aside / "samples" / path.name)
        moved.append(f"{len(later_samples)} validation sample(s)")
    for name in exports:  # the export is of the abandoned history's last step
        if (out / name).exists():
            os.replace(out / name, aside / name)
            moved.append(name)
    for name, column in logs.items():
        if later_rows[name]:
            shutil.copy2(out / name, aside / name)
            _keep_rows_up_to(out / name, column, step)
            moved.append(f"{name} rows after {column} {step} (the whole log copied there)")
    return aside, moved


def return_to_set_aside(out: Path, folder: Path, branch_point: int, step: int, stamp: str,
                        exports: tuple[str, ...] = (), logs: dict[str, str] | None = None,
                        samples: re.Pattern = _SAMPLE) -> tuple[Path, Path | None, list[str]]:
    """Resuming from the checkpoint of `step` inside `folder`, a history set aside when the run went back to
    `branch_point`: the current history after `branch_point` goes aside in turn (`set_aside_after`), then the
    set-aside history up to `step` comes back (its checkpoints, validation samples and log rows; what it wrote
    after `step` stays in `folder`), so the run folder again tells one history. (the checkpoint to resume from,
    the folder the current history went to or None, what was done)."""
    logs = {"loss.csv": "step"} if logs is None else logs
    done = set_aside_after(out, branch_point, stamp, exports=exports, logs=logs, samples=samples)
    said = [f"set aside what the run wrote after step {branch_point} in {done[0]}"] if done else []
    root = checkpoint_root(out)
    back = [path for s, path in _checkpoints_in(folder) if branch_point < s <= step]
    for path in back:
        os.replace(path, root / path.name)
    if (folder / "samples").is_dir():
        (out / "samples").mkdir(exist_ok=True)
        for path in (folder / "samples").iterdir():
            if (m := samples.match(path.name)) and branch_point < int(m.group(1)) <= step:
                os.replace(path, out / "samples" / path.name)
    for name, column in logs.items():
        if (folder / name).is_file():  # the whole log of that history, the rows they share included: kept there too
            shutil.copy2(folder / name, out / name)
            _keep_rows_up_to(out / name, column, step)
    said.append(f"brought back from {folder.name} its checkpoint(s) {', '.join(p.name for p in back)} and its log "
                f"up to step {step}")
    return root / f"step-{step:06d}", done and done[0], said


def _keep_rows_up_to(path: Path, column: str, step: int) -> None:
    """Rewrite a CSV log with its rows up to `step` only, its columns as they were, atomically."""
    import csv

    from .plot import write_rows

    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        rows = [r for r in reader if r.get(column, "").isdigit() and int(r[column]) <= step]
        fields = reader.fieldnames or [column]
    write_rows(path, rows, fields)


def save_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    save_safetensors({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, path)


def save_safetensors(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> None:
    """safetensors' `save_file`, the file then given the permissions any file this process writes gets (the
    umask's): safetensors writes through a private temporary file (0600), which a server or ComfyUI running as
    another user could not read."""
    from safetensors.torch import save_file

    save_file(tensors, str(path), metadata=metadata)
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(path, 0o666 & ~mask)


def check_readable(folder: Path) -> None:
    """A checkpoint's files whole, told without torch or reading their tensors: every `.pt` a zip whose directory
    opens (torch.save writes one; a cut file has none), every `.safetensors` as long as its header says, `state.json`
    JSON. A resume checks this before it records anything, so a bad checkpoint leaves the run's record as it was."""
    import struct
    import zipfile

    def unreadable(path: Path, why: str) -> SanaError:
        return SanaError(f"checkpoint file {path} is unreadable ({why})", "resume from an older checkpoint "
                         "(--resume-from checkpoints/step-N)")

    for path in sorted(folder.iterdir()):
        if path.suffix == ".pt":
            try:
                with zipfile.ZipFile(path):
                    pass
            except (zipfile.BadZipFile, OSError) as exc:
                raise unreadable(path, str(exc) or "not a torch.save file") from None
        elif path.suffix == ".safetensors":
            try:
                with open(path, "rb") as f:
                    (length,) = struct.unpack("<Q", f.read(8))
                    header = json.loads(f.read(length))
                end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
                if path.stat().st_size < 8 + length + end:
                    raise ValueError(f"{path.stat().st_size} bytes where its header needs {8 + length + end}")
            except (OSError, ValueError, KeyError, TypeError, struct.error) as exc:
                raise unreadable(path, str(exc) or "a broken header") from None
    read_json(folder / "state.json")


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except Exception as exc:
        raise SanaError(f"checkpoint file {path} is unreadable ({exc})", "resume from an older checkpoint") from None


def load_state(path: Path) -> dict:
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise SanaError(f"checkpoint file {path} is unreadable ({str(exc).splitlines()[0][:160]})",
                        "resume from an older checkpoint") from None


def write_json(path: Path, data: dict) -> None:
    """Written beside `path` and renamed into place: a reader never sees half a file."""
    staged = path.with_name(f".{path.name}.partial")
    staged.write_text(json.dumps(data, indent=2), encoding="utf-8")
    os.replace(staged, path)


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise SanaError(f"checkpoint file {path} is unreadable ({exc})") from None


# -- random states --------------------------------------------------------------------------------------------

def rng_state() -> dict:
    """Every random generator a step may touch, in types `torch.load(weights_only=True)` accepts."""
    import numpy as np
    import torch

    version, state, gauss = random.getstate()
    np_state = np.random.get_state()
    out = {
        "python": [version, list(state), gauss],
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), int(np_state[2]), int(np_state[3]),
                  float(np_state[4])],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["cuda"] = torch.cuda.get_rng_state_all()
    return out


def set_rng_state(saved: dict) -> None:
    import numpy as np
    import torch

    version, state, gauss = saved["python"]
    random.setstate((version, tuple(state), gauss))
    name, keys, pos, has_gauss, cached = saved["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(saved["torch"])
    if "cuda" in saved and torch.cuda.is_available():
        states = saved["cuda"]
        if len(states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(states)

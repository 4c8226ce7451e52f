"""A fine-tuning run folder's history across resumes: which checkpoint a resume starts from, what `--resume-from`
an older checkpoint sets aside (`checkpoints/abandoned-*`) or brings back, what `train_config.json`'s `resumes`
records. Shared by supervised (`finetune.py`) and RL (`finetune_rl.py`) runs; checked before torch loads.
"""

from __future__ import annotations

from pathlib import Path

from sana.errors import UsageError

from . import console


def listed(changes: list[tuple[str, object, object]]) -> str:
    return ", ".join(f"{name} {old!r} -> {new!r}" for name, old, new in changes)


def resume_record(start: tuple[int, Path], applied: list[tuple[str, object, object]]) -> dict:
    """An entry of train_config.json's `resumes`: where the run went on from and what changed there."""
    import time

    return {"step": start[0], "checkpoint": str(start[1]), "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "changed": {name: [old, new] for name, old, new in applied}}


def checkpoint_history(out_dir: Path, resume_from: Path | None) -> Path | None:
    """Which history a --resume-from checkpoint belongs to: None for the run's own (`OUT/checkpoints/step-*`), the
    folder for one set aside (`OUT/checkpoints/abandoned-*/step-*`). Any other folder is refused: another run's
    checkpoint would go on with weights and a history that are not this folder's."""
    from sana.training import checkpoint as ckpt

    if resume_from is None:
        return None
    folder = Path(resume_from).expanduser().resolve()
    root = ckpt.checkpoint_root(out_dir).expanduser().resolve()
    if folder.parent == root:
        return None
    if folder.parent.parent == root and folder.parent.name.startswith("abandoned-"):
        return folder.parent
    owner = folder.parent.parent if folder.parent.name == "checkpoints" else None
    raise UsageError(f"--resume-from {resume_from} is not a checkpoint of the run in {out_dir}",
                     f"to go on with that run, pass --out {owner}" if owner else
                     f"pass a folder of {ckpt.checkpoint_root(out_dir)}")


def complete_checkpoint(out_dir: Path, resume_from: Path) -> Path:
    """The --resume-from folder, which must be a complete checkpoint. On a process other than the main one it may
    already be where the main process moved it (a set-aside history's checkpoint comes back among the run's own)."""
    folder = Path(resume_from).expanduser()
    if not (folder / "state.json").is_file():
        moved = resume_folder_on_other_ranks(out_dir, folder)
        if not (moved / "state.json").is_file():
            raise UsageError(f"--resume-from {resume_from} is not a complete checkpoint (no state.json)",
                             f"pass a folder such as {out_dir / 'checkpoints' / 'step-000500'}")
        return moved
    return folder


def settings_to_resume(config_class, out_dir: Path, resume_from: Path | None):
    """The settings a resume starts from: the run's, or for a checkpoint of a set-aside history those that history
    ran with (kept beside it when it was set aside), under the run's whole `resumes` record."""
    from sana.training.config import CONFIG_NAME

    saved = _model_found_again(config_class.load(out_dir))
    if resume_from is not None:
        complete_checkpoint(out_dir, resume_from)  # said first: "not a checkpoint at all" before "not this run's"
    history = checkpoint_history(out_dir, resume_from)
    if history is not None and (history / CONFIG_NAME).is_file():
        theirs = _model_found_again(config_class.load(history))
        theirs.resumes = saved.resumes
        return theirs
    return saved


def _model_found_again(saved):
    """A run on a registry model (the built-in ones included) records its folder, which another install of sana (a
    reinstall, another Python) moves: the folder is found again from the recorded name, so the resume goes on."""
    from sana.errors import SanaError
    from sana.registry import find_spec

    if not saved.model or find_spec(saved.model) is None or Path(saved.model_dir).is_dir():
        return saved
    from sana.hub import resolve_model

    try:
        saved.model_dir = str(resolve_model(saved.model).path.resolve())
    except SanaError:  # not here any more: the check of the folder says so
        pass
    return saved


def set_aside_later(out_dir: Path, start: tuple[int, Path], settings, rl: bool = False) -> Path:
    """--resume-from an older checkpoint: what the run wrote after it goes aside (never deleted), so the folder
    tells one history and a later --resume continues this one; from a checkpoint of a history set aside earlier
    (`checkpoints/abandoned-*/step-*`), that history comes back up to it and the current one goes aside. An RL run's
    rounds are its steps: its rewards log and round grids move too, and its best weights when a later round found
    them. Returns the checkpoint folder to resume from."""
    import re
    import time

    from sana.lora import LORA_WEIGHTS_NAME
    from sana.training import checkpoint as ckpt

    unit, stamp = ("round" if rl else "step"), time.strftime("%Y%m%d-%H%M%S")
    folder = checkpoint_history(out_dir, start[1])
    returning = folder is not None
    branch_point = start[0]
    if returning:
        left = [r for r in settings.resumes[:-1] if Path(str(r.get("set_aside", ""))).name == folder.name]
        if not left:
            raise UsageError(f"--resume-from {start[1]}: train_config.json does not say where the history in "
                             f"{folder.name} left the run", "resume from a checkpoint of the run's own history")
        branch_point = int(left[-1].get("set_aside_after", left[-1]["step"]))
    exports, logs, samples = (LORA_WEIGHTS_NAME, "model"), None, ckpt._SAMPLE
    if rl:
        from sana.training.rl.log import REWARDS_NAME
        from sana.training.rl.validation import BEST_NAME, BEST_RECORD

        logs, samples = {"loss.csv": "step", REWARDS_NAME: "round"}, re.compile(r"^round-(\d{6,})\.png$")
        best = out_dir / BEST_RECORD
        if best.is_file() and int(ckpt.read_json(best).get("round", 0)) > branch_point:
            exports += (BEST_NAME, BEST_RECORD)
    if returning:
        resume_at, aside, said = ckpt.return_to_set_aside(out_dir, folder, branch_point, start[0], stamp,
                                                          exports=exports, logs=logs, samples=samples)
        if rl:
            said += _bring_back_best(out_dir, folder, aside, start[0])
        settings.resumes[-1].update(checkpoint=str(resume_at), returned_from=str(Path(start[1]).parent))
        if aside is not None:  # the current history, which left the set-aside one's at the same step
            settings.resumes[-1].update(set_aside=str(aside), set_aside_after=branch_point)
        console.notice(f"--resume-from {unit} {start[0]} of the history in {folder.name}: " + "; ".join(said))
        return resume_at
    done = ckpt.set_aside_after(out_dir, start[0], stamp, exports=exports, logs=logs, samples=samples)
    if done is not None:
        aside, moved = done
        settings.resumes[-1].update(set_aside=str(aside), set_aside_after=start[0])
        console.notice(f"--resume-from {unit} {start[0]}: set aside what the run wrote after it ({'; '.join(moved)}) "
                       f"in {aside}")
    return start[1]


def _bring_back_best(out_dir: Path, folder: Path, aside: Path | None, step: int) -> list[str]:
    """An RL history brought back up to round `step` brings back its best weights too when it found them by then.
    They beat every validation before them, the shared rounds' included, so a best still in the run folder (from
    the shared rounds) goes to the history just set aside, or, when none was, to `folder` in their place."""
    import os

    from sana.training import checkpoint as ckpt
    from sana.training.rl.validation import BEST_NAME, BEST_RECORD

    record = folder / BEST_RECORD
    if not record.is_file() or int(ckpt.read_json(record).get("round", 0)) > step:
        return []
    found = int(ckpt.read_json(record)["round"])
    names = [name for name in (BEST_NAME, BEST_RECORD) if (folder / name).exists()]
    for name in names:
        os.replace(folder / name, out_dir / f".{name}.incoming")
    keep = aside or folder
    for name in (BEST_NAME, BEST_RECORD):
        if (out_dir / name).exists():
            os.replace(out_dir / name, keep / name)
    for name in names:
        os.replace(out_dir / f".{name}.incoming", out_dir / name)
    return [f"its best weights (round {found}) too"]


def resume_folder_on_other_ranks(out_dir: Path, resume_from: Path) -> Path:
    """Where the main process's `set_aside_later` puts the --resume-from checkpoint: back among the run's own when
    it came from a set-aside history. The others read it after the process group forms, whose set-up waits for
    every process, the main one included, which moves it first."""
    from sana.training import checkpoint as ckpt

    folder = Path(resume_from).expanduser().resolve()
    root = ckpt.checkpoint_root(out_dir).expanduser().resolve()
    if folder.parent.parent == root and folder.parent.name.startswith("abandoned-"):
        return ckpt.checkpoint_root(out_dir) / folder.name
    return resume_from


def begin_resume(saved, settings, out_dir: Path, resume_from: Path | None, main_process: bool, unit: str,
                 keeps: str):
    """Checks and records a resume before torch loads: settings it must keep (`keeps` says which, in the error), the
    checkpoint it starts from, a notice when nothing is left to train and one for the settings it applies from
    there, and the `resumes` entry. Returns (step, folder) of the checkpoint."""
    changed = saved.differences(settings)
    if changed:
        raise UsageError(f"--resume with changed settings: {', '.join(changed)}",
                         f"a resumed run keeps its {keeps}; start a new --out to change them")
    start = check_checkpoint(out_dir, resume_from, settings.steps)
    if start[0] == settings.steps and main_process:
        console.notice(f"the run is at {unit} {start[0]} of {settings.steps} already: nothing to train, the export "
                       "is written again from that checkpoint (give a larger --steps to go on)")
    applied = saved.changes(settings)
    if applied and main_process:
        console.notice(f"--resume applies from the checkpoint's {unit} on: " + listed(applied)
                       + " (recorded in train_config.json)")
    settings.resumes = [*saved.resumes, resume_record(start, applied)]
    return start


def check_out_folder(out_dir: Path) -> None:
    """--out must be a folder the run can write, or create: a file of that name, or a folder that cannot be
    written, is one line now, not an OSError once the run has started."""
    if out_dir.exists() and not out_dir.is_dir():
        raise UsageError(f"--out {out_dir} is a file, not a run folder", "give a folder for the run with --out")
    from .run_output import check_output_dirs

    try:
        check_output_dirs([out_dir / "train_config.json"])
    except UsageError as exc:
        raise UsageError(exc.message, "choose another --out") from None


def same_data(recorded: str, given: str) -> bool:
    """Whether the data a run recorded and the data given now are one folder or file, however each is spelled
    (`data` and `./data`, or a prompt grammar's name)."""
    import os

    if recorded == given:
        return True
    try:
        return os.path.samefile(Path(recorded).expanduser(), Path(given).expanduser())
    except (OSError, ValueError):
        return False


def refuse_occupied(out_dir: Path) -> None:
    """A new run never writes into a folder holding anything: another run's files or the user's."""
    if out_dir.exists() and any(out_dir.iterdir()):
        hint = "add --resume to continue it" if (out_dir / "train_config.json").exists() else "choose an empty or new --out"
        raise UsageError(f"{out_dir} is not empty", hint)


def never_checkpointed(out_dir: Path) -> bool:
    """The folder holds a run's settings but no checkpoint and no export: the run stopped during start-up or never
    reached a step, so starting it again loses nothing."""
    if not (out_dir / "train_config.json").is_file():
        return False
    if any((out_dir / "checkpoints").glob("step-*/state.json")):
        return False
    exported = [p for p in out_dir.iterdir() if p.suffix == ".safetensors" or (p.is_dir() and p.name != "checkpoints"
                                                                              and p.name != "cache")]
    return not exported


def check_checkpoint(out_dir: Path, resume_from: Path | None, steps: int | None = None) -> tuple[int, Path]:
    """(step, folder) of the checkpoint a resume starts from: the run folder's latest complete one, or the
    --resume-from folder; it must not be past `steps` (the export would hold later weights than the record says)."""
    from sana.training import checkpoint as ckpt

    if resume_from is not None:
        folder = complete_checkpoint(out_dir, resume_from)
    else:
        found = ckpt.list_checkpoints(out_dir)
        if not found:
            raise UsageError(f"no checkpoint to resume in {out_dir / 'checkpoints'}", "start without --resume")
        folder = found[-1][1]
    ckpt.check_readable(folder)  # before the resume records anything in the run's settings
    step = ckpt.checkpoint_step(folder)
    if steps is not None and step > steps:
        earlier = [(s, path) for s, path in ckpt.list_checkpoints(out_dir) if s <= steps]
        if earlier:
            hint = (f"to go back to step {earlier[-1][0]}: --resume-from {earlier[-1][1]}"
                    + (f" --steps {steps}" if earlier[-1][0] < steps else "") + "; later checkpoints are set aside")
        else:
            hint = f"the run is already past step {steps}: give --steps {step} or more"
        raise UsageError(f"--steps {steps} is below step {step} of the checkpoint {folder}", hint)
    return step, folder

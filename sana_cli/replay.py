"""What a run records so that `--from` can replay it from any folder, and what a replay checks: a local model
folder (or `--transformer` file) is recorded as an absolute path, and LoRAs replayed from a record are compared
with the sha256 it holds."""

from __future__ import annotations

from pathlib import Path

from . import console


def model_record_name(model_arg: str, spec) -> str:
    """A registry name as given; a local folder as its absolute path (a relative one breaks a replay elsewhere)."""
    path = Path(model_arg).expanduser()
    if spec is None and path.exists():
        return str(path.resolve())
    return model_arg


def check_replayed_loras(from_path: str | Path) -> None:
    """A notice for each LoRA of the replayed record whose file is no longer the one recorded: the replay runs
    with it, but it will not give the same pixels."""
    from sana.outputs import file_sha256, read_metadata

    for entry in read_metadata(Path(from_path)).loras:
        path, recorded = Path(str(entry.get("path", ""))), entry.get("sha256")
        if recorded and path.is_file() and file_sha256(path) != recorded:
            console.notice(f"{path} is not the LoRA the replayed file recorded (its sha256 differs)")


def refuse_served_loras(from_path: str | Path) -> None:
    """A record made by `sana serve` names its LoRAs as the server lists them, not by a file here: replaying it
    on this machine needs the file, so say which LoRA it was and how to give it."""
    from sana.errors import UsageError
    from sana.outputs import read_metadata

    for entry in read_metadata(Path(from_path)).loras:
        if entry.get("served") and not Path(str(entry.get("path", ""))).expanduser().is_file():
            sha = str(entry.get("sha256") or "")[:12]
            raise UsageError(f"{from_path} was made by a server with its LoRA '{entry.get('name')}'"
                             + (f" (sha256 {sha}...)" if sha else ""),
                             "replay it there with --server URL, or give a local copy with --lora FILE[:SCALE]")


def served_lora_args(from_path: str | Path) -> list[str]:
    """The replayed record's LoRAs as `--lora` values for a server: a served LoRA by the name it was served under,
    another by its file's name (the server's list must hold it under that name)."""
    from sana.outputs import read_metadata

    return [f"{entry.get('name') or Path(str(entry.get('path', ''))).stem}:{entry.get('scale', 1.0)}"
            for entry in read_metadata(Path(from_path)).loras]

"""`sana comfy`: the ComfyUI node pack (`comfyui_sana`) put into a ComfyUI installation."""

from __future__ import annotations

import os
import shutil
import sys
from fnmatch import fnmatch
from pathlib import Path
from typing import Annotated

import typer

from sana.errors import SanaError, UsageError

from . import console

comfy_app = typer.Typer(help="ComfyUI nodes over the sana engine.", no_args_is_help=True)

PACK = "comfyui_sana"


def pack_folder() -> Path:
    """The node pack as installed with this sana (beside the `sana` package)."""
    import importlib.util

    spec = importlib.util.find_spec(PACK)
    if spec is None or not spec.submodule_search_locations:
        raise SanaError(f"this sana installation has no {PACK} node pack", "reinstall sana-cli")
    return Path(next(iter(spec.submodule_search_locations))).resolve()


@comfy_app.command("install")
def install(
    comfyui_dir: Annotated[Path, typer.Argument(metavar="COMFYUI_DIR",
                                                help="The ComfyUI folder (the one holding main.py).")],
    copy: Annotated[bool, typer.Option("--copy", help="Copy the pack instead of linking it (a link follows "
                                                      "upgrades of sana).")] = False,
    force: Annotated[bool, typer.Option("--force", help="Replace a pack already there.")] = False,
) -> None:
    """Put the Sana nodes into COMFYUI_DIR/custom_nodes (a link to this installation's pack, or a copy)."""
    # 1. A ComfyUI folder and our pack.
    root = comfyui_dir.expanduser().resolve()
    if not (root / "main.py").is_file() or not (root / "custom_nodes").is_dir():
        raise UsageError(f"{comfyui_dir} is not a ComfyUI folder (no main.py and custom_nodes/)",
                         "pass the folder you start ComfyUI from")
    source = pack_folder()
    target = root / "custom_nodes" / PACK

    # 2. This pack put there, linked or copied; a refusal by the file system (permissions, a read-only disk) said
    #    in one line.
    try:
        _put_pack(source, target, copy=copy, force=force)
    except OSError as exc:
        # copytree gathers the errors of the files it copied: (source, destination, why) each
        why = exc.args[0][0][2] if isinstance(exc, shutil.Error) and exc.args and exc.args[0] else None
        raise SanaError(f"cannot install the pack in {target.parent}: {exc.strerror or why or type(exc).__name__}",
                        "install as a user who may write there") from None


def _put_pack(source: Path, target: Path, *, copy: bool, force: bool) -> None:
    # 1. What is there already: this pack, linked or copied as asked (nothing to do), else replaced only with --force.
    if copy and target.is_dir() and not target.is_symlink() and _pack_files(target) == _pack_files(source):
        console.out.print(f"already installed: {target} (a copy of {source}, the same files)", highlight=False)
        return
    if not copy and target.is_symlink() and target.resolve() == source:
        console.out.print(f"already installed: {target} -> {source}", highlight=False)
        return
    if target.exists() or target.is_symlink():
        if not force:
            raise UsageError(f"{target} already exists: {_describe(target, source)}",
                             f"pass --force to replace it with {'a copy of' if copy else 'a link to'} this sana's pack")
        _remove_pack(target)

    # 2. Link or copy (a copy cut short is removed: the next run would find half a pack), and say what ComfyUI needs
    #    to load it.
    if copy:
        try:
            shutil.copytree(source, target, ignore=shutil.ignore_patterns(*CACHES))
        except OSError:
            shutil.rmtree(target, ignore_errors=True)
            raise
        console.out.print(f"copied {source} to {target}", highlight=False)
    else:
        target.symlink_to(source, target_is_directory=True)
        console.out.print(f"linked {target} -> {source}", highlight=False)
    console.info(f"ComfyUI loads the Sana nodes at its next start, from a Python where sana-cli is installed "
                 f"(this sana runs in {sys.executable}); models come from `sana models pull NAME`")


CACHES = ("__pycache__", "*.pyc")  # what a copy leaves out, and a comparison ignores


def _pack_files(folder: Path) -> dict[str, bytes]:
    """A pack's files (path inside it -> content), Python's caches left out."""
    return {str(path.relative_to(folder)): path.read_bytes() for path in folder.rglob("*")
            if path.is_file() and not any(fnmatch(part, pattern) for part in path.relative_to(folder).parts
                                          for pattern in CACHES)}


def _describe(target: Path, source: Path) -> str:
    """What is at `target`, for the error that will not replace it."""
    if target.is_symlink():
        return f"a link to {source if target.resolve() == source else os.readlink(target)}"
    if target.is_dir() and (target / "image_nodes.py").is_file():
        if _pack_files(target) == _pack_files(source):
            return "a copy of this sana's node pack"
        return "a copy of the Sana node pack whose files differ from this sana's (another version)"
    return "not the Sana node pack"


def _remove_pack(target: Path) -> None:
    """Remove a link, or a folder that is a copy of this pack; anything else is left alone."""
    if target.is_symlink():
        target.unlink()
        return
    if target.is_file():
        raise UsageError(f"{target} is a file, not the Sana node pack", "move it away yourself")
    if not (target / "image_nodes.py").is_file() or not (target / "models.py").is_file():
        raise UsageError(f"{target} is not a copy of the Sana node pack", "move it away yourself")
    shutil.rmtree(target)

"""`sana comfy`: the ComfyUI node pack (`comfyui_sana`) put into a ComfyUI installation."""

from __future__ import annotations

import shutil
import sys
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

    # 2. What is there already: this pack linked (nothing to do), else replaced only with --force.
    if target.is_symlink() and target.resolve() == source and not copy:
        console.out.print(f"already installed: {target} -> {source}", highlight=False)
        return
    if target.exists() or target.is_symlink():
        if not force:
            raise UsageError(f"{target} already exists", "pass --force to replace it")
        _remove_pack(target)

    # 3. Link or copy, and say what ComfyUI needs to load it.
    if copy:
        shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        console.out.print(f"copied {source} to {target}", highlight=False)
    else:
        target.symlink_to(source, target_is_directory=True)
        console.out.print(f"linked {target} -> {source}", highlight=False)
    console.info(f"ComfyUI loads the Sana nodes at its next start, from a Python where sana-cli is installed "
                 f"(this sana runs in {sys.executable}); models come from `sana models pull NAME`")


def _remove_pack(target: Path) -> None:
    """Remove a link, or a folder that is a copy of this pack; anything else is left alone."""
    if target.is_symlink() or target.is_file():
        target.unlink()
        return
    if not (target / "image_nodes.py").is_file() or not (target / "models.py").is_file():
        raise UsageError(f"{target} is not a copy of the Sana node pack", "move it away yourself")
    shutil.rmtree(target)

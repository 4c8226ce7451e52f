"""What the nodes take from ComfyUI: its progress bar, its interrupt flag, its output folder, its device and its
`--disable-metadata`.

ComfyUI's modules are imported here and nowhere else in the pack (and never by the engine). Outside ComfyUI (the
contract tests call the node functions directly) each has a plain stand-in: no bar, no interrupt, `./output`.
"""

from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger("sana.comfyui")


def _comfy(module: str):
    """A ComfyUI module, or None outside ComfyUI."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        return None


def check_interrupted() -> None:
    """Raise ComfyUI's interrupt exception when the user pressed Cancel (ComfyUI then stops the graph)."""
    management = _comfy("comfy.model_management")
    if management is not None:
        management.throw_exception_if_processing_interrupted()


def events(total: int):
    """`sana.pipelines.common.Events` for one node's run: each denoise step advances ComfyUI's progress bar of the
    running node and checks the interrupt flag, so Cancel stops the loop after the current step; notices go to
    ComfyUI's log."""
    from sana.pipelines.common import Events

    utils = _comfy("comfy.utils")
    bar = utils.ProgressBar(total) if utils is not None else None

    def on_step(done: int, steps: int) -> None:
        if bar is not None:
            bar.update_absolute(done, steps)
        check_interrupted()

    return Events(on_phase=lambda _name: check_interrupted(), on_step=on_step,
                  on_notice=lambda text: log.warning("sana: %s", text))


def torch_device():
    """The device ComfyUI runs models on (`--cpu` gives the CPU), or None outside ComfyUI."""
    management = _comfy("comfy.model_management")
    return management.get_torch_device() if management is not None else None


def free_device_memory() -> None:
    """Before a SANA model loads: ComfyUI's own models leave the GPU, so the memory plan sees what is free."""
    management = _comfy("comfy.model_management")
    if management is not None:
        management.unload_all_models()
        management.soft_empty_cache()


def metadata_disabled() -> bool:
    """ComfyUI's `--disable-metadata`: files are saved with no metadata (its SaveImage then writes neither the
    graph nor the workflow); False outside ComfyUI."""
    cli_args = _comfy("comfy.cli_args")
    return bool(getattr(getattr(cli_args, "args", None), "disable_metadata", False))


def output_directory() -> Path:
    folder_paths = _comfy("folder_paths")
    return Path(folder_paths.get_output_directory()) if folder_paths is not None else Path.cwd() / "output"


def output_path(prefix: str, width: int, height: int) -> tuple[Path, str, int, str]:
    """(folder, file name stem, counter, subfolder) for outputs named like ComfyUI's SaveImage names them
    (`prefix_00001_.png`, counting on from the files already there)."""
    folder_paths = _comfy("folder_paths")
    if folder_paths is not None:
        folder, name, counter, subfolder, _ = folder_paths.get_save_image_path(
            prefix, folder_paths.get_output_directory(), width, height)
        return Path(folder), name, counter, subfolder
    root = output_directory()
    subfolder, name = str(Path(prefix).parent).strip("."), Path(prefix).name
    folder = root / subfolder
    folder.mkdir(parents=True, exist_ok=True)
    taken = [p.name for p in folder.glob(f"{name}_*_*")]
    counter = max((int(n[len(name) + 1:].split("_")[0]) for n in taken
                   if n[len(name) + 1:].split("_")[0].isdigit()), default=0) + 1
    return folder, name, counter, subfolder


MODEL_FOLDER = "sana"  # ComfyUI/models/sana: model folders in the diffusers layout, listed by the Model Loader


def model_folders() -> dict[str, Path]:
    """name -> folder of each diffusers-format model (a folder with model_index.json) in ComfyUI's models/sana
    folders (extra_model_paths.yaml may add some under "sana"); {} outside ComfyUI."""
    folder_paths = _comfy("folder_paths")
    if folder_paths is None:
        return {}
    if MODEL_FOLDER not in folder_paths.folder_names_and_paths:
        folder_paths.add_model_folder_path(MODEL_FOLDER, str(Path(folder_paths.models_dir) / MODEL_FOLDER))
    found: dict[str, Path] = {}
    for root in folder_paths.get_folder_paths(MODEL_FOLDER):
        for index in sorted(Path(root).glob("*/model_index.json")):
            found.setdefault(index.parent.name, index.parent)
    return found


def lora_files() -> list[str]:
    """LoRA files in ComfyUI's `models/loras` folders (names relative to them); [] outside ComfyUI."""
    folder_paths = _comfy("folder_paths")
    return list(folder_paths.get_filename_list("loras")) if folder_paths is not None else []


def lora_path(name: str) -> Path | None:
    folder_paths = _comfy("folder_paths")
    found = folder_paths.get_full_path("loras", name) if folder_paths is not None and name else None
    return Path(found) if found else None

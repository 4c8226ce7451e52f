"""LoRA files in the diffusers SANA format, merged into the transformer weights at load.

`SanaPipeline.save_lora_weights` writes `transformer.<module>.lora_A.weight` / `lora_B.weight` pairs and, in the
safetensors metadata under `lora_adapter_metadata`, the peft adapter config (`transformer.r`,
`transformer.lora_alpha`, `...alpha_pattern`, `...rank_pattern`, `...use_rslora`). Without that metadata
diffusers takes alpha = r, and so does this module. Merging: W += scale * (alpha / r) * B @ A (alpha / sqrt(r)
with rsLoRA), done on the diffusers-named state dict before q/k/v are fused, so a LoRA on `to_k` lands in the
k slice of the fused `qkv`.
"""

from __future__ import annotations

import json
import math
import re
import shlex
import struct
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import SanaError, UsageError

if TYPE_CHECKING:  # torch is imported by whoever passes tensors: checking a --lora argument needs none
    import torch

# Prefixes diffusers (`transformer.`), peft (`base_model.model.`) and some trainers put before module names.
_PREFIXES = ("transformer.", "base_model.model.", "diffusion_model.")
LORA_WEIGHTS_NAME = "pytorch_lora_weights.safetensors"


def strip_key_prefixes(key: str, prefixes: tuple[str, ...]) -> str:
    """Remove any of `prefixes` from the front of `key`, repeatedly (wrappers nest: `module._orig_mod.`)."""
    changed = True
    while changed:
        changed = False
        for prefix in prefixes:
            if key.startswith(prefix):
                key, changed = key[len(prefix):], True
    return key


def _module_name(key: str) -> str:
    return strip_key_prefixes(key, _PREFIXES)


def _adapter_config(metadata: dict[str, str] | None) -> dict:
    """The peft LoraConfig diffusers packs into the metadata, with its `transformer.` prefix removed."""
    raw = (metadata or {}).get("lora_adapter_metadata")
    if not raw:
        return {}
    try:
        packed = json.loads(raw)
    except json.JSONDecodeError:
        return {}
    return {k.split(".", 1)[1] if k.startswith("transformer.") else k: v for k, v in packed.items()}


def _pattern_value(patterns: dict | None, module: str, default):
    """peft's rank/alpha patterns: a key matches a module name or a dotted suffix of it (as a regex)."""
    for pattern, value in (patterns or {}).items():
        if re.fullmatch(rf"(.*\.)?(?:{pattern})", module):
            return value
    return default


def lora_file(path: Path) -> Path:
    """A LoRA file, or the `pytorch_lora_weights.safetensors` inside a folder that `save_lora_weights` (or
    `sana finetune`) wrote. Training checkpoints, unfinished runs and full weights are refused with what to pass."""
    path = Path(path)
    if path.is_dir():
        if (path / LORA_WEIGHTS_NAME).is_file():
            return path / LORA_WEIGHTS_NAME
        _refuse_training_folder(path)
        found = sorted(path.glob("*.safetensors"))
        if len(found) != 1:
            raise SanaError(f"no LoRA weights in {path}" if not found else f"{path} holds several .safetensors files",
                            f"expected {LORA_WEIGHTS_NAME}, or pass the file itself")
        path = found[0]
    if not path.is_file():
        raise UsageError(f"LoRA file not found: {path}")
    if (path.parent / "state.json").is_file() and path.name in ("weights.safetensors", "ema.safetensors"):
        _refuse_training_folder(path.parent)
    if path.suffix in (".pt", ".pth", ".ckpt", ".bin"):
        raise SanaError(f"{path.name} is a PyTorch checkpoint, not a LoRA file",
                        "--lora takes diffusers' .safetensors LoRAs; a fine-tuned image transformer goes to `sana gen "
                        "--transformer`")
    if path.suffix != ".safetensors":
        raise SanaError(f"{path.name}: LoRA files must be .safetensors", "diffusers' save_lora_weights writes them")
    keys = _safetensors_keys(path)
    if keys and all(k.endswith((".weight", ".bias")) for k in keys) and not any(_LORA_KEY.fullmatch(k) for k in keys):
        raise SanaError(f"{path.name} holds no LoRA tensors (names ending in lora_A / lora_B .weight), only plain "
                        f"weights such as '{keys[0]}'",
                        "--lora takes diffusers' LoRA files; a fine-tuned image transformer goes to `sana gen "
                        "--transformer`, a full fine-tuning run's folder to --model")
    return path


def parse_lora_arg(text: str) -> tuple[Path, float]:
    """`--lora PATH[:SCALE]` -> (the LoRA file, scale), checked without reading the tensors. A path that itself
    contains ':' works when no scale follows; a scale that is not a finite number is named as the scale."""
    path_text, scale = text, 1.0
    head, sep, tail = text.rpartition(":")
    if sep and head and not Path(text).expanduser().exists():
        try:
            scale = float(tail)
        except ValueError:
            if Path(head).expanduser().exists():
                raise UsageError(f"--lora {text}: the scale '{tail}' is not a number",
                                 "write PATH:SCALE with a number, e.g. style.safetensors:0.8") from None
        else:
            path_text = head
            if not math.isfinite(scale):
                raise UsageError(f"--lora {text}: the scale {tail} is not a finite number", "use e.g. 0.8 or 1")
    path = Path(path_text).expanduser()
    if not path.exists():
        raise UsageError(f"LoRA file not found: {path_text}", "give a .safetensors file or the folder holding "
                         f"{LORA_WEIGHTS_NAME}")
    return lora_file(path), scale


_LORA_KEY = re.compile(r"(.+)\.(lora_A|lora_B|lora_down|lora_up)(?:\.[\w-]+)?\.weight|.+\.alpha")


def _safetensors_header(path: Path) -> dict | None:
    """A safetensors file's header (8-byte length, then JSON), read without torch; None when it cannot be read,
    which `read_lora` reports properly later."""
    try:
        with open(path, "rb") as f:
            (length,) = struct.unpack("<Q", f.read(8))
            if length > 100_000_000:
                return None
            header = json.loads(f.read(length))
    except (OSError, struct.error, ValueError):
        return None
    return header if isinstance(header, dict) else None


def _safetensors_keys(path: Path) -> list[str] | None:
    """Tensor names from a safetensors header; None when it cannot be read."""
    header = _safetensors_header(path)
    return None if header is None else [k for k in header if k != "__metadata__"]


# Safetensors metadata key of the sampling settings a LoRA was trained to be used with, where they differ from its
# base model's (an RL LoRA from CFG-free rollouts: {"guidance": 1.0}); JSON text, as all safetensors metadata.
SAMPLING_METADATA_KEY = "sana_sampling_defaults"


# Safetensors metadata key of the diffusers class of the transformer a LoRA was trained on
# ("SanaTransformer2DModel", "SanaVideoTransformer3DModel"): an image LoRA and a video LoRA can share every target
# name and shape (the nano image and video DiTs do), so only this tells them apart.
BASE_CLASS_METADATA_KEY = "sana_base_class"
_KIND_OF_CLASS = {"SanaTransformer2DModel": "an image", "SanaVideoTransformer3DModel": "a video"}


def lora_base_class(path: Path) -> str | None:
    """The transformer class a LoRA file says it was trained on; None when it does not say (other tools' LoRAs)."""
    metadata = (_safetensors_header(path) or {}).get("__metadata__")
    value = metadata.get(BASE_CLASS_METADATA_KEY) if isinstance(metadata, dict) else None
    return value if isinstance(value, str) and value else None


def check_lora_base(path: Path, class_name: str) -> None:
    """Refuse a LoRA trained on another kind of transformer than `class_name`, which would merge silently where
    the names and shapes happen to match, and change the output to no purpose."""
    trained_on = lora_base_class(path)
    if trained_on is None or trained_on == class_name:
        return
    trained_kind = _KIND_OF_CLASS.get(trained_on, f"a {trained_on}")
    command = {"SanaTransformer2DModel": "sana gen", "SanaVideoTransformer3DModel": "sana video"}.get(trained_on)
    raise UsageError(f"{Path(path).name} was trained on {trained_kind} model ({trained_on}); this model is "
                     f"{_KIND_OF_CLASS.get(class_name, 'a ' + class_name)} one ({class_name})",
                     f"use it with {command} and a model of that kind" if command else None)


def lora_sampling_defaults(path: Path) -> dict:
    """The sampling settings a LoRA file carries ({} when none or unreadable), read from its header without torch."""
    metadata = (_safetensors_header(path) or {}).get("__metadata__")
    try:
        value = json.loads(metadata.get(SAMPLING_METADATA_KEY) or "{}") if isinstance(metadata, dict) else {}
    except (TypeError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _refuse_training_folder(folder: Path) -> None:
    """A `sana finetune` run folder without its exported LoRA, or one of its checkpoints: say what to pass."""
    if (folder / "state.json").is_file() and re.fullmatch(r"step-\d+", folder.name):
        run = folder.parent.parent
        raise SanaError(f"{folder} is a training checkpoint (optimizer state and weights to resume from), not a LoRA",
                        f"pass the run's exported LoRA, {run / LORA_WEIGHTS_NAME} (written when the run reaches its "
                        f"last step or --max-minutes), or finish it with: {_resume_command(run)}")
    config = folder / "train_config.json"
    if config.is_file():
        try:
            mode = json.loads(config.read_text(encoding="utf-8")).get("mode")
        except (OSError, ValueError, AttributeError):
            mode = None
        if mode == "full":
            raise SanaError(f"{folder} is a full fine-tuning run, not a LoRA",
                            f"pass --model {folder / 'model'} (or --transformer {folder / 'model' / 'transformer'})")
        raise SanaError(f"{folder} is a sana finetune run without an exported LoRA yet",
                        f"finish it with: {_resume_command(folder)}")


def _resume_command(run: Path) -> str:
    """`sana finetune DATA --out RUN --resume`, with the data folder the run recorded where it did."""
    try:
        data = json.loads((run / "train_config.json").read_text(encoding="utf-8")).get("data")
    except (OSError, ValueError, AttributeError):
        data = None
    return f"sana finetune {shlex.quote(str(data)) if data else 'DATA'} --out {shlex.quote(str(run))} --resume"


def read_lora(path: Path) -> tuple[dict[str, tuple[torch.Tensor, torch.Tensor, float]], dict]:
    """module name (diffusers naming) -> (A [r, in(, k, k)], B [out, r(, 1, 1)], alpha / r); and the adapter config."""
    from safetensors import safe_open

    path = lora_file(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata()
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:  # safetensors raises several types for damaged files
        raise SanaError(f"cannot read LoRA file {path.name}: the file is corrupt or truncated ({exc})",
                        "download or export it again") from None
    config = _adapter_config(metadata)
    if config.get("use_dora") or any("dora_scale" in k or "lora_magnitude_vector" in k for k in tensors):
        raise SanaError(f"{path.name} is a DoRA adapter", "only plain LoRA adapters can be merged")
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in tensors.items():
        match = re.fullmatch(r"(.+)\.(lora_A|lora_B|lora_down|lora_up)(?:\.[\w-]+)?\.weight", key)
        if match:
            kind = "A" if match.group(2) in ("lora_A", "lora_down") else "B"
            pairs.setdefault(_module_name(match.group(1)), {})[kind] = tensor
        elif key.endswith(".alpha"):
            pairs.setdefault(_module_name(key[: -len(".alpha")]), {})["alpha"] = tensor
        else:
            raise SanaError(f"{path.name}: unexpected tensor '{key}'", "not a diffusers-format SANA LoRA file")
    if not pairs:
        raise SanaError(f"{path.name} holds no LoRA weights", "not a diffusers-format SANA LoRA file")
    merged = {}
    for module, parts in pairs.items():
        if "A" not in parts or "B" not in parts:
            raise SanaError(f"{path.name}: '{module}' lacks its lora_A or lora_B weight", "the file is incomplete")
        a, b = parts["A"], parts["B"]
        rank = a.shape[0]
        if "alpha" in parts:  # kohya-style per-module alpha tensors
            alpha = float(parts["alpha"])
        else:
            alpha = _pattern_value(config.get("alpha_pattern"), module, config.get("lora_alpha", rank))
            if config:
                rank = _pattern_value(config.get("rank_pattern"), module, config.get("r", rank))
        ratio = float(alpha) / (math.sqrt(rank) if config.get("use_rslora") else float(rank))
        merged[module] = (a, b, ratio)
    return merged, config


def lora_delta(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """B @ A in fp32 as a weight-shaped update: [out, in] for linears, [out, in, k, k] for convs.

    A conv LoRA is A (a k x k conv to r channels) followed by B (a 1x1 conv), whose composition is the single
    k x k conv with weight B @ A over the flattened (in, k, k) axis.
    """
    a32, b32 = a.float(), b.float()
    if a32.ndim == 2:
        return b32 @ a32  # [out, in]
    return (b32.flatten(1) @ a32.flatten(1)).reshape(b32.shape[0], *a32.shape[1:])  # [out, in, k, k]


def merge_loras(state: dict[str, torch.Tensor], loras: list[tuple[Path, float]], class_name: str | None) -> None:
    """Merge every (file, scale) into `state` (diffusers names, in place), accumulating in fp32; `class_name` is the
    model's diffusers class, checked against what each LoRA says it was trained on."""
    for path, _ in loras if class_name else ():
        check_lora_base(Path(path), class_name)
    for path, scale in loras:
        name = Path(path).name
        modules, _ = read_lora(Path(path))
        for module, (a, b, ratio) in modules.items():
            key = f"{module}.weight"
            if key not in state:
                raise SanaError(f"{name}: LoRA target '{module}' is not in this model",
                                "the LoRA was trained for another model")
            weight = state[key]
            if a.shape[0] != b.shape[1]:
                raise SanaError(f"{name}: '{module}' has lora_A rank {a.shape[0]} but lora_B rank {b.shape[1]}",
                                "the file is damaged")
            delta = lora_delta(a, b)
            if delta.shape != weight.shape and not (delta.ndim == 2 and delta.shape == weight.flatten(1).shape
                                                   and weight.shape[2:].numel() == 1):
                raise SanaError(f"{name}: LoRA for '{module}' has shape {tuple(delta.shape)}, the model's weight "
                                f"is {tuple(weight.shape)}", "the LoRA was trained for another model")
            state[key] = (weight.float() + (ratio * scale) * delta.reshape(weight.shape)).to(weight.dtype)

"""Reading checkpoint files and assigning their tensors: what every model's loader shares.

Files: diffusers' single or sharded safetensors (variants preferred when present), single-file safetensors, and
NVlabs `.pth` checkpoints read with `weights_only=True` (never unpickling code). A model is built on the meta
device and its tensors assigned after every shape is checked (`assign`).
"""

from __future__ import annotations

import json
import os
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..components import read_json
from ..errors import SanaError
from ..lora import strip_key_prefixes
from . import staged_read

WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
INDEX_NAME = "diffusion_pytorch_model.safetensors.index.json"
# Tensors some checkpoints carry that the model recomputes or never uses.
IGNORED = re.compile(r"^(pos_embed|patch_embed\.pos_embed|y_embedder\.y_embedding|logvar_linear\..*)$")
# diffusers and transformers build their models under patches of torch that hold in every thread (accelerate's
# init_empty_weights puts each new nn.Parameter on the meta device), so while components load side by side, their
# builds and every step of ours that makes or assigns parameters take turns under this lock; reads run freely.
BUILD_LOCK = threading.RLock()
# Tensors larger than this are cast on the host before they go to the device (Gemma-2's 2.4 GB fp32 embedding
# would otherwise pass through the device at full width beside the cast copy); smaller ones are cast there.
HOST_CAST_BYTES = 64 << 20


@dataclass
class LoadReport:
    files: list[str]
    unexpected: list[str] = field(default_factory=list)
    loras: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)  # tensors the checkpoint carries for nothing (SANA-WM)


# -- files ---------------------------------------------------------------------------------------------------

def _variant_name(name: str, variant: str | None) -> str:
    """diffusers' naming: a.safetensors -> a.fp16.safetensors; a.safetensors.index.json -> a.safetensors.index.fp16.json."""
    if not variant:
        return name
    parts = name.split(".")
    return ".".join(parts[:-1] + [variant, parts[-1]])


def weight_files(folder: Path, variant: str | None = None, *, weights_name: str = WEIGHTS_NAME,
                 index_name: str = INDEX_NAME) -> list[Path]:
    """The safetensors files of a model folder: the shards its index lists or its one weights file, preferring
    `variant`'s when present, else the folder's only `*.safetensors`; [] when it holds none."""
    for v in ([variant] if variant else []) + [None]:
        index = folder / _variant_name(index_name, v)
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError) as exc:
                raise SanaError(f"{index} is not a valid shard index ({exc})") from None
            files = [folder / name for name in dict.fromkeys(weight_map.values())]
            missing = [f.name for f in files if not f.is_file()]
            if missing:
                raise SanaError(f"{folder} is missing shard(s) {', '.join(missing)}", "pull the model again")
            return files
        single = folder / _variant_name(weights_name, v)
        if single.is_file():
            return [single]
    others = sorted(folder.glob("*.safetensors"))
    return others if len(others) == 1 else []


def transformer_files(folder: Path, variant: str | None = None, what: str = "transformer") -> list[Path]:
    """The safetensors files of a diffusers model folder (a transformer's, a VAE's), preferring `variant` when
    present."""
    files = weight_files(folder, variant)
    if not files:
        raise SanaError(f"no {what} weights in {folder}", "expected diffusion_pytorch_model*.safetensors")
    return files


def read_safetensors(path: Path, prefix: str = "", *, device: torch.device | str | None = None,
                     dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file whose names start with `prefix` (the others are never read).

    With `device` each tensor goes there as soon as it is read, and with `dtype` its floating-point tensors are
    cast there (the same rounding as on the host), one tensor at a time: the host never holds the model, nor the
    device a full-precision copy of it. On a CUDA device the copies and casts run on a stream of their own (done
    before this returns), so they do not queue behind kernels another thread runs meanwhile on the default
    stream, as the warm-ups during a load do (`ImagePipeline.from_pretrained`). There the tensors that need no cast
    are read by `staged_read` (large parallel reads through pinned buffers; `SANA_STAGED_READ=0` turns it off), the
    others through the memory map as on the host."""
    from ..trace import span

    with span("read", file=f"{path.parent.name}/{path.name}"):
        return _read_safetensors(path, prefix, device=device, dtype=dtype)


def _read_safetensors(path: Path, prefix: str, *, device: torch.device | str | None,
                      dtype: torch.dtype | None) -> dict[str, torch.Tensor]:
    from contextlib import nullcontext

    from safetensors import safe_open

    def unreadable(exc: Exception) -> SanaError:  # safetensors raises several types for truncated or corrupt files
        return SanaError(f"cannot read {path.name}: the file is corrupt or truncated ({exc})",
                         "delete it and download it again")

    target = torch.device(device) if device is not None else None
    stream = torch.cuda.Stream(target) if target is not None and target.type == "cuda" else None
    staged = {}
    if stream is not None and os.environ.get("SANA_STAGED_READ", "1") != "0":
        try:
            entries = [e for e in staged_read.read_header(path) if e.name.startswith(prefix)]
        except (OSError, staged_read.HeaderError):
            entries = None  # the memory-mapped read below takes the file, or says why it cannot
        if entries is not None:
            # Tensors that need a cast take the route below, one at a time, so the device never holds a wide copy
            # of many of them at once.
            cast = {e.name for e in entries if dtype is not None and e.dtype.is_floating_point and e.dtype != dtype}
            try:
                with torch.cuda.stream(stream):
                    staged = staged_read.read_staged(path, [e for e in entries if e.name not in cast], target)
            except OSError as exc:
                raise unreadable(exc) from None
            if not cast:
                return staged  # complete: read_staged waits for its copies
    try:
        opened = safe_open(str(path), framework="pt")
    except Exception as exc:
        raise unreadable(exc) from None
    state = {}
    # Only the file's own errors are "unreadable": a device out of memory during the copies is raised as it is.
    with opened as f, (torch.cuda.stream(stream) if stream else nullcontext()):
        for key in f.keys():
            if not key.startswith(prefix):
                continue
            if key in staged:
                tensor = staged[key]
            else:
                try:
                    tensor = f.get_tensor(key)  # a view of the file's pages; the copy below reads them
                except Exception as exc:
                    raise unreadable(exc) from None
                if target is not None:
                    if dtype is not None and tensor.is_floating_point() and tensor.nbytes > HOST_CAST_BYTES:
                        tensor = tensor.to(dtype)  # a large tensor's wider copy never reaches the device
                    tensor = tensor.to(target)
            if dtype is not None and tensor.is_floating_point():
                tensor = tensor.to(dtype)
            state[key] = tensor
    if stream is not None:
        stream.synchronize()  # the tensors are complete before any other stream reads them
    return state


def read_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """An NVlabs `.pth` (a dict with `state_dict`, `model` or `module`, or a flat tensor dict), never unpickling code."""
    try:
        try:
            data = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as exc:
            if "mmap" not in str(exc):
                raise
            data = torch.load(path, map_location="cpu", weights_only=True)  # legacy (pre-zip) format cannot mmap
    except Exception as exc:  # weights_only refuses anything but plain containers of tensors
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        raise SanaError(f"{path.name} is not a plain state dict ({reason})",
                        "only tensor checkpoints are loaded; convert it to safetensors") from None
    if isinstance(data, dict):
        for key in ("state_dict", "model", "module", "ema"):
            if isinstance(data.get(key), dict):
                data = data[key]
                break
    if not isinstance(data, dict) or not data:
        raise SanaError(f"{path.name} is not a plain state dict (it holds {type(data).__name__})",
                        "expected a dict of tensors, or one under 'state_dict'")
    odd = next((k for k, v in data.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)), None)
    if odd is not None:
        raise SanaError(f"{path.name} is not a plain state dict (entry {odd!r} is not a tensor)",
                        "expected a dict of tensors, or one under 'state_dict'")
    return data


# Wrappers that training code and single-file exports put in front of every key.
_KEY_PREFIXES = ("module.", "model.diffusion_model.", "_orig_mod.")


def strip_prefixes(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {strip_key_prefixes(key, _KEY_PREFIXES): tensor for key, tensor in state.items()}


def locate(path: Path, config: dict | None, variant: str | None) -> tuple[dict, list[Path]]:
    path = Path(path)
    if path.is_dir():
        folder = path / "transformer" if (path / "transformer" / "config.json").is_file() else path
        if not (folder / "config.json").is_file():
            raise SanaError(f"{path} has no transformer/ folder with a config.json", "not a SANA model directory")
        return config or read_json(folder / "config.json"), transformer_files(folder, variant)
    if not path.is_file():
        raise SanaError(f"no such file or directory: {path}")
    if config is None:
        raise SanaError(f"{path.name} holds weights only", "give the model's config (a registry name or a folder)")
    return config, [path]


def is_pickle_checkpoint(file: Path) -> bool:
    return file.suffix in (".pth", ".pt", ".ckpt", ".bin")


def read_target(device: torch.device | str, dtype: torch.dtype, loras) -> dict:
    """`read_state`'s target for a DiT: its device and dtype, or the host and the files' own dtype when LoRAs are
    merged into the weights first (in the checkpoint's precision, as before the cast)."""
    return {} if loras else {"device": device, "dtype": dtype}


def read_state(files: list[Path], *, device: torch.device | str | None = None,
               dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """Every tensor of `files` (safetensors or plain `.pth`), wrapper prefixes and never-used tensors dropped.
    `device` and `dtype` are as `read_safetensors` takes them (a `.pth` is read whole on the host first)."""
    state: dict[str, torch.Tensor] = {}
    for file in files:
        if is_pickle_checkpoint(file):
            state.update({k: (v.to(device) if device is not None else v).to(dtype or v.dtype)
                          if v.is_floating_point() else v for k, v in read_checkpoint(file).items()})
        else:
            state.update(read_safetensors(file, device=device, dtype=dtype))
    return {k: v for k, v in strip_prefixes(state).items() if not IGNORED.match(k)}


def assign(model: torch.nn.Module, state: dict[str, torch.Tensor], sources: dict[str, str], *,
            checkpoint: str = "the checkpoint", prefix: str = "") -> list[str]:
    """Assign `state` (engine names) as `model`'s tensors after checking every shape and that nothing is missing;
    returns the unexpected names. `sources` maps engine names to checkpoint names for messages, `prefix` is put in
    front of names the checkpoint does not have."""
    expected = model.state_dict()
    for key, tensor in state.items():
        if key in expected and expected[key].shape != tensor.shape:
            name = sources.get(key, prefix + key)
            raise SanaError(f"weight '{name}' has shape {tuple(tensor.shape)}, the config expects "
                            f"{tuple(expected[key].shape)}" + (f" (as '{key}')" if name != prefix + key else ""),
                            "the weights do not belong to this config")
    missing = sorted(sources.get(k, prefix + k) for k in set(expected) - set(state))
    if missing:
        shown = ", ".join(missing[:4]) + (f" and {len(missing) - 4} more" if len(missing) > 4 else "")
        raise SanaError(f"{checkpoint} lacks {len(missing)} weight(s): {shown}",
                        "it is incomplete or for another model")
    unexpected = sorted(sources.get(k, prefix + k) for k in set(state) - set(expected))
    with BUILD_LOCK:
        model.load_state_dict({k: v.contiguous() for k, v in state.items() if k in expected}, strict=True, assign=True)
    return unexpected

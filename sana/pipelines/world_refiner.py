"""SANA-WM's stage 2: the LTX-2 chunk-causal refiner on the stage-1 latents (`sana world --refine`).

The refiner is diffusers' `SanaWMLTX2Refiner` as it stands: a 48-layer LTX-2 DiT that re-noises each block of three
latent frames to sigma 0.91 and takes three distilled Euler steps back, attending to the first latent frame (the
"sink", never refined) and at most ten frames of refined history through a sliding KV cache, with a Gemma-3 text
encoder and LTX-2's text connectors. Its noise comes from a generator seeded with the clip's seed on the device the
refiner runs on (diffusers' default is 42). The refined latents decode through the stage-1 pipeline's LTX-2 VAE;
the first decoded frame (the sink's) is dropped, as diffusers and NVlabs drop it, so a clip of F frames comes out
with F - 1, showing the camera path's poses 1 to F - 1.

The refiner's modules are not ours (no Triton kernels, no block streaming): on a GPU they load straight onto it when
they fit beside what stage 1 keeps there, else each moves there only while it runs (accelerate's model offload);
when even the largest does not fit, the run stops before reading a weight, with what it would need. By its FLOPs
(48 layers at width 4096 over 3 latent frames a block, four forwards a block) the refiner is ~10% of a 161-frame
clip's GPU time beside stage 1's 60 steps, and GEMM-bound, so diffusers' eager blocks cost little here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..camera.path import FRAME_STRIDE
from ..errors import SanaError, UsageError

REFINER_CLASS = "SanaWMLTX2Refiner"
REFINER_SUBFOLDER = "refiner"  # where a SANA-WM folder may keep its stage 2
SINK_FRAMES = 1  # latent frames anchoring the refiner; decoded, the clip's first pixel frame is dropped
MIN_REFINED_FRAMES = FRAME_STRIDE * SINK_FRAMES + 1  # 9: one latent frame past the sink, the least to refine


def check_refinable(frames: int) -> str | None:
    """Why a stage-1 clip of `frames` frames cannot be refined (None when it can): the refiner re-noises the
    latent frames after the sink, and a clip of the sink alone has none."""
    if frames < MIN_REFINED_FRAMES:
        return (f"the refiner needs at least {MIN_REFINED_FRAMES} frames (its first latent frame anchors it and is "
                f"never refined); this clip has {frames}")
    return None
ACTIVATION_HEADROOM = 1.15  # weights x this must fit for the refiner to stay on the device


def refiner_folder(explicit: str | None, model_dir: Path | None) -> Path | None:
    """The refiner to use: `explicit` (--refiner DIR), checked; else the model folder's `refiner/` when it holds one;
    else None. No torch here: the CLI calls it before anything loads."""
    if explicit is not None:
        folder = Path(explicit).expanduser()
        if not folder.is_dir():
            raise UsageError(f"--refiner {explicit} is not a folder",
                             f"give a diffusers-format {REFINER_CLASS} folder (model_index.json, transformer/, ...)")
        _check_index(folder, f"--refiner {explicit}")
        return folder
    if model_dir is not None and (model_dir / REFINER_SUBFOLDER).is_dir():
        folder = model_dir / REFINER_SUBFOLDER
        _check_index(folder, str(folder))  # NVlabs' layout has no model_index.json: said so, not taken for absent
        return folder
    return None


def _check_index(folder: Path, what: str) -> None:
    import json

    index_path = folder / "model_index.json"
    try:
        index = json.loads(index_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UsageError(f"{what} has no model_index.json (NVlabs' refiner/ layout is not a diffusers folder)",
                         f"give a diffusers-format {REFINER_CLASS} folder") from None
    except (OSError, ValueError) as exc:
        raise UsageError(f"{what}: cannot read model_index.json ({exc})") from None
    if not isinstance(index, dict) or index.get("_class_name") != REFINER_CLASS:
        found = index.get("_class_name") if isinstance(index, dict) else None
        raise UsageError(f"{what} holds a {found or 'non-diffusers'} pipeline, not SANA-WM's refiner",
                         f"give a diffusers-format {REFINER_CLASS} folder")
    missing = [name for name in ("transformer", "connectors", "text_encoder", "tokenizer", "scheduler")
               if not (folder / name).is_dir()]
    if missing:
        raise UsageError(f"{what} lacks {', '.join(missing)}", f"a {REFINER_CLASS} folder has transformer/, "
                         "connectors/, text_encoder/, tokenizer/ and scheduler/")


@dataclass
class WorldRefiner:
    """A loaded refiner and where it runs."""

    pipe: object  # diffusers' SanaWMLTX2Refiner
    device: object  # torch.device its noise is drawn on (the device it computes on)
    placement: str  # "resident" | "model offload" | "cpu"
    folder: Path

    @classmethod
    def load(cls, folder: Path, *, dtype, device) -> "WorldRefiner":
        """Place the refiner from its weights' headers before reading a tensor, then load it (safetensors only):
        straight onto the GPU when all of it fits in the free memory there, else on the host with accelerate's
        model offload, else an error saying what it needs; on the CPU (or MPS), there."""
        import torch

        device = torch.device(device)
        if device.type != "cuda":
            pipe = _from_pretrained(folder, dtype)
            pipe.to(device)
            return cls(pipe, device, "cpu" if device.type == "cpu" else "resident", folder)
        sizes = component_bytes(folder, torch.tensor([], dtype=dtype).element_size())
        free, _ = torch.cuda.mem_get_info(device)
        if sum(sizes.values()) * ACTIVATION_HEADROOM < free:
            with torch.cuda.device(device):  # diffusers' device_map names "cuda": the current device
                pipe = _from_pretrained(folder, dtype, device_map="cuda")
            return cls(pipe, device, "resident", folder)
        largest = max(sizes, key=sizes.get)
        if sizes[largest] * ACTIVATION_HEADROOM >= free:
            raise SanaError(f"the refiner's {largest.replace('_', ' ')} needs about "
                            f"{sizes[largest] * ACTIVATION_HEADROOM / 2**30:.1f} GiB of free GPU memory, "
                            f"{free / 2**30:.1f} GiB are free after stage 1",
                            "run without --refine, or on a GPU with more memory")
        pipe = _from_pretrained(folder, dtype)
        pipe.enable_model_cpu_offload(device=device)
        return cls(pipe, device, "model offload", folder)

    def record(self, seed: int) -> dict:
        """What a clip's metadata says of its stage 2 (the clip shows the camera path's poses 1 to F - 1)."""
        return {"path": str(self.folder), "seed": seed, "dropped_first_frames": SINK_FRAMES,
                "placement": self.placement}

    def refine(self, latents, prompt: str, *, fps: float, seed: int):
        """Stage-1 latents [1, C, F, h, w] (normalised as the VAE's decode expects them) -> refined latents, the
        sink frame unchanged, on the refiner's device in its dtype."""
        import torch

        generator = torch.Generator(device=self.device).manual_seed(seed)
        return self.pipe(latents, prompt, fps=float(fps), sink_size=SINK_FRAMES, generator=generator,
                         output_type="latent")


def component_bytes(folder: Path, element_size: int) -> dict[str, int]:
    """The refiner's modules' weight bytes at `element_size` bytes a parameter, from safetensors headers."""
    from ..hub import local_components

    return {c.name: c.params * element_size for c in local_components(folder)
            if c.params and c.name in ("transformer", "connectors", "text_encoder")}


def _from_pretrained(folder: Path, dtype, **kwargs):
    from diffusers import SanaWMLTX2Refiner

    try:
        pipe = SanaWMLTX2Refiner.from_pretrained(folder, dtype=dtype, use_safetensors=True, **kwargs)
    except (OSError, ValueError, KeyError) as exc:
        raise SanaError(f"cannot load the refiner in {folder}: {str(exc).splitlines()[0]}") from None
    pipe.set_progress_bar_config(disable=True)
    return pipe

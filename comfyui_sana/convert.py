"""ComfyUI's data layouts from and to ours, and the metadata records the nodes pass to Sana Save.

IMAGE: float32 [B, H, W, 3] in 0..1 on the CPU (ComfyUI's layout). Ours are 8-bit (the PIL images and uint8 frames
the pipelines return, exactly what `sana gen` writes), so an IMAGE holds k / 255 and Save writes back the same bytes.
SANA_INFO: a list of GenerationRecord dicts, one an image (or one for a whole clip), for Sana Save.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch


# What a clip node hands Sana Save beside the record, in its `extra`, to write next to the clip (and never into
# the record itself): the first frame as a base64 PNG, and the camera file's text.
FIRST_FRAME_KEY, CAMERA_JSON_KEY = "_first_frame_png", "_camera_json"


def png_base64(image) -> str:
    import base64
    import io

    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def pil_to_image(images: list) -> torch.Tensor:
    """PIL RGB images of one size -> IMAGE [B, H, W, 3] float32 in 0..1."""
    return torch.from_numpy(np.stack([np.asarray(im.convert("RGB")) for im in images]).astype(np.float32) / 255.0)


def frames_to_image(frames: torch.Tensor) -> torch.Tensor:
    """uint8 frames [F, H, W, 3] -> IMAGE [F, H, W, 3] float32 in 0..1 (a clip is a batch of frames in ComfyUI)."""
    return frames.float() / 255.0


def image_to_uint8(image: torch.Tensor) -> np.ndarray:
    """IMAGE [B, H, W, 3] (or one [H, W, 3]) in 0..1 -> uint8, rounded."""
    return (image.detach().float().cpu().clamp(0, 1) * 255.0).round().to(torch.uint8).numpy()


def image_to_pil(image: torch.Tensor):
    """One IMAGE item [H, W, 3] (or the first of a batch) -> a PIL RGB image."""
    from PIL import Image

    if image.ndim == 4:
        image = image[0]
    return Image.fromarray(image_to_uint8(image))


def record(model, *, prompt: str, negative: str, seed: int, steps: int, guidance: float, sampler: str,
           shift: float, width: int, height: int, pag: float = 0.0, pag_layer: int | None = None,
           frames: int | None = None, fps: float | None = None, timings: dict | None = None,
           extra: dict | None = None) -> dict[str, Any]:
    """The GenerationRecord `sana gen` would write for these settings on `model` (a SanaModel), as a dict."""
    from dataclasses import asdict

    from sana import __version__
    from sana.device import DTYPE_NAMES
    from sana.outputs import GenerationRecord

    pipe = model.pipeline()
    return asdict(GenerationRecord(
        prompt=prompt, negative_prompt=negative, model=model.record_name, model_repo=model.repo,
        model_revision=model.revision, family=model.family, seed=seed, steps=steps, guidance=guidance, pag=pag,
        pag_layers=[pag_layer] if pag > 0 and pag_layer is not None else [], sampler=sampler, flow_shift=shift,
        width=width, height=height, frames=frames, fps=fps, dtype=DTYPE_NAMES.get(pipe.dtype, str(pipe.dtype)),
        loras=model.lora_records(), version=__version__, timings={k: round(v, 3) for k, v in (timings or {}).items()},
        extra={"device": str(pipe.device), "comfyui": True, **(extra or {})},
    ))

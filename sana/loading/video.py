"""The SANA-Video DiT's loader: the image DiT's mapping plus the video-only names (NVlabs `x_embedder.proj` /
`mlp.t_conv` -> diffusers `patch_embedding` / `ff.conv_temp` -> engine `patch_embed` / `ff.temporal`)."""

from __future__ import annotations

import re
from pathlib import Path

import torch

from ..errors import SanaError
from ..lora import merge_loras
from ..models.video_transformer import SanaVideoTransformer, VideoTransformerConfig
from .files import LoadReport, assign, locate, read_state, read_target
from .image import diffusers_to_engine, engine_to_diffusers, is_original_layout, original_to_diffusers

VIDEO_CLASS_NAME = "SanaVideoTransformer3DModel"


def load_video_transformer(path: Path, *, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu",
                           config: dict | None = None, variant: str | None = None,
                           loras: list[tuple[Path, float]] = ()) -> SanaVideoTransformer:
    """Load the SANA-Video DiT from a model folder, a transformer folder (diffusers' `SanaVideoTransformer3DModel`:
    single or sharded safetensors, variants), or a single `.safetensors` / `.pth` file in diffusers or NVlabs
    naming (`config` needed then). Arguments, `load_report` and errors as `load_transformer`.

    The mapping is the image DiT's, plus the video-only names: NVlabs `x_embedder.proj` / `mlp.t_conv` ->
    diffusers `patch_embedding` / `ff.conv_temp` -> engine `patch_embed` / `ff.temporal`.
    """
    config, files = locate(Path(path), config, variant)
    try:
        cfg = VideoTransformerConfig.from_dict(config)
    except (TypeError, ValueError) as exc:
        raise SanaError(f"unsupported video transformer config: {exc}") from None

    # 1. Read every tensor; NVlabs names -> diffusers names; LoRAs merge on the unfused weights; cast one at a time.
    state = read_state(files, **read_target(device, dtype, loras))
    if is_original_layout(state):
        state = original_to_diffusers(state, cfg.guidance_embeds)
        state = {re.sub(r"^patch_embed\.proj\.", "patch_embedding.", k): v for k, v in state.items()}
    merge_loras(state, list(loras), VIDEO_CLASS_NAME)
    for key in list(state):
        state[key] = state[key].to(dtype)
    sources: dict[str, str] = {}
    state = diffusers_to_engine(state, sources)

    # 2. Build on the meta device, check shapes, assign the loaded tensors as the parameters.
    with torch.device("meta"):
        model = SanaVideoTransformer(cfg)
    for key, tensor in model.state_dict().items():  # name what is missing as the checkpoint would
        sources.setdefault(key, _video_checkpoint_name(key, tensor, cfg.guidance_embeds))
    unexpected = assign(model, state, sources)
    model = model.to(device=device).eval()
    model.load_report = LoadReport(files=[f.name for f in files], unexpected=unexpected,
                                   loras=[str(p) for p, _ in loras])
    return model


def _video_checkpoint_name(key: str, tensor: torch.Tensor, guidance_embeds: bool) -> str:
    """The diffusers name of an engine tensor; a fused one as `...attn1.to_q/to_k/to_v.weight`."""
    names = list(video_engine_to_diffusers({key: tensor}, guidance_embeds))
    if len(names) == 1:
        return names[0]
    parts = "/".join("to_" + re.search(r"\.to_([qkv])\.", n).group(1) for n in names)
    return re.sub(r"\.to_[qkv]\.", f".{parts}.", names[0])


def video_engine_to_diffusers(state: dict[str, torch.Tensor], guidance_embeds: bool) -> dict[str, torch.Tensor]:
    """The inverse for the video DiT: engine tensors -> diffusers' `SanaVideoTransformer3DModel` names."""
    return {re.sub(r"^patch_embed\.proj\.", "patch_embedding.", k): v
            for k, v in engine_to_diffusers(state, guidance_embeds).items()}

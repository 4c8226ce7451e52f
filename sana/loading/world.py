"""The SANA-WM DiT's loader: diffusers' `SanaWMTransformer3DModel` folders and NVlabs' safetensors (which differ
only in the timestep MLP's names) onto our engine names; tensors the checkpoints carry but the model never reads are
reported as ignored."""

from __future__ import annotations

import re
from pathlib import Path

import torch

from ..errors import SanaError
from ..models.world_transformer import SanaWorldTransformer, WorldTransformerConfig
from .files import IGNORED, LoadReport, assign, locate, read_state

WORLD_CLASS_NAME = "SanaWMTransformer3DModel"
# diffusers / NVlabs names -> engine names (the rest is the same in all three). NVlabs' checkpoints differ from
# diffusers' folders only in the timestep MLP (`t_embedder.mlp.0/2`).
_WORLD_RENAMES = [
    (r"x_embedder\.proj\.", "x_embedder."),
    (r"plucker_embedder\.proj\.", "plucker_embedder."),
    (r"t_embedder\.mlp\.0\.", "t_embedder.linear_1."),
    (r"t_embedder\.mlp\.2\.", "t_embedder.linear_2."),
    (r"t_block\.1\.", "t_block."),
    (r"y_embedder\.y_proj\.fc([12])\.", r"y_embedder.linear_\1."),
    (r"blocks\.(\d+)\.mlp\.inverted_conv\.conv\.", r"blocks.\1.mlp.inverted."),
    (r"blocks\.(\d+)\.mlp\.depth_conv\.conv\.", r"blocks.\1.mlp.depthwise."),
    (r"blocks\.(\d+)\.mlp\.point_conv\.conv\.", r"blocks.\1.mlp.point."),
    (r"blocks\.(\d+)\.mlp\.t_conv\.", r"blocks.\1.mlp.temporal."),
]
_WORLD_ENGINE_RENAMES = [  # engine -> diffusers, for messages
    (r"x_embedder\.", "x_embedder.proj."),
    (r"plucker_embedder\.", "plucker_embedder.proj."),
    (r"t_block\.", "t_block.1."),
    (r"y_embedder\.linear_([12])\.", r"y_embedder.y_proj.fc\1."),
    (r"blocks\.(\d+)\.mlp\.inverted\.", r"blocks.\1.mlp.inverted_conv.conv."),
    (r"blocks\.(\d+)\.mlp\.depthwise\.", r"blocks.\1.mlp.depth_conv.conv."),
    (r"blocks\.(\d+)\.mlp\.point\.", r"blocks.\1.mlp.point_conv.conv."),
    (r"blocks\.(\d+)\.mlp\.temporal\.", r"blocks.\1.mlp.t_conv."),
]
# Tensors the checkpoints carry that the model never reads: the GDN `recall_gate` buffers, the absolute-map
# embedder (unused with the Plücker path), and (checked per block below) the GDN gates of softmax blocks.
_WORLD_UNUSED = re.compile(r"^(blocks\.\d+\.attn\.recall_gate|raymap_embedder\..*)$")
_WORLD_SOFTMAX_GDN = re.compile(
    r"^blocks\.(\d+)\.attn\.(beta_proj\.(weight|bias)|gate_proj\.(weight|bias)|A_log|dt_bias|conv_k(_cam)?\.weight)$")


def _rename(name: str, table: list[tuple[str, str]]) -> str:
    for pattern, replacement in table:
        name, count = re.subn(rf"^{pattern}", replacement, name)
        if count:
            break
    return name


def world_diffusers_to_engine(state: dict[str, torch.Tensor],
                              sources: dict[str, str] | None = None) -> dict[str, torch.Tensor]:
    """diffusers (or NVlabs) `SanaWMTransformer3DModel` tensors -> engine names; the FFN's 1x1 convs become linear
    weights. `sources`, when given, receives engine name -> checkpoint name."""
    out = {}
    for key, tensor in state.items():
        name = _rename(key, _WORLD_RENAMES)
        if re.fullmatch(r"blocks\.\d+\.mlp\.(inverted|point)\.weight", name) and tensor.ndim == 4:
            tensor = tensor.flatten(1)  # 1x1 conv [O, I, 1, 1] -> linear [O, I]
        out[name] = tensor
        if sources is not None:
            sources[name] = key
    return out


def load_world_transformer(path: Path, *, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu",
                           config: dict | None = None, variant: str | None = None) -> SanaWorldTransformer:
    """Load the SANA-WM DiT from a model folder, a transformer folder (diffusers' `SanaWMTransformer3DModel`) or a
    single `.safetensors` / `.pth` file in diffusers or NVlabs naming (e.g. `dit/sana_wm_1600m_720p.safetensors`
    of `SANA-WM_bidirectional`; give `config`, `{}` meaning the released one). See `world_transformer_from_state`.
    """
    config, files = locate(Path(path), config, variant)
    if config.get("_class_name", WORLD_CLASS_NAME) != WORLD_CLASS_NAME:
        raise SanaError(f"{path} holds a {config['_class_name']}, not a SANA-WM transformer ({WORLD_CLASS_NAME})")
    model = world_transformer_from_state(config, read_state(files, device=device, dtype=dtype), dtype=dtype, device=device,
                                         origin=f"the checkpoint in {path}")
    model.load_report.files = [f.name for f in files]
    return model


def world_transformer_from_state(config: dict, state: dict[str, torch.Tensor], *, dtype: torch.dtype | None = None,
                                 device: torch.device | str = "cpu",
                                 origin: str = "the checkpoint") -> SanaWorldTransformer:
    """Our SANA-WM DiT from a `SanaWMTransformer3DModel` config dict and a state dict in diffusers or NVlabs names
    (e.g. `dict(model.config), model.state_dict()`); `dtype` None keeps the tensors' own.

    `load_report.ignored` lists the tensors the checkpoints carry but the model never reads (recall_gate buffers,
    raymap_embedder, the GDN gates of softmax blocks); `unexpected` anything else not used. Missing weights,
    wrong shapes and unsupported configs raise `SanaError`.
    """
    try:
        cfg = WorldTransformerConfig.from_dict(config)
    except (TypeError, ValueError) as exc:
        raise SanaError(f"unsupported SANA-WM transformer config: {exc}") from None

    # 1. Rename, cast one tensor at a time.
    state = {k: v for k, v in state.items() if not IGNORED.match(k)}
    for key in list(state):
        state[key] = state[key].to(dtype or state[key].dtype)
    sources: dict[str, str] = {}
    state = world_diffusers_to_engine(state, sources)

    # 2. Build on the meta device, check shapes, assign; sort what is left into never-read and unknown.
    with torch.device("meta"):
        model = SanaWorldTransformer(cfg)
    for key in model.state_dict():
        sources.setdefault(key, _rename(key, _WORLD_ENGINE_RENAMES))
    leftover = assign(model, state, sources, checkpoint=origin)
    ignored = [k for k in leftover if _WORLD_UNUSED.match(k) or (
        (m := _WORLD_SOFTMAX_GDN.match(k)) and cfg.is_softmax_block(int(m.group(1))))]
    model = model.to(device=device).eval()
    model.load_report = LoadReport(files=[], unexpected=[k for k in leftover if k not in ignored], ignored=ignored)
    return model

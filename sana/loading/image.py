"""The SANA image DiT's key mapping and loader: NVlabs names -> diffusers names (`ORIGINAL_TO_DIFFUSERS`; LoRAs
merge there, on the unfused weights) -> engine names with q/k/v and k/v fused (`diffusers_to_engine`), and the
inverse for saving (`engine_to_diffusers`). `load_transformer` hands video and world-model configs to their loaders.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from ..errors import SanaError
from ..lora import merge_loras
from ..models.transformer import SanaTransformer, TransformerConfig
from .files import LoadReport, assign, locate, read_state, read_target

# -- key mapping ---------------------------------------------------------------------------------------------

ORIGINAL_TO_DIFFUSERS = [
    (r"x_embedder\.proj\.", "patch_embed.proj."),
    (r"y_embedder\.y_proj\.fc1\.", "caption_projection.linear_1."),
    (r"y_embedder\.y_proj\.fc2\.", "caption_projection.linear_2."),
    (r"t_embedder\.mlp\.0\.", "time_embed.emb.timestep_embedder.linear_1."),
    (r"t_embedder\.mlp\.2\.", "time_embed.emb.timestep_embedder.linear_2."),
    (r"cfg_embedder\.mlp\.0\.", "time_embed.guidance_embedder.linear_1."),
    (r"cfg_embedder\.mlp\.2\.", "time_embed.guidance_embedder.linear_2."),
    (r"t_block\.1\.", "time_embed.linear."),
    (r"attention_y_norm\.", "caption_norm."),
    (r"final_layer\.linear\.", "proj_out."),
    (r"final_layer\.scale_shift_table", "scale_shift_table"),
    (r"blocks\.(\d+)\.scale_shift_table", r"transformer_blocks.\1.scale_shift_table"),
    (r"blocks\.(\d+)\.attn\.q_norm\.", r"transformer_blocks.\1.attn1.norm_q."),
    (r"blocks\.(\d+)\.attn\.k_norm\.", r"transformer_blocks.\1.attn1.norm_k."),
    (r"blocks\.(\d+)\.attn\.proj\.", r"transformer_blocks.\1.attn1.to_out.0."),
    (r"blocks\.(\d+)\.cross_attn\.q_linear\.", r"transformer_blocks.\1.attn2.to_q."),
    (r"blocks\.(\d+)\.cross_attn\.q_norm\.", r"transformer_blocks.\1.attn2.norm_q."),
    (r"blocks\.(\d+)\.cross_attn\.k_norm\.", r"transformer_blocks.\1.attn2.norm_k."),
    (r"blocks\.(\d+)\.cross_attn\.proj\.", r"transformer_blocks.\1.attn2.to_out.0."),
    (r"blocks\.(\d+)\.mlp\.inverted_conv\.conv\.", r"transformer_blocks.\1.ff.conv_inverted."),
    (r"blocks\.(\d+)\.mlp\.depth_conv\.conv\.", r"transformer_blocks.\1.ff.conv_depth."),
    (r"blocks\.(\d+)\.mlp\.point_conv\.conv\.", r"transformer_blocks.\1.ff.conv_point."),
    (r"blocks\.(\d+)\.mlp\.t_conv\.", r"transformer_blocks.\1.ff.conv_temp."),  # SANA-Video
]
_ORIGINAL_SPLITS = [  # fused original tensors that diffusers stores split
    (re.compile(r"blocks\.(\d+)\.attn\.qkv\.(weight|bias)"), "transformer_blocks.{0}.attn1", ("to_q", "to_k", "to_v")),
    (re.compile(r"blocks\.(\d+)\.cross_attn\.kv_linear\.(weight|bias)"), "transformer_blocks.{0}.attn2", ("to_k", "to_v")),
]


def is_original_layout(state: dict) -> bool:
    """NVlabs names (`blocks.N.attn.qkv`, `x_embedder`, `final_layer`) rather than diffusers ones."""
    return any(k.startswith(("blocks.", "x_embedder.", "final_layer.", "t_block.")) for k in state)


def original_to_diffusers(state: dict[str, torch.Tensor], guidance_embeds: bool) -> dict[str, torch.Tensor]:
    out = {}
    for key, tensor in state.items():
        for pattern, base, names in _ORIGINAL_SPLITS:
            match = pattern.fullmatch(key)
            if match:
                for name, part in zip(names, tensor.chunk(len(names), dim=0)):
                    out[f"{base.format(match.group(1))}.{name}.{match.group(2)}"] = part
                break
        else:
            new = key
            for pattern, replacement in ORIGINAL_TO_DIFFUSERS:
                new, count = re.subn(rf"^{pattern}", replacement, key)
                if count:
                    break
            if guidance_embeds:  # Sprint's diffusers layout has no `.emb` level
                new = new.replace("time_embed.emb.timestep_embedder.", "time_embed.timestep_embedder.")
            out[new] = tensor
    return out


_RENAMES = [
    (r"patch_embed\.proj\.", "patch_embed."),
    (r"time_embed\.emb\.timestep_embedder\.", "time_embed.timestep_embedder."),
    (r"transformer_blocks\.(\d+)\.attn1\.to_out\.0\.", r"blocks.\1.attn.out."),
    (r"transformer_blocks\.(\d+)\.attn1\.norm_([qk])\.", r"blocks.\1.attn.norm_\2."),
    (r"transformer_blocks\.(\d+)\.attn2\.to_q\.", r"blocks.\1.cross_attn.q."),
    (r"transformer_blocks\.(\d+)\.attn2\.to_out\.0\.", r"blocks.\1.cross_attn.out."),
    (r"transformer_blocks\.(\d+)\.attn2\.norm_([qk])\.", r"blocks.\1.cross_attn.norm_\2."),
    (r"transformer_blocks\.(\d+)\.ff\.conv_inverted\.", r"blocks.\1.ff.inverted."),
    (r"transformer_blocks\.(\d+)\.ff\.conv_depth\.", r"blocks.\1.ff.depthwise."),
    (r"transformer_blocks\.(\d+)\.ff\.conv_point\.", r"blocks.\1.ff.point."),
    (r"transformer_blocks\.(\d+)\.ff\.conv_temp\.", r"blocks.\1.ff.temporal."),  # SANA-Video
    (r"patch_embedding\.", "patch_embed."),  # SANA-Video's Conv3d
    (r"transformer_blocks\.(\d+)\.", r"blocks.\1."),
]
_FUSED = [  # (diffusers parts, engine name)
    (re.compile(r"transformer_blocks\.(\d+)\.attn1\.to_([qkv])\.(weight|bias)"), ("q", "k", "v"), "blocks.{0}.attn.qkv.{1}"),
    (re.compile(r"transformer_blocks\.(\d+)\.attn2\.to_([kv])\.(weight|bias)"), ("k", "v"), "blocks.{0}.cross_attn.kv.{1}"),
]


def diffusers_to_engine(state: dict[str, torch.Tensor],
                        sources: dict[str, str] | None = None) -> dict[str, torch.Tensor]:
    """Rename to engine names, fuse q/k/v and k/v, and flatten the 1x1 convs into linear weights.

    `sources`, when given, is filled with engine name -> the checkpoint name(s) it came from (for messages).
    """
    sources = {} if sources is None else sources
    out: dict[str, torch.Tensor] = {}
    groups: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in state.items():
        for pattern, order, target in _FUSED:
            match = pattern.fullmatch(key)
            if match:
                fused = target.format(match.group(1), match.group(3))
                groups.setdefault(fused, {})[match.group(2)] = tensor
                sources[fused] = key.replace(f"to_{match.group(2)}.", "to_" + "/".join(order) + ".")
                break
        else:
            new = key
            for pattern, replacement in _RENAMES:
                new, count = re.subn(rf"^{pattern}", replacement, key)
                if count:
                    break
            if re.search(r"\.ff\.(inverted|point)\.weight$", new) and tensor.ndim == 4:
                tensor = tensor.flatten(1)  # 1x1 conv [O, I, 1, 1] -> linear [O, I]
            out[new] = tensor
            sources[new] = key
    for target, parts in groups.items():
        order = ("q", "k", "v") if ".attn.qkv." in target else ("k", "v")
        missing = [p for p in order if p not in parts]
        if missing:
            names = ", ".join(sources[target].replace("to_" + "/".join(order), f"to_{p}") for p in missing)
            raise SanaError(f"the checkpoint lacks {names}", "it is incomplete or for another model")
        widths = {tuple(parts[p].shape[1:]) for p in order}
        if len(widths) > 1:
            raise SanaError(f"{sources[target]} have shapes {', '.join(str(tuple(parts[p].shape)) for p in order)}",
                            "the parts of one projection must agree; the checkpoint is damaged")
        out[target] = torch.cat([parts[p] for p in order], dim=0)
    return out


# Engine names -> diffusers names (saving fine-tuned models and LoRAs in the format every SANA tool reads).
_ENGINE_RENAMES = [
    (r"patch_embed\.", "patch_embed.proj."),
    (r"blocks\.(\d+)\.attn\.out\.", r"transformer_blocks.\1.attn1.to_out.0."),
    (r"blocks\.(\d+)\.attn\.norm_([qk])\.", r"transformer_blocks.\1.attn1.norm_\2."),
    (r"blocks\.(\d+)\.attn\.qkv\.to_([qkv])\.", r"transformer_blocks.\1.attn1.to_\2."),  # split for LoRA
    (r"blocks\.(\d+)\.cross_attn\.q\.", r"transformer_blocks.\1.attn2.to_q."),
    (r"blocks\.(\d+)\.cross_attn\.kv\.to_([kv])\.", r"transformer_blocks.\1.attn2.to_\2."),  # split for LoRA
    (r"blocks\.(\d+)\.cross_attn\.out\.", r"transformer_blocks.\1.attn2.to_out.0."),
    (r"blocks\.(\d+)\.cross_attn\.norm_([qk])\.", r"transformer_blocks.\1.attn2.norm_\2."),
    (r"blocks\.(\d+)\.ff\.inverted\.", r"transformer_blocks.\1.ff.conv_inverted."),
    (r"blocks\.(\d+)\.ff\.depthwise\.", r"transformer_blocks.\1.ff.conv_depth."),
    (r"blocks\.(\d+)\.ff\.point\.", r"transformer_blocks.\1.ff.conv_point."),
    (r"blocks\.(\d+)\.ff\.temporal\.", r"transformer_blocks.\1.ff.conv_temp."),  # SANA-Video
    (r"blocks\.(\d+)\.", r"transformer_blocks.\1."),
]
_POINTWISE_CONVS = re.compile(r"transformer_blocks\.\d+\.ff\.conv_(inverted|point)\.")


def engine_to_diffusers_name(name: str, guidance_embeds: bool) -> str:
    """An engine module or tensor name in diffusers' `SanaTransformer2DModel` naming (fused names excepted)."""
    for pattern, replacement in _ENGINE_RENAMES:
        name, count = re.subn(rf"^{pattern}", replacement, name)
        if count:
            return name
    if not guidance_embeds:  # SANA's AdaLayerNormSingle nests the timestep MLP one level deeper than Sprint's
        name = re.sub(r"^time_embed\.timestep_embedder\.", "time_embed.emb.timestep_embedder.", name)
    return name


def is_pointwise_conv(diffusers_name: str) -> bool:
    """diffusers stores the Mix-FFN 1x1 convs as Conv2d ([O, I, 1, 1]); the engine as linears ([O, I])."""
    return bool(_POINTWISE_CONVS.match(diffusers_name))


def engine_to_diffusers(state: dict[str, torch.Tensor], guidance_embeds: bool) -> dict[str, torch.Tensor]:
    """The inverse of `diffusers_to_engine`: split q/k/v and k/v, rename, and give the 1x1 convs their 4D shape."""
    out: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        fused = re.fullmatch(r"blocks\.(\d+)\.(attn\.qkv|cross_attn\.kv)\.(weight|bias)", key)
        if fused:
            block, which, kind = fused.groups()
            attn, parts = ("attn1", "qkv") if which == "attn.qkv" else ("attn2", "kv")
            for part, piece in zip(parts, tensor.chunk(len(parts), dim=0)):
                out[f"transformer_blocks.{block}.{attn}.to_{part}.{kind}"] = piece.contiguous()
            continue
        name = engine_to_diffusers_name(key, guidance_embeds)
        if is_pointwise_conv(name) and name.endswith(".weight") and tensor.ndim == 2:
            tensor = tensor[:, :, None, None]
        out[name] = tensor
    return out


def load_transformer(path: Path, *, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu",
                     config: dict | None = None, variant: str | None = None,
                     loras: list[tuple[Path, float]] = ()) -> torch.nn.Module:
    """Load our DiT from a model folder, a transformer folder, or a single `.safetensors` / `.pth` file.

    `config` (a `config.json` dict) is needed for single files and overrides a folder's own; `variant`
    ("fp16", "bf16") picks variant files when they exist; `loras` are (file, scale) pairs merged into the
    weights. The model's `load_report` lists the files read, any unexpected tensors and the LoRAs merged.
    Missing weights, wrong shapes and unreadable files raise `SanaError`. A config whose `_class_name` is
    `SanaVideoTransformer3DModel` gives the video DiT (`load_video_transformer`), `SanaWMTransformer3DModel` the
    SANA-WM DiT (`load_world_transformer`).
    """
    config, files = locate(Path(path), config, variant)
    from .video import VIDEO_CLASS_NAME, load_video_transformer
    from .world import WORLD_CLASS_NAME, load_world_transformer

    if config.get("_class_name") == VIDEO_CLASS_NAME:
        return load_video_transformer(path, dtype=dtype, device=device, config=config, variant=variant, loras=loras)
    if config.get("_class_name") == WORLD_CLASS_NAME:
        if loras:
            raise SanaError("LoRAs are not supported for SANA-WM transformers")
        return load_world_transformer(path, dtype=dtype, device=device, config=config, variant=variant)
    try:
        cfg = TransformerConfig.from_dict(config)
    except (TypeError, ValueError) as exc:
        raise SanaError(f"unsupported transformer config: {exc}") from None

    # 1. Read every tensor, whatever the layout: straight to the device in `dtype` unless LoRAs are merged first.
    state = read_state(files, **read_target(device, dtype, loras))

    # 2. One mapping: original -> diffusers names (LoRAs merge there, on the unfused weights) -> engine names.
    if is_original_layout(state):
        state = original_to_diffusers(state, cfg.guidance_embeds)
    merge_loras(state, list(loras), "SanaTransformer2DModel")
    for key in list(state):  # cast one tensor at a time, so a full-precision copy of the model never coexists
        state[key] = state[key].to(dtype)
    sources: dict[str, str] = {}
    state = diffusers_to_engine(state, sources)

    # 3. Build on the meta device, check shapes, assign the loaded tensors as the parameters.
    with torch.device("meta"):
        model = SanaTransformer(cfg)
    unexpected = assign(model, state, sources)
    model = model.to(device=device).eval()
    model.load_report = LoadReport(files=[f.name for f in files], unexpected=unexpected,
                                   loras=[str(p) for p, _ in loras])
    return model

"""The one loader of our models: the transformer from diffusers-format folders (single, sharded, variants), NVlabs
`.pth` checkpoints and single-file safetensors, and the DC-AE decoder from a diffusers `vae/` folder, each through
one key mapping onto a model built on the meta device.

Key mapping, in one place: NVlabs names -> diffusers names (`ORIGINAL_TO_DIFFUSERS`), LoRAs merged there, then
diffusers names -> engine names with q/k/v and k/v fused (`diffusers_to_engine`); for the DC-AE decoder,
`dcae_diffusers_to_engine` (q/k/v fused in the DiT's head order, 1x1 convs as linears).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .components import read_json
from .errors import SanaError
from .lora import merge_loras, strip_key_prefixes
from .models.dcae import DCAEConfig, DCAEDecoder, nearest_conv_phases
from .models.transformer import SanaTransformer, TransformerConfig
from .models.video_transformer import SanaVideoTransformer, VideoTransformerConfig
from .models.world_transformer import SanaWorldTransformer, WorldTransformerConfig

WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
INDEX_NAME = "diffusion_pytorch_model.safetensors.index.json"
# Tensors some checkpoints carry that the model recomputes or never uses.
IGNORED = re.compile(r"^(pos_embed|patch_embed\.pos_embed|y_embedder\.y_embedding|logvar_linear\..*)$")


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


def transformer_files(folder: Path, variant: str | None = None, what: str = "transformer") -> list[Path]:
    """The safetensors files of a diffusers model folder (a transformer's, a VAE's), preferring `variant` when
    present."""
    for v in ([variant] if variant else []) + [None]:
        index = folder / _variant_name(INDEX_NAME, v)
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (json.JSONDecodeError, KeyError, UnicodeDecodeError) as exc:
                raise SanaError(f"{index} is not a valid shard index ({exc})") from None
            files = [folder / name for name in dict.fromkeys(weight_map.values())]
            missing = [f.name for f in files if not f.is_file()]
            if missing:
                raise SanaError(f"{folder} is missing shard(s) {', '.join(missing)}", "pull the model again")
            return files
        single = folder / _variant_name(WEIGHTS_NAME, v)
        if single.is_file():
            return [single]
    others = sorted(p.name for p in folder.glob("*.safetensors"))
    if len(others) == 1:
        return [folder / others[0]]
    raise SanaError(f"no {what} weights in {folder}", "expected diffusion_pytorch_model*.safetensors")


def read_safetensors(path: Path, prefix: str = "") -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file whose names start with `prefix` (the others are never read)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys() if k.startswith(prefix)}
    except Exception as exc:  # safetensors raises several types for truncated or corrupt files
        raise SanaError(f"cannot read {path.name}: the file is corrupt or truncated ({exc})",
                        "delete it and download it again") from None


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


# Wrappers that training code and single-file exports put in front of every key.
_KEY_PREFIXES = ("module.", "model.diffusion_model.", "_orig_mod.")


def strip_prefixes(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {strip_key_prefixes(key, _KEY_PREFIXES): tensor for key, tensor in state.items()}


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


# -- loading -------------------------------------------------------------------------------------------------

def _locate(path: Path, config: dict | None, variant: str | None) -> tuple[dict, list[Path]]:
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


def load_transformer(path: Path, *, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu",
                     config: dict | None = None, variant: str | None = None,
                     loras: list[tuple[Path, float]] = ()) -> SanaTransformer | SanaVideoTransformer:
    """Load our DiT from a model folder, a transformer folder, or a single `.safetensors` / `.pth` file.

    `config` (a `config.json` dict) is needed for single files and overrides a folder's own; `variant`
    ("fp16", "bf16") picks variant files when they exist; `loras` are (file, scale) pairs merged into the
    weights. The model's `load_report` lists the files read, any unexpected tensors and the LoRAs merged.
    Missing weights, wrong shapes and unreadable files raise `SanaError`. A config whose `_class_name` is
    `SanaVideoTransformer3DModel` gives the video DiT (`load_video_transformer`), `SanaWMTransformer3DModel` the
    SANA-WM DiT (`load_world_transformer`).
    """
    config, files = _locate(Path(path), config, variant)
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

    # 1. Read every tensor, whatever the layout.
    state: dict[str, torch.Tensor] = {}
    for file in files:
        state.update(read_checkpoint(file) if file.suffix in (".pth", ".pt", ".ckpt", ".bin") else read_safetensors(file))
    state = {k: v for k, v in strip_prefixes(state).items() if not IGNORED.match(k)}

    # 2. One mapping: original -> diffusers names (LoRAs merge there, on the unfused weights) -> engine names.
    if is_original_layout(state):
        state = original_to_diffusers(state, cfg.guidance_embeds)
    merge_loras(state, list(loras))
    for key in list(state):  # cast one tensor at a time, so a full-precision copy of the model never coexists
        state[key] = state[key].to(dtype)
    sources: dict[str, str] = {}
    state = diffusers_to_engine(state, sources)

    # 3. Build on the meta device, check shapes, assign the loaded tensors as the parameters.
    with torch.device("meta"):
        model = SanaTransformer(cfg)
    unexpected = _assign(model, state, sources)
    model = model.to(device=device).eval()
    model.load_report = LoadReport(files=[f.name for f in files], unexpected=unexpected,
                                   loras=[str(p) for p, _ in loras])
    return model


# -- the video DiT -------------------------------------------------------------------------------------------

VIDEO_CLASS_NAME = "SanaVideoTransformer3DModel"


def _read_state(files: list[Path]) -> dict[str, torch.Tensor]:
    """Every tensor of `files` (safetensors or plain `.pth`), wrapper prefixes and never-used tensors dropped."""
    state: dict[str, torch.Tensor] = {}
    for file in files:
        state.update(read_checkpoint(file) if file.suffix in (".pth", ".pt", ".ckpt", ".bin") else read_safetensors(file))
    return {k: v for k, v in strip_prefixes(state).items() if not IGNORED.match(k)}


def load_video_transformer(path: Path, *, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu",
                           config: dict | None = None, variant: str | None = None,
                           loras: list[tuple[Path, float]] = ()) -> SanaVideoTransformer:
    """Load the SANA-Video DiT from a model folder, a transformer folder (diffusers' `SanaVideoTransformer3DModel`:
    single or sharded safetensors, variants), or a single `.safetensors` / `.pth` file in diffusers or NVlabs
    naming (`config` needed then). Arguments, `load_report` and errors as `load_transformer`.

    The mapping is the image DiT's, plus the video-only names: NVlabs `x_embedder.proj` / `mlp.t_conv` ->
    diffusers `patch_embedding` / `ff.conv_temp` -> engine `patch_embed` / `ff.temporal`.
    """
    config, files = _locate(Path(path), config, variant)
    try:
        cfg = VideoTransformerConfig.from_dict(config)
    except (TypeError, ValueError) as exc:
        raise SanaError(f"unsupported video transformer config: {exc}") from None

    # 1. Read every tensor; NVlabs names -> diffusers names; LoRAs merge on the unfused weights; cast one at a time.
    state = _read_state(files)
    if is_original_layout(state):
        state = original_to_diffusers(state, cfg.guidance_embeds)
        state = {re.sub(r"^patch_embed\.proj\.", "patch_embedding.", k): v for k, v in state.items()}
    merge_loras(state, list(loras))
    for key in list(state):
        state[key] = state[key].to(dtype)
    sources: dict[str, str] = {}
    state = diffusers_to_engine(state, sources)

    # 2. Build on the meta device, check shapes, assign the loaded tensors as the parameters.
    with torch.device("meta"):
        model = SanaVideoTransformer(cfg)
    for key, tensor in model.state_dict().items():  # name what is missing as the checkpoint would
        sources.setdefault(key, _video_checkpoint_name(key, tensor, cfg.guidance_embeds))
    unexpected = _assign(model, state, sources)
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


def _assign(model: torch.nn.Module, state: dict[str, torch.Tensor], sources: dict[str, str], *,
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
    model.load_state_dict({k: v.contiguous() for k, v in state.items() if k in expected}, strict=True, assign=True)
    return unexpected


# -- the DC-AE decoder ---------------------------------------------------------------------------------------

DCAE_DECODER_PREFIX = "decoder."
_DCAE_QKV = re.compile(r"^(.*\.attn\.)to_([qkv])\.weight$")
_DCAE_MULTISCALE = re.compile(r"^.*\.attn\.to_qkv_multiscale\.\d+\.proj_(in|out)\.weight$")
_DCAE_POINTWISE = re.compile(r"^.*\.conv_out\.conv_(inverted|point)\.weight$")  # 1x1 convs, linears here
_DCAE_UPSAMPLE_CONV = re.compile(r"^(up_blocks\.\d+\.0|conv_out)\.conv\.(weight|bias)$")  # an up block's conv


def _heads_first(weight: torch.Tensor, heads: int) -> torch.Tensor:
    """Rows of diffusers' [q | k | v] projection, which its attention reads as H runs of (q, k, v) of D rows
    each, reordered to every head's q, then every head's k, then every head's v."""
    d = weight.shape[0] // (3 * heads)
    return weight.reshape(heads, 3, d, *weight.shape[1:]).transpose(0, 1).reshape(weight.shape)


def dcae_diffusers_to_engine(state: dict[str, torch.Tensor], head_dim: int, sources: dict[str, str] | None = None,
                             prefix: str = DCAE_DECODER_PREFIX, *, interpolate: bool = False) -> dict[str, torch.Tensor]:
    """diffusers `AutoencoderDC` decoder tensors (names without `prefix`) -> ours.

    Each attention's to_q / to_k / to_v [inner, C] becomes one `qkv` [3 * inner, C] with its rows (and the rows of
    the multiscale projections of it) in the DiT's order: all q heads, all k heads, all v heads. diffusers
    concatenates q, k, v and reads the result in runs of 3 * D channels as (q, k, v) of one head, which is a
    permutation of whole runs of D rows, so the same permutation of the depthwise and grouped multiscale weights
    gives the same attention. The GLUMBConv's 1x1 convs become linears. With `interpolate` (the config's
    `upsample_block_type`), each up block's 3x3 conv becomes its four 2x2 phase convs (`nearest_conv_phases`).
    `sources` receives engine name -> checkpoint name where they differ.
    """
    out: dict[str, torch.Tensor] = {}
    parts: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in state.items():
        match = _DCAE_QKV.match(key)
        up = _DCAE_UPSAMPLE_CONV.match(key) if interpolate else None
        if up and up.group(2) == "weight" and tensor.ndim == 4 and tensor.shape[-2:] == (3, 3):
            out[key], _ = nearest_conv_phases(tensor, None)
        elif up and up.group(2) == "bias":
            out[key] = tensor.repeat(4)
        elif match:
            parts.setdefault(match.group(1), {})[match.group(2)] = tensor
        elif _DCAE_POINTWISE.match(key) and tensor.ndim == 4:
            out[key] = tensor.flatten(1)
        else:
            out[key] = tensor
    for base, qkv in parts.items():
        name = f"{prefix}{base}to_"
        lacking = [name + n + ".weight" for n in "qkv" if n not in qkv]
        if lacking:
            raise SanaError(f"the VAE checkpoint lacks {', '.join(lacking)}", "it is incomplete or for another model")
        rows = qkv["q"].shape[0]
        if len({tuple(t.shape) for t in qkv.values()}) != 1 or qkv["q"].ndim != 2 or not rows or rows % head_dim:
            shapes = ", ".join(f"{tuple(qkv[n].shape)}" for n in "qkv")
            raise SanaError(f"{name}q/k/v.weight have shapes {shapes}, not three equal [heads * {head_dim}, C]",
                            "the weights do not belong to this config")
        heads = rows // head_dim
        out[base + "qkv.weight"] = _heads_first(torch.cat([qkv["q"], qkv["k"], qkv["v"]]), heads)
        if sources is not None:
            sources[base + "qkv.weight"] = f"{name}q/to_k/to_v.weight"
        for key in [k for k in out if k.startswith(base + "to_qkv_multiscale.") and _DCAE_MULTISCALE.match(k)]:
            if out[key].shape[0] == 3 * heads * head_dim:  # else the shape check reports it
                out[key] = _heads_first(out[key], heads)
    return out


def load_vae_decoder(folder: Path, *, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu",
                     variant: str | None = None) -> DCAEDecoder:
    """Our DC-AE decoder from a diffusers `vae/` folder (config.json + diffusion_pytorch_model*.safetensors, the
    `variant` files when present); only the `decoder.*` tensors are read. Unsupported configs, missing or misshapen
    weights and unreadable files raise `SanaError`; the model's `load_report` lists the files and any unexpected
    decoder tensors."""
    folder = Path(folder)
    config = read_json(folder / "config.json")
    files = transformer_files(folder, variant, what="VAE")
    state: dict[str, torch.Tensor] = {}
    for file in files:
        state.update(read_safetensors(file, prefix=DCAE_DECODER_PREFIX))
    if not state:
        raise SanaError(f"{folder} has no decoder weights", "expected diffusers AutoencoderDC tensors (decoder.*)")
    model = vae_decoder_from_state(config, state, dtype=dtype, device=device, origin=f"the VAE in {folder}")
    model.load_report.files = [f.name for f in files]
    return model


def vae_decoder_from_state(config: dict, state: dict[str, torch.Tensor], *, dtype: torch.dtype | None = None,
                           device: torch.device | str = "cpu", origin: str = "the VAE") -> DCAEDecoder:
    """Our DC-AE decoder from an `AutoencoderDC` config dict and state dict (diffusers names; the encoder's
    tensors are skipped), e.g. `vae_decoder_from_state(dict(vae.config), vae.state_dict())`. `dtype` None keeps
    the tensors' own."""
    try:
        cfg = DCAEConfig.from_dict(config)
    except (TypeError, ValueError) as exc:
        raise SanaError(f"unsupported VAE config for {origin}: {exc}") from None
    state = {key[len(DCAE_DECODER_PREFIX):]: tensor for key, tensor in state.items()
             if key.startswith(DCAE_DECODER_PREFIX) and not key.endswith(".num_batches_tracked")}  # BatchNorm's step count
    for key in list(state):  # one tensor at a time, as for the transformer
        state[key] = state[key].to(dtype or state[key].dtype)
    sources: dict[str, str] = {}
    state = dcae_diffusers_to_engine(state, cfg.attention_head_dim, sources,
                                     interpolate=cfg.upsample_block_type == "interpolate")
    with torch.device("meta"):
        model = DCAEDecoder(cfg)
    unexpected = _assign(model, state, sources, checkpoint=origin, prefix=DCAE_DECODER_PREFIX)
    model = model.to(device=device).eval()
    model.load_report = LoadReport(files=[], unexpected=unexpected)
    return model


# -- the SANA-WM DiT -----------------------------------------------------------------------------------------

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
    config, files = _locate(Path(path), config, variant)
    if config.get("_class_name", WORLD_CLASS_NAME) != WORLD_CLASS_NAME:
        raise SanaError(f"{path} holds a {config['_class_name']}, not a SANA-WM transformer ({WORLD_CLASS_NAME})")
    model = world_transformer_from_state(config, _read_state(files), dtype=dtype, device=device,
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
    leftover = _assign(model, state, sources, checkpoint=origin)
    ignored = [k for k in leftover if _WORLD_UNUSED.match(k) or (
        (m := _WORLD_SOFTMAX_GDN.match(k)) and cfg.is_softmax_block(int(m.group(1))))]
    model = model.to(device=device).eval()
    model.load_report = LoadReport(files=[], unexpected=[k for k in leftover if k not in ignored], ignored=ignored)
    return model

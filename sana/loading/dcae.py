"""The DC-AE decoder's loader: the `decoder.*` tensors of a diffusers `AutoencoderDC` (`vae/` folder) mapped onto our
decoder (q/k/v fused in the DiT's head order, 1x1 convs as linears, nearest-upsampling convs as phase convs)."""

from __future__ import annotations

import re
from pathlib import Path

import torch

from ..components import read_json
from ..errors import SanaError
from ..models.dcae import DCAEConfig, DCAEDecoder, nearest_conv_phases
from .files import LoadReport, assign, read_safetensors, transformer_files

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
        state.update(read_safetensors(file, prefix=DCAE_DECODER_PREFIX, device=device, dtype=dtype))
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
    unexpected = assign(model, state, sources, checkpoint=origin, prefix=DCAE_DECODER_PREFIX)
    model = model.to(device=device).eval()
    model.load_report = LoadReport(files=[], unexpected=unexpected)
    return model

"""The SANA-WM DiT (camera-controlled world model, stage 1) as plain modules, configured from `config.json`.

latent [B, C, T, H, W] + text + per-frame timesteps + camera -> velocity [B, C, T, H, W]. Every block:
per-frame adaLN modulation, self-attention with a camera branch (`world_attention`; Gated DeltaNet in most
blocks, softmax in every `softmax_every_n`-th), the Plücker embedding added through a per-block linear,
cross-attention to the text, and the video DiT's Mix-FFN with temporal mixing.

Weights use diffusers' `SanaWMTransformer3DModel` names except the FFN (`TemporalMixFFN`: 1x1 convs as
linears), `t_block` (a linear), `y_embedder` (linear_1 / linear_2) and the patch embedders (the conv itself);
`sana.loading.load_world_transformer` maps diffusers and NVlabs checkpoints onto them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .. import ops
from .transformer import CaptionProjection, MLPEmbedder, RMSNorm, modulation_table, timestep_embedding
from .video_blocks import TemporalMixFFN
from .world_attention import GDNSelfAttention, SoftmaxSelfAttention
from .world_camera import CameraTransforms, rope_frequencies

NORM_EPS = 1e-6  # the blocks' and final layer's LayerNorms


@dataclass(frozen=True)
class WorldTransformerConfig:
    """The hyperparameters of `SanaWMTransformer3DModel` (diffusers' names; defaults = the released model)."""

    in_channels: int = 128
    num_layers: int = 20
    hidden_size: int = 2240
    num_attention_heads: int = 20  # cross-attention heads; self-attention has hidden_size / linear_head_dim
    patch_size: tuple[int, int, int] = (1, 1, 1)
    softmax_every_n: int = 4
    linear_head_dim: int = 112
    ffn_type: str = "GLUMBConvTemp"
    t_kernel_size: int = 3
    conv_kernel_size: int = 4
    k_conv_only: bool = True
    pos_embed_type: str = "wan_rope"
    qk_norm: bool = True
    cross_norm: bool = True
    y_norm: bool = True
    cam_attn_compress: int = 1
    use_chunk_plucker_post_attn: bool = True
    chunk_plucker_channels: int = 48
    chunk_plucker_post_attn_blocks: int = 20
    caption_channels: int = 2304
    mlp_ratio: float = 3.0
    mlp_acts: tuple = ("silu", "silu", None)
    use_pe: bool = True
    learn_sigma: bool = False
    pred_sigma: bool = False

    # What the released model uses and this port implements; any other value is refused by name.
    SUPPORTED = {
        "patch_size": (1, 1, 1), "ffn_type": "GLUMBConvTemp", "t_kernel_size": 3, "k_conv_only": True,
        "pos_embed_type": "wan_rope", "qk_norm": True, "cross_norm": True, "y_norm": True, "cam_attn_compress": 1,
        "use_chunk_plucker_post_attn": True, "mlp_acts": ("silu", "silu", None), "use_pe": True,
        "pred_sigma": False,
    }

    @classmethod
    def from_dict(cls, data: dict) -> "WorldTransformerConfig":
        """Known keys only (config.json also has `_class_name`, `image_size`, `fp32_attention`, ...: bookkeeping
        diffusers ignores too); unsupported switches raise ValueError naming the key."""
        names = {f.name for f in dataclasses.fields(cls)}
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items() if k in names}
        config = cls(**values)
        for key, wanted in cls.SUPPORTED.items():
            if getattr(config, key) != wanted:
                raise ValueError(f"{key}={getattr(config, key)!r} is not supported (only {wanted!r}, as released)")
        if config.hidden_size % config.linear_head_dim or config.linear_head_dim % 8:
            raise ValueError(f"linear_head_dim {config.linear_head_dim} must divide hidden_size "
                             f"{config.hidden_size} and be a multiple of 8 (4x4 camera groups on half a head)")
        if config.hidden_size % config.num_attention_heads:
            raise ValueError(f"num_attention_heads {config.num_attention_heads} must divide hidden_size")
        if config.conv_kernel_size < 1:
            raise ValueError("conv_kernel_size 0 (no short convolutions) is not supported")
        return config

    def is_softmax_block(self, index: int) -> bool:
        return self.softmax_every_n > 0 and (index + 1) % self.softmax_every_n == 0

    def has_plucker(self, index: int) -> bool:
        return self.chunk_plucker_post_attn_blocks < 0 or index < self.chunk_plucker_post_attn_blocks

    @property
    def ffn_hidden(self) -> int:
        return int(self.hidden_size * self.mlp_ratio)


# -- per-frame modulation --------------------------------------------------------------------------------------

def _per_frame(x: torch.Tensor, frames: int) -> torch.Tensor:
    """[B, N, C] -> [B*T, S, C]: a frame's tokens as one row, so [B*T, 1, C] modulation broadcasts over them."""
    return x.reshape(x.shape[0] * frames, -1, x.shape[-1])


def modulated_norm(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """LN(x) * (1 + scale) + shift per frame: x [B, N, C], shift/scale [B, T, C] -> [B, N, C]."""
    frames = shift.shape[1]
    return ops.modulated_layer_norm(_per_frame(x, frames), _per_frame(shift, frames),
                                    _per_frame(scale, frames), NORM_EPS).reshape(x.shape)


def gated_residual(x: torch.Tensor, gate: torch.Tensor, y: torch.Tensor, y2: torch.Tensor | None = None) -> torch.Tensor:
    """x + gate * y (or x + gate * (y + y2)) per frame: x, y, y2 [B, N, C], gate [B, T, C]."""
    frames = gate.shape[1]
    second = None if y2 is None else _per_frame(y2, frames)
    return ops.gated_residual(_per_frame(x, frames), _per_frame(gate, frames), _per_frame(y, frames),
                              second).reshape(x.shape)


# -- blocks -------------------------------------------------------------------------------------------------

class CrossAttention(nn.Module):
    """Softmax attention from the tokens to the text: q/k RMSNorm (eps 1e-6) over the full width, fused k/v,
    padding masked out (boolean mask)."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.q_linear = nn.Linear(dim, dim)
        self.kv_linear = nn.Linear(dim, 2 * dim)
        self.q_norm, self.k_norm = RMSNorm(dim, 1e-6), RMSNorm(dim, 1e-6)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, text: torch.Tensor, text_mask: torch.Tensor) -> torch.Tensor:
        """x [B, N, C], text [B, L, C], text_mask [B, 1, 1, L] bool -> [B, N, C]."""
        b, n, c = x.shape
        q = self.q_norm(self.q_linear(x))  # [B, N, C]
        k, v = self.kv_linear(text).view(b, -1, 2, c).unbind(2)  # [B, L, C] each
        k = self.k_norm(k).view(b, -1, self.heads, c // self.heads).transpose(1, 2)
        v = v.reshape(b, -1, self.heads, c // self.heads).transpose(1, 2)
        return self.proj(ops.text_attention(q, k, v, self.heads, text_mask))


class WorldBlock(nn.Module):
    """Modulated self-attention (+ camera), Plücker add, cross-attention, modulated temporal Mix-FFN."""

    # The linears that carry the clip's tokens (`sana world --fp8`); the temporal and short convs, the GDN gates
    # (one output a head) and the text's key/value projection stay in the compute dtype.
    FP8_LINEARS = (("attn", "qkv"), ("attn", "proj"), ("attn", "output_gate"), ("attn", "q_proj_cam"),
                   ("attn", "k_proj_cam"), ("attn", "v_proj_cam"), ("attn", "out_proj_cam"), ("", "plucker_proj"),
                   ("cross_attn", "q_linear"), ("cross_attn", "proj"), ("mlp", "inverted"), ("mlp", "point"))

    def __init__(self, cfg: WorldTransformerConfig, index: int):
        super().__init__()
        dim = cfg.hidden_size
        if cfg.is_softmax_block(index):
            self.attn = SoftmaxSelfAttention(dim, cfg.linear_head_dim)
        else:
            self.attn = GDNSelfAttention(dim, cfg.linear_head_dim, cfg.conv_kernel_size)
        self.plucker_proj = nn.Linear(dim, dim) if cfg.has_plucker(index) else None
        self.cross_attn = CrossAttention(dim, cfg.num_attention_heads)
        self.mlp = TemporalMixFFN(dim, cfg.ffn_hidden)
        self.scale_shift_table = modulation_table(6, dim)

    def forward(self, x: torch.Tensor, text: torch.Tensor, text_mask: torch.Tensor, t_mod: torch.Tensor,
                grid: tuple[int, int, int], freqs: torch.Tensor, camera: CameraTransforms | None,
                plucker: torch.Tensor | None) -> torch.Tensor:
        """x [B, N, C]; text [B, L, C]; t_mod [B, T, 6, C] per frame; plucker [B, N, C] or None -> [B, N, C]."""
        frames, height, width = grid
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = (
            self.scale_shift_table[None, None] + t_mod).unbind(2)  # [B, T, C] each
        x = gated_residual(x, gate_msa, self.attn(modulated_norm(x, shift_msa, scale_msa), frames, freqs, camera))
        if plucker is not None and self.plucker_proj is not None:
            x = x + self.plucker_proj(plucker)
        x = x + self.cross_attn(x, text, text_mask)
        y, mixed = self.mlp.branch_terms(modulated_norm(x, shift_mlp, scale_mlp), frames, height, width)
        return gated_residual(x, gate_mlp, y, mixed)


class FinalLayer(nn.Module):
    """Per-frame modulated LayerNorm and the projection to patch values."""

    def __init__(self, dim: int, out_channels: int):
        super().__init__()
        self.linear = nn.Linear(dim, out_channels)
        self.scale_shift_table = modulation_table(2, dim)

    def forward(self, x: torch.Tensor, t_emb: torch.Tensor) -> torch.Tensor:
        """x [B, N, C], t_emb [B, T, C] -> [B, N, C_out]."""
        shift, scale = (self.scale_shift_table[None, None] + t_emb[:, :, None]).unbind(2)  # [B, T, C] each
        return self.linear(modulated_norm(x, shift, scale))


# -- model --------------------------------------------------------------------------------------------------

class SanaWorldTransformer(nn.Module):
    """The SANA-WM DiT: latent [B, C, T, H, W], per-frame timesteps, text, camera -> velocity [B, C, T, H, W]."""

    def __init__(self, config: WorldTransformerConfig):
        super().__init__()
        self.config = config
        dim = config.hidden_size
        self.x_embedder = nn.Conv3d(config.in_channels, dim, kernel_size=1)
        self.plucker_embedder = nn.Conv3d(config.chunk_plucker_channels, dim, kernel_size=1)
        self.t_embedder = MLPEmbedder(256, dim)
        self.t_block = nn.Linear(dim, 6 * dim)
        self.y_embedder = CaptionProjection(config.caption_channels, dim)
        self.attention_y_norm = RMSNorm(dim, 1e-5)
        self.blocks = nn.ModuleList([WorldBlock(config, i) for i in range(config.num_layers)])
        self.final_layer = FinalLayer(dim, config.in_channels)
        self._freqs_cache: dict[tuple, torch.Tensor] = {}  # rotary tables per (grid, device): not weights

    @property
    def dtype(self) -> torch.dtype:
        return self.final_layer.linear.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.final_layer.linear.weight.device

    def rope(self, frames: int, height: int, width: int, device: torch.device) -> torch.Tensor:
        """complex64 [N, D/2], cached per grid; never cast with the model (a real cast would drop the sines)."""
        key = (frames, height, width, str(device))
        if key not in self._freqs_cache:
            if len(self._freqs_cache) >= 8:
                self._freqs_cache.clear()
            self._freqs_cache[key] = rope_frequencies(self.config.linear_head_dim, frames, height, width,
                                                      device=device)
        return self._freqs_cache[key]

    def forward(self, x: torch.Tensor, timestep: torch.Tensor, text: torch.Tensor, text_mask: torch.Tensor,
                camera: torch.Tensor | None = None, plucker: torch.Tensor | None = None) -> torch.Tensor:
        """x [B, C, T, H, W]; timestep [B, 1, T] or [B, T] (truncated to integers, as diffusers does); text
        [B, 1, L, C_text] or [B, L, C_text]; text_mask [B, L] (1 keep, 0 pad); camera [B, T, 20] (pose and
        latent-grid intrinsics of each latent frame, `camera_conditions`); plucker [B, 48, T, H, W]
        (`chunk_plucker`). Camera tensors are used in the model dtype. Returns [B, C, T, H, W]."""
        b, _, frames, height, width = x.shape
        dtype = self.dtype
        if timestep.numel() != b * frames:
            raise ValueError(f"timestep must hold one value per latent frame ([B, 1, T]), got {tuple(timestep.shape)}")

        # 1. Inputs: patches, the Plücker embedding every block adds, rotary table and camera rays.
        tokens = self.x_embedder(x.to(dtype)).flatten(2).transpose(1, 2).contiguous()  # [B, N, C]
        plucker_emb = None
        if plucker is not None:
            plucker_emb = self.plucker_embedder(plucker.to(dtype)).flatten(2).transpose(1, 2).contiguous()
        freqs = self.rope(frames, height, width, x.device)  # [N, D/2] complex64
        cameras = None
        if camera is not None:
            cameras = CameraTransforms.build(camera.to(dtype), height, width, freqs, self.config.linear_head_dim)

        # 2. Per-frame time embedding (from integer timesteps) and its six block modulations.
        t_emb = self.t_embedder(timestep_embedding(timestep.reshape(-1).long().float()).to(dtype))  # [B*T, C]
        t_mod = self.t_block(F.silu(t_emb)).reshape(b, frames, 6, -1)  # [B, T, 6, C]
        t_emb = t_emb.reshape(b, frames, -1)

        # 3. Text: projected, normalised, padding masked.
        if text.ndim == 4:
            text = text.squeeze(1)
        text = self.attention_y_norm(self.y_embedder(text.to(dtype)))  # [B, L, C]
        mask = text_mask.bool()[:, None, None, :]  # [B, 1, 1, L]

        # 4. Blocks, then the final layer and unpatchify.
        grid = (frames, height, width)
        for block in self.blocks:
            tokens = block(tokens, text, mask, t_mod, grid, freqs, cameras, plucker_emb)
        out = self.final_layer(tokens, t_emb)  # [B, N, C_out]
        return out.reshape(b, frames, height, width, -1).permute(0, 4, 1, 2, 3)

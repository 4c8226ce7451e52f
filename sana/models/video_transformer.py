"""The SANA-Video DiT (diffusers' `SanaVideoTransformer3DModel`) as plain modules, configured from `config.json`.

The image DiT's block with three changes: the self-attention rotates q and k by a 3D RoPE in the numerator
(`ops.linear_attention_rope`), the Mix-FFN mixes each token with the same token of the neighbouring frames
(`TemporalMixFFN`), and the patches are 3D. Weights are stored the engine's way (q/k/v fused into `qkv`, cross
k/v into `kv`, 1x1 convs as linears); `sana.loading` maps diffusers and NVlabs checkpoints onto these names.

Timesteps come per batch row (text-to-video), per frame, or per token (image-to-video: 0 on the given first
frame). The adaLN modulation is applied per *group* of consecutive tokens: the tokens [B, N, D] are viewed as
[G, B*N/G, D] with one shift/scale row [G, 1, D] per group, which is the [B, 1, C] layout every modulation op
(Triton kernels included) takes. A group is a batch row, a frame, or a single token.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from .. import ops
from .fp8 import Fp8Linear, QuantizedRows
from .text_context import BlockText, TextContext, build_text_context, context_for_forward
from .transformer import (CaptionProjection, CrossAttention, DiTConfigBase, RMSNorm, TimeEmbedding,
                          first_norm_modulation, modulation_table)
from .video_blocks import TemporalMixFFN, rope_tables


@dataclass(frozen=True)
class VideoTransformerConfig(DiTConfigBase):
    """The hyperparameters of `SanaVideoTransformer3DModel` (diffusers' names and defaults)."""

    in_channels: int = 16
    out_channels: int | None = 16
    num_attention_heads: int = 20
    attention_head_dim: int = 112
    num_layers: int = 20
    num_cross_attention_heads: int | None = 20
    cross_attention_head_dim: int | None = 112
    cross_attention_dim: int | None = 2240
    caption_channels: int = 2304
    mlp_ratio: float = 2.5
    dropout: float = 0.0
    attention_bias: bool = False
    sample_size: int = 30
    patch_size: tuple[int, int, int] = (1, 2, 2)
    norm_elementwise_affine: bool = False
    norm_eps: float = 1e-6
    interpolation_scale: float | None = None  # in diffusers' config, unused by the model
    guidance_embeds: bool = False
    guidance_embeds_scale: float = 0.1  # in diffusers' config, unused by the model
    qk_norm: str | None = "rms_norm_across_heads"
    rope_max_seq_len: int = 1024

    @classmethod
    def from_dict(cls, data: dict) -> "VideoTransformerConfig":
        values = cls.known_keys(data)
        patch = values.get("patch_size", cls.patch_size)
        if not isinstance(patch, (list, tuple)) or len(patch) != 3 or not all(isinstance(p, int) and p > 0
                                                                               for p in patch):
            raise ValueError(f"patch_size must be three positive integers (t, h, w), got {patch!r}")
        values["patch_size"] = tuple(patch)
        config = cls(**values)
        config.check_attention("video DiT")
        if config.attention_head_dim % 2 or config.attention_head_dim < 6:
            raise ValueError(f"attention_head_dim {config.attention_head_dim} must be even and at least 6 (3D RoPE)")
        if config.rope_max_seq_len < 1:
            raise ValueError(f"rope_max_seq_len must be positive, got {config.rope_max_seq_len}")
        return config


# -- blocks -------------------------------------------------------------------------------------------------

class RopeLinearSelfAttention(nn.Module):
    """ReLU linear self-attention with fused q/k/v, RMSNorm of q and k across all heads, and 3D RoPE in the
    numerator (diffusers' SanaLinearAttnProcessor3_0)."""

    def __init__(self, cfg: VideoTransformerConfig):
        super().__init__()
        dim = cfg.inner_dim
        self.heads = cfg.num_attention_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=cfg.attention_bias)
        self.norm_q = RMSNorm(dim, 1e-5) if cfg.qk_norm else None  # eps: diffusers' Attention default
        self.norm_k = RMSNorm(dim, 1e-5) if cfg.qk_norm else None
        self.out = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """x [B, N, D], cos/sin [N, head_dim] -> [B, N, D]."""
        return self.out(self.attend(x, cos, sin))

    def attend(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """The attention before the output projection (which the block may fuse with its residual add)."""
        q, k, v = self.qkv(x).chunk(3, dim=-1)  # [B, N, D] each, views of one projection
        if self.norm_q is not None:
            # Folding these norms into the attention kernel (a per-token 1/rms pre-pass, rows normalised as
            # loaded) ran slower than the two norm kernels: 1.68 against 1.35 ms at 480p on an H200.
            q, k = self.norm_q(q), self.norm_k(k)
        return ops.linear_attention_rope(q, k, v, cos, sin, self.heads)


class SanaVideoBlock(nn.Module):
    """adaLN-single modulated RoPE linear self-attention, ungated cross-attention to the text, temporal Mix-FFN."""

    def __init__(self, cfg: VideoTransformerConfig):
        super().__init__()
        dim = cfg.inner_dim
        self.eps = cfg.norm_eps
        self.attn = RopeLinearSelfAttention(cfg)
        self.cross_attn = CrossAttention(cfg)
        # Only the FFN norm may carry an affine (diffusers' `norm_elementwise_affine`); no released model uses it.
        self.norm2 = nn.LayerNorm(dim, eps=cfg.norm_eps) if cfg.norm_elementwise_affine else None
        self.ff = TemporalMixFFN(dim, cfg.ffn_hidden)
        self.scale_shift_table = modulation_table(6, dim)

    @property
    def reads_fp8_rows(self) -> bool:
        """With fp8 block linears (`sana video --fp8`) the norms feeding the qkv and the Mix-FFN's first linear write
        their rows already quantized for them (`QuantizedRows`), as the image block's do."""
        return isinstance(self.attn.qkv, Fp8Linear) and isinstance(self.ff.inverted, Fp8Linear)

    def modulation(self, t_mod: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """t_mod [G, 6D] -> shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp, each [G, 1, D]."""
        g = t_mod.shape[0]
        return (self.scale_shift_table[None] + t_mod.reshape(g, 6, -1)).chunk(6, dim=1)

    def forward(self, x: torch.Tensor, text: BlockText, t_mod: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor],
                grid: tuple[int, int, int], h: torch.Tensor | None = None,
                next_modulation: tuple[torch.Tensor, ...] | None = None, next_fp8: bool = False,
                modulation: tuple[torch.Tensor, ...] | None = None,
                ) -> tuple[torch.Tensor, torch.Tensor | QuantizedRows | None]:
        """x [B, N, D]; text: this block's view of the text context; t_mod [G, 6D], one modulation row per group of
        N * B / G consecutive tokens; rope (cos, sin) [N, head_dim]; grid (frames, height, width) of tokens.

        h: this block's modulated norm of x when the previous block computed it (None: computed here).
        next_modulation: the next block's `modulation(t_mod)`: its modulated norm is then computed in the pass of
        this block's last residual add and returned (the residual stream is not read back for it), as
        `QuantizedRows` when `next_fp8` (the next block `reads_fp8_rows`). modulation: this block's, when the
        previous block made it so. Returns (x, the next block's h or None).
        """
        b, n, dim = x.shape
        g = t_mod.shape[0]
        if modulation is None:
            modulation = self.modulation(t_mod)
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = modulation
        fp8 = self.reads_fp8_rows

        def grouped(t: torch.Tensor | None) -> torch.Tensor | None:  # [B, N, C] -> [G, B*N/G, C], a view
            return None if t is None else t.view(g, -1, t.shape[-1])

        def rows(q: torch.Tensor, row_scale: torch.Tensor) -> QuantizedRows:  # grouped fp8 rows -> [B, N, D]
            return QuantizedRows(q.view(b, n, dim), row_scale.view(b, n), x.dtype)

        if h is None and fp8:
            h = rows(*ops.modulated_layer_norm_fp8(grouped(x), shift_msa, scale_msa, self.eps))
        elif h is None:
            h = ops.modulated_layer_norm(grouped(x), shift_msa, scale_msa, self.eps).view(b, n, dim)
        # The output projections feed residual adds: `ops.linear_gated_residual*` may fuse the two into one GEMM.
        x = ops.linear_gated_residual(grouped(x), gate_msa, grouped(self.attn.attend(h, *rope)),
                                      self.attn.out).view(b, n, dim)
        if self.norm2 is None and fp8:
            x, q, row_scale = ops.gated_residual_modulated_norm_fp8(grouped(x), None, grouped(self.cross_attn(x, text)),
                                                                    shift_mlp, scale_mlp, self.eps)
            x = x.view(b, n, dim)
            h = rows(q, row_scale)
        elif self.norm2 is None:  # the cross-attention's residual add and the FFN's norm in one pass
            x, h = ops.linear_gated_residual_modulated_norm(grouped(x), None, grouped(self.cross_attn.attend(x, text)),
                                                            self.cross_attn.out, shift_mlp, scale_mlp, self.eps)
            x, h = x.view(b, n, dim), h.view(b, n, dim)
        else:
            x = x + self.cross_attn(x, text)
            h = ops.modulate(grouped(self.norm2(x)), shift_mlp, scale_mlp).view(b, n, dim)
        y, mixed = self.ff.branch_terms(h, *grid)  # the Mix-FFN output and its temporal conv (or their sum), added below
        if next_modulation is None:
            return ops.gated_residual(grouped(x), gate_mlp, grouped(y), grouped(mixed)).view(b, n, dim), None
        next_norm = next_modulation[:2]  # the next block's (shift_msa, scale_msa)
        if next_fp8:
            x, q, row_scale = ops.gated_residual_modulated_norm_fp8(grouped(x), gate_mlp, grouped(y), *next_norm,
                                                                    self.eps, y2=grouped(mixed))
            return x.view(b, n, dim), rows(q, row_scale)
        x, h = ops.gated_residual_modulated_norm(grouped(x), gate_mlp, grouped(y), *next_norm, self.eps,
                                                 y2=grouped(mixed))
        return x.view(b, n, dim), h.view(b, n, dim)


# -- model --------------------------------------------------------------------------------------------------

class SanaVideoTransformer(nn.Module):
    """The SANA-Video DiT: latent [B, C, F, H, W] + text [B, L, C_text] + timesteps -> velocity [B, C_out, F, H, W]."""

    def __init__(self, config: VideoTransformerConfig):
        super().__init__()
        self.config = config
        dim, patch = config.inner_dim, config.patch_size
        self.patch_embed = nn.Conv3d(config.in_channels, dim, kernel_size=patch, stride=patch)
        self.time_embed = TimeEmbedding(dim, with_guidance=config.guidance_embeds)
        self.caption_projection = CaptionProjection(config.caption_channels, dim)
        self.caption_norm = RMSNorm(dim, 1e-5)
        self.blocks = nn.ModuleList([SanaVideoBlock(config) for _ in range(config.num_layers)])
        self.scale_shift_table = modulation_table(2, dim)
        self.proj_out = nn.Linear(dim, math.prod(patch) * config.output_channels)
        self.gradient_checkpointing = False
        # RoPE tables per (grid, device, dtype): fixed functions of the grid, never weights.
        self._rope_cache: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    @property
    def dtype(self) -> torch.dtype:
        return self.proj_out.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.proj_out.weight.device

    def initialize_weights(self, generator: torch.Generator | None = None) -> None:
        """Initialisation for training from scratch: the image DiT's (`SanaTransformer.initialize_weights`, which
        touches only the parts both DiTs share: linears, patch embedding, timestep / caption MLPs, zeroed
        cross-attention outputs and final projection, block tables, depthwise convs, norms), and the temporal
        convs at zero, so y + conv(y) starts as the identity and the model begins as a per-frame image DiT."""
        from .transformer import SanaTransformer

        SanaTransformer.initialize_weights(self, generator)
        with torch.no_grad():
            for block in self.blocks:
                block.ff.temporal.weight.zero_()

    def rope(self, frames: int, height: int, width: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """(cos, sin) [F*H*W, head_dim] for a token grid, in the model dtype: diffusers keeps them as fp32
        buffers that `.to(dtype)` casts with the weights, so a bf16 model rotates with bf16-rounded tables."""
        key = (frames, height, width, str(device), self.dtype)
        if key not in self._rope_cache:
            if len(self._rope_cache) >= 8:
                self._rope_cache.clear()
            cos, sin = rope_tables(self.config.attention_head_dim, frames, height, width,
                                   max_len=self.config.rope_max_seq_len)
            self._rope_cache[key] = (cos.to(device=device, dtype=self.dtype), sin.to(device=device, dtype=self.dtype))
        return self._rope_cache[key]

    def text_context(self, text: torch.Tensor, text_mask: torch.Tensor | None = None) -> TextContext:
        """text [B, L, C_text], text_mask [B, L] -> the context a denoising loop passes in place of the text at every
        step (`sana.models.text_context`)."""
        return build_text_context(self, text, text_mask, bias_dtype=self.dtype, keep=True)

    def forward(self, x: torch.Tensor, text: torch.Tensor | TextContext, timestep: torch.Tensor,
                text_mask: torch.Tensor | None = None, guidance: torch.Tensor | None = None) -> torch.Tensor:
        """x [B, C, F, H, W], text [B, L, C_text] or its `text_context`, text_mask [B, L] (1 keep, 0 pad; with raw
        text only) or None, guidance [B] or None.

        timestep (already scaled, as diffusers' pipelines pass it): [B] per row; [B, F'] per latent frame; or
        [B, 1, F', H', W'] per token (diffusers' image-to-video layout), used per frame when it is constant over
        each frame (checked, which reads the values back from the device once), else per token.
        Returns [B, C_out, F, H, W].
        """
        cfg = self.config
        b, _, frames, height, width = x.shape
        pt, ph, pw = cfg.patch_size
        grid = (frames // pt, height // ph, width // pw)  # (F', H', W') tokens

        # 1. Inputs: patches, RoPE tables, timestep modulation per group, projected and normalised text.
        tokens = self.patch_embed(x).flatten(2).transpose(1, 2).contiguous()  # [B, N, D], (frame, row, col) order
        rope = self.rope(*grid, x.device)
        t, groups = timestep_groups(timestep, b, grid)  # [G], G = B * groups; [groups] when shared by every row
        shared = t.shape[0] != b * groups
        if shared and guidance is not None:
            t, shared = t.repeat(b), False
        if guidance is not None and groups > 1:
            guidance = guidance.repeat_interleave(groups)  # [G]
        t_mod, t_emb = self.time_embed(t, guidance, tokens.dtype)  # [G, 6D], [G, D]
        if shared:  # one row's modulation, repeated: each row's numbers do not depend on how many rows there are
            t_mod, t_emb = t_mod.repeat(b, 1), t_emb.repeat(b, 1)
        context = context_for_forward(self, text, text_mask, tokens.dtype)

        # 2. Blocks. In inference each block's last residual add also computes the next block's first norm.
        h = modulation = None
        for index, block in enumerate(self.blocks):
            if self.gradient_checkpointing and torch.is_grad_enabled():
                tokens, _ = torch.utils.checkpoint.checkpoint(block, tokens, context.for_block(index), t_mod, rope,
                                                              grid, use_reentrant=False)
            else:
                following = self.blocks[index + 1] if index + 1 < len(self.blocks) else None
                next_modulation = first_norm_modulation(following, t_mod, tokens)
                next_fp8 = following is not None and following.reads_fp8_rows
                tokens, h = block(tokens, context.for_block(index), t_mod, rope, grid, h, next_modulation, next_fp8,
                                  modulation)
                modulation = next_modulation

        # 3. Output: modulated norm per group, projection, unpatchify.
        n, dim = tokens.shape[1], tokens.shape[2]
        shift, scale = (self.scale_shift_table[None] + t_emb[:, None]).chunk(2, dim=1)  # [G, 1, D] each
        tokens = ops.modulated_layer_norm(tokens.view(b * groups, -1, dim), shift, scale, 1e-6).view(b, n, dim)
        out = self.proj_out(tokens)  # [B, N, pt*ph*pw*C_out]
        out = out.reshape(b, *grid, pt, ph, pw, -1).permute(0, 7, 1, 4, 2, 5, 3, 6)  # [B, C, F', pt, H', ph, W', pw]
        return out.reshape(b, -1, frames // pt * pt, height // ph * ph, width // pw * pw)


def timestep_groups(timestep: torch.Tensor, batch: int, grid: tuple[int, int, int]) -> tuple[torch.Tensor, int]:
    """Timesteps as one value per modulation group, and the number of groups per batch row.

    [B] (or a scalar) -> ([B], 1); [B, F'] -> ([B*F'], F'); [1, F'] -> ([F'], F'), one row of frame timesteps
    shared by every batch row (image-to-video's: the caller embeds it once and repeats it, so a clip's numbers are
    the same in a batch of any size); [B, 1, F', H', W'] -> ([B*F'], F') when every frame holds one value
    (image-to-video: 0 on frame 0, t elsewhere), else ([B*N], N). Groups are consecutive tokens of one batch row,
    so the per-group modulation equals diffusers' per-token one exactly.
    """
    frames, height, width = grid
    if timestep.ndim == 0:
        return timestep.reshape(1).expand(batch), 1
    if timestep.shape == (batch,):
        return timestep, 1
    if timestep.shape in ((batch, frames), (1, frames)):
        return timestep.reshape(-1), frames
    if timestep.shape == (batch, 1, frames, height, width):
        per_token = timestep.reshape(batch, frames, height * width)
        if torch.equal(per_token, per_token[..., :1].expand_as(per_token)):
            return per_token[..., 0].reshape(-1), frames
        return per_token.reshape(-1), frames * height * width
    raise ValueError(f"timestep of shape {tuple(timestep.shape)} fits none of [B], [B, F'], [B, 1, F', H', W'] "
                     f"for B={batch} and a token grid of {frames}x{height}x{width}")

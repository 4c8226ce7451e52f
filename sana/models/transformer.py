"""The SANA image DiT (SANA 1.0 / 1.5 / 2K / 4K / Sprint) as plain modules, configured from `config.json`.

Weights are stored the engine's way: q/k/v of self-attention fused into `qkv`, k/v of cross-attention into
`kv`, the Mix-FFN 1x1 convs as linears on token-major activations. `sana.loading` maps diffusers and NVlabs
checkpoints onto these names.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .. import ops
from .fp8 import Fp8Linear, QuantizedRows, linear_output_rows
from .text_context import BlockText, TextContext, build_text_context, context_for_forward


class DiTConfigBase:
    """What the image and video DiT configs share: the derived widths and the checks both make."""

    @classmethod
    def known_keys(cls, data: dict) -> dict:
        """Known keys only (config.json also carries `_class_name`, `_diffusers_version`, ...)."""
        names = {f.name for f in dataclasses.fields(cls)}
        return {k: v for k, v in data.items() if k in names}

    def check_attention(self, what: str) -> None:
        if self.qk_norm not in (None, "rms_norm_across_heads"):
            raise ValueError(f"unsupported qk_norm {self.qk_norm!r}")
        if not self.num_cross_attention_heads or not self.cross_attention_head_dim:
            raise ValueError(f"the {what} needs cross-attention (num_cross_attention_heads, cross_attention_head_dim)")
        if self.cross_attention_dim != self.inner_dim:
            # The caption projection outputs the model width, so the cross-attention keys must read that width.
            raise ValueError(f"cross_attention_dim {self.cross_attention_dim} differs from the model width "
                             f"{self.inner_dim}")

    @property
    def inner_dim(self) -> int:
        return self.num_attention_heads * self.attention_head_dim

    @property
    def output_channels(self) -> int:
        return self.out_channels or self.in_channels

    @property
    def ffn_hidden(self) -> int:
        return int(self.mlp_ratio * self.inner_dim)


@dataclass(frozen=True)
class TransformerConfig(DiTConfigBase):
    """The hyperparameters of `SanaTransformer2DModel` (diffusers' names and defaults)."""

    in_channels: int = 32
    out_channels: int | None = 32
    num_attention_heads: int = 70
    attention_head_dim: int = 32
    num_layers: int = 20
    num_cross_attention_heads: int | None = 20
    cross_attention_head_dim: int | None = 112
    cross_attention_dim: int | None = 2240
    caption_channels: int = 2304
    mlp_ratio: float = 2.5
    dropout: float = 0.0
    attention_bias: bool = False
    sample_size: int = 32
    patch_size: int = 1
    norm_elementwise_affine: bool = False
    norm_eps: float = 1e-6
    interpolation_scale: float | None = None
    guidance_embeds: bool = False
    guidance_embeds_scale: float = 0.1
    qk_norm: str | None = None
    timestep_scale: float = 1.0

    @classmethod
    def from_dict(cls, data: dict) -> "TransformerConfig":
        config = cls(**cls.known_keys(data))
        config.check_attention("image DiT")
        return config


# -- embeddings ----------------------------------------------------------------------------------------------

def timestep_embedding(t: torch.Tensor, dim: int = 256, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding [B] -> [B, dim] in fp32, cos first (diffusers Timesteps, flip_sin_to_cos=True)."""
    half = dim // 2
    exponent = -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half
    args = t[:, None].float() * torch.exp(exponent)[None, :]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def _sincos_1d(dim: int, positions: torch.Tensor) -> torch.Tensor:
    """[M] positions -> [M, dim] as [sin | cos], frequencies in float64 like diffusers."""
    omega = torch.arange(dim // 2, dtype=torch.float64) / (dim / 2.0)
    omega = 1.0 / 10000**omega  # [dim/2]
    angles = torch.outer(positions.reshape(-1), omega)  # [M, dim/2] (float64)
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)


def sincos_position_embedding(dim: int, height: int, width: int, base_size: int,
                              interpolation_scale: float) -> torch.Tensor:
    """Fixed 2D sin-cos embedding [1, H*W, dim] in fp32, tokens row-major; diffusers' get_2d_sincos_pos_embed.

    Positions are stretched so that any grid spans `base_size / interpolation_scale` units (a 4K model at
    scale 2 sees its 128-token side as 64 units). The first half of the channels encodes the column, the
    second half the row, as diffusers' (x, y) meshgrid orders them.
    """
    rows = torch.arange(height, dtype=torch.float32) / (height / base_size) / interpolation_scale  # [H]
    cols = torch.arange(width, dtype=torch.float32) / (width / base_size) / interpolation_scale  # [W]
    grid_rows, grid_cols = torch.meshgrid(rows, cols, indexing="ij")  # [H, W] each
    emb = torch.cat([_sincos_1d(dim // 2, grid_cols), _sincos_1d(dim // 2, grid_rows)], dim=1)  # [H*W, dim]
    return emb.float().unsqueeze(0)


class MLPEmbedder(nn.Module):
    """Linear-SiLU-Linear (diffusers TimestepEmbedding)."""

    def __init__(self, in_dim: int, dim: int):
        super().__init__()
        self.linear_1 = nn.Linear(in_dim, dim)
        self.linear_2 = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_2(F.silu(self.linear_1(x)))


class TimeEmbedding(nn.Module):
    """adaLN-single: the shared timestep MLP (plus Sprint's guidance MLP) giving the 6 x D block modulation."""

    def __init__(self, dim: int, with_guidance: bool):
        super().__init__()
        self.timestep_embedder = MLPEmbedder(256, dim)
        self.guidance_embedder = MLPEmbedder(256, dim) if with_guidance else None
        self.linear = nn.Linear(dim, 6 * dim)

    def forward(self, t: torch.Tensor, guidance: torch.Tensor | None, dtype: torch.dtype):
        emb = self.timestep_embedder(timestep_embedding(t).to(dtype))  # [B, D]
        if self.guidance_embedder is not None:
            if guidance is None:
                raise ValueError("this model has a guidance embedding: pass guidance")
            emb = emb + self.guidance_embedder(timestep_embedding(guidance).to(dtype))
        return self.linear(F.silu(emb)), emb  # [B, 6D], [B, D]


class CaptionProjection(nn.Module):
    """Linear-GELU(tanh)-Linear from the text encoder width to D."""

    def __init__(self, in_dim: int, dim: int):
        super().__init__()
        self.linear_1 = nn.Linear(in_dim, dim)
        self.linear_2 = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_2(F.gelu(self.linear_1(x), approximate="tanh"))


class RMSNorm(nn.Module):
    """RMSNorm with a weight over the last dim (diffusers' RMSNorm, elementwise_affine=True)."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ops.rms_norm(x, self.weight, self.eps)


# -- attention ----------------------------------------------------------------------------------------------

class LinearSelfAttention(nn.Module):
    """ReLU linear self-attention with fused q/k/v and optional RMSNorm of q and k across all heads (SANA-1.5)."""

    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        dim = cfg.inner_dim
        self.heads = cfg.num_attention_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=cfg.attention_bias)
        self.norm_q = RMSNorm(dim, 1e-5) if cfg.qk_norm else None  # eps: diffusers' Attention default
        self.norm_k = RMSNorm(dim, 1e-5) if cfg.qk_norm else None
        self.out = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, perturbed_rows: int = 0) -> torch.Tensor:
        """x [B, N, D] (or, before fp8 linears, its `QuantizedRows`) -> [B, N, D]. The last `perturbed_rows` rows get
        identity attention (PAG): out(v(x))."""
        return ops.clip_fp16(self.out(self.attend(x, perturbed_rows)))

    def attend(self, x: torch.Tensor, perturbed_rows: int = 0) -> torch.Tensor:
        """The attention before the output projection (which the block may fuse with its residual add)."""
        keep = x.shape[0] - perturbed_rows
        q, k, v = self.qkv(x[:keep]).chunk(3, dim=-1)  # [b, N, D] each, views of one projection
        if self.norm_q is not None:
            q, k = self.norm_q(q), self.norm_k(k)
        attended = ops.linear_attention(q, k, v, self.heads)  # [b, N, D]
        if perturbed_rows:
            dim = x.shape[-1]
            identity = linear_output_rows(self.qkv, x[keep:], 2 * dim, 3 * dim)  # v(x): [B - b, N, D]
            attended = torch.cat([attended, identity])
        return attended


class CrossAttention(nn.Module):
    """Softmax attention from image tokens to text tokens, with padding masked by a -10000 bias."""

    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        inner = cfg.num_cross_attention_heads * cfg.cross_attention_head_dim
        self.heads = cfg.num_cross_attention_heads
        self.q = nn.Linear(cfg.inner_dim, inner)
        self.kv = nn.Linear(cfg.cross_attention_dim, 2 * inner)
        self.norm_q = RMSNorm(inner, 1e-5) if cfg.qk_norm else None
        self.norm_k = RMSNorm(inner, 1e-5) if cfg.qk_norm else None
        self.out = nn.Linear(inner, cfg.inner_dim)

    def keys_values(self, text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """text [B, L, D] -> keys, values [B, h, L, d]: fixed over a denoising loop (`TextContext` keeps them)."""
        k, v = self.kv(text).chunk(2, dim=-1)  # [B, L, h*d] each
        if self.norm_k is not None:
            k = self.norm_k(k)
        return tuple(t.unflatten(-1, (self.heads, -1)).transpose(1, 2) for t in (k, v))

    def forward(self, x: torch.Tensor, text: BlockText) -> torch.Tensor:
        """x [B, N, D], text: the block's view of the `TextContext` (bias [B, 1, 1, L] or None) -> [B, N, D]."""
        return self.out(self.attend(x, text))

    def attend(self, x: torch.Tensor, text: BlockText) -> torch.Tensor:
        """The attention before the output projection: [B, N, h*d]."""
        q = self.q(x)  # [B, N, h*d]
        if self.norm_q is not None:
            q = self.norm_q(q)
        k, v = text.keys_values(self)
        return ops.text_attention(q, k, v, self.heads, text.bias)


# -- feed-forward -------------------------------------------------------------------------------------------

class MixFFN(nn.Module):
    """GLUMBConv on token-major activations: 1x1 (as linear) -> SiLU -> depthwise 3x3 -> GLU -> 1x1 (as linear).

    The 1x1 convs are stored as linears ([O, I] instead of [O, I, 1, 1]) so the tokens never leave [B, N, C]
    for them; only the depthwise conv needs the spatial layout, inside `ops.mixffn_middle`.
    """

    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        dim, hidden = cfg.inner_dim, cfg.ffn_hidden
        self.inverted = nn.Linear(dim, 2 * hidden)
        self.depthwise = nn.Conv2d(2 * hidden, 2 * hidden, 3, padding=1, groups=2 * hidden)
        self.point = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """x [B, N, D] (N = height * width, row-major) -> [B, N, D]."""
        return self.point(self.hidden(x, height, width))

    def hidden(self, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """The gated hidden activations before the last 1x1 conv: [B, N, Hd]."""
        h = self.inverted(x)  # [B, N, 2Hd]
        return ops.mixffn_middle(h, height, width, self.depthwise.weight, self.depthwise.bias)  # [B, N, Hd]


# -- blocks and model ---------------------------------------------------------------------------------------

def modulation_table(rows: int, dim: int) -> nn.Parameter:
    """An adaLN-single table [rows, dim] drawn N(0, 1/dim) as diffusers draws it. Built on the meta device (the
    loader's way: the checkpoint's table is assigned over it) it stays empty: drawing there imports torch._dynamo,
    about 2 s on a small CPU."""
    table = torch.empty(rows, dim)
    if not table.is_meta:
        table = torch.randn(rows, dim) / dim**0.5
    return nn.Parameter(table)


class SanaBlock(nn.Module):
    """adaLN-single modulated linear self-attention, cross-attention to the text, and Mix-FFN."""

    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        dim = cfg.inner_dim
        self.eps = cfg.norm_eps
        self.attn = LinearSelfAttention(cfg)
        self.cross_attn = CrossAttention(cfg)
        # Only the FFN norm may carry an affine (diffusers' `norm_elementwise_affine`); no released model uses it.
        self.norm2 = nn.LayerNorm(dim, eps=cfg.norm_eps) if cfg.norm_elementwise_affine else None
        self.ff = MixFFN(cfg)
        self.scale_shift_table = modulation_table(6, dim)

    @property
    def reads_fp8_rows(self) -> bool:
        """With fp8 block linears (`--fp8`) the norm feeding the qkv writes its rows already quantized for it."""
        return isinstance(self.attn.qkv, Fp8Linear)

    def modulation(self, t_mod: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """t_mod [B, 6D] -> shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp, each [B, 1, D]."""
        return (self.scale_shift_table[None] + t_mod.reshape(t_mod.shape[0], 6, -1)).chunk(6, dim=1)

    def forward(self, x: torch.Tensor, text: BlockText, t_mod: torch.Tensor, height: int, width: int,
                perturbed_rows: int = 0, h: torch.Tensor | QuantizedRows | None = None,
                next_modulation: tuple[torch.Tensor, ...] | None = None, next_fp8: bool = False,
                modulation: tuple[torch.Tensor, ...] | None = None,
                ) -> tuple[torch.Tensor, torch.Tensor | QuantizedRows | None]:
        """x [B, N, D]; text: this block's view of the text context; t_mod [B, 6D] from the shared timestep MLP.

        h: this block's first modulated norm of x when the previous block computed it (None: computed here).
        next_modulation: the next block's `modulation(t_mod)`: its first norm is then computed in the pass of this
        block's last residual add, so the residual stream is not read back for it, and returned (as
        `QuantizedRows` when `next_fp8`). modulation: this block's, when the previous block made it so.
        Returns (x [B, N, D], the next block's h or None).
        """
        if modulation is None:
            modulation = self.modulation(t_mod)
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = modulation  # each [B, 1, D]
        # With fp8 block linears, the norms feeding the qkv and the Mix-FFN's first conv write their rows already
        # quantized for them (`QuantizedRows`), instead of in x's dtype for the linear to quantize.
        if h is None and self.reads_fp8_rows:
            h = QuantizedRows(*ops.modulated_layer_norm_fp8(x, shift_msa, scale_msa, self.eps), x.dtype)
        elif h is None:
            h = ops.modulated_layer_norm(x, shift_msa, scale_msa, self.eps)  # [B, N, D]
        # The output projections feed residual adds: `ops.linear_gated_residual*` may fuse the two into one GEMM.
        x = ops.linear_gated_residual(x, gate_msa, self.attn.attend(h, perturbed_rows), self.attn.out,
                                      clip_output=True)
        if self.norm2 is None and isinstance(self.ff.inverted, Fp8Linear):
            x, q, row_scale = ops.gated_residual_modulated_norm_fp8(x, None, self.cross_attn(x, text), shift_mlp,
                                                                    scale_mlp, self.eps)
            h = QuantizedRows(q, row_scale, x.dtype)
        elif self.norm2 is None:  # the cross-attention's residual add and the FFN's norm in one pass
            x, h = ops.linear_gated_residual_modulated_norm(x, None, self.cross_attn.attend(x, text),
                                                            self.cross_attn.out, shift_mlp, scale_mlp, self.eps)
        else:
            x = x + self.cross_attn(x, text)
            h = ops.modulate(self.norm2(x), shift_mlp, scale_mlp)
        hidden = self.ff.hidden(h, height, width)
        if next_modulation is None:
            return ops.linear_gated_residual(x, gate_mlp, hidden, self.ff.point), None
        next_norm = next_modulation[:2]  # the next block's (shift_msa, scale_msa)
        if next_fp8:
            x, q, row_scale = ops.gated_residual_modulated_norm_fp8(x, gate_mlp, self.ff.point(hidden), *next_norm,
                                                                    self.eps)
            return x, QuantizedRows(q, row_scale, x.dtype)
        return ops.linear_gated_residual_modulated_norm(x, gate_mlp, hidden, self.ff.point, *next_norm, self.eps)


def first_norm_modulation(block: nn.Module | None, t_mod: torch.Tensor,
                          tokens: torch.Tensor) -> tuple[torch.Tensor, ...] | None:
    """`block.modulation(t_mod)`, for the previous block to fuse its last residual add with `block`'s first norm
    (and for `block` to use, not make again); None where that would read weights before they are in place:
    without a block, under autograd (training: FSDP gathers a block's weights when it runs), or with the block's
    weights elsewhere (streamed from host memory block by block, or sharded)."""
    if block is None or torch.is_grad_enabled():
        return None
    table = block.scale_shift_table
    if type(table.data) is not torch.Tensor or table.device != tokens.device:
        return None
    return block.modulation(t_mod)


class SanaTransformer(nn.Module):
    """The SANA linear DiT: latent [B, C, H, W] + text [B, L, C_text] + timestep -> velocity [B, C_out, H, W]."""

    def __init__(self, config: TransformerConfig):
        super().__init__()
        self.config = config
        dim, p = config.inner_dim, config.patch_size
        self.patch_embed = nn.Conv2d(config.in_channels, dim, kernel_size=p, stride=p)
        self.time_embed = TimeEmbedding(dim, with_guidance=config.guidance_embeds)
        self.caption_projection = CaptionProjection(config.caption_channels, dim)
        self.caption_norm = RMSNorm(dim, 1e-5)
        self.blocks = nn.ModuleList([SanaBlock(config) for _ in range(config.num_layers)])
        self.scale_shift_table = modulation_table(2, dim)
        self.proj_out = nn.Linear(dim, p * p * config.output_channels)
        self.gradient_checkpointing = False
        # Position embeddings per (grid, device, dtype): fixed functions of the grid, never weights.
        self._position_cache: dict[tuple, torch.Tensor] = {}

    def initialize_weights(self, generator: torch.Generator | None = None) -> None:
        """Initialisation for training from scratch, as SANA / PixArt / DiT do it.

        Xavier-uniform linears with zero biases; N(0, 0.02) timestep, guidance and caption MLPs; the
        cross-attention output and the final projection start at zero so every block begins near identity
        and the first prediction is zero; the caption RMSNorm starts small (0.01) like the released models'.
        """
        def xavier(weight: torch.Tensor) -> None:
            fan_out, fan_in = weight.shape[0], weight[0].numel()
            bound = math.sqrt(6.0 / (fan_in + fan_out))
            weight.uniform_(-bound, bound, generator=generator)

        with torch.no_grad():
            for module in self.modules():
                if isinstance(module, nn.Linear):
                    xavier(module.weight)
                    if module.bias is not None:
                        module.bias.zero_()
            xavier(self.patch_embed.weight)
            self.patch_embed.bias.zero_()
            embedders = [self.time_embed.timestep_embedder, self.time_embed.guidance_embedder, self.caption_projection]
            for embedder in filter(None, embedders):
                embedder.linear_1.weight.normal_(0.0, 0.02, generator=generator)
                embedder.linear_2.weight.normal_(0.0, 0.02, generator=generator)
            self.time_embed.linear.weight.normal_(0.0, 0.02, generator=generator)
            dim = self.config.inner_dim
            for block in self.blocks:
                block.cross_attn.out.weight.zero_()
                block.cross_attn.out.bias.zero_()
                block.scale_shift_table.copy_(torch.randn(6, dim, generator=generator) / dim**0.5)
                block.ff.depthwise.weight.normal_(0.0, math.sqrt(2.0 / 9.0), generator=generator)  # fan-in 3x3
                block.ff.depthwise.bias.zero_()
                for norm in (block.attn.norm_q, block.attn.norm_k, block.cross_attn.norm_q, block.cross_attn.norm_k):
                    if norm is not None:
                        norm.weight.fill_(1.0)
                if block.norm2 is not None:
                    block.norm2.reset_parameters()
            self.caption_norm.weight.fill_(0.01)
            self.scale_shift_table.copy_(torch.randn(2, dim, generator=generator) / dim**0.5)
            self.proj_out.weight.zero_()
            self.proj_out.bias.zero_()

    @property
    def dtype(self) -> torch.dtype:
        return self.proj_out.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.proj_out.weight.device

    def position_embedding(self, height: int, width: int, device: torch.device) -> torch.Tensor | None:
        """Fixed 2D sin-cos embedding [1, N, D] for a grid of height x width tokens (2K/4K models), else None.

        diffusers keeps the sample-size grid's embedding as a buffer (cast with the model, so in the model
        dtype) and recomputes any other grid in fp32; the same dtypes here keep half-precision runs equal.
        """
        cfg = self.config
        if cfg.interpolation_scale is None:
            return None
        base = cfg.sample_size // cfg.patch_size
        dtype = self.dtype if (height, width) == (base, base) else torch.float32
        key = (height, width, str(device), dtype)
        if key not in self._position_cache:
            if len(self._position_cache) >= 8:
                self._position_cache.clear()
            pos = sincos_position_embedding(cfg.inner_dim, height, width, base, float(cfg.interpolation_scale))
            self._position_cache[key] = pos.to(device=device, dtype=dtype)
        return self._position_cache[key]

    def text_context(self, text: torch.Tensor, text_mask: torch.Tensor | None = None) -> TextContext:
        """text [B, L, C_text], text_mask [B, L] -> the context a denoising loop passes in place of the text at every
        step: the caption MLP runs here once, each block's cross-attention keys and values on its first step."""
        return build_text_context(self, text, text_mask, bias_dtype=self.dtype, keep=True)

    def forward(self, x: torch.Tensor, text: torch.Tensor | TextContext, timestep: torch.Tensor,
                text_mask: torch.Tensor | None = None, guidance: torch.Tensor | None = None, perturbed_rows: int = 0,
                perturbed_layers: tuple[int, ...] = ()) -> torch.Tensor:
        """x [B, C, H, W], text [B, L, C_text] or its `text_context`, timestep [B], text_mask [B, L] (1 keep,
        0 pad; with raw text only), guidance [B].

        `timestep` and `guidance` are what diffusers' pipelines pass (already scaled). PAG: the last
        `perturbed_rows` rows use identity self-attention in the blocks whose indices are in `perturbed_layers`.
        Returns [B, C_out, H, W].
        """
        cfg = self.config
        b, _, height, width = x.shape
        p = cfg.patch_size
        h, w = height // p, width // p

        # 1. Inputs: patches (+ position), timestep modulation, projected and normalised text.
        tokens = self.patch_embed(x).flatten(2).transpose(1, 2).contiguous()  # [B, N, D], token-major for the kernels
        pos = self.position_embedding(h, w, x.device)
        if pos is not None:
            tokens = (tokens + pos).to(tokens.dtype)
        t_mod, t_emb = self.time_embed(timestep, guidance, tokens.dtype)  # [B, 6D], [B, D]
        context = context_for_forward(self, text, text_mask, tokens.dtype)

        # 2. Blocks. In inference each block's last residual add also computes the next block's first norm.
        first_norm = modulation = None
        for index, block in enumerate(self.blocks):
            rows = perturbed_rows if index in perturbed_layers else 0
            block_text = context.for_block(index)
            if self.gradient_checkpointing and torch.is_grad_enabled():
                tokens, _ = torch.utils.checkpoint.checkpoint(block, tokens, block_text, t_mod, h, w, rows,
                                                              use_reentrant=False)
            else:
                following = self.blocks[index + 1] if index + 1 < len(self.blocks) else None
                next_modulation = first_norm_modulation(following, t_mod, tokens)
                next_fp8 = following is not None and following.reads_fp8_rows
                tokens, first_norm = block(tokens, block_text, t_mod, h, w, rows, first_norm, next_modulation,
                                           next_fp8, modulation)
                modulation = next_modulation

        # 3. Output: modulated norm, projection, unpatchify.
        shift, scale = (self.scale_shift_table[None] + t_emb[:, None]).chunk(2, dim=1)  # [B, 1, D] each
        tokens = self.proj_out(ops.modulated_layer_norm(tokens, shift, scale, 1e-6))  # [B, N, p*p*C_out]
        out = tokens.reshape(b, h, w, p, p, -1).permute(0, 5, 1, 3, 2, 4)  # [B, C_out, h, p, w, p]
        return out.reshape(b, -1, h * p, w * p)


"""The DC-AE decoder (the decoder half of diffusers' `AutoencoderDC`) as plain modules, configured from `config.json`.

Latents [B, C, h, w] -> images [B, 3, h*f, w*f] in about [-1, 1] (f = 32 for SANA's f32c32). Stages run from the
deepest (smallest, widest) to full resolution: `conv_in`, then per stage a 2x up block and its blocks (ResBlock or
EfficientViTBlock), then RMSNorm, an activation and `conv_out`.

Activations are [B, C, H, W] in channels-last memory, so that the same memory read as [B, H*W, C] (`tokens`) is
token-major without a copy: 3x3 convs run on the image view, and the EfficientViT blocks' 1x1 convs are linears on
the token view, with the DiT's linear attention and Mix-FFN middle (`sana.ops`, Triton kernels on CUDA). Weights
keep diffusers' names (less the `decoder.` prefix) except that the attention's q/k/v projections are one linear
`qkv` whose output is every head's q, then every head's k, then v (the DiT's layout), and that a nearest-upsampling
up block's conv holds its four 2x2 phase kernels (`nearest_conv_phases`); `sana.loading` maps diffusers
checkpoints onto these. Arithmetic follows diffusers': RMSNorm statistics and linear attention in fp32, the rest in
the weights' dtype. Intermediate tensors are updated in place when no gradient is recorded through them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .. import ops

LINEAR_ATTENTION_EPS = 1e-15  # diffusers' SanaMultiscaleLinearAttention
NORM_EPS = 1e-5  # diffusers' RMSNorm / BatchNorm2d in the DC-AE
GLU_EXPAND = 4  # GLUMBConv's hidden channels per input channel

BLOCK_TYPES = ("ResBlock", "EfficientViTBlock")
NORM_TYPES = ("rms_norm", "batch_norm")
UPSAMPLE_TYPES = ("pixel_shuffle", "interpolate")
ACTIVATIONS = ("silu", "swish", "relu", "gelu", "mish")  # diffusers' get_activation
_IN_PLACE_ACTIVATIONS = {"silu": F.silu, "swish": F.silu, "relu": F.relu, "mish": F.mish}  # those with `inplace`


# ---------------------------------------------------------------------------------------------------------
# Config
# ---------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class DCAEConfig:
    """The decoder's hyperparameters in `AutoencoderDC`'s names and defaults.

    Per-stage options (`decoder_block_types`, `decoder_norm_types`, `decoder_act_fns`, ...) are tuples of one entry a
    stage once built (a single string applies to every stage). Of the encoder, only `encoder_block_out_channels`
    matters: its length sets the compression ratio, as in diffusers.
    """

    in_channels: int = 3  # image channels (the decoder's output)
    latent_channels: int = 32
    attention_head_dim: int = 32
    decoder_block_types: tuple[str, ...] | str = "ResBlock"
    decoder_block_out_channels: tuple[int, ...] = (128, 256, 512, 512, 1024, 1024)
    decoder_layers_per_block: tuple[int, ...] = (3, 3, 3, 3, 3, 3)
    decoder_qkv_multiscales: tuple[tuple[int, ...], ...] = ((), (), (), (5,), (5,), (5,))
    upsample_block_type: str = "pixel_shuffle"
    decoder_norm_types: tuple[str, ...] | str = "rms_norm"
    decoder_act_fns: tuple[str | None, ...] | str | None = "silu"
    decoder_in_shortcut: bool = True
    decoder_conv_act_fn: str = "relu"
    scaling_factor: float = 1.0
    encoder_block_out_channels: tuple[int, ...] = (128, 256, 512, 512, 1024, 1024)

    @classmethod
    def from_dict(cls, data: dict) -> "DCAEConfig":
        """Known keys only (config.json also has the encoder's and `_class_name`, ...); raises ValueError."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    def __post_init__(self):
        """Normalise (one entry a stage, lower-case activations) and check; raises ValueError."""
        stages = len(self.decoder_block_out_channels)

        def per_stage(key: str) -> tuple:
            # A single value applies to every stage; extra entries are ignored, as diffusers indexes by stage.
            value = getattr(self, key)
            entries = (value,) * stages if value is None or isinstance(value, str) else tuple(value)
            if len(entries) < stages:
                raise ValueError(f"{key} has {len(entries)} entries for {stages} decoder stages")
            return entries[:stages]

        normal = {
            "decoder_block_out_channels": tuple(int(c) for c in self.decoder_block_out_channels),
            "encoder_block_out_channels": tuple(int(c) for c in self.encoder_block_out_channels),
            "decoder_layers_per_block": tuple(int(n) for n in per_stage("decoder_layers_per_block")),
            "decoder_qkv_multiscales": tuple(tuple(int(k) for k in s) for s in per_stage("decoder_qkv_multiscales")),
            "decoder_block_types": per_stage("decoder_block_types"),
            "decoder_norm_types": per_stage("decoder_norm_types"),
            "decoder_act_fns": tuple(a.lower() if a else None for a in per_stage("decoder_act_fns")),
            "decoder_conv_act_fn": str(self.decoder_conv_act_fn).lower(),
        }
        for key, value in normal.items():
            object.__setattr__(self, key, value)
        for kind in self.decoder_block_types:
            if kind not in BLOCK_TYPES:
                raise ValueError(f"unknown block type {kind!r} (expected one of {', '.join(BLOCK_TYPES)})")
        for norm in self.decoder_norm_types:
            if norm not in NORM_TYPES:
                raise ValueError(f"unsupported norm type {norm!r} (expected one of {', '.join(NORM_TYPES)})")
        for act in (*self.decoder_act_fns, self.decoder_conv_act_fn):
            if act is not None and act not in ACTIVATIONS:
                raise ValueError(f"unknown activation {act!r} (expected one of {', '.join(ACTIVATIONS)})")
        for kind, channels, layers in zip(self.decoder_block_types, self.decoder_block_out_channels,
                                          self.decoder_layers_per_block):
            if kind == "EfficientViTBlock" and layers and channels < self.attention_head_dim:
                raise ValueError(f"an EfficientViTBlock of {channels} channels has no head of "
                                 f"attention_head_dim {self.attention_head_dim}")
        if self.upsample_block_type not in UPSAMPLE_TYPES:
            raise ValueError(f"unknown upsample_block_type {self.upsample_block_type!r} "
                             f"(expected one of {', '.join(UPSAMPLE_TYPES)})")
        if self.decoder_in_shortcut and self.decoder_block_out_channels[-1] % self.latent_channels:
            raise ValueError(f"the input shortcut needs {self.decoder_block_out_channels[-1]} channels to be a "
                             f"multiple of latent_channels {self.latent_channels}")

    @property
    def spatial_compression_ratio(self) -> int:
        """Pixels per latent along a side (diffusers' definition)."""
        return 2 ** (len(self.encoder_block_out_channels) - 1)


# ---------------------------------------------------------------------------------------------------------
# Primitives
# ---------------------------------------------------------------------------------------------------------

def may_overwrite(*tensors: torch.Tensor) -> bool:
    """Whether fresh intermediates may be updated in place: no gradient is recorded through them."""
    return not (torch.is_grad_enabled() and any(t.requires_grad for t in tensors))


def activate(x: torch.Tensor, name: str | None) -> torch.Tensor:
    """diffusers' activation `name` (None: identity), in place when allowed: callers pass fresh tensors only."""
    if name is None:
        return x
    if name == "gelu":
        return F.gelu(x)
    return _IN_PLACE_ACTIVATIONS[name](x, inplace=may_overwrite(x))


def tokens(x: torch.Tensor) -> torch.Tensor:
    """[B, C, H, W] -> [B, H*W, C]: a view of channels-last memory (a copy otherwise)."""
    return x.permute(0, 2, 3, 1).reshape(x.shape[0], -1, x.shape[1])


def image(t: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """[B, H*W, C] -> [B, C, H, W] in channels-last memory (a view of a contiguous `t`)."""
    return t.view(t.shape[0], height, width, t.shape[2]).permute(0, 3, 1, 2)


def multiscale_attention(qkv: torch.Tensor, heads: int, eps: float = LINEAR_ATTENTION_EPS) -> torch.Tensor:
    """DC-AE's ReLU attention over the pixels of one scale. qkv: [B, N, 3*H*D] (every head's q, then k, then v),
    returns [B, N, H*D] in qkv's dtype.

    Maps of more than D pixels take the linear form, in fp32 (`sana.ops.linear_attention`, the DiT's; diffusers
    computes the same sums by padding v with a row of ones). Smaller maps take diffusers' quadratic form: weights
    relu(k_m) . relu(q_n) normalised over the keys m in fp32, applied to v in qkv's dtype.
    """
    b, n, three_inner = qkv.shape
    q, k, v = qkv.chunk(3, dim=-1)  # [B, N, H*D] each
    d = three_inner // 3 // heads
    if n > d:
        return ops.linear_attention(q, k, v, heads, eps)
    q, k, v = F.relu(q).reshape(b, n, heads, d), F.relu(k).reshape(b, n, heads, d), v.reshape(b, n, heads, d)
    scores = torch.einsum("bmhd,bnhd->bhmn", k, q).float()  # [B, H, N keys, N queries]
    scores = scores / (scores.sum(dim=2, keepdim=True) + eps)
    return torch.einsum("bmhd,bhmn->bnhd", v, scores.to(v.dtype)).reshape(b, n, heads * d)


def conv3x3(cin: int, cout: int, *, bias: bool = True, groups: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, padding=1, bias=bias, groups=groups)


# ---------------------------------------------------------------------------------------------------------
# Layers
# ---------------------------------------------------------------------------------------------------------

class RMSNorm2d(nn.Module):
    """RMSNorm over the channels of [B, C, H, W] (diffusers' RMSNorm with weight and bias), plus an optional
    residual: one pass over channels-last memory (`sana.ops.rms_norm_affine`, a Triton kernel on CUDA)."""

    def __init__(self, channels: int, eps: float = NORM_EPS):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        h, w = x.shape[-2:]
        res = tokens(residual) if residual is not None else None
        return image(ops.rms_norm_affine(tokens(x), self.weight, self.bias, self.eps, res), h, w)


class FrozenBatchNorm2d(nn.Module):
    """BatchNorm2d with its running statistics (inference only; diffusers' `batch_norm` norm type in eval mode)."""

    def __init__(self, channels: int, eps: float = NORM_EPS):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.register_buffer("running_mean", torch.zeros(channels))
        self.register_buffer("running_var", torch.ones(channels))

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        y = F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)
        if residual is None:
            return y
        return y.add_(residual) if may_overwrite(y, residual) else y + residual


def make_norm(kind: str, channels: int) -> nn.Module:
    return RMSNorm2d(channels) if kind == "rms_norm" else FrozenBatchNorm2d(channels)


class ResBlock(nn.Module):
    """3x3 conv -> activation -> 3x3 conv (no bias) -> norm, plus the input."""

    def __init__(self, channels: int, norm: str, act: str | None):
        super().__init__()
        self.act = act
        self.conv1 = conv3x3(channels, channels)
        self.conv2 = conv3x3(channels, channels, bias=False)
        self.norm = make_norm(norm, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fused = self.conv1.bias is not None and self.act in ops.BIAS_ACTIVATIONS and ops.defers_conv_bias(x)
        if fused:  # the conv's bias joins the activation's pass
            h = ops.bias_activation(F.conv2d(x, self.conv1.weight, None, padding=1), self.conv1.bias, self.act)
        else:
            h = activate(self.conv1(x), self.act)  # [B, C, H, W]
        return self.norm(self.conv2(h), residual=x)  # [B, C, H, W]


class MultiscaleProjection(nn.Module):
    """One extra scale of q/k/v: a kxk depthwise conv, then a 1x1 conv within each run of D channels."""

    def __init__(self, channels: int, groups: int, kernel_size: int):
        super().__init__()
        self.proj_in = nn.Conv2d(channels, channels, kernel_size, padding=kernel_size // 2, groups=channels,
                                 bias=False)
        self.proj_out = nn.Conv2d(channels, channels, 1, groups=groups, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj_out(self.proj_in(x))

    def on_tokens(self, t: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """The same on token-major [B, H*W, C] (one Triton pass on CUDA: `sana.ops.multiscale_projection`)."""
        return ops.multiscale_projection(t, height, width, self.proj_in.weight, self.proj_out.weight)


class MultiscaleLinearAttention(nn.Module):
    """q/k/v by a linear and by each multiscale projection of it; ReLU attention per head at every scale; a linear
    over all scales' outputs -> norm, plus the input."""

    def __init__(self, channels: int, head_dim: int, kernel_sizes: tuple[int, ...], norm: str):
        super().__init__()
        self.heads = channels // head_dim
        inner = self.heads * head_dim
        self.qkv = nn.Linear(channels, 3 * inner, bias=False)
        self.to_qkv_multiscale = nn.ModuleList(MultiscaleProjection(3 * inner, 3 * self.heads, k)
                                               for k in kernel_sizes)
        self.to_out = nn.Linear(inner * (1 + len(kernel_sizes)), channels, bias=False)
        self.norm_out = make_norm(norm, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        qkv = self.qkv(tokens(x))  # [B, N, 3 * inner]
        scales = [qkv] + [proj.on_tokens(qkv, h, w) for proj in self.to_qkv_multiscale]
        # Heads never straddle two scales, so each scale is attended on its own (no fp32 copy of them all).
        out = torch.cat([multiscale_attention(s, self.heads) for s in scales], dim=-1)  # [B, N, inner * scales]
        return self.norm_out(image(self.to_out(out), h, w), residual=x)  # [B, C, H, W]


class GLUMBConv(nn.Module):
    """Linear to 2 x 4C -> SiLU -> 3x3 depthwise conv -> value * SiLU(gate) -> linear -> RMSNorm, plus the input.
    The middle is the DiT's Mix-FFN middle (`sana.ops.mixffn_middle`)."""

    def __init__(self, channels: int):
        super().__init__()
        hidden = GLU_EXPAND * channels
        self.conv_inverted = nn.Linear(channels, 2 * hidden)
        self.conv_depth = conv3x3(2 * hidden, 2 * hidden, groups=2 * hidden)
        self.conv_point = nn.Linear(hidden, channels, bias=False)
        self.norm = RMSNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        t = self.conv_inverted(tokens(x))  # [B, N, 8C]
        t = ops.mixffn_middle(t, h, w, self.conv_depth.weight, self.conv_depth.bias)  # [B, N, 4C]
        return self.norm(image(self.conv_point(t), h, w), residual=x)  # [B, C, H, W]


class EfficientViTBlock(nn.Module):
    """Multiscale linear attention, then a gated MBConv (each with its residual)."""

    def __init__(self, channels: int, head_dim: int, kernel_sizes: tuple[int, ...], norm: str):
        super().__init__()
        self.attn = MultiscaleLinearAttention(channels, head_dim, kernel_sizes, norm)
        self.conv_out = GLUMBConv(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_out(self.attn(x))


# Nearest 2x upsampling followed by a 3x3 conv reads, for output rows 2i (a = 0) and 2i + 1 (a = 1), input rows
# {i - 1, i, i} and {i, i, i + 1}: two distinct rows each, so each output phase is a 2x2 conv of the low-resolution
# input. Row u of a phase's 2x2 kernel sums these rows of the 3x3 kernel (at padding 1 the 2x2 output at p reads
# input rows p - 1 and p; phase a's row i sits at p = i + a).
_PHASE_TAPS = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 1.0, 1.0]],  # a = 0: [u, ky]
                            [[1.0, 1.0, 0.0], [0.0, 0.0, 1.0]]], dtype=torch.float64)  # a = 1


def nearest_conv_phases(weight: torch.Tensor, bias: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A 3x3 conv applied after nearest 2x upsampling, [Cout, Cin, 3, 3], as four 2x2 convs of the input, one per
    output phase (a, b) = (row, column) parity: [4 * Cout, Cin, 2, 2] in phase order 2a + b (and the bias repeated).
    The taps are summed in float64 and rounded once to the weight's dtype. 2.25x fewer multiply-adds, and the
    upsampled input is never made."""
    w = weight.double()
    phases = torch.einsum("auy,bvx,oiyx->aboiuv", _PHASE_TAPS.to(w.device), _PHASE_TAPS.to(w.device), w)
    phases = phases.reshape(4 * weight.shape[0], weight.shape[1], 2, 2).to(weight.dtype)
    return phases, (bias.repeat(4) if bias is not None else None)


class UpBlock(nn.Module):
    """2x upsampling: a 3x3 conv to 4x the channels then pixel shuffle, or a 3x3 conv after nearest upsampling
    (`interpolate`, run as four 2x2 phase convs of the input: `nearest_conv_phases`); with `shortcut`, plus the
    input's channels repeated and pixel-shuffled (diffusers' DCUpBlock2d)."""

    def __init__(self, cin: int, cout: int, *, interpolate: bool, shortcut: bool):
        super().__init__()
        if shortcut and (4 * cout) % cin:
            raise ValueError(f"an up block from {cin} to {cout} channels cannot repeat its input as a shortcut")
        self.interpolate = interpolate
        self.shortcut = shortcut
        self.cout = cout
        # Both hold 4 * cout outputs: pixel-shuffle channels, or the four phases of the upsampled conv.
        self.conv = nn.Conv2d(cin, 4 * cout, 2, padding=1) if interpolate else conv3x3(cin, 4 * cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.interpolate:
            return self._upsampled_conv(x)
        y = self.conv(x)  # [B, 4 * Cout, H, W]
        if self.shortcut:  # added before the shuffle: a permutation commutes with the sum
            y += x.repeat_interleave(4 * self.cout // x.shape[1], dim=1)
        return F.pixel_shuffle(y, 2)  # [B, Cout, 2H, 2W]

    def _upsampled_conv(self, x: torch.Tensor) -> torch.Tensor:
        deferred = self.conv.bias if self.conv.bias is not None and ops.defers_conv_bias(x) else None
        # [B, 4 * Cout, H + 1, W + 1]: phase (a, b) at rows a..a+H, columns b..b+W; the bias added while assembling
        y = F.conv2d(x, self.conv.weight, None if deferred is not None else self.conv.bias, padding=1)
        return ops.assemble_phases(y, x if self.shortcut else None, deferred)  # [B, Cout, 2H, 2W]


# ---------------------------------------------------------------------------------------------------------
# Tiles
# ---------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Tiling:
    """Decoding in overlapping tiles, in latents: a tile of `height` x `width` starts every `stride_height` rows and
    `stride_width` columns; neighbours are blended linearly over their overlap (tile - stride, in pixels).

    The same tiles, blending and crops as diffusers' `AutoencoderDC.enable_tiling(tile_sample_min_height=height * f,
    tile_sample_min_width=width * f, tile_sample_stride_height=stride_height * f, ...)` with f the compression.
    """

    height: int
    width: int
    stride_height: int
    stride_width: int

    def __post_init__(self):
        if not (0 < self.stride_height <= self.height and 0 < self.stride_width <= self.width):
            raise ValueError(f"tile strides must be positive and at most the tile size: {self}")

    @classmethod
    def square(cls, tile: int, stride: int) -> "Tiling":
        return cls(tile, tile, stride, stride)

    def splits(self, height: int, width: int) -> bool:
        """Whether latents of height x width are decoded in several tiles (else in one piece)."""
        return height > self.height or width > self.width


def _blend(previous: torch.Tensor, tile: torch.Tensor, dim: int, extent: int) -> None:
    """Blend the first `extent` rows (dim 2) or columns (dim 3) of `tile`, in place, from the edge of the previous
    tile (`previous` holds at least its last `extent` along `dim`): weight y / extent for the tile's own pixels."""
    extent = min(extent, previous.shape[dim], tile.shape[dim])
    if extent <= 0:
        return
    shape = [1, 1, 1, 1]
    shape[dim] = extent
    # Both weights from float64, as diffusers' Python floats are, so that fp32 blends agree bit for bit.
    keep = torch.arange(extent, dtype=torch.float64) / extent
    fade = (1 - keep).to(tile.device, torch.float32).view(shape)
    keep = keep.to(tile.device, torch.float32).view(shape)
    own = tile.narrow(dim, 0, extent)
    other = previous.narrow(dim, previous.shape[dim] - extent, extent)
    own.copy_(other.float() * fade + own.float() * keep)


# ---------------------------------------------------------------------------------------------------------
# The decoder
# ---------------------------------------------------------------------------------------------------------

class DCAEDecoder(nn.Module):
    """DC-AE decoder: latents [B, latent_channels, h, w] -> images [B, in_channels, h*f, w*f]."""

    def __init__(self, config: DCAEConfig):
        super().__init__()
        self.config = config
        channels = config.decoder_block_out_channels
        layers = config.decoder_layers_per_block
        interpolate = config.upsample_block_type == "interpolate"
        stages = len(channels)

        self.conv_in = conv3x3(config.latent_channels, channels[-1])
        up_blocks = []
        for i in range(stages):
            stage: list[nn.Module] = []
            if i < stages - 1 and layers[i] > 0:
                stage.append(UpBlock(channels[i + 1], channels[i], interpolate=interpolate, shortcut=True))
            for _ in range(layers[i]):
                if config.decoder_block_types[i] == "ResBlock":
                    stage.append(ResBlock(channels[i], config.decoder_norm_types[i], config.decoder_act_fns[i]))
                else:
                    stage.append(EfficientViTBlock(channels[i], config.attention_head_dim,
                                                   config.decoder_qkv_multiscales[i], config.decoder_norm_types[i]))
            up_blocks.append(nn.Sequential(*stage))
        self.up_blocks = nn.ModuleList(up_blocks)  # index = stage, 0 at full resolution; run deepest first

        # A first stage without layers leaves the last 2x to conv_out (as diffusers builds it).
        width = channels[0] if layers[0] > 0 else channels[1]
        self.norm_out = RMSNorm2d(width)
        if layers[0] > 0:
            self.conv_out = conv3x3(width, config.in_channels)
        else:
            self.conv_out = UpBlock(width, config.in_channels, interpolate=interpolate, shortcut=False)

    @property
    def spatial_compression_ratio(self) -> int:
        return self.config.spatial_compression_ratio

    @property
    def dtype(self) -> torch.dtype:
        return self.conv_in.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.conv_in.weight.device

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """Latents [B, C, h, w] (already divided by the scaling factor) -> images [B, 3, h*f, w*f]."""
        z = z.contiguous(memory_format=torch.channels_last)  # convs keep it, so every activation is channels-last
        x = self.conv_in(z)  # [B, C_deepest, h, w]
        if self.config.decoder_in_shortcut:
            x += z.repeat_interleave(x.shape[1] // z.shape[1], dim=1)
        for stage in reversed(self.up_blocks):
            x = stage(x)  # 2x larger each stage but the deepest
        x = activate(self.norm_out(x), self.config.decoder_conv_act_fn)
        return self.conv_out(x)  # [B, 3, H, W]

    def decode(self, latents: torch.Tensor, tile: Tiling | None = None) -> torch.Tensor:
        """Latents [B, C, h, w] (already divided by the scaling factor) -> images [B, 3, h*f, w*f], in one piece, or
        in tiles when `tile` is given and the latents are larger than one tile."""
        if tile is None or not tile.splits(*latents.shape[-2:]):
            return self(latents)
        return self.tiled_decode(latents, tile)

    def tiled_decode(self, latents: torch.Tensor, tile: Tiling) -> torch.Tensor:
        """Tile by tile, row by row, into one output: each tile is blended with the tile above and the one to its
        left (both already blended, as diffusers does) and cropped to its stride. Only the edges a later tile
        blends from are kept, so the peak is one tile's decode plus the output."""
        b, _, h, w = latents.shape
        f = self.spatial_compression_ratio
        blend_h, blend_w = (tile.height - tile.stride_height) * f, (tile.width - tile.stride_width) * f
        stride_h, stride_w = tile.stride_height * f, tile.stride_width * f
        out = None
        above: list[torch.Tensor] = []  # per column: the last blend_h rows of the tile in the row above
        for top in range(0, h, tile.stride_height):
            row: list[torch.Tensor] = []
            left = None  # the last blend_w columns of the tile to the left
            for column, x0 in enumerate(range(0, w, tile.stride_width)):
                pixels = self(latents[:, :, top:top + tile.height, x0:x0 + tile.width])  # [B, 3, th, tw]
                if out is None:
                    out = pixels.new_empty(b, pixels.shape[1], h * f, w * f)
                if above:
                    _blend(above[column], pixels, 2, blend_h)
                if left is not None:
                    _blend(left, pixels, 3, blend_w)
                row.append(pixels[:, :, max(0, pixels.shape[2] - blend_h):].clone())
                left = pixels[:, :, :, max(0, pixels.shape[3] - blend_w):].clone()
                kept = pixels[:, :, :stride_h, :stride_w]
                out[:, :, top * f:top * f + kept.shape[2], x0 * f:x0 * f + kept.shape[3]] = kept
            above = row
        return out

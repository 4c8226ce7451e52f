"""Math primitives of the SANA DiT as free functions.

Every public op has one dispatch point, `_kernel(name, *tensors)`: it returns the Triton kernel from
`sana.kernels` when one is installed, enabled and able to run on these tensors (CUDA, inference), and None
otherwise, in which case the PyTorch reference below runs (CPU, MPS, autograd, parity checks). The references
reproduce diffusers' arithmetic so that fp32 outputs match `SanaTransformer2DModel` to rounding.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import torch
import torch.nn.functional as F

LINEAR_ATTENTION_EPS = 1e-15  # diffusers' SanaLinearAttnProcessor2_0
FP16_MAX = 65504.0

# Kernels are opt-out: `set_kernels_enabled(False)` forces the references (for parity checks and debugging).
_kernels_enabled = True


def set_kernels_enabled(enabled: bool) -> None:
    global _kernels_enabled
    _kernels_enabled = enabled


def kernels_enabled() -> bool:
    return _kernels_enabled


# SANA-Video's temporal conv runs as cuDNN's channels-last implicit GEMM unless the Triton implicit GEMM is chosen
# (`set_temporal_conv_gemm(True)`, or SANA_TEMPORAL_CONV=triton in the environment): that kernel also adds y in its
# epilogue, but keeps a packed copy of each weight and has not yet been timed against cuDNN on a GPU.
_temporal_conv_gemm = os.environ.get("SANA_TEMPORAL_CONV", "").strip().lower() == "triton"


def set_temporal_conv_gemm(enabled: bool) -> None:
    global _temporal_conv_gemm
    _temporal_conv_gemm = enabled


# Cross-attention to the text runs through SDPA unless the Triton kernel is chosen (`set_text_attention_kernel(True)`,
# or SANA_TEXT_ATTENTION=triton): it reads and writes the token-major layout (no head transposes) but has not yet
# been timed against SDPA on a GPU.
_text_attention_kernel = os.environ.get("SANA_TEXT_ATTENTION", "").strip().lower() == "triton"


def set_text_attention_kernel(enabled: bool) -> None:
    global _text_attention_kernel
    _text_attention_kernel = enabled


# The block's linears that feed a residual add can run as one Triton GEMM with the add in its epilogue
# (`sana/kernels/linear_residual`): "residual" where the add stands alone (the self-attention's output), "all"
# also where a modulated norm reads the sum (then the norm runs as a pass of its own instead of fused with the
# add). Off unless chosen (`set_linear_residual_kernel`, or SANA_LINEAR_RESIDUAL=residual|all): it pays only where
# the Triton GEMM keeps up with cuBLAS's (`python -m sana.kernels.linear_residual.bench --sweep`).
LINEAR_RESIDUAL_MODES = ("off", "residual", "all")
_linear_residual_mode = os.environ.get("SANA_LINEAR_RESIDUAL", "").strip().lower() or "off"
if _linear_residual_mode not in LINEAR_RESIDUAL_MODES:
    _linear_residual_mode = "off"


def set_linear_residual_kernel(mode: str) -> None:
    if mode not in LINEAR_RESIDUAL_MODES:
        raise ValueError(f"linear residual mode must be one of {LINEAR_RESIDUAL_MODES}, got {mode!r}")
    global _linear_residual_mode
    _linear_residual_mode = mode


def linear_residual_mode() -> str:
    return _linear_residual_mode


def _kernel(name: str, *tensors: torch.Tensor):
    """The Triton implementation of op `name` if it may run on `tensors`, else None (use the reference)."""
    if not _kernels_enabled or torch.is_grad_enabled():
        return None  # the kernels are inference-only
    if not all(t.is_cuda for t in tensors):
        return None
    try:
        from . import kernels
    except ImportError:
        return None
    if not kernels.triton_available():
        return None
    return getattr(kernels, name, None)


# -- linear attention --------------------------------------------------------------------------------------

def linear_attention_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int,
                               eps: float = LINEAR_ATTENTION_EPS) -> torch.Tensor:
    """ReLU linear attention, computed in fp32 as diffusers does.

    q, k, v: [B, N, H*D] (token-major, as a fused qkv projection produces them; any strides). Returns
    [B, N, H*D] in q's dtype: out_i = (sum_j v_j relu(k_j)^T) relu(q_i) / (relu(q_i) . sum_j relu(k_j) + eps),
    per head. No softmax and no 1/sqrt(D) scale. diffusers gets the normaliser by padding v with a row of ones;
    a separate sum is the same arithmetic.
    """
    b, n, inner = q.shape
    d = inner // heads
    qf = F.relu(q.float()).reshape(b, n, heads, d)  # [B, N, H, D]
    kf = F.relu(k.float()).reshape(b, n, heads, d)  # [B, N, H, D]
    vf = v.float().reshape(b, n, heads, d)  # [B, N, H, D]
    kv = torch.einsum("bnhd,bnhe->bhde", kf, vf)  # [B, H, D, D]
    k_sum = kf.sum(dim=1)  # [B, H, D]
    numerator = torch.einsum("bnhd,bhde->bnhe", qf, kv)  # [B, N, H, D]
    denominator = torch.einsum("bnhd,bhd->bnh", qf, k_sum).unsqueeze(-1)  # [B, N, H, 1]
    out = (numerator / (denominator + eps)).reshape(b, n, inner)  # [B, N, H*D]
    return out.to(q.dtype)


def linear_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int,
                     eps: float = LINEAR_ATTENTION_EPS) -> torch.Tensor:
    """ReLU linear attention; q, k, v [B, N, H*D] -> [B, N, H*D]. See `linear_attention_reference`."""
    kernel = _kernel("linear_attention", q, k, v)
    if kernel is not None:
        return kernel(q, k, v, heads, eps)
    return linear_attention_reference(q, k, v, heads, eps)


def linear_attention_rope(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                          heads: int, eps: float = LINEAR_ATTENTION_EPS) -> torch.Tensor:
    """ReLU linear attention with RoPE on the numerator only (SANA-Video): q, k, v [B, N, H*D] (q, k before the
    ReLU), cos, sin [N, D] -> [B, N, H*D]. See `sana.kernels.linear_attention_rope.reference`."""
    kernel = _kernel("linear_attention_rope", q, k, v, cos, sin)
    if kernel is not None:
        return kernel(q, k, v, cos, sin, heads, eps)
    from .kernels.linear_attention_rope.reference import linear_attention_rope_reference

    return linear_attention_rope_reference(q, k, v, cos, sin, heads, eps)


def gdn_bidirectional(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, beta: torch.Tensor, decay: torch.Tensor,
                      q_plain: torch.Tensor | None = None, k_plain: torch.Tensor | None = None,
                      eps: float = 1e-8) -> torch.Tensor:
    """SANA-WM's bidirectional gated delta rule over frames: q, k, v [B, N, H, D] token-major (N = T * S),
    beta [B, N, H] per token, decay [B, T, H] per frame; q_plain, k_plain [B, N, H, D] for the normaliser stream
    (None: numerator only) -> [B, N, H, D] in v's dtype, fp32 inside. See `sana.kernels.gdn.reference`."""
    tensors = (q, k, v, beta, decay) + ((q_plain, k_plain) if q_plain is not None else ())
    kernel = _kernel("gdn_bidirectional", *tensors)
    if kernel is not None:
        return kernel(q, k, v, beta, decay, q_plain, k_plain, eps)
    from .kernels.gdn.reference import gdn_bidirectional_reference

    return gdn_bidirectional_reference(q, k, v, beta, decay, q_plain, k_plain, eps)


def short_conv(x: torch.Tensor, weight: torch.Tensor, frames: int) -> torch.Tensor:
    """SANA-WM's symmetric depthwise conv over frames: x [B, N, C] token-major (N = T * S), weight [C, 1, K] ->
    [B, N, C] in x's dtype. See `sana.kernels.short_conv.reference`."""
    kernel = _kernel("short_conv", x, weight)
    if kernel is not None:
        return kernel(x, weight, frames)
    from .kernels.short_conv.reference import short_conv_reference

    return short_conv_reference(x, weight, frames)


def ucpe(x: torch.Tensor, mats: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, *, inverse_rope: bool = False,
         downscale: bool = False, inflation: bool = False):
    """SANA-WM's camera transform of attention heads x [B, N, H, D] by per-token 4x4 matrices mats [B, N, 4, 4] and
    rotary angles cos/sin [N, D/4]; with `inflation` also the squared norm ratio [B, N, H, 1]. See
    `sana.kernels.ucpe.reference`."""
    kernel = _kernel("ucpe", x, mats, cos, sin)
    if kernel is not None:
        return kernel(x, mats, cos, sin, inverse_rope=inverse_rope, downscale=downscale, inflation=inflation)
    from .kernels.ucpe.reference import ucpe_reference

    return ucpe_reference(x, mats, cos, sin, inverse_rope=inverse_rope, downscale=downscale, inflation=inflation)


def qk_prep(x: torch.Tensor, weight: torch.Tensor, eps: float, heads: int, *, relu: bool = True, scale: float = 1.0,
            cos: torch.Tensor | None = None, sin: torch.Tensor | None = None):
    """SANA-WM's queries / keys: RMSNorm over the width, ReLU, a scale, and RoPE by angle tables cos/sin [N, D/2]:
    x [B, N, H*D] -> (plain [B, N, H, D], rotated [B, N, H, D] or None). See `sana.kernels.qk_prep.reference`."""
    tensors = (x, weight) if cos is None else (x, weight, cos, sin)
    kernel = _kernel("qk_prep", *tensors) if x.stride(-1) == 1 and weight.is_contiguous() else None
    if kernel is not None:
        return kernel(x, weight, eps, heads, relu=relu, scale=scale, cos=cos, sin=sin)
    from .kernels.qk_prep.reference import qk_prep_reference

    return qk_prep_reference(x, weight, eps, heads, relu=relu, scale=scale, cos=cos, sin=sin)


def silu_gate(x: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
    """SANA-WM's output gate: x * silu(gate) in fp32, rounded once to x's dtype (x, gate of one shape). See
    `sana.kernels.silu_gate.reference`."""
    kernel = _kernel("silu_gate", x, gate) if x.is_contiguous() and gate.is_contiguous() else None
    if kernel is not None:
        return kernel(x, gate)
    from .kernels.silu_gate.reference import silu_gate_reference

    return silu_gate_reference(x, gate)


def clip_fp16(x: torch.Tensor) -> torch.Tensor:
    """diffusers clips the self-attention output to the fp16 range, so an overflow stays finite."""
    return x.clip(-FP16_MAX, FP16_MAX) if x.dtype == torch.float16 else x


# -- normalisation and modulation --------------------------------------------------------------------------

def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN modulation: x [B, N, C], shift/scale [B, 1, C]."""
    return x * (1 + scale) + shift


def modulated_layer_norm_reference(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor,
                                   eps: float = 1e-6) -> torch.Tensor:
    """LayerNorm without affine, then adaLN modulation, in diffusers' order and dtypes; [B, N, C] in x's dtype.

    shift, scale: [B, 1, C] (a chunk of the [B, 6, C] modulation).
    """
    return modulate(F.layer_norm(x, x.shape[-1:], eps=eps), shift, scale).to(x.dtype)


def modulated_layer_norm(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """LN(x) * (1 + scale) + shift; x [B, N, C], shift/scale [B, 1, C] -> [B, N, C]."""
    kernel = _kernel("modulated_layer_norm", x, shift, scale)
    if kernel is not None:
        return kernel(x, shift, scale, eps)
    return modulated_layer_norm_reference(x, shift, scale, eps)


def gated_residual_modulated_norm_reference(x: torch.Tensor, gate: torch.Tensor | None, y: torch.Tensor,
                                            shift: torch.Tensor, scale: torch.Tensor, eps: float = 1e-6,
                                            y2: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(x + gate * y, the modulated LayerNorm of that sum); gate None means 1. diffusers' order and dtypes. With y2,
    the residual is `gated_residual(x, gate, y, y2)`'s reference (y + y2 rounded first)."""
    if gate is None:
        r = x + y
    else:  # as `gated_residual` rounds it, so fusing that pass with a norm changes no bit
        r = torch.addcmul(x, gate, y if y2 is None else y + y2)
    return r, modulated_layer_norm_reference(r, shift, scale, eps)


def gated_residual_modulated_norm(x: torch.Tensor, gate: torch.Tensor | None, y: torch.Tensor, shift: torch.Tensor,
                                  scale: torch.Tensor, eps: float = 1e-6,
                                  y2: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """A residual add fused with the modulated LayerNorm that reads its result: x, y [B, N, C]; gate, shift,
    scale [B, 1, C] (gate None: 1) -> (r, LN(r) * (1 + scale) + shift) with r = x + gate * y, or
    x + gate * (y + y2) with a second branch term y2 (a gate is then required)."""
    kernel = _kernel("gated_residual_modulated_norm", x, y, shift, scale, *(() if y2 is None else (y2,)))
    if kernel is not None:
        return kernel(x, gate, y, shift, scale, eps, y2=y2)
    return gated_residual_modulated_norm_reference(x, gate, y, shift, scale, eps, y2)


def modulated_layer_norm_fp8(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor,
                             eps: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor]:
    """`modulated_layer_norm` as an fp8 linear's input: (q [B, N, C] float8_e4m3fn, row scales [B, N] fp32), the
    row in x's dtype quantized as `fp8_linear` would quantize it. One pass on a GPU (the norm kernel's fp8 form)
    instead of writing the row and reading it back to quantize it."""
    kernel = _kernel("modulated_layer_norm_fp8", x, shift, scale)
    if kernel is not None:
        return kernel(x, shift, scale, eps)
    from .kernels.fp8.reference import quantize_fp8_rows_reference

    return quantize_fp8_rows_reference(modulated_layer_norm_reference(x, shift, scale, eps))


def gated_residual_modulated_norm_fp8(x: torch.Tensor, gate: torch.Tensor | None, y: torch.Tensor,
                                      shift: torch.Tensor, scale: torch.Tensor, eps: float = 1e-6,
                                      y2: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`gated_residual_modulated_norm` (y2 as there) with its norm written as an fp8 linear's input: (r, q, row
    scales)."""
    kernel = _kernel("gated_residual_modulated_norm_fp8", x, y, shift, scale, *(() if y2 is None else (y2,)))
    if kernel is not None:
        return kernel(x, gate, y, shift, scale, eps, y2=y2)
    from .kernels.fp8.reference import quantize_fp8_rows_reference

    r, h = gated_residual_modulated_norm_reference(x, gate, y, shift, scale, eps, y2)
    return (r, *quantize_fp8_rows_reference(h))


def gated_residual(x: torch.Tensor, gate: torch.Tensor, y: torch.Tensor, y2: torch.Tensor | None = None) -> torch.Tensor:
    """x + gate * y in one pass (x, y [B, N, C], gate [B, 1, C]), the math in fp32 rounded once. With y2 (another
    [B, N, C] branch term), x + gate * (y + y2): the kernel never writes the sum; the reference rounds it first,
    as diffusers does."""
    kernel = _kernel("gated_residual", x, gate, y, *(() if y2 is None else (y2,)))
    if kernel is not None:
        return kernel(x, gate, y, y2)
    return torch.addcmul(x, gate, y if y2 is None else y + y2)


def _fused_linear_residual(x: torch.Tensor, h: torch.Tensor, linear: torch.nn.Module, modes: tuple[str, ...]):
    """The fused GEMM for x + gate * linear(h) where it is chosen and may run: a plain bf16/fp32 linear (not fp8,
    not a LoRA wrapper), inference on CUDA; fp16 keeps diffusers' clip of the linear's output. Else None."""
    if _linear_residual_mode not in modes or type(linear) is not torch.nn.Linear:
        return None
    if x.dtype == torch.float16 or not (h.dtype == x.dtype == linear.weight.dtype):
        return None
    return _kernel("linear_gated_residual", x, h, linear.weight)


def linear_gated_residual(x: torch.Tensor, gate: torch.Tensor | None, h: torch.Tensor, linear: torch.nn.Module,
                          clip_output: bool = False) -> torch.Tensor:
    """x + gate * linear(h): x [B, N, D], h [B, N, K], gate [B, 1, D] or None (1). With the fused kernel chosen,
    one GEMM adds the residual in its epilogue (the linear's output unrounded); else the linear and
    `gated_residual`. clip_output: the linear's output clipped to fp16's range in fp16 first (diffusers does so
    for the self-attention's; the fused kernel never runs in fp16)."""
    kernel = _fused_linear_residual(x, h, linear, ("residual", "all"))
    if kernel is not None:
        return kernel(h, linear.weight, linear.bias, x, gate)
    y = linear(h)
    if clip_output:
        y = clip_fp16(y)
    return x + y if gate is None else gated_residual(x, gate, y)


def linear_gated_residual_modulated_norm(x: torch.Tensor, gate: torch.Tensor | None, h: torch.Tensor,
                                         linear: torch.nn.Module, shift: torch.Tensor, scale: torch.Tensor,
                                         eps: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor]:
    """`gated_residual_modulated_norm(x, gate, linear(h), shift, scale, eps)`; with the fused kernel chosen for
    "all", the residual add runs in the GEMM's epilogue and the norm in a pass of its own."""
    kernel = _fused_linear_residual(x, h, linear, ("all",))
    if kernel is not None:
        x = kernel(h, linear.weight, linear.bias, x, gate)
        return x, modulated_layer_norm(x, shift, scale, eps)
    return gated_residual_modulated_norm(x, gate, linear(h), shift, scale, eps)


def rms_norm(x: torch.Tensor, weight: torch.Tensor | None, eps: float) -> torch.Tensor:
    """RMSNorm over the last dim with diffusers' dtype rules (fp32 statistics; half weights cast back). With a
    weight, on CUDA: one Triton pass (fp32 math, one rounding) instead of seven elementwise kernels."""
    kernel = _kernel("rms_norm_affine", x, weight) if weight is not None and x.stride(-1) == 1 else None
    if kernel is not None and weight.dtype == x.dtype:
        try:
            return kernel(x, weight, None, eps)
        except ValueError:  # rows not evenly strided: the reference handles any layout
            pass
    input_dtype = x.dtype
    variance = x.to(torch.float32).pow(2).mean(-1, keepdim=True)
    x = x * torch.rsqrt(variance + eps)
    if weight is None:
        return x.to(input_dtype)
    if weight.dtype in (torch.float16, torch.bfloat16):
        x = x.to(weight.dtype)
    return x * weight


def rms_norm_affine_reference(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float,
                              residual: torch.Tensor | None = None) -> torch.Tensor:
    """RMSNorm over the last dim with weight and bias, then + residual: the DC-AE's norm. The mean square is taken
    in fp32 (as diffusers' RMSNorm does), the scaling in x's dtype, so no fp32 copy of x outlives the statistics."""
    squares = x.float().square_() if x.dtype in (torch.float16, torch.bfloat16) else x.square()
    scale = torch.rsqrt(squares.mean(dim=-1, keepdim=True).add_(eps)).to(x.dtype)  # [..., 1]
    del squares
    y = x * scale
    if torch.is_grad_enabled() and any(t.requires_grad for t in (y, weight, bias)):
        y = y * weight + bias
        return y + residual if residual is not None else y
    y = y.mul_(weight).add_(bias)
    return y.add_(residual) if residual is not None else y


def rms_norm_affine(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float,
                    residual: torch.Tensor | None = None) -> torch.Tensor:
    """x [..., C] -> RMSNorm(x) * weight + bias (+ residual). See `rms_norm_affine_reference`."""
    tensors = (x, weight, bias) if residual is None else (x, weight, bias, residual)
    kernel = _kernel("rms_norm_affine", *tensors)
    if kernel is not None:
        return kernel(x, weight, bias, eps, residual)
    return rms_norm_affine_reference(x, weight, bias, eps, residual)


# -- DC-AE up blocks ---------------------------------------------------------------------------------------

def assemble_phases(y: torch.Tensor, skip: torch.Tensor | None = None,
                    bias: torch.Tensor | None = None) -> torch.Tensor:
    """A nearest-upsampled 3x3 conv from its four 2x2 phase convs y [B, 4*Cout, h+1, w+1] (plus their bias [4*Cout]
    when the conv ran without it), plus the up block's shortcut of its input skip [B, Cin, h, w] (or None) ->
    [B, Cout, 2h, 2w] channels-last. See `sana.kernels.upsample.reference`."""
    tensors = tuple(t for t in (y, skip) if t is not None)
    channels_last = all(t.is_contiguous(memory_format=torch.channels_last) for t in tensors)
    kernel = _kernel("assemble_phases", *tensors) if channels_last else None
    if kernel is not None:
        return kernel(y, skip, bias)
    from .kernels.upsample.reference import assemble_phases_reference

    return assemble_phases_reference(y, skip, bias)


# -- DC-AE's multiscale projections ---------------------------------------------------------------------------

def multiscale_projection(x: torch.Tensor, height: int, width: int, dw_weight: torch.Tensor,
                          pw_weight: torch.Tensor) -> torch.Tensor:
    """x [B, H*W, C] token-major -> the depthwise kxk conv dw_weight [C, 1, k, k] then the 1x1 conv pw_weight
    [C, D, 1, 1] within each run of D channels, [B, H*W, C]. See `sana.kernels.multiscale.reference`."""
    d = pw_weight.shape[1]
    fits = (d >= 16 and not d & (d - 1) and dw_weight.dtype == pw_weight.dtype == x.dtype and x.stride(-1) == 1
            and dw_weight.is_contiguous() and pw_weight.is_contiguous())
    kernel = _kernel("multiscale_projection", x, dw_weight, pw_weight) if fits else None
    if kernel is not None:
        return kernel(x, height, width, dw_weight, pw_weight)
    from .kernels.multiscale.reference import multiscale_projection_reference

    return multiscale_projection_reference(x, height, width, dw_weight, pw_weight)


# -- a conv's bias with what follows it --------------------------------------------------------------------

BIAS_ACTIVATIONS = (None, "silu", "swish", "relu")  # what `bias_activation` applies


def defers_conv_bias(x: torch.Tensor) -> bool:
    """Whether a conv of x should run without its bias, leaving it to the Triton pass after it (`bias_activation`,
    `assemble_phases`): PyTorch's cuDNN conv adds a bias in a pass of its own. True where those kernels run on x
    (CUDA, inference, channels-last memory)."""
    return x.is_contiguous(memory_format=torch.channels_last) and _kernel("bias_activation", x) is not None


def bias_activation(x: torch.Tensor, bias: torch.Tensor, act: str | None) -> torch.Tensor:
    """act(x + bias) for a conv output x [B, C, H, W] that ran without its bias [C]; in place on CUDA (one pass),
    a new tensor otherwise. See `sana.kernels.bias_act.reference`."""
    fits = x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and act in BIAS_ACTIVATIONS
    kernel = _kernel("bias_activation", x, bias) if fits else None
    if kernel is not None:
        return kernel(x, bias, act)
    from .kernels.bias_act.reference import bias_activation_reference

    return bias_activation_reference(x, bias, act)


# -- Mix-FFN ----------------------------------------------------------------------------------------------

def mixffn_middle_reference(h: torch.Tensor, height: int, width: int, dw_weight: torch.Tensor,
                            dw_bias: torch.Tensor) -> torch.Tensor:
    """GLUMBConv between its two 1x1 convs: SiLU, depthwise 3x3 (+bias, zero padding), split, x * silu(gate).

    h: [B, N, 2*Hd] token-major (N = height * width, row-major), before the SiLU; dw_weight [2*Hd, 1, 3, 3].
    Returns [B, N, Hd]. The first half of the channels is the value, the second the gate, as in diffusers.
    """
    b, n, c2 = h.shape
    x = F.silu(h).transpose(1, 2).reshape(b, c2, height, width)  # [B, 2Hd, H, W]
    x = F.conv2d(x, dw_weight, dw_bias, padding=1, groups=c2)
    x, gate = x.chunk(2, dim=1)  # [B, Hd, H, W] each
    x = x * F.silu(gate)
    return x.flatten(2).transpose(1, 2)  # [B, N, Hd]


def mixffn_middle(h: torch.Tensor, height: int, width: int, dw_weight: torch.Tensor,
                  dw_bias: torch.Tensor) -> torch.Tensor:
    """[B, N, 2*Hd] -> [B, N, Hd]. See `mixffn_middle_reference`."""
    kernel = _kernel("mixffn_middle", h, dw_weight)
    if kernel is not None:
        return kernel(h, height, width, dw_weight, dw_bias)
    return mixffn_middle_reference(h, height, width, dw_weight, dw_bias)


# -- cross-attention to the text ------------------------------------------------------------------------------

def text_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int,
                   mask: torch.Tensor | None = None) -> torch.Tensor:
    """q [B, N, H*D] token-major, k and v [B, H, L, D], mask (additive float or boolean, broadcastable to
    [B, 1, 1, L]) -> [B, N, H*D]: softmax attention per head, as `sana.kernels.text_attention.reference`."""
    kernel = _kernel("text_attention", q, k, v) if _text_attention_kernel else None
    if kernel is not None:
        return kernel(q, k, v, heads, mask)
    from .kernels.text_attention.reference import text_attention_reference

    return text_attention_reference(q, k, v, heads, mask)


# -- SANA-Video's temporal conv ------------------------------------------------------------------------------

def temporal_conv(y: torch.Tensor, weight: torch.Tensor, tokens_per_frame: int) -> torch.Tensor:
    """Conv2d(kernel (3, 1), padding (1, 0), no bias) over frames on token-major y [B, F*S, C] -> [B, F*S, C_out];
    see `sana.kernels.temporal_conv.reference`."""
    from .kernels.temporal_conv.reference import temporal_conv_reference

    return temporal_conv_reference(y, weight, tokens_per_frame)


def temporal_conv_plus_input(y: torch.Tensor, weight: torch.Tensor, tokens_per_frame: int,
                             packed: Callable[[], torch.Tensor]) -> torch.Tensor | None:
    """y + conv(y) from the Triton implicit GEMM, where it is chosen and can run (else None: the caller adds the two
    terms in its own pass). `packed()` gives the weight in the kernel's layout, made once by the caller."""
    kernel = _kernel("temporal_conv", y, weight) if _temporal_conv_gemm else None
    if kernel is None:
        return None
    return kernel(y, weight, tokens_per_frame, add_input=True, packed=packed())


# -- fp8 linears -------------------------------------------------------------------------------------------

def fp8_supported(device: torch.device) -> bool:
    """cuBLAS's fp8 GEMM with rowwise scales needs an NVIDIA GPU of compute capability 8.9+ (Ada, Hopper)."""
    return device.type == "cuda" and torch.cuda.get_device_capability(device) >= (8, 9)


def fp8_linear(x: torch.Tensor, weight_fp8: torch.Tensor, weight_scale: torch.Tensor,
               bias: torch.Tensor | None) -> torch.Tensor:
    """x [..., K] -> [..., N]: x quantized to fp8 per row, times an fp8 weight [N, K] with per-row scales [N].

    On a GPU that has fp8 GEMMs, with bf16 activations: the Triton quantizer and `torch._scaled_mm`; elsewhere
    the reference, the same quantization with the product in fp32. See `sana.kernels.fp8.reference`.
    """
    n, k = weight_fp8.shape
    tensors = (x, weight_fp8, weight_scale) if bias is None else (x, weight_fp8, weight_scale, bias)
    kernel = _kernel("fp8_linear", *tensors)
    if (kernel is not None and x.dtype == torch.bfloat16 and k % 16 == 0 and n % 16 == 0
            and (bias is None or bias.dtype == torch.bfloat16) and fp8_supported(x.device)):
        return kernel(x.contiguous(), weight_fp8, weight_scale, bias)
    from .kernels.fp8.reference import fp8_linear_reference

    return fp8_linear_reference(x, weight_fp8, weight_scale, bias)


def fp8_linear_quantized(q: torch.Tensor, scale: torch.Tensor, weight_fp8: torch.Tensor, weight_scale: torch.Tensor,
                         bias: torch.Tensor | None, out_dtype: torch.dtype) -> torch.Tensor:
    """`fp8_linear` for activations already quantized per row (q [..., K] float8_e4m3fn, scale [...]) -> [..., N] in
    `out_dtype`: `torch._scaled_mm` where `fp8_linear` would use it, else the reference product."""
    n, k = weight_fp8.shape
    tensors = (q, scale, weight_fp8, weight_scale) if bias is None else (q, scale, weight_fp8, weight_scale, bias)
    kernel = _kernel("fp8_linear_quantized", *tensors)
    if (kernel is not None and out_dtype == torch.bfloat16 and k % 16 == 0 and n % 16 == 0
            and (bias is None or bias.dtype == torch.bfloat16) and fp8_supported(q.device)):
        return kernel(q.contiguous(), scale, weight_fp8, weight_scale, bias)
    from .kernels.fp8.reference import fp8_linear_quantized_reference

    return fp8_linear_quantized_reference(q, scale, weight_fp8, weight_scale, bias, out_dtype)

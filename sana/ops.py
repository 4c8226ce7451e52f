"""Math primitives of the SANA DiT as free functions.

Every public op has one dispatch point, `_kernel(name, *tensors)`: it returns the Triton kernel from
`sana.kernels` when one is installed, enabled and able to run on these tensors (CUDA, inference), and None
otherwise, in which case the PyTorch reference below runs (CPU, MPS, autograd, parity checks). The references
reproduce diffusers' arithmetic so that fp32 outputs match `SanaTransformer2DModel` to rounding.
"""

from __future__ import annotations

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


def rms_norm(x: torch.Tensor, weight: torch.Tensor | None, eps: float) -> torch.Tensor:
    """RMSNorm over the last dim with diffusers' dtype rules (fp32 statistics; half weights cast back)."""
    input_dtype = x.dtype
    variance = x.to(torch.float32).pow(2).mean(-1, keepdim=True)
    x = x * torch.rsqrt(variance + eps)
    if weight is None:
        return x.to(input_dtype)
    if weight.dtype in (torch.float16, torch.bfloat16):
        x = x.to(weight.dtype)
    return x * weight


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

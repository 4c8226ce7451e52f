"""Math primitives of the SANA DiT as free functions.

Each op has one dispatch point: a Triton kernel on CUDA when one is registered and enabled, the PyTorch
reference everywhere else (CPU, MPS, and autograd). The references reproduce diffusers' arithmetic.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

LINEAR_ATTENTION_EPS = 1e-15
FP16_MAX = 65504.0

# Kernels are opt-out: `set_kernels_enabled(False)` forces the references (for parity checks and debugging).
_kernels_enabled = True


def set_kernels_enabled(enabled: bool) -> None:
    global _kernels_enabled
    _kernels_enabled = enabled


def _use_kernels(*tensors: torch.Tensor) -> bool:
    if not _kernels_enabled or torch.is_grad_enabled():
        return False
    if not all(t.is_cuda for t in tensors):
        return False
    try:
        from .kernels import triton_available
    except ImportError:
        return False
    return triton_available()


# -- linear attention --------------------------------------------------------------------------------------

def linear_attention_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int,
                               eps: float = LINEAR_ATTENTION_EPS) -> torch.Tensor:
    """ReLU linear attention, computed in fp32 as diffusers does.

    q, k, v: [B, N, H*D] (token-major, as a fused qkv projection produces them). Returns [B, N, H*D] in q's dtype:
    out_i = relu(q_i) (sum_j relu(k_j)^T v_j) / (relu(q_i) . sum_j relu(k_j) + eps), per head.
    """
    b, n, inner = q.shape
    d = inner // heads
    qf = F.relu(q.float()).view(b, n, heads, d)  # [B, N, H, D]
    kf = F.relu(k.float()).view(b, n, heads, d)
    vf = v.float().view(b, n, heads, d)
    kv = torch.einsum("bnhd,bnhe->bhde", kf, vf)  # [B, H, D, D]
    k_sum = kf.sum(dim=1)  # [B, H, D]
    numerator = torch.einsum("bnhd,bhde->bnhe", qf, kv)  # [B, N, H, D]
    denominator = torch.einsum("bnhd,bhd->bnh", qf, k_sum).unsqueeze(-1)  # [B, N, H, 1]
    out = (numerator / (denominator + eps)).reshape(b, n, inner)
    return out.to(q.dtype)


def linear_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int,
                     eps: float = LINEAR_ATTENTION_EPS) -> torch.Tensor:
    """ReLU linear attention; q, k, v [B, N, H*D] -> [B, N, H*D]. See `linear_attention_reference`."""
    if _use_kernels(q, k, v):
        from .kernels import linear_attention as kernel

        return kernel(q, k, v, heads, eps)
    return linear_attention_reference(q, k, v, heads, eps)


# -- normalisation and modulation --------------------------------------------------------------------------

def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN modulation: x [B, N, C], shift/scale [B, 1, C]."""
    return x * (1 + scale) + shift


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
    """GLUMBConv between its two 1x1 convs: SiLU, depthwise 3x3 (+bias), split, x * silu(gate).

    h: [B, N, 2*Hd] token-major (N = height * width, row-major), before the SiLU. Returns [B, N, Hd].
    """
    b, n, c2 = h.shape
    x = F.silu(h).transpose(1, 2).reshape(b, c2, height, width)  # [B, 2Hd, H, W]
    x = F.conv2d(x, dw_weight, dw_bias, padding=1, groups=c2)
    x, gate = x.chunk(2, dim=1)
    x = x * F.silu(gate)
    return x.flatten(2).transpose(1, 2)  # [B, N, Hd]


def mixffn_middle(h: torch.Tensor, height: int, width: int, dw_weight: torch.Tensor,
                  dw_bias: torch.Tensor) -> torch.Tensor:
    if _use_kernels(h, dw_weight):
        from .kernels import mixffn_middle as kernel

        return kernel(h, height, width, dw_weight, dw_bias)
    return mixffn_middle_reference(h, height, width, dw_weight, dw_bias)

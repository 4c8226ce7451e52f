"""DC-AE's multiscale projection as one Triton pass over token-major activations.

In the decoder's EfficientViT blocks each q/k/v scale is a depthwise 5x5 conv followed by a 1x1 conv within each
head's 32 channels. Run as two cuDNN convs, the depthwise output goes to memory and back, and each conv shape costs
cuDNN an execution plan the first time a process decodes at a size (the first decode of a process spent 1.3-1.9 s
building its convs' plans on an H100; these are 6 of its ~16 conv shapes). Here a program takes a TILE_H x TILE_W tile of pixels and one group of D channels: it sums
the k x k taps in fp32 (neighbouring tiles' rows come from L1/L2), rounds the result to the input's dtype as the
depthwise conv's output is, multiplies it by the group's [D, D] weight on the tensor cores and writes [tile, D]
once.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._common import check_device, check_float

TILE_H, TILE_W = 8, 8


@triton.jit
def _multiscale_kernel(x_ptr, dw_ptr, pw_ptr, out_ptr, HEIGHT, WIDTH, sxb, sxn, sob, son,
                       K: tl.constexpr, D: tl.constexpr, TILE_H: tl.constexpr, TILE_W: tl.constexpr,
                       IEEE: tl.constexpr):
    pid = tl.program_id(0)
    g = tl.program_id(1)
    b = tl.program_id(2).to(tl.int64)
    tiles_w = tl.cdiv(WIDTH, TILE_W)
    i = tl.arange(0, TILE_H * TILE_W)
    ys = (pid // tiles_w) * TILE_H + i // TILE_W
    xs = (pid % tiles_w) * TILE_W + i % TILE_W
    ch = g * D + tl.arange(0, D)
    x_img = x_ptr + b * sxb
    acc = tl.zeros((TILE_H * TILE_W, D), dtype=tl.float32)
    for dy in tl.static_range(K):
        for dx in tl.static_range(K):
            yy = ys + (dy - K // 2)
            xx = xs + (dx - K // 2)
            ok = (yy >= 0) & (yy < HEIGHT) & (xx >= 0) & (xx < WIDTH)
            v = tl.load(x_img + (yy * WIDTH + xx).to(tl.int64)[:, None] * sxn + ch[None, :], mask=ok[:, None],
                        other=0.0)
            w = tl.load(dw_ptr + ch * (K * K) + (dy * K + dx))
            acc += v.to(tl.float32) * w.to(tl.float32)[None, :]
    mid = acc.to(x_ptr.dtype.element_ty)  # the depthwise conv's output, rounded as cuDNN writes it
    pw = tl.load(pw_ptr + ch[:, None] * D + tl.arange(0, D)[None, :])  # [D out, D in] of group g
    if IEEE:
        out = tl.dot(mid, tl.trans(pw), input_precision="ieee")
    else:
        out = tl.dot(mid, tl.trans(pw))
    inside = (ys < HEIGHT) & (xs < WIDTH)
    tl.store(out_ptr + b * sob + (ys * WIDTH + xs).to(tl.int64)[:, None] * son + ch[None, :],
             out.to(out_ptr.dtype.element_ty), mask=inside[:, None])


def multiscale_projection(x: torch.Tensor, height: int, width: int, dw_weight: torch.Tensor,
                          pw_weight: torch.Tensor) -> torch.Tensor:
    """The depthwise kxk conv then the grouped 1x1 conv, fused; the spec is
    `reference.multiscale_projection_reference`.

    Args:
        x: [B, H*W, C] token-major (any batch and token strides; the channels contiguous).
        height, width: the image's grid (H*W tokens).
        dw_weight: [C, 1, k, k], k odd. pw_weight: [C, D, 1, 1], D a power of two >= 16 dividing C. Both in x's
            dtype and contiguous.

    Returns:
        A contiguous [B, H*W, C] tensor of x's dtype.
    """
    name = "multiscale_projection"
    if x.dim() != 3 or x.shape[1] != height * width or x.stride(-1) != 1:
        raise ValueError(f"{name}: x must be [B, {height}*{width}, C] with contiguous channels, got {tuple(x.shape)}")
    b, n, c = x.shape
    k, d = dw_weight.shape[-1], pw_weight.shape[1]
    if tuple(dw_weight.shape) != (c, 1, k, k) or k % 2 == 0:
        raise ValueError(f"{name}: dw_weight must be [{c}, 1, k, k] with k odd, got {tuple(dw_weight.shape)}")
    if tuple(pw_weight.shape) != (c, d, 1, 1) or c % d or d < 16 or d & (d - 1):
        raise ValueError(f"{name}: pw_weight must be [{c}, D, 1, 1] with D a power of two >= 16 dividing {c}, got "
                         f"{tuple(pw_weight.shape)}")
    check_float(name, "x", x)
    if dw_weight.dtype != x.dtype or pw_weight.dtype != x.dtype:
        raise ValueError(f"{name}: the weights must be in x's dtype {x.dtype}")
    if not (dw_weight.is_contiguous() and pw_weight.is_contiguous()):
        raise ValueError(f"{name}: the weights must be contiguous")
    check_device(name, x, dw_weight, pw_weight)
    out = torch.empty(b, n, c, device=x.device, dtype=x.dtype)
    if n and b:
        grid = (triton.cdiv(height, TILE_H) * triton.cdiv(width, TILE_W), c // d, b)
        _multiscale_kernel[grid](x, dw_weight, pw_weight, out, height, width, x.stride(0), x.stride(1),
                                 out.stride(0), out.stride(1), K=k, D=d, TILE_H=TILE_H, TILE_W=TILE_W,
                                 IEEE=x.dtype == torch.float32, num_warps=4)
    return out

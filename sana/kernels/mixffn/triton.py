"""GLUMBConv's middle (SiLU -> depthwise 3x3 + bias -> x * silu(gate)) as one Triton kernel, token-major.

Grid (row chunks x width tiles, channel blocks, B). Each program owns a [BLOCK_W tokens, BLOCK_C channels]
strip of ROWS image rows and walks down the input rows once: every input row is loaded at the three
horizontal offsets, passed through SiLU, and its three kernel rows are added into two rolling accumulators
(the output rows below and at it) while the output row above it is finished and written. Each input
element thus costs three SiLUs instead of nine, and no NCHW copy, SiLU'd copy or conv output ever reaches
memory. The value channel c and its gate channel c + Hd are handled by the same program.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._common import check_device, check_float, check_last_dim_contiguous, interpreting

# -- kernel -------------------------------------------------------------------------------------------------


@triton.jit
def _silu(x, FAST: tl.constexpr):
    if FAST:
        # x * sigmoid(x) = x/2 * (1 + tanh(x/2)) on one MUFU instruction (tanh.approx, ~2^-11 relative error, far
        # below bf16/fp16 output rounding) instead of an exp and an IEEE division: the SiLUs bound this kernel.
        t = tl.inline_asm_elementwise("tanh.approx.f32 $0, $1;", "=f,f", [x * 0.5], dtype=tl.float32,
                                      is_pure=True, pack=1)
        return 0.5 * x * (1.0 + t)
    return x * tl.sigmoid(x)


@triton.jit
def _mixffn_middle_kernel(
    h_ptr, w_ptr, bias_ptr, out_ptr,
    HEIGHT, WIDTH, HD,
    stride_hb, stride_hn, stride_ob, stride_on,
    ROWS: tl.constexpr, BLOCK_W: tl.constexpr, BLOCK_C: tl.constexpr, FAST_SILU: tl.constexpr,
):
    pid = tl.program_id(0)
    pid_c = tl.program_id(1)
    b = tl.program_id(2)
    w_tiles = tl.cdiv(WIDTH, BLOCK_W)
    r0 = (pid // w_tiles) * ROWS
    r_end = tl.minimum(r0 + ROWS, HEIGHT)
    cols = (pid % w_tiles) * BLOCK_W + tl.arange(0, BLOCK_W)
    ch = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    c_ok = ch < HD
    h_img = h_ptr + b.to(tl.int64) * stride_hb
    o_img = out_ptr + b.to(tl.int64) * stride_ob

    zeros = tl.zeros((BLOCK_W, BLOCK_C), dtype=tl.float32)
    # Partial conv sums for output rows r and r + 1 (value and gate halves).
    acc_v, acc_g = zeros, zeros
    next_v, next_g = zeros, zeros
    for r in range(r0 - 1, r_end + 1):
        top_v, mid_v, bot_v = zeros, zeros, zeros
        top_g, mid_g, bot_g = zeros, zeros, zeros
        # Row conditions as [BLOCK_W] vectors: scalar comparisons mixed into masks misbehave in the interpreter.
        in_row = cols * 0 + r
        row_ok = (in_row >= 0) & (in_row < HEIGHT)
        for kx in tl.static_range(3):
            cin = cols + (kx - 1)
            # Out-of-image taps load 0 and silu(0) = 0: the conv's zero padding.
            mask = (row_ok & (cin >= 0) & (cin < WIDTH))[:, None] & c_ok[None, :]
            ptrs = h_img + (r * WIDTH + cin)[:, None] * stride_hn + ch[None, :]
            a_v = _silu(tl.load(ptrs, mask=mask, other=0.0).to(tl.float32), FAST_SILU)
            a_g = _silu(tl.load(ptrs + HD, mask=mask, other=0.0).to(tl.float32), FAST_SILU)
            # dw_weight [2Hd, 1, 3, 3] contiguous: channel c, kernel row ky, column kx at c*9 + ky*3 + kx.
            w_v = w_ptr + ch * 9 + kx
            w_g = w_ptr + (ch + HD) * 9 + kx
            top_v += a_v * tl.load(w_v, mask=c_ok, other=0.0).to(tl.float32)[None, :]
            mid_v += a_v * tl.load(w_v + 3, mask=c_ok, other=0.0).to(tl.float32)[None, :]
            bot_v += a_v * tl.load(w_v + 6, mask=c_ok, other=0.0).to(tl.float32)[None, :]
            top_g += a_g * tl.load(w_g, mask=c_ok, other=0.0).to(tl.float32)[None, :]
            mid_g += a_g * tl.load(w_g + 3, mask=c_ok, other=0.0).to(tl.float32)[None, :]
            bot_g += a_g * tl.load(w_g + 6, mask=c_ok, other=0.0).to(tl.float32)[None, :]
        # Input row r is the bottom kernel row of output row r - 1: that row is now complete.
        done_v = acc_v + bot_v
        done_g = acc_g + bot_g
        out_row = r - 1
        out_mask = ((in_row - 1 >= r0) & (cols < WIDTH))[:, None] & c_ok[None, :]
        bias_v = tl.load(bias_ptr + ch, mask=c_ok, other=0.0).to(tl.float32)[None, :]
        bias_g = tl.load(bias_ptr + HD + ch, mask=c_ok, other=0.0).to(tl.float32)[None, :]
        out = (done_v + bias_v) * _silu(done_g + bias_g, FAST_SILU)
        tl.store(o_img + (out_row * WIDTH + cols)[:, None] * stride_on + ch[None, :],
                 out.to(out_ptr.dtype.element_ty), mask=out_mask)
        acc_v, acc_g = next_v + mid_v, next_g + mid_g
        next_v, next_g = top_v, top_g


# -- launcher -----------------------------------------------------------------------------------------------

# From a sweep on an H100 (bf16, 1.6B at 4096 px): 32 rows per program halve the halo re-reads of 16, and
# narrow 16-token tiles keep the six live [BLOCK_W, BLOCK_C] fp32 accumulators in registers.
_ROWS = 32
_BLOCK_W = 16
_BLOCK_C = 32


def _launch(h, height, width, dw_weight, dw_bias, out):
    b, _, c2 = h.shape
    hd = c2 // 2
    block_w = min(_BLOCK_W, triton.next_power_of_2(width))
    grid = (triton.cdiv(height, _ROWS) * triton.cdiv(width, block_w), triton.cdiv(hd, _BLOCK_C), b)
    _mixffn_middle_kernel[grid](
        h, dw_weight, dw_bias, out,
        height, width, hd,
        h.stride(0), h.stride(1), out.stride(0), out.stride(1),
        ROWS=_ROWS, BLOCK_W=block_w, BLOCK_C=_BLOCK_C, num_warps=4,
        # The approximate SiLU for half-precision outputs on the GPU (the interpreter has no PTX; fp32 stays exact).
        FAST_SILU=h.dtype != torch.float32 and not interpreting(),
    )


# -- public function ----------------------------------------------------------------------------------------


def mixffn_middle(h: torch.Tensor, height: int, width: int, dw_weight: torch.Tensor,
                  dw_bias: torch.Tensor) -> torch.Tensor:
    """SiLU -> depthwise 3x3 conv (+bias, zero padding) -> x * silu(gate), fused on token-major activations.

    Spec: `reference.mixffn_middle_reference` (diffusers' GLUMBConv between conv_inverted and conv_point).

    Args:
        h: [B, N, 2*Hd], N = height * width tokens row-major over (height, width); the conv_inverted output
            before its SiLU. Last dim contiguous.
        height, width: the latent grid.
        dw_weight: [2*Hd, 1, 3, 3] depthwise weights (conv_depth.weight). dw_bias: [2*Hd].

    Returns:
        [B, N, Hd] contiguous in h's dtype; channels [:Hd] of the conv are the values, [Hd:] the gates.
        All arithmetic in fp32, rounded once.
    """
    name = "mixffn_middle"
    if h.dim() != 3:
        raise ValueError(f"{name}: h must be [B, N, 2*Hd], got {tuple(h.shape)}")
    b, n, c2 = h.shape
    if height <= 0 or width <= 0 or height * width != n:
        raise ValueError(f"{name}: height * width = {height} * {width} must equal N = {n}")
    if c2 % 2:
        raise ValueError(f"{name}: channel count {c2} must be even (values and gates)")
    if tuple(dw_weight.shape) != (c2, 1, 3, 3):
        raise ValueError(f"{name}: dw_weight must be [{c2}, 1, 3, 3], got {tuple(dw_weight.shape)}")
    if tuple(dw_bias.shape) != (c2,):
        raise ValueError(f"{name}: dw_bias must be [{c2}], got {tuple(dw_bias.shape)}")
    for arg, t in (("h", h), ("dw_weight", dw_weight), ("dw_bias", dw_bias)):
        check_float(name, arg, t)
    check_last_dim_contiguous(name, "h", h)
    check_device(name, h, dw_weight, dw_bias)
    # Parameters are tiny; a contiguous copy (a no-op for nn.Conv2d weights) makes the c*9 indexing valid.
    dw_weight = dw_weight.contiguous()
    dw_bias = dw_bias.contiguous()
    out = torch.empty((b, n, c2 // 2), device=h.device, dtype=h.dtype)
    if out.numel():
        _launch(h, height, width, dw_weight, dw_bias, out)
    return out

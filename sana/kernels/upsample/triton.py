"""The DC-AE up block's phase assembly as one Triton kernel over channels-last memory.

Grid (B x output rows, column blocks, channel blocks). Each program writes a [BLOCK_X pixels, BLOCK_C channels]
piece of one output row: a pixel's phase is its (row, column) parity, so adjacent pixels read their values from
two interleaved phase channel groups of the conv output, and the shortcut channels from the low-resolution input.
One read of each and one write, against four strided copies and adds (with 64-bit index splits) in PyTorch.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._common import check_device, check_float

# -- kernel -------------------------------------------------------------------------------------------------


@triton.jit
def _assemble_phases_kernel(
    y_ptr, skip_ptr, bias_ptr, out_ptr,
    H, W, COUT, CIN, REPEATS,
    stride_yb, stride_sb, stride_ob,
    HAS_SKIP: tl.constexpr, HAS_BIAS: tl.constexpr, BLOCK_X: tl.constexpr, BLOCK_C: tl.constexpr,
):
    pid_row = tl.program_id(0)
    b = pid_row // (2 * H)
    row = pid_row % (2 * H)  # output row 2i + a
    i = row // 2
    a = row % 2
    xs = tl.program_id(1) * BLOCK_X + tl.arange(0, BLOCK_X)  # output columns 2j + c
    ch = tl.program_id(2) * BLOCK_C + tl.arange(0, BLOCK_C)
    x_ok = xs < 2 * W
    c_ok = ch < COUT
    mask = x_ok[:, None] & c_ok[None, :]
    j = xs // 2
    col = xs % 2
    phase = 2 * a + col  # [BLOCK_X]
    # Conv output position (i + a, j + col) of a (h + 1) x (w + 1) grid, channel phase * Cout + c.
    y_pos = (i + a) * (W + 1) + j + col
    y_offs = y_pos.to(tl.int64)[:, None] * (4 * COUT) + (phase * COUT)[:, None] + ch[None, :]
    val = tl.load(y_ptr + b.to(tl.int64) * stride_yb + y_offs, mask=mask, other=0.0)
    if HAS_BIAS:  # the phase conv's bias (per y channel), summed in fp32 with the shortcut, rounded once
        val = val.to(tl.float32) + tl.load(bias_ptr + (phase * COUT)[:, None] + ch[None, :], mask=mask,
                                           other=0.0).to(tl.float32)
    if HAS_SKIP:
        src_ch = (4 * ch[None, :] + phase[:, None]) // REPEATS
        s_offs = (i * W + j).to(tl.int64)[:, None] * CIN + src_ch
        val += tl.load(skip_ptr + b.to(tl.int64) * stride_sb + s_offs, mask=mask, other=0.0)
    o_offs = (row * 2 * W + xs).to(tl.int64)[:, None] * COUT + ch[None, :]
    tl.store(out_ptr + b.to(tl.int64) * stride_ob + o_offs, val.to(out_ptr.dtype.element_ty), mask=mask)


# -- launcher -----------------------------------------------------------------------------------------------

_BLOCK_X = 32
_BLOCK_C = 64


def _channels_last(name: str, arg: str, t: torch.Tensor) -> None:
    check_float(name, arg, t)
    if t.dim() != 4 or not t.is_contiguous(memory_format=torch.channels_last):
        raise ValueError(f"{name}: {arg} must be a channels-last [B, C, H, W] tensor, got shape {tuple(t.shape)} "
                         f"strides {tuple(t.stride())}")


def assemble_phases(y: torch.Tensor, skip: torch.Tensor | None = None,
                    bias: torch.Tensor | None = None) -> torch.Tensor:
    """Four phase convs -> the upsampled conv's output (+ its bias, + the up block's shortcut), fused.

    Spec: `reference.assemble_phases_reference`.

    Args:
        y: [B, 4 * Cout, h + 1, w + 1] channels-last, the 2x2 phase convs (padding 1) of the input.
        skip: None or the block's input [B, Cin, h, w] channels-last in y's dtype, 4 * Cout a multiple of Cin.
        bias: None or the phase conv's bias [4 * Cout], for a conv run without it (one pass fewer over y).

    Returns:
        [B, Cout, 2h, 2w] channels-last in y's dtype.
    """
    name = "assemble_phases"
    _channels_last(name, "y", y)
    b, c4, h1, w1 = y.shape
    if c4 % 4 or h1 < 2 or w1 < 2:
        raise ValueError(f"{name}: y must be [B, 4 * Cout, h + 1, w + 1] with h, w >= 1, got {tuple(y.shape)}")
    cout, h, w = c4 // 4, h1 - 1, w1 - 1
    repeats, cin = 1, 1
    if skip is not None:
        _channels_last(name, "skip", skip)
        cin = skip.shape[1]
        if tuple(skip.shape) != (b, cin, h, w) or (4 * cout) % cin or skip.dtype != y.dtype:
            raise ValueError(f"{name}: skip must be [{b}, Cin, {h}, {w}] in {y.dtype} with Cin dividing "
                             f"{4 * cout}, got {tuple(skip.shape)} {skip.dtype}")
        repeats = 4 * cout // cin
        check_device(name, y, skip)
    else:
        check_device(name, y)
    if bias is not None:
        check_float(name, "bias", bias)
        if bias.shape != (4 * cout,) or not bias.is_contiguous():
            raise ValueError(f"{name}: bias must be a contiguous [{4 * cout}], got {tuple(bias.shape)}")
        check_device(name, y, bias)
    out = torch.empty(b, cout, 2 * h, 2 * w, device=y.device, dtype=y.dtype, memory_format=torch.channels_last)
    block_c = min(_BLOCK_C, triton.next_power_of_2(cout))
    grid = (b * 2 * h, triton.cdiv(2 * w, _BLOCK_X), triton.cdiv(cout, block_c))
    _assemble_phases_kernel[grid](
        y, skip if skip is not None else y, bias if bias is not None else y, out,
        h, w, cout, cin, repeats,
        y.stride(0), skip.stride(0) if skip is not None else 0, out.stride(0),
        HAS_SKIP=skip is not None, HAS_BIAS=bias is not None, BLOCK_X=_BLOCK_X, BLOCK_C=block_c, num_warps=4,
    )
    return out

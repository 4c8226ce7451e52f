"""GLUMBConv's middle (SiLU -> depthwise 3x3 + bias -> x * silu(gate)) as one Triton kernel, token-major.

Grid (row chunks x column tiles, channel blocks, B). A column tile is four interleaved phases: column 4j + p is
phase p's element j. Each program walks down ROWS image rows once; every input row is loaded as the four phases
plus the column left of phase 0 and the column right of phase 3, each passed through SiLU once, so the three
horizontal taps of every output column are sums of tensors already in registers (1.5 SiLUs and 1.5 loads an
input, against 3 and 3 for taps loaded at three offsets). The three kernel rows go into two rolling accumulators
(the output rows at and below it) while the output row above it is finished and written. No NCHW copy, SiLU'd
copy or conv output ever reaches memory. The value channel c and its gate channel c + Hd are handled by the same
program. Measured on an H200 (BENCHMARKS.md): 1.9-2.4x the three-offset kernel at SANA and SANA-Video shapes.
"""

from __future__ import annotations

from typing import NamedTuple

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
def _h_taps(left, p, right, w0, w1, w2):
    """One kernel row's horizontal taps: w0 * s[c-1] + w1 * s[c] + w2 * s[c+1] on SiLU'd inputs."""
    return left * w0 + p * w1 + right * w2


@triton.jit
def _load_silu(h_img, row, col, ch, row_ok, c_ok, WIDTH, HD, stride_hn, FAST_SILU: tl.constexpr):
    """SiLU of input row `row` at columns `col` [J] and channels `ch`: the value half and the gate half."""
    mask = (row_ok & (col >= 0) & (col < WIDTH))[:, None] & c_ok[None, :]
    ptrs = h_img + (row * WIDTH + col)[:, None] * stride_hn + ch[None, :]
    a_v = _silu(tl.load(ptrs, mask=mask, other=0.0).to(tl.float32), FAST_SILU)
    a_g = _silu(tl.load(ptrs + HD, mask=mask, other=0.0).to(tl.float32), FAST_SILU)
    return a_v, a_g


@triton.jit
def _finish_row(acc_v, acc_g, bias_v, bias_g, o_img, out_row, col, ch, ok, c_ok, WIDTH, stride_on,
                FAST_SILU: tl.constexpr):
    out = (acc_v + bias_v) * _silu(acc_g + bias_g, FAST_SILU)
    mask = (ok & (col < WIDTH))[:, None] & c_ok[None, :]
    tl.store(o_img + (out_row * WIDTH + col)[:, None] * stride_on + ch[None, :], out.to(o_img.dtype.element_ty),
             mask=mask)


@triton.jit
def _mixffn_middle_kernel(
    h_ptr, w_ptr, bias_ptr, out_ptr,
    HEIGHT, WIDTH, HD,
    stride_hb, stride_hn, stride_ob, stride_on,
    ROWS: tl.constexpr, BLOCK_J: tl.constexpr, BLOCK_C: tl.constexpr, FAST_SILU: tl.constexpr,
):
    pid = tl.program_id(0)
    pid_c = tl.program_id(1)
    b = tl.program_id(2)
    col_tiles = tl.cdiv(WIDTH, 4 * BLOCK_J)
    r0 = (pid // col_tiles) * ROWS
    r_end = tl.minimum(r0 + ROWS, HEIGHT)
    # Column 4j + p of this tile is phase p, element j: four [BLOCK_J] column sets, plus the columns just left
    # of phase 0 and just right of phase 3, so each loaded (and SiLU'd) input feeds all three horizontal taps.
    c0 = (pid % col_tiles) * 4 * BLOCK_J + 4 * tl.arange(0, BLOCK_J)
    ch = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    c_ok = ch < HD
    h_img = h_ptr + b.to(tl.int64) * stride_hb
    o_img = out_ptr + b.to(tl.int64) * stride_ob

    # The 3x3 weights and the bias, loaded once: dw_weight [2Hd, 1, 3, 3] contiguous, (c, ky, kx) at c*9 + ky*3 + kx.
    wv = w_ptr + ch * 9
    wg = w_ptr + (ch + HD) * 9
    v00 = tl.load(wv + 0, mask=c_ok, other=0.0).to(tl.float32)[None, :]
    v01 = tl.load(wv + 1, mask=c_ok, other=0.0).to(tl.float32)[None, :]
    v02 = tl.load(wv + 2, mask=c_ok, other=0.0).to(tl.float32)[None, :]
    v10 = tl.load(wv + 3, mask=c_ok, other=0.0).to(tl.float32)[None, :]
    v11 = tl.load(wv + 4, mask=c_ok, other=0.0).to(tl.float32)[None, :]
    v12 = tl.load(wv + 5, mask=c_ok, other=0.0).to(tl.float32)[None, :]
    v20 = tl.load(wv + 6, mask=c_ok, other=0.0).to(tl.float32)[None, :]
    v21 = tl.load(wv + 7, mask=c_ok, other=0.0).to(tl.float32)[None, :]
    v22 = tl.load(wv + 8, mask=c_ok, other=0.0).to(tl.float32)[None, :]
    g00 = tl.load(wg + 0, mask=c_ok, other=0.0).to(tl.float32)[None, :]
    g01 = tl.load(wg + 1, mask=c_ok, other=0.0).to(tl.float32)[None, :]
    g02 = tl.load(wg + 2, mask=c_ok, other=0.0).to(tl.float32)[None, :]
    g10 = tl.load(wg + 3, mask=c_ok, other=0.0).to(tl.float32)[None, :]
    g11 = tl.load(wg + 4, mask=c_ok, other=0.0).to(tl.float32)[None, :]
    g12 = tl.load(wg + 5, mask=c_ok, other=0.0).to(tl.float32)[None, :]
    g20 = tl.load(wg + 6, mask=c_ok, other=0.0).to(tl.float32)[None, :]
    g21 = tl.load(wg + 7, mask=c_ok, other=0.0).to(tl.float32)[None, :]
    g22 = tl.load(wg + 8, mask=c_ok, other=0.0).to(tl.float32)[None, :]
    bias_v = tl.load(bias_ptr + ch, mask=c_ok, other=0.0).to(tl.float32)[None, :]
    bias_g = tl.load(bias_ptr + HD + ch, mask=c_ok, other=0.0).to(tl.float32)[None, :]

    zeros = tl.zeros((BLOCK_J, BLOCK_C), dtype=tl.float32)
    # Rolling partial sums per output phase: acc* for output row r - 1 (finished by input row r), nxt* for row r.
    acc0v, acc0g, acc1v, acc1g, acc2v, acc2g, acc3v, acc3g = zeros, zeros, zeros, zeros, zeros, zeros, zeros, zeros
    nxt0v, nxt0g, nxt1v, nxt1g, nxt2v, nxt2g, nxt3v, nxt3g = zeros, zeros, zeros, zeros, zeros, zeros, zeros, zeros
    for r in range(r0 - 1, r_end + 1):
        # Row conditions as [BLOCK_J] vectors: scalar comparisons mixed into masks misbehave in the interpreter.
        in_row = c0 * 0 + r
        row_ok = (in_row >= 0) & (in_row < HEIGHT)
        lv, lg = _load_silu(h_img, r, c0 - 1, ch, row_ok, c_ok, WIDTH, HD, stride_hn, FAST_SILU)
        p0v, p0g = _load_silu(h_img, r, c0, ch, row_ok, c_ok, WIDTH, HD, stride_hn, FAST_SILU)
        p1v, p1g = _load_silu(h_img, r, c0 + 1, ch, row_ok, c_ok, WIDTH, HD, stride_hn, FAST_SILU)
        p2v, p2g = _load_silu(h_img, r, c0 + 2, ch, row_ok, c_ok, WIDTH, HD, stride_hn, FAST_SILU)
        p3v, p3g = _load_silu(h_img, r, c0 + 3, ch, row_ok, c_ok, WIDTH, HD, stride_hn, FAST_SILU)
        rv, rg = _load_silu(h_img, r, c0 + 4, ch, row_ok, c_ok, WIDTH, HD, stride_hn, FAST_SILU)
        # Input row r is kernel row 2 (bottom) of output row r - 1, which is now complete.
        out_ok = (in_row - 1 >= r0)
        _finish_row(acc0v + _h_taps(lv, p0v, p1v, v20, v21, v22), acc0g + _h_taps(lg, p0g, p1g, g20, g21, g22),
                    bias_v, bias_g, o_img, r - 1, c0, ch, out_ok, c_ok, WIDTH, stride_on, FAST_SILU)
        _finish_row(acc1v + _h_taps(p0v, p1v, p2v, v20, v21, v22), acc1g + _h_taps(p0g, p1g, p2g, g20, g21, g22),
                    bias_v, bias_g, o_img, r - 1, c0 + 1, ch, out_ok, c_ok, WIDTH, stride_on, FAST_SILU)
        _finish_row(acc2v + _h_taps(p1v, p2v, p3v, v20, v21, v22), acc2g + _h_taps(p1g, p2g, p3g, g20, g21, g22),
                    bias_v, bias_g, o_img, r - 1, c0 + 2, ch, out_ok, c_ok, WIDTH, stride_on, FAST_SILU)
        _finish_row(acc3v + _h_taps(p2v, p3v, rv, v20, v21, v22), acc3g + _h_taps(p2g, p3g, rg, g20, g21, g22),
                    bias_v, bias_g, o_img, r - 1, c0 + 3, ch, out_ok, c_ok, WIDTH, stride_on, FAST_SILU)
        # Kernel row 1 (middle) goes to output row r, kernel row 0 (top) to output row r + 1.
        acc0v = nxt0v + _h_taps(lv, p0v, p1v, v10, v11, v12)
        acc0g = nxt0g + _h_taps(lg, p0g, p1g, g10, g11, g12)
        acc1v = nxt1v + _h_taps(p0v, p1v, p2v, v10, v11, v12)
        acc1g = nxt1g + _h_taps(p0g, p1g, p2g, g10, g11, g12)
        acc2v = nxt2v + _h_taps(p1v, p2v, p3v, v10, v11, v12)
        acc2g = nxt2g + _h_taps(p1g, p2g, p3g, g10, g11, g12)
        acc3v = nxt3v + _h_taps(p2v, p3v, rv, v10, v11, v12)
        acc3g = nxt3g + _h_taps(p2g, p3g, rg, g10, g11, g12)
        nxt0v = _h_taps(lv, p0v, p1v, v00, v01, v02)
        nxt0g = _h_taps(lg, p0g, p1g, g00, g01, g02)
        nxt1v = _h_taps(p0v, p1v, p2v, v00, v01, v02)
        nxt1g = _h_taps(p0g, p1g, p2g, g00, g01, g02)
        nxt2v = _h_taps(p1v, p2v, p3v, v00, v01, v02)
        nxt2g = _h_taps(p1g, p2g, p3g, g00, g01, g02)
        nxt3v = _h_taps(p2v, p3v, rv, v00, v01, v02)
        nxt3g = _h_taps(p2g, p3g, rg, g00, g01, g02)


# -- launcher -----------------------------------------------------------------------------------------------

class Config(NamedTuple):
    """A launch shape: image rows a program walks, tokens a column phase, channels, warps."""

    rows: int
    block_j: int
    block_c: int
    num_warps: int


# From a sweep on an H200 (bf16; `python -m sana.kernels.mixffn.bench --sweep`): one token per phase and 128
# channels (a 256-byte row segment per load) won at every shape; 32 rows and 2 warps where the grid fills the GPU
# many times over, 16 rows and 4 warps where it does not (1024 px: 704 programs at 32 rows).
LARGE_GRID_CONFIG = Config(32, 1, 128, 2)
SMALL_GRID_CONFIG = Config(16, 1, 128, 4)


def _pick_config(images: int, height: int, width: int, hd: int, device: torch.device) -> Config:
    big = LARGE_GRID_CONFIG
    programs = images * triton.cdiv(height, big.rows) * triton.cdiv(width, 4) * triton.cdiv(hd, big.block_c)
    sms = torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 1
    return big if programs >= 8 * sms else SMALL_GRID_CONFIG


def _launch(h, height, width, dw_weight, dw_bias, out, config: Config | None = None):
    b, _, c2 = h.shape
    hd = c2 // 2
    config = config or _pick_config(b, height, width, hd, h.device)
    # The approximate SiLU for half-precision outputs on the GPU (the interpreter has no PTX; fp32 stays exact).
    fast = h.dtype != torch.float32 and not interpreting()
    args = (h, dw_weight, dw_bias, out, height, width, hd, h.stride(0), h.stride(1), out.stride(0), out.stride(1))
    block_j = min(config.block_j, triton.next_power_of_2(triton.cdiv(width, 4)))
    grid = (triton.cdiv(height, config.rows) * triton.cdiv(width, 4 * block_j), triton.cdiv(hd, config.block_c), b)
    _mixffn_middle_kernel[grid](*args, ROWS=config.rows, BLOCK_J=block_j, BLOCK_C=config.block_c, FAST_SILU=fast,
                                num_warps=config.num_warps)


# -- public function ----------------------------------------------------------------------------------------


def mixffn_middle(h: torch.Tensor, height: int, width: int, dw_weight: torch.Tensor,
                  dw_bias: torch.Tensor, *, config: Config | None = None) -> torch.Tensor:
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
        config: a launch shape (benchmarks and tests); by default one is picked for the grid.
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
        _launch(h, height, width, dw_weight, dw_bias, out, config)
    return out

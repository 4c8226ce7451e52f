"""SANA-WM's bidirectional gated delta rule over frames, chunked over frames, in three Triton phases.

Per (batch, head) and frame t, with K_t, V_t [S, D] (one row a token) and gates beta_t, g_t, the state
M [D_v, D_k] (value channels as rows) moves as M <- M W_t + U_t, where

    W_t = g_t (I - K_t^T diag(beta_t) K_t)   [D_k, D_k]     U_t = V_t^T diag(beta_t) K_t   [D_v, D_k]

are the same for both directions and need no state. So the work splits by what depends on the state:

1. `_frame_product_kernel`, grid (T, B*H), one launch per product: each program reduces one frame's S tokens
   into a [D, D] fp32 product (W_t, U_t, and for the normaliser W^p_t on the plain keys with the column sum
   u^p_t = K^p_t^T beta_t). All of the O(D^2 S) work is here, fully parallel, on the tensor cores.
2. `_scan_kernel`, grid (row blocks, B*H): the only sequential part, T steps of [BLOCK_V, D] x [D, D] per
   direction. Rows of M evolve independently, so a program owns BLOCK_V of them (the normaliser z is one more
   "row" with W^p and u^p). It runs backwards first, storing the state before each frame's update (the
   exclusive backward read), then forwards, adding the state after each update (the inclusive read): the
   result is M_sum_t = M_fwd_t + M_bwd_t per frame.
3. `_read_kernel`, grid (T, B*H): out_t = Q_t M_sum_t^T / (Q^p_t z_sum_t + eps), token-major, v's dtype.

The per-frame [D, D] matrices live in fp32 scratch (W and W^p, U and M_sum with z's row beside the numerator's):
4 x 128^2 fp32 per (batch, head, frame) at D = 112, two thirds of one fp32 copy of q at S = 880. Scratch holds
one chunk of frames, never the whole clip: as many frames as `SCRATCH_BYTES` takes (22 at B = 2, H = 20, so a
161-frame clip, 21 latent frames, is one chunk). A longer clip is swept twice: backwards over the chunks keeping
only the state that enters each (one [D, D] a chunk), then forwards, each chunk's products recomputed and its
frames scanned both ways from those states. The products' work doubles there; the sequential chain does not grow.
A per-token formulation that keeps M in registers and never writes a [D, D] matrix was measured first (H200,
704 x 1280, 161 frames, main branch): 271 ms with fp32 dots and 10.5 ms with tf32, against 25 ms for the PyTorch
reference, since all of its O(D^2 S) work sits on the sequential chain behind the state. This form takes 4.1 ms
(tf32x3) there.

Inputs are read in place through their strides (the views of a fused projection need no copies) and converted
to fp32 on load; products, state and division are fp32. The dots take `precision`: "tf32x3" (default: three
tf32 products on the tensor cores; 1.4e-6 relative to the fp32 reference at SANA-WM's shapes, fp32's order),
"ieee" (fp32 FMA: 4.5e-7, but 24x slower, slower than the reference) or "tf32" (one product: 1.7x faster,
1.2e-3 relative, under bf16's rounding but not fp32's).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._common import check_device, check_float
from .reference import EPS

PRECISIONS = ("tf32x3", "ieee", "tf32")
# Scratch a call may hold for its frames' [D, D] products: a chunk of frames is as many as fit in this.
SCRATCH_BYTES = 256 * 2**20

# -- kernels ------------------------------------------------------------------------------------------------


@triton.jit
def _frame_product_kernel(
    x_ptr, y_ptr, beta_ptr, decay_ptr, out_ptr, colsum_ptr,
    frame0, S, H,
    stride_xb, stride_xn, stride_xh, stride_xd,
    stride_yb, stride_yn, stride_yh, stride_yd,
    stride_betab, stride_betan, stride_betah,
    stride_decayb, stride_decayt, stride_decayh,
    stride_out_bh, stride_out_t, stride_colsum_bh, stride_colsum_t,
    D: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_S: tl.constexpr,
    TRANSITION: tl.constexpr, COLSUM: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    """P = X_t^T diag(beta_t) Y_t [D, D] for one frame of one (batch, head), stored as P (rows < D) or, with
    TRANSITION, as the full padded tile g_t (I - P); with COLSUM also X_t^T beta_t [D]. Program (i, bh) takes
    frame t = frame0 + i of the inputs and stores at the chunk's scratch slot i."""
    i = tl.program_id(0)
    t = frame0 + i
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    chans = tl.arange(0, BLOCK_D)
    offs_s = tl.arange(0, BLOCK_S)
    chan_ok = chans < D
    # Batch and frame offsets can pass 2**31 elements at video sizes (fused projections at T = 121).
    token0 = (t * S).to(tl.int64)
    x_frame = x_ptr + b.to(tl.int64) * stride_xb + token0 * stride_xn + h * stride_xh
    y_frame = y_ptr + b.to(tl.int64) * stride_yb + token0 * stride_yn + h * stride_yh
    beta_frame = beta_ptr + b.to(tl.int64) * stride_betab + token0 * stride_betan + h * stride_betah

    acc = tl.zeros((BLOCK_D, BLOCK_D), dtype=tl.float32)
    colsum = tl.zeros((BLOCK_D,), dtype=tl.float32)
    for s0 in range(0, S, BLOCK_S):
        tokens = s0 + offs_s
        token_ok = tokens < S
        mask = token_ok[:, None] & chan_ok[None, :]
        x = tl.load(x_frame + tokens[:, None] * stride_xn + chans[None, :] * stride_xd, mask=mask, other=0.0)
        y = tl.load(y_frame + tokens[:, None] * stride_yn + chans[None, :] * stride_yd, mask=mask, other=0.0)
        beta = tl.load(beta_frame + tokens * stride_betan, mask=token_ok, other=0.0).to(tl.float32)
        # beta * x is exact in fp32 for half inputs, and so is y in tf32: "tf32x3" loses nothing there.
        xb = x.to(tl.float32) * beta[:, None]  # [BS, BD]
        acc = tl.dot(tl.trans(xb), y.to(tl.float32), acc, input_precision=DOT_PRECISION)  # [BD, BD]
        if COLSUM:
            colsum += tl.sum(xb, axis=0)

    rows = tl.arange(0, BLOCK_D)
    out_frame = out_ptr + bh.to(tl.int64) * stride_out_bh + i.to(tl.int64) * stride_out_t
    tile = out_frame + rows[:, None] * BLOCK_D + chans[None, :]
    if TRANSITION:
        g = tl.load(decay_ptr + b.to(tl.int64) * stride_decayb + t * stride_decayt + h * stride_decayh)
        eye = tl.where(rows[:, None] == chans[None, :], 1.0, 0.0)
        tl.store(tile, g.to(tl.float32) * (eye - acc))  # the padded lanes stay g I, which maps zeros to zeros
    else:
        tl.store(tile, acc, mask=(rows < D)[:, None])
    if COLSUM:
        colsum_frame = colsum_ptr + bh.to(tl.int64) * stride_colsum_bh + i.to(tl.int64) * stride_colsum_t
        tl.store(colsum_frame + chans, colsum)


@triton.jit
def _scan_kernel(
    w_ptr, u_ptr, msum_ptr, bwd_in_ptr, bwd_out_ptr, fwd_ptr,
    T, NUM_ROW_BLOCKS,
    stride_w_bh, stride_w_t, stride_w_stream, stride_u_bh, stride_u_t, stride_state_bh,
    D: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_D: tl.constexpr, DOT_PRECISION: tl.constexpr,
    BACKWARD_ONLY: tl.constexpr,
):
    """BLOCK_V rows of M <- M W_t + U_t over one chunk's T frames. Backwards from the state `bwd_in` (what the
    frames after the chunk left), then, unless BACKWARD_ONLY, forwards from the state `fwd` (what the frames
    before it left), storing M_bwd_t + M_fwd_t in M_sum [B*H, T, rows, BLOCK_D] and the forward state back to
    `fwd`. BACKWARD_ONLY stores the backward state at the chunk's start in `bwd_out` instead. Row blocks past
    NUM_ROW_BLOCKS hold the normaliser: its single row, W^p."""
    pid_v = tl.program_id(0)
    bh = tl.program_id(1)
    is_z = (pid_v >= NUM_ROW_BLOCKS).to(tl.int32)
    rows = pid_v * BLOCK_V + tl.arange(0, BLOCK_V)
    chans = tl.arange(0, BLOCK_D)
    row_end = D + is_z * (NUM_ROW_BLOCKS * BLOCK_V + 1 - D)  # numerator rows < D; z: its one row
    row_ok = (rows < row_end)[:, None]
    w_head = w_ptr + bh.to(tl.int64) * stride_w_bh + is_z * stride_w_stream
    w_tile = chans[:, None] * BLOCK_D + chans[None, :]
    u_offs = bh.to(tl.int64) * stride_u_bh + rows[:, None] * BLOCK_D + chans[None, :]  # U and M_sum alike
    state_offs = bh.to(tl.int64) * stride_state_bh + rows[:, None] * BLOCK_D + chans[None, :]

    m = tl.load(bwd_in_ptr + state_offs, mask=row_ok, other=0.0)
    for i in range(T):  # backwards: frame t reads the state of the frames after it
        t = T - 1 - i
        frame = t * stride_u_t  # within one (batch, head): the launcher keeps scratch under 2**31 elements
        if not BACKWARD_ONLY:
            tl.store(msum_ptr + u_offs + frame, m, mask=row_ok)
        w = tl.load(w_head + t * stride_w_t + w_tile)
        u = tl.load(u_ptr + u_offs + frame, mask=row_ok, other=0.0)
        m = tl.dot(m, w, u, input_precision=DOT_PRECISION)  # M W_t + U_t
    if BACKWARD_ONLY:
        tl.store(bwd_out_ptr + state_offs, m, mask=row_ok)
    else:
        # The forward pass reads back what this program stored; make every thread's stores visible to all.
        tl.debug_barrier()
        m = tl.load(fwd_ptr + state_offs, mask=row_ok, other=0.0)
        for t in range(T):  # forwards: frame t reads the state of the frames up to and including it
            frame = t * stride_u_t
            w = tl.load(w_head + t * stride_w_t + w_tile)
            u = tl.load(u_ptr + u_offs + frame, mask=row_ok, other=0.0)
            m = tl.dot(m, w, u, input_precision=DOT_PRECISION)
            backward = tl.load(msum_ptr + u_offs + frame, mask=row_ok, other=0.0)
            tl.store(msum_ptr + u_offs + frame, m + backward, mask=row_ok)
        tl.store(fwd_ptr + state_offs, m, mask=row_ok)


@triton.jit
def _read_kernel(
    q_ptr, qp_ptr, msum_ptr, out_ptr,
    frame0, T, S, H, eps, z_row,
    stride_qb, stride_qn, stride_qh, stride_qd,
    stride_qpb, stride_qpn, stride_qph, stride_qpd,
    stride_m_bh, stride_m_t,
    D: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_S: tl.constexpr,
    HAS_DEN: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    """out_t = Q_t M_sum_t^T (/ (Q^p_t z_sum_t + eps)) for one frame of one (batch, head), token-major: program
    (i, bh) reads the chunk's M_sum slot i for frame t = frame0 + i of T."""
    i = tl.program_id(0)
    t = frame0 + i
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    chans = tl.arange(0, BLOCK_D)
    offs_s = tl.arange(0, BLOCK_S)
    chan_ok = chans < D
    m_frame = msum_ptr + bh.to(tl.int64) * stride_m_bh + i.to(tl.int64) * stride_m_t
    m_sum = tl.load(m_frame + chans[:, None] * BLOCK_D + chans[None, :], mask=chan_ok[:, None], other=0.0)
    z_sum = tl.zeros((BLOCK_D,), dtype=tl.float32)
    if HAS_DEN:
        z_sum = tl.load(m_frame + z_row * BLOCK_D + chans)

    token0 = (t * S).to(tl.int64)
    q_frame = q_ptr + b.to(tl.int64) * stride_qb + token0 * stride_qn + h * stride_qh
    qp_frame = qp_ptr + b.to(tl.int64) * stride_qpb + token0 * stride_qpn + h * stride_qph
    out_frame = out_ptr + ((b.to(tl.int64) * T * S + token0) * H + h) * D  # contiguous [B, N, H, D]
    for s0 in range(0, S, BLOCK_S):
        tokens = s0 + offs_s
        token_ok = tokens < S
        mask = token_ok[:, None] & chan_ok[None, :]
        q = tl.load(q_frame + tokens[:, None] * stride_qn + chans[None, :] * stride_qd, mask=mask, other=0.0)
        num = tl.dot(q.to(tl.float32), tl.trans(m_sum), input_precision=DOT_PRECISION)  # [BS, BD]
        if HAS_DEN:
            qp = tl.load(qp_frame + tokens[:, None] * stride_qpn + chans[None, :] * stride_qpd, mask=mask,
                         other=0.0)
            den = tl.sum(qp.to(tl.float32) * z_sum[None, :], axis=1)  # [BS]
            num = num / (den + eps)[:, None]
        tl.store(out_frame + tokens[:, None] * (H * D) + chans[None, :], num.to(out_ptr.dtype.element_ty),
                 mask=mask)


# -- launcher -----------------------------------------------------------------------------------------------


def _block_config(block_d: int) -> tuple[int, int, int, int]:
    """(state rows a scan program, tokens a step, warps for the products and the read, warps for the scan)."""
    warps = 8 if block_d >= 128 else 4
    return 16, 32, warps, warps


def _chunk_frames(frames: int, per_frame_bytes: int, budget_bytes: int) -> int:
    """Frames a chunk: as many as the scratch budget holds, evened out over the chunks the clip then needs."""
    most = max(1, min(frames, budget_bytes // per_frame_bytes))
    chunks = triton.cdiv(frames, most)
    return triton.cdiv(frames, chunks)


def _launch(q, k, v, beta, decay, q_plain, k_plain, out, eps, precision, chunk_frames) -> None:
    b, n, h, d = q.shape
    frames = decay.shape[1]
    s = n // frames
    has_den = q_plain is not None
    block_d = max(16, triton.next_power_of_2(d))
    block_v, block_s, warps, scan_warps = _block_config(block_d)
    row_blocks = triton.cdiv(d, block_v)
    rows = (row_blocks + has_den) * block_v  # the numerator's rows, then z's row block
    streams = 1 + has_den
    per_frame = b * h * 4 * (streams * block_d * block_d + 2 * rows * block_d)
    chunk = chunk_frames or _chunk_frames(frames, per_frame, SCRATCH_BYTES)
    chunks = triton.cdiv(frames, chunk)
    # Scratch for one chunk: W (and W^p) [B*H, C, streams, BD, BD]; U and M_sum [B*H, C, rows, BD], z's row at
    # row_blocks * BV. States [B*H, rows, BD]: the forward carry, and the backward state entering each chunk.
    w = torch.empty((b * h, chunk, streams, block_d, block_d), device=q.device, dtype=torch.float32)
    u = torch.empty((b * h, chunk, rows, block_d), device=q.device, dtype=torch.float32)
    m_sum = torch.empty_like(u)
    if w.numel() >= 2**31:
        raise ValueError(f"gdn_bidirectional: {chunk} frames x {b * h} heads need more than 2**31 scratch elements")
    forward = torch.zeros((b * h, rows, block_d), device=q.device, dtype=torch.float32)
    backward = torch.zeros((chunks, b * h, rows, block_d), device=q.device, dtype=torch.float32)
    qp = q_plain if has_den else q  # never read without the normaliser

    def products(frame0: int, count: int) -> None:
        def product(x, y, out_view, transition, colsum=None):
            _frame_product_kernel[(count, b * h)](
                x, y, beta, decay, out_view, colsum if colsum is not None else out_view,
                frame0, s, h,
                *x.stride(), *y.stride(), *beta.stride(), *decay.stride(),
                out_view.stride(0), out_view.stride(1),
                *((colsum.stride(0), colsum.stride(1)) if colsum is not None else (0, 0)),
                D=d, BLOCK_D=block_d, BLOCK_S=block_s, TRANSITION=transition, COLSUM=colsum is not None,
                DOT_PRECISION=precision, num_warps=warps,
            )

        product(k, k, w[:, :, 0], transition=True)  # W_t
        product(v, k, u, transition=False)  # U_t, rows < D
        if has_den:
            product(k_plain, k_plain, w[:, :, 1], transition=True, colsum=u[:, :, row_blocks * block_v])  # W^p, u^p

    def scan(count: int, bwd_in: torch.Tensor, bwd_out: torch.Tensor | None) -> None:
        _scan_kernel[(row_blocks + has_den, b * h)](
            w, u, m_sum, bwd_in, bwd_out if bwd_out is not None else bwd_in, forward,
            count, row_blocks,
            w.stride(0), w.stride(1), w.stride(2), u.stride(0), u.stride(1), forward.stride(0),
            D=d, BLOCK_V=block_v, BLOCK_D=block_d, DOT_PRECISION=precision, BACKWARD_ONLY=bwd_out is not None,
            num_warps=scan_warps,
        )

    def span(c: int) -> tuple[int, int]:
        return c * chunk, min(chunk, frames - c * chunk)

    # Backwards over the chunks, keeping only each chunk's entering state; the frames' products are recomputed
    # in the forward sweep rather than kept, so scratch never holds more than one chunk (none of this runs
    # when the clip is one chunk).
    for c in range(chunks - 1, 0, -1):
        products(*span(c))
        scan(span(c)[1], backward[c], backward[c - 1])
    for c in range(chunks):
        frame0, count = span(c)
        products(frame0, count)
        scan(count, backward[c], None)  # M_sum for the chunk's frames; the forward carry moves on
        _read_kernel[(count, b * h)](
            q, qp, m_sum, out,
            frame0, frames, s, h, eps, row_blocks * block_v,
            *q.stride(), *qp.stride(), m_sum.stride(0), m_sum.stride(1),
            D=d, BLOCK_D=block_d, BLOCK_S=block_s, HAS_DEN=has_den, DOT_PRECISION=precision, num_warps=warps,
        )


# -- public function ----------------------------------------------------------------------------------------


def gdn_bidirectional(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, beta: torch.Tensor, decay: torch.Tensor,
                      q_plain: torch.Tensor | None = None, k_plain: torch.Tensor | None = None, eps: float = EPS,
                      *, precision: str = "tf32x3", chunk_frames: int | None = None) -> torch.Tensor:
    """The bidirectional gated delta rule over T frames; the spec is `reference.gdn_bidirectional_reference`.

    Args:
        q, k, v: [B, N, H, D] token-major, N = T * S in (frame, token) order, any float dtypes and strides (the
            views of a fused projection are read in place). D up to 128 (SANA-WM: 112).
        beta: [B, N, H] per-token gate; decay: [B, T, H] per-frame decay (T is read from it); any float dtype.
        q_plain, k_plain: [B, N, H, D] queries and keys of the normaliser stream, or both None (numerator only).
        eps: added to the normaliser (SANA-WM: 1e-8).
        precision: the dots' `input_precision`: "tf32x3" (default, fp32's error), "ieee" or "tf32".
        chunk_frames: frames a chunk (default: as many as `SCRATCH_BYTES` holds).

    Returns:
        [B, N, H, D] contiguous, v's dtype: (num_fwd + num_bwd) / (den_fwd + den_bwd + eps), or num_fwd +
        num_bwd without the normaliser. Products, state and division in fp32. Scratch: one chunk's frames at
        4 (128 x 128) fp32 each per (batch, head) at D = 112 (at most `SCRATCH_BYTES`), plus two states per
        chunk; a clip of more than one chunk computes its frame products twice.
    """
    name = "gdn_bidirectional"
    if (q_plain is None) != (k_plain is None):
        raise ValueError("pass both q_plain and k_plain (normalised output) or neither (numerator only)")
    if precision not in PRECISIONS:
        raise ValueError(f"{name}: precision must be one of {PRECISIONS}, got {precision!r}")
    streams = {"q": q, "k": k, "v": v} | ({"q_plain": q_plain, "k_plain": k_plain} if q_plain is not None else {})
    for arg, t in streams.items():
        if t.dim() != 4 or t.shape != q.shape:
            raise ValueError(f"{name}: {arg} must be [B, N, H, D] = {tuple(q.shape)}, got {tuple(t.shape)}")
        check_float(name, arg, t)
    b, n, h, d = q.shape
    if d > 128:
        raise ValueError(f"{name}: head dim {d} must be at most 128")
    if decay.dim() != 3 or decay.shape[0] != b or decay.shape[2] != h or decay.shape[1] == 0:
        raise ValueError(f"{name}: decay must be [B, T, H] with B = {b}, H = {h}, T > 0, got {tuple(decay.shape)}")
    frames = decay.shape[1]
    if n % frames:
        raise ValueError(f"{name}: {n} tokens do not split into {frames} frames")
    if beta.shape != (b, n, h):
        raise ValueError(f"{name}: beta must be [B, N, H] = {(b, n, h)}, got {tuple(beta.shape)}")
    check_float(name, "beta", beta)
    check_float(name, "decay", decay)
    check_device(name, *streams.values(), beta, decay)
    out = torch.empty((b, n, h, d), device=q.device, dtype=v.dtype)
    if out.numel() == 0:
        return out
    if chunk_frames is not None and chunk_frames < 1:
        raise ValueError(f"{name}: chunk_frames must be at least 1, got {chunk_frames}")
    _launch(q, k, v, beta, decay, q_plain, k_plain, out, eps, precision, chunk_frames)
    return out

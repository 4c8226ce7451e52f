"""Cross-attention to the text as one Triton pass, token-major in and out.

The op moves little but the queries and the output (~300 text keys; SANA 1.6B: 20 heads of 112, 0.6B: 16 of
72), yet SDPA took 8.5-9 ms of the 1.6B forward at 4096 px on an H100 (~0.43 ms a block against ~0.09 ms of
traffic at full bandwidth): its fused kernels are built for long key sequences. Here a program takes BLOCK_M
tokens of one head, reads their queries straight from the token-major [B, N, H*D] projection (no head
transposes on either side), walks the keys in BLOCK_L blocks with an online softmax in fp32, and writes its
[BLOCK_M, D] tile into a [B, N, H*D] output: the queries are read once and the output written once; the keys and
values (tens of KB a head) come from L2.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from .._common import check_device, check_float, check_last_dim_contiguous

LOG2E = 1.4426950408889634


@triton.jit
def _text_attention_kernel(q_ptr, k_ptr, v_ptr, bias_ptr, out_ptr, N, L, heads, qk_scale,
                           sqb, sqn, skb, skh, skl, svb, svh, svl, sbb, sob, son,
                           HAS_BIAS: tl.constexpr, D: tl.constexpr, D_PAD: tl.constexpr, BLOCK_M: tl.constexpr,
                           BLOCK_L: tl.constexpr, IEEE: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // heads).to(tl.int64)
    h = pid_bh % heads
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.arange(0, D_PAD)
    row_ok = rows < N
    col_ok = cols < D
    q = tl.load(q_ptr + b * sqb + rows.to(tl.int64)[:, None] * sqn + h * D + cols[None, :],
                mask=row_ok[:, None] & col_ok[None, :], other=0.0)
    m_i = tl.full((BLOCK_M,), float("-inf"), tl.float32)  # running row maxima (log2 units)
    l_i = tl.zeros((BLOCK_M,), tl.float32)  # running sums of exp2(s - m_i)
    acc = tl.zeros((BLOCK_M, D_PAD), tl.float32)
    k_base = k_ptr + b * skb + h * skh
    v_base = v_ptr + b * svb + h * svh
    for start in range(0, L, BLOCK_L):
        keys = start + tl.arange(0, BLOCK_L)
        key_ok = keys < L
        kv_mask = key_ok[:, None] & col_ok[None, :]
        k = tl.load(k_base + keys[:, None] * skl + cols[None, :], mask=kv_mask, other=0.0)
        v = tl.load(v_base + keys[:, None] * svl + cols[None, :], mask=kv_mask, other=0.0)
        if IEEE:
            s = tl.dot(q, tl.trans(k), input_precision="ieee")
        else:
            s = tl.dot(q, tl.trans(k))
        s = s * qk_scale  # scores in log2 units: exp2 below is exp of the natural-log scores
        if HAS_BIAS:
            bias = tl.load(bias_ptr + b * sbb + keys, mask=key_ok, other=0.0).to(tl.float32)
            s += bias[None, :] * 1.4426950408889634
        s = tl.where(key_ok[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        # a row whose keys so far are all masked (-inf) keeps a zero sum: exp2 of (-inf) - (-inf) is avoided
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.exp2(m_i - m_safe)
        p = tl.exp2(s - m_safe[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        if IEEE:
            acc = acc * alpha[:, None] + tl.dot(p, v.to(tl.float32), input_precision="ieee")
        else:
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
        m_i = m_new
    out = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]  # a row with every key masked: zeros, as SDPA gives
    tl.store(out_ptr + b * sob + rows.to(tl.int64)[:, None] * son + h * D + cols[None, :],
             out.to(out_ptr.dtype.element_ty), mask=row_ok[:, None] & col_ok[None, :])


# (BLOCK_M, BLOCK_L, warps, stages) that `bench.py --sweep` times; the first is the default until a sweep says
LAUNCH_SHAPES = [(64, 64, 4, 2), (128, 64, 8, 2), (128, 32, 4, 2), (64, 32, 4, 2), (128, 64, 4, 2), (64, 128, 4, 2),
                 (128, 128, 8, 2), (32, 64, 4, 2), (128, 64, 8, 3), (64, 64, 4, 3)]


def text_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int,
                   mask: torch.Tensor | None = None, *, launch: tuple[int, int, int, int] | None = None
                   ) -> torch.Tensor:
    """softmax(q k^T / sqrt(D) + mask) v per head; the spec is `reference.text_attention_reference`.

    Args:
        q: [B, N, H*D] token-major queries (any batch and token strides; the channels contiguous).
        k, v: [B or 1, H, L, D] keys and values (any strides but the last; a batch of one is shared by every row).
        heads: H.
        mask: None, an additive float bias or a boolean mask (True: attend), broadcastable to [B, 1, 1, L].
        launch: (BLOCK_M, BLOCK_L, warps, stages), for sweeps; default LAUNCH_SHAPES[0].

    Returns:
        A contiguous [B, N, H*D] tensor of q's dtype. Scores, softmax and sums in fp32; a row whose keys are all
        masked by a boolean mask is zeros, as SDPA makes it.
    """
    name = "text_attention"
    if q.dim() != 3 or k.dim() != 4 or v.shape != k.shape:
        raise ValueError(f"{name}: q must be [B, N, H*D] and k, v one [B, H, L, D] shape, got "
                         f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    b, n, width = q.shape
    if k.shape[0] == 1 and b > 1:  # one text for every row, as SDPA broadcasts it
        k, v = k.expand(b, -1, -1, -1), v.expand(b, -1, -1, -1)
    _, h, length, d = k.shape
    if h != heads or width != heads * d or k.shape[0] != b:
        raise ValueError(f"{name}: q {tuple(q.shape)} does not match {heads} heads of keys {tuple(k.shape)}")
    if length == 0:
        raise ValueError(f"{name}: no keys")
    if d > 256:
        raise ValueError(f"{name}: head dim {d} above 256")
    for arg, t in (("q", q), ("k", k), ("v", v)):
        check_float(name, arg, t)
        check_last_dim_contiguous(name, arg, t)
    if k.dtype != q.dtype or v.dtype != q.dtype:
        raise ValueError(f"{name}: q, k and v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    check_device(name, q, k, v)
    bias = None
    if mask is not None:
        try:
            mask = mask.expand(b, 1, 1, length)
        except RuntimeError:
            raise ValueError(f"{name}: mask {tuple(mask.shape)} does not broadcast to [{b}, 1, 1, {length}]") from None
        check_device(name, q, mask)
        if mask.dtype == torch.bool:
            bias = torch.zeros(b, length, device=q.device).masked_fill_(~mask[:, 0, 0], float("-inf"))
        else:
            check_float(name, "mask", mask)
            bias = mask[:, 0, 0]
            if bias.stride(-1) != 1:
                bias = bias.contiguous()
    out = torch.empty(b, n, width, device=q.device, dtype=q.dtype)
    if n == 0:
        return out
    d_pad = max(16, triton.next_power_of_2(d))
    block_m, block_l, warps, stages = launch or LAUNCH_SHAPES[0]
    grid = (triton.cdiv(n, block_m), b * heads)
    _text_attention_kernel[grid](
        q, k, v, bias if bias is not None else q, out, n, length, heads, LOG2E / math.sqrt(d),
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), k.stride(2), v.stride(0), v.stride(1), v.stride(2),
        bias.stride(0) if bias is not None else 0, out.stride(0), out.stride(1),
        HAS_BIAS=bias is not None, D=d, D_PAD=d_pad, BLOCK_M=block_m, BLOCK_L=block_l,
        IEEE=q.dtype == torch.float32, num_warps=warps, num_stages=stages)
    return out

"""Bidirectional gated delta rule over frames, in plain PyTorch: the spec of SANA-WM's linear self-attention
recurrence (diffusers' `torch_chunk_sana_gdn` / `torch_chunk_cam_single_path_delta_rule` run forwards and
backwards, as `SanaWMBidirectionalGDNAttention` / `SanaWMBidirectionalGDNCamAttention` combine them).

Per batch row and head, with frame t's keys K_t, values V_t, queries Q_t as [S, D] matrices (one row a token),
per-token gates beta_t [S] and the frame's decay g_t (a scalar), the state M [D, D] (keys -> values) and the
normaliser z [D] follow the delta rule

    M_t = g_t (I - K_t^T diag(beta_t) K_t) M_{t-1} + K_t^T diag(beta_t) V_t
    z_t = g_t (I - P_t^T diag(beta_t) P_t) z_{t-1} + P_t^T beta_t          (P = the un-rotated keys)

forwards over frames 0 .. t (inclusive) and backwards over frames T-1 .. t+1 (exclusive of t), and

    out_t = Q_t (M_fwd_t + M_bwd_t) / (Qp_t (z_fwd_t + z_bwd_t) + eps)    (Qp = the un-rotated queries)

or, without the normaliser stream (the camera branch's "single path"), out_t = Q_t (M_fwd_t + M_bwd_t).
In SANA-WM the numerator stream reads rotated (RoPE) or camera-transformed q and k, the normaliser stream the
plain ReLU'd ones, so the normaliser stays positive.

Everything is computed in fp32 and the result cast to v's dtype, as diffusers does. The state is carried frame
by frame and each frame's transition I - K^T diag(beta) K is formed only while that frame is processed (never
all frames' [D, D] matrices at once), with diffusers' association (M W + U), so fp32 results agree with its
to rounding.
"""

from __future__ import annotations

import torch

EPS = 1e-8  # the SANA-WM block's denominator eps


def _frames(x: torch.Tensor, frames: int) -> torch.Tensor:
    """Token-major [B, N, H, D] -> [B, H, T, D, S] fp32 (diffusers' column layout: one column a token)."""
    b, n, h, d = x.shape
    return x.float().reshape(b, frames, n // frames, h, d).permute(0, 3, 1, 4, 2)


def _scan(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, beta: torch.Tensor, decay: torch.Tensor,
          reverse: bool) -> torch.Tensor:
    """One direction of the numerator stream. q, k, v [B, H, T, D, S], beta [B, H, T, 1, S], decay
    [B, H, T, 1, 1] -> [B, H, T, D, S]: state (keys as columns, [D_v, D_k]) times each frame's queries, after
    (forwards, inclusive) or before (backwards, exclusive) the frame's own update."""
    b, h, t, d, _ = q.shape
    eye = torch.eye(d, device=q.device, dtype=q.dtype)
    state = torch.zeros(b, h, d, d, device=q.device, dtype=q.dtype)
    out = torch.zeros_like(q)
    for f in (range(t - 1, -1, -1) if reverse else range(t)):
        kf = k[:, :, f]  # [B, H, D, S]
        if reverse:
            out[:, :, f] = torch.matmul(state, q[:, :, f])
        transition = decay[:, :, f] * (eye - torch.matmul(kf * beta[:, :, f], kf.transpose(-1, -2)))  # [B, H, D, D]
        update = torch.matmul(v[:, :, f] * beta[:, :, f], kf.transpose(-1, -2))  # [B, H, D, D]
        state = torch.matmul(state, transition) + update
        if not reverse:
            out[:, :, f] = torch.matmul(state, q[:, :, f])
    return out


def _scan_normaliser(q: torch.Tensor, k: torch.Tensor, beta: torch.Tensor, decay: torch.Tensor,
                     reverse: bool) -> torch.Tensor:
    """The normaliser stream z of one direction: q, k [B, H, T, D, S] -> q . z [B, H, T, 1, S]."""
    b, h, t, d, _ = q.shape
    eye = torch.eye(d, device=q.device, dtype=q.dtype)
    z = torch.zeros(b, h, d, 1, device=q.device, dtype=q.dtype)
    out = torch.zeros_like(q[:, :, :, :1])
    k_beta = k * beta  # [B, H, T, D, S]
    k_sums = k_beta.sum(dim=-1, keepdim=True)  # [B, H, T, D, 1], all frames in one reduction as diffusers sums
    for f in (range(t - 1, -1, -1) if reverse else range(t)):
        kf = k[:, :, f]
        if reverse:
            out[:, :, f] = torch.matmul(z.transpose(-1, -2), q[:, :, f])
        transition = decay[:, :, f] * (eye - torch.matmul(k_beta[:, :, f], kf.transpose(-1, -2)))
        z = torch.matmul(transition, z) + k_sums[:, :, f]
        if not reverse:
            out[:, :, f] = torch.matmul(z.transpose(-1, -2), q[:, :, f])
    return out


def gdn_bidirectional_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, beta: torch.Tensor,
                                decay: torch.Tensor, q_plain: torch.Tensor | None = None,
                                k_plain: torch.Tensor | None = None, eps: float = EPS) -> torch.Tensor:
    """The bidirectional gated delta rule over T frames of S tokens each.

    q, k, v: [B, N, H, D] token-major, N = T * S in (frame, token) order (any strides); q and k are what the
        numerator stream reads (rotated in SANA-WM's main branch, camera-transformed in its camera branch).
    beta: [B, N, H] per-token, per-head gate of the update (sigmoid output).
    decay: [B, T, H] per-frame, per-head decay g in (0, 1]; T is read from it.
    q_plain, k_plain: [B, N, H, D] the queries and keys of the normaliser stream, or both None for no
        normaliser (then out = numerator).
    Returns [B, N, H, D] in v's dtype: (num_fwd + num_bwd) / (den_fwd + den_bwd + eps), computed in fp32.
    """
    if (q_plain is None) != (k_plain is None):
        raise ValueError("pass both q_plain and k_plain (normalised output) or neither (numerator only)")
    b, n, h, d = q.shape
    frames = decay.shape[1]
    if n % frames:
        raise ValueError(f"{n} tokens do not split into {frames} frames")
    qr, kr, vr = _frames(q, frames), _frames(k, frames), _frames(v, frames)  # [B, H, T, D, S]
    beta_f = beta.float().reshape(b, frames, n // frames, h).permute(0, 3, 1, 2).unsqueeze(3)  # [B, H, T, 1, S]
    decay_f = decay.float().permute(0, 2, 1)[..., None, None]  # [B, H, T, 1, 1]

    out = _scan(qr, kr, vr, beta_f, decay_f, reverse=False) + _scan(qr, kr, vr, beta_f, decay_f, reverse=True)
    if q_plain is not None:
        qp, kp = _frames(q_plain, frames), _frames(k_plain, frames)
        den = (_scan_normaliser(qp, kp, beta_f, decay_f, reverse=False)
               + _scan_normaliser(qp, kp, beta_f, decay_f, reverse=True))
        out = out / (den + eps)
    return out.permute(0, 2, 4, 1, 3).reshape(b, n, h, d).to(v.dtype)  # [B, T, S, H, D] -> [B, N, H, D]

"""SANA-WM's self-attention: a main branch and a camera branch over the same modulated tokens, summed and sent
through one SiLU output gate and one projection.

- `GDNSelfAttention` (most blocks): Gated DeltaNet linear attention, a delta rule run forwards and backwards
  over the frames (`ops.gdn_bidirectional`) with per-token beta and per-frame decay gates; RoPE on the numerator
  only. Its camera branch runs the same recurrence without the normaliser in UCPE ray space.
- `SoftmaxSelfAttention` (every `softmax_every_n`-th block): full softmax attention over all tokens, and the
  same over the camera-transformed tokens.

Activations are token-major [B, N, C] with N = T * S tokens in (frame, row, col) order; heads are [B, N, H, D].
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .. import ops
from .transformer import RMSNorm
from .world_camera import CameraTransforms, angle_tables

GDN_EPS = 1e-8  # the normaliser eps the WM blocks give their GDN attention
QK_NORM_EPS = 1e-5


class TemporalShortConv(nn.Module):
    """Depthwise conv over frames, symmetric: the causal conv with kernel w (weight [C, 1, K], fla's
    ShortConvolution layout), run forwards and on the reversed frames, minus the centre tap counted twice:
    y[t] = w[K-1] x[t] + sum_j w[K-1-j] (x[t-j] + x[t+j]), zero padded."""

    def __init__(self, channels: int, kernel_size: int):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(channels, 1, kernel_size))

    def forward(self, x: torch.Tensor, frames: int) -> torch.Tensor:
        """x [B, N, C] -> [B, N, C]; each spatial token is filtered along its own frames (`ops.short_conv`)."""
        return ops.short_conv(x, self.weight, frames)


def softmax_attention_bf16(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, camera_branch: bool = False
                           ) -> torch.Tensor:
    """Full softmax attention, q, k, v [B, N, H, D] -> [B, N, H, D] in v's dtype.

    diffusers runs these SDPAs in bf16 even in an fp32 model (for flash attention) and casts back; the rounding is
    part of the model's arithmetic. Its camera branch (`camera_branch`) casts to bf16 from any dtype, fp16
    included, and zero-pads D to the next flash size (112 -> 128), which makes the softmax scale 1 / sqrt(padded D).
    """
    dtype, d = v.dtype, q.shape[-1]
    q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # [B, H, N, D]
    if q.dtype == torch.float32 or camera_branch:
        q, k, v = q.bfloat16(), k.bfloat16(), v.bfloat16()
    pad = (128 if d <= 128 else 256) - d if camera_branch and d not in (32, 64, 128, 256) and d < 256 else 0
    if pad:
        q, k, v = (F.pad(t, (0, pad)) for t in (q, k, v))
    out = F.scaled_dot_product_attention(q, k, v)[..., :d]  # [B, H, N, D]
    return out.transpose(1, 2).to(dtype)


class _CameraAttention(nn.Module):
    """The parameters both variants have: the main q/k/v and q/k norms, the camera branch's own q/k/v projections
    (with bias), norms and output projection, and the shared output gate and projection."""

    def __init__(self, dim: int, head_dim: int):
        super().__init__()
        self.heads, self.head_dim = dim // head_dim, head_dim
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.q_norm, self.k_norm = RMSNorm(dim, QK_NORM_EPS), RMSNorm(dim, QK_NORM_EPS)
        self.q_proj_cam, self.k_proj_cam, self.v_proj_cam = (nn.Linear(dim, dim) for _ in range(3))
        self.q_norm_cam, self.k_norm_cam = RMSNorm(dim, QK_NORM_EPS), RMSNorm(dim, QK_NORM_EPS)
        self.out_proj_cam = nn.Linear(dim, dim)
        self.output_gate = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(*x.shape[:2], self.heads, self.head_dim)  # [B, N, C] -> [B, N, H, D]

    def _camera_qkv(self, x: torch.Tensor):
        """The camera branch's projections [B, N, C] each (k before its norm)."""
        return self.q_proj_cam(x), self.k_proj_cam(x), self.v_proj_cam(x)

    def _output(self, x: torch.Tensor, attended: torch.Tensor) -> torch.Tensor:
        """Gate (in fp32) and project: attended [B, N, C] -> [B, N, C] in x's dtype."""
        return self.proj(ops.silu_gate(attended, self.output_gate(x)).to(x.dtype))


class GDNSelfAttention(_CameraAttention):
    """Bidirectional Gated DeltaNet self-attention with a UCPE camera branch (diffusers'
    `BidirectionalGDNUCPESinglePathLiteLA`, with short convs on k only)."""

    def __init__(self, dim: int, head_dim: int, conv_kernel_size: int):
        super().__init__(dim, head_dim)
        self.beta_proj = nn.Linear(dim, self.heads)
        self.gate_proj = nn.Linear(dim, self.heads)
        self.A_log = nn.Parameter(torch.zeros(self.heads))
        self.dt_bias = nn.Parameter(torch.zeros(self.heads))
        self.conv_k = TemporalShortConv(dim, conv_kernel_size)
        self.conv_k_cam = TemporalShortConv(dim, conv_kernel_size)

    def _gates(self, x: torch.Tensor, frames: int) -> tuple[torch.Tensor, torch.Tensor]:
        """beta [B, N, H] per token (x's dtype), decay [B, T, H] per frame (fp32, from the frame's mean token)."""
        b, n, c = x.shape
        beta = self.beta_proj(x).sigmoid()
        gate = self.gate_proj(x.reshape(b, frames, n // frames, c).mean(dim=2)).float()  # [B, T, H]
        decay = (-self.A_log.float().exp() * F.softplus(gate + self.dt_bias.float())).exp()
        return beta, decay

    def _kernel(self, q: torch.Tensor, k: torch.Tensor, norm_q: RMSNorm, norm_k: RMSNorm, tokens_per_frame: int,
                freqs: torch.Tensor | None = None):
        """RMSNorm then ReLU on q and k [B, N, C], k scaled by D^-1/2 S^-1/2 -> (q, k, q rotated, k rotated), each
        [B, N, H, D] (the rotated ones None without freqs)."""
        cos, sin = angle_tables(freqs) if freqs is not None else (None, None)
        q, q_rot = ops.qk_prep(q, norm_q.weight, norm_q.eps, self.heads, cos=cos, sin=sin)
        k, k_rot = ops.qk_prep(k, norm_k.weight, norm_k.eps, self.heads,
                               scale=(self.head_dim ** -0.5) * (tokens_per_frame ** -0.5), cos=cos, sin=sin)
        return q, k, q_rot, k_rot

    def forward(self, x: torch.Tensor, frames: int, freqs: torch.Tensor,
                camera: CameraTransforms | None) -> torch.Tensor:
        """x [B, N, C] (modulated tokens), freqs [N, D/2] complex -> [B, N, C]."""
        b, n, c = x.shape
        s = n // frames
        beta, decay = self._gates(x, frames)

        # 1. Main branch: the normaliser reads the plain ReLU'd q and k, the numerator their rotations.
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, self.head_dim).unbind(2)
        k = self.conv_k(k.reshape(b, n, c), frames)
        q, k, q_rot, k_rot = self._kernel(q.reshape(b, n, c), k, self.q_norm, self.k_norm, s, freqs)
        attended = ops.gdn_bidirectional(q_rot, k_rot, v, beta, decay, q, k, eps=GDN_EPS).reshape(b, n, c)

        # 2. Camera branch: q by P^T, k and v by P^-1 (and RoPE on the second half of each head), each shrunk
        #    back to its own RMS; beta discounted by the frame's mean key inflation; numerator only; back by P.
        if camera is not None:
            qc, kc, vc = self._camera_qkv(x)
            qc, kc, _, _ = self._kernel(qc, self.conv_k_cam(kc, frames), self.q_norm_cam, self.k_norm_cam, s)
            vc = self._heads(vc)
            qe = camera.encode(qc, camera.p_t)
            ke, inflation = camera.encode(kc, camera.p_inv, inflation=True)  # [B, N, H, 1]: |ke|^2 / |kc|^2
            inflation = inflation.to(kc.dtype)  # the kernel returns fp32; diffusers averages in the model dtype
            ve = camera.encode(vc, camera.p_inv)
            frame_inflation = inflation.reshape(b, frames, s, self.heads).mean(dim=2)  # [B, T, H]
            beta_cam = (beta.reshape(b, frames, s, self.heads)
                        / frame_inflation.clamp_min(1.0)[:, :, None]).reshape(b, n, self.heads)
            out = ops.gdn_bidirectional(qe, ke, ve, beta_cam, decay)  # [B, N, H, D]
            out = camera.decode(out).reshape(b, n, c)
            attended = attended + self.out_proj_cam(out)
        return self._output(x, attended)


class SoftmaxSelfAttention(_CameraAttention):
    """Softmax self-attention with a UCPE camera branch (diffusers' `_SoftmaxUCPESinglePathLiteLA`); the GDN
    gates and short convs the checkpoints carry for these blocks are unused and not built."""

    def forward(self, x: torch.Tensor, frames: int, freqs: torch.Tensor,
                camera: CameraTransforms | None) -> torch.Tensor:
        """x [B, N, C] (modulated tokens), freqs [N, D/2] complex -> [B, N, C]."""
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, self.head_dim).unbind(2)
        cos, sin = angle_tables(freqs)
        _, q = ops.qk_prep(q.reshape(b, n, c), self.q_norm.weight, self.q_norm.eps, self.heads, relu=False, cos=cos,
                           sin=sin)
        _, k = ops.qk_prep(k.reshape(b, n, c), self.k_norm.weight, self.k_norm.eps, self.heads, relu=False, cos=cos,
                           sin=sin)
        attended = softmax_attention_bf16(q, k, v).reshape(b, n, c)

        if camera is not None:
            qc, kc, vc = self._camera_qkv(x)
            qc, kc, vc = self._heads(self.q_norm_cam(qc)), self._heads(self.k_norm_cam(kc)), self._heads(vc)
            qe, ke, ve = camera.encode(qc, camera.p_t), camera.encode(kc, camera.p_inv), camera.encode(vc, camera.p_inv)
            out = softmax_attention_bf16(qe, ke, ve, camera_branch=True)
            out = camera.decode(out).reshape(b, n, c)
            attended = attended + self.out_proj_cam(out)
        return self._output(x, attended)

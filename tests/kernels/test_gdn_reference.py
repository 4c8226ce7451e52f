"""The bidirectional gated delta rule reference against diffusers' own scans and against the recurrence
written out token by token."""

from __future__ import annotations

import pytest
import torch

from sana import ops
from sana.kernels.gdn.reference import gdn_bidirectional_reference

SHAPES = [  # (batch, frames, tokens a frame, heads, head dim)
    pytest.param(2, 3, 5, 2, 8, id="b2-t3-s5-h2-d8"),
    pytest.param(1, 1, 7, 1, 4, id="b1-t1-one-frame"),
    pytest.param(1, 23, 2, 1, 4, id="b1-t23-past-diffusers-chunk-21"),
]


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out.double() - ref.double()).norm() / ref.double().norm()).item()


def _inputs(b, t, s, h, d, seed=0):
    gen = torch.Generator().manual_seed(seed)
    n = t * s
    q, k = (torch.randn(b, n, h, d, generator=gen).relu() * d**-0.5 for _ in range(2))
    v = torch.randn(b, n, h, d, generator=gen)
    q_rot, k_rot = q + 0.1 * torch.randn(q.shape, generator=gen), k + 0.1 * torch.randn(k.shape, generator=gen)
    beta = torch.rand(b, n, h, generator=gen)
    decay = 0.5 + 0.5 * torch.rand(b, t, h, generator=gen)
    return q, k, v, q_rot, k_rot, beta, decay


def _diffusers(q, k, v, q_rot, k_rot, beta, decay, eps, normalised):
    """diffusers' composition of its scans (SanaWMBidirectionalGDN[Cam]Attention.forward without the
    projections, RoPE and masks): forward inclusive, backward over flipped-and-shifted frames."""
    from diffusers.models.transformers.transformer_sana_wm import (
        flip_and_shift,
        torch_chunk_cam_single_path_delta_rule,
        torch_chunk_sana_gdn,
    )

    b, n, h, d = q.shape
    t = decay.shape[1]
    s = n // t
    to_bhdn = lambda x: x.permute(0, 2, 3, 1)  # noqa: E731  [B, N, H, D] -> [B, H, D, N], token-major as in the model
    q, k, v, q_rot, k_rot = map(to_bhdn, (q, k, v, q_rot, k_rot))
    beta = beta.reshape(b, t, s, h).permute(0, 3, 1, 2)  # [B, H, T, S]
    decay = decay.permute(0, 2, 1)  # [B, H, T]
    timed = lambda x: x.view(b, h, d, t, s).permute(0, 1, 3, 2, 4)  # noqa: E731
    untimed = lambda x: x.permute(0, 1, 3, 2, 4).reshape(b, h, d, n)  # noqa: E731
    back = lambda x: torch.flip(x.view(b, h, x.shape[2], t, s), dims=[3]).reshape(b, h, x.shape[2], n)  # noqa: E731
    beta_b, decay_b = flip_and_shift(beta, dim=2), flip_and_shift(decay, dim=2, shift_val=1.0)
    shifted = lambda x: untimed(flip_and_shift(timed(x), dim=2))  # noqa: E731
    flipped = lambda x: untimed(torch.flip(timed(x), dims=[2]))  # noqa: E731
    if normalised:
        num_f, den_f = torch_chunk_sana_gdn(q, k, v, q_rot, k_rot, beta, decay, return_components=True)
        num_b, den_b = torch_chunk_sana_gdn(flipped(q), shifted(k), shifted(v), flipped(q_rot), shifted(k_rot),
                                            beta_b, decay_b, return_components=True)
        out = (num_f + back(num_b)) / (den_f + back(den_b) + eps)
    else:
        out = (torch_chunk_cam_single_path_delta_rule(q_rot, k_rot, v, beta, decay)
               + back(torch_chunk_cam_single_path_delta_rule(flipped(q_rot), shifted(k_rot), shifted(v), beta_b,
                                                              decay_b)))
    return out.permute(0, 3, 1, 2)  # [B, N, H, D]


@pytest.mark.parametrize("normalised", [True, False], ids=["main-branch", "camera-single-path"])
@pytest.mark.parametrize("b, t, s, h, d", SHAPES)
def test_reference_matches_diffusers_scans(b, t, s, h, d, normalised):
    q, k, v, q_rot, k_rot, beta, decay = _inputs(b, t, s, h, d)
    plain = (q, k) if normalised else (None, None)
    out = gdn_bidirectional_reference(q_rot, k_rot, v, beta, decay, *plain, eps=1e-8)
    ref = _diffusers(q, k, v, q_rot, k_rot, beta, decay, 1e-8, normalised)
    assert out.shape == (b, t * s, h, d) and out.dtype == torch.float32
    assert rel_err(out, ref) < 1e-6


def _token_loop(q, k, v, beta, decay, q_plain, k_plain, eps):
    """The recurrence of the module docstring in row form (M [D_k, D_v], one frame's keys as rows), frame by
    frame in float64: a second, independent statement of the same rule."""
    b, n, h, d = q.shape
    t = decay.shape[1]
    s = n // t
    q, k, v, q_plain, k_plain, beta, decay = (x.double() for x in (q, k, v, q_plain, k_plain, beta, decay))
    out = torch.zeros(b, n, h, d, dtype=torch.float64)
    eye = torch.eye(d, dtype=torch.float64)
    for bi in range(b):
        for hi in range(h):
            frame = lambda x, f: x[bi, f * s:(f + 1) * s, hi]  # noqa: E731  [S, D]
            def states(order):
                m, z, seen = torch.zeros(d, d, dtype=torch.float64), torch.zeros(d, dtype=torch.float64), {}
                for f in order:
                    gate = torch.diag(beta[bi, f * s:(f + 1) * s, hi])
                    kf, pf = frame(k, f), frame(k_plain, f)
                    m = decay[bi, f, hi] * (eye - kf.T @ gate @ kf) @ m + kf.T @ gate @ frame(v, f)
                    z = decay[bi, f, hi] * (eye - pf.T @ gate @ pf) @ z + pf.T @ gate.diagonal()
                    seen[f] = (m, z)
                return seen
            fwd, bwd = states(range(t)), states(range(t - 1, -1, -1))
            zero = (torch.zeros(d, d, dtype=torch.float64), torch.zeros(d, dtype=torch.float64))
            for f in range(t):
                m_b, z_b = bwd.get(f + 1, zero)  # backwards: frames T-1 .. f+1 only
                num = frame(q, f) @ (fwd[f][0] + m_b)
                den = frame(q_plain, f) @ (fwd[f][1] + z_b)
                out[bi, f * s:(f + 1) * s, hi] = num / (den[:, None] + eps)
    return out


def test_reference_is_the_documented_recurrence():
    q, k, v, q_rot, k_rot, beta, decay = _inputs(2, 4, 3, 2, 4, seed=1)
    out = gdn_bidirectional_reference(q_rot, k_rot, v, beta, decay, q, k, eps=1e-8)
    assert rel_err(out, _token_loop(q_rot, k_rot, v, beta, decay, q, k, 1e-8)) < 1e-6


def test_dispatch_and_dtypes():
    """ops.gdn_bidirectional runs the reference off the GPU; half inputs come back in their dtype."""
    q, k, v, q_rot, k_rot, beta, decay = _inputs(1, 3, 4, 2, 8, seed=2)
    assert torch.equal(ops.gdn_bidirectional(q_rot, k_rot, v, beta, decay, q, k),
                       gdn_bidirectional_reference(q_rot, k_rot, v, beta, decay, q, k))
    half = [x.bfloat16() for x in (q_rot, k_rot, v, beta)]
    out = ops.gdn_bidirectional(*half, decay)
    assert out.dtype == torch.bfloat16
    assert rel_err(out, gdn_bidirectional_reference(q_rot, k_rot, v, beta, decay)) < 2e-2


def test_one_sided_normaliser_is_refused():
    q, k, v, q_rot, k_rot, beta, decay = _inputs(1, 2, 2, 1, 4)
    with pytest.raises(ValueError, match="both q_plain and k_plain"):
        gdn_bidirectional_reference(q_rot, k_rot, v, beta, decay, q, None)

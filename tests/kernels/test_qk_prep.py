"""SANA-WM's query / key preparation kernel (RMSNorm, ReLU, scale, RoPE) against its reference."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

from kernel_helpers import DEVICE, DTYPES, TOLERANCE, rel_err  # noqa: E402

from sana.kernels import qk_prep  # noqa: E402
from sana.kernels.qk_prep.reference import qk_prep_reference  # noqa: E402

# (batch, tokens, heads, head dim): small, and the WM's 20 heads of 112 (56 pairs in 64 lanes, 20 heads in 32).
SHAPES = [pytest.param(2, 7, 3, 16, id="b2-n7-h3-d16"), pytest.param(1, 3, 20, 112, id="b1-n3-h20-d112")]
MODES = [
    pytest.param(dict(rope=True), id="gdn-q"),
    pytest.param(dict(rope=True, scale=0.05), id="gdn-k"),
    pytest.param(dict(rope=True, relu=False), id="softmax"),
    pytest.param(dict(rope=False, scale=0.3), id="camera-k"),
]


def _inputs(b, n, h, d, dtype, device=DEVICE):
    x = torch.randn(b, n, 3 * h * d, device=device).to(dtype)[..., h * d:2 * h * d]  # the k view of a fused qkv
    weight = (1 + 0.3 * torch.randn(h * d, device=device)).to(dtype)
    angles = torch.view_as_real(torch.polar(torch.ones(n, d // 2, device=device), torch.randn(n, d // 2, device=device)))
    return x, weight, angles[..., 0], angles[..., 1]  # strided cos / sin, as the model passes them


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("b, n, h, d", SHAPES)
def test_matches_reference(b, n, h, d, dtype, mode):
    torch.manual_seed(0)
    x, weight, cos, sin = _inputs(b, n, h, d, dtype)
    mode = dict(mode)
    if not mode.pop("rope"):
        cos = sin = None
    plain, rotated = qk_prep(x, weight, 1e-6, h, cos=cos, sin=sin, **mode)
    ref_plain, ref_rotated = qk_prep_reference(x, weight, 1e-6, h, cos=cos, sin=sin, **mode)
    assert plain.shape == (b, n, h, d) and plain.dtype == dtype and plain.is_contiguous()
    assert rel_err(plain, ref_plain) < TOLERANCE[dtype]
    if cos is None:
        assert rotated is None and ref_rotated is None
    else:
        assert rel_err(rotated, ref_rotated) < TOLERANCE[dtype]


@pytest.mark.parametrize("rows, num_warps", [(2, 4), (4, 8)])
def test_every_launch_shape(rows, num_warps):
    """Several rows a program, with a last program that is only partly filled (7 * 2 rows)."""
    from sana.kernels.qk_prep.triton import Config

    torch.manual_seed(0)
    x, weight, cos, sin = _inputs(2, 7, 3, 16, torch.float32)
    plain, rotated = qk_prep(x, weight, 1e-6, 3, scale=0.05, cos=cos, sin=sin, config=Config(rows, num_warps))
    ref_plain, ref_rotated = qk_prep_reference(x, weight, 1e-6, 3, scale=0.05, cos=cos, sin=sin)
    assert rel_err(plain, ref_plain) < 1e-6 and rel_err(rotated, ref_rotated) < 1e-6


def test_reference_is_the_models_arithmetic():
    """The reference equals the plain ops it replaces: RMSNorm (ops.rms_norm), ReLU, the scale, complex RoPE."""
    from sana import ops

    torch.manual_seed(0)
    x, weight, cos, sin = _inputs(2, 5, 2, 8, torch.float32)
    plain, rotated = qk_prep_reference(x, weight, 1e-6, 2, scale=0.25, cos=cos, sin=sin)
    expected = (torch.relu(ops.rms_norm(x, weight, 1e-6)) * 0.25).reshape(2, 5, 2, 8)
    torch.testing.assert_close(plain, expected)
    freqs = torch.complex(cos, sin)
    turned = torch.view_as_real(torch.view_as_complex(expected.unflatten(-1, (-1, 2))) * freqs[:, None, :])
    torch.testing.assert_close(rotated, turned.flatten(-2))


def test_rejects_bad_inputs():
    x, weight, cos, sin = _inputs(1, 3, 2, 8, torch.float32)
    with pytest.raises(ValueError, match="D even"):
        qk_prep(x, weight, 1e-6, 16)
    with pytest.raises(ValueError, match="weight must be"):
        qk_prep(x, weight[:8], 1e-6, 2)
    with pytest.raises(ValueError, match="cos must be fp32"):
        qk_prep(x, weight, 1e-6, 2, cos=cos[:2], sin=sin)
    with pytest.raises(ValueError, match="share their strides"):
        qk_prep(x, weight, 1e-6, 2, cos=cos, sin=sin.contiguous())


@pytest.mark.gpu
@pytest.mark.skipif(DEVICE != "cuda", reason="needs a CUDA GPU")
def test_gpu_wm_shape_bf16():
    torch.manual_seed(0)
    x, weight, cos, sin = _inputs(2, 21 * 880, 20, 112, torch.bfloat16, "cuda")
    plain, rotated = qk_prep(x, weight, 1e-6, 20, scale=0.05, cos=cos, sin=sin)
    ref_plain, ref_rotated = qk_prep_reference(x, weight, 1e-6, 20, scale=0.05, cos=cos, sin=sin)
    assert rel_err(plain, ref_plain) < 1e-2 and rel_err(rotated, ref_rotated) < 1e-2

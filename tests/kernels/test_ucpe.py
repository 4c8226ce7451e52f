"""SANA-WM's UCPE camera transform kernel against its reference (diffusers' arithmetic, here in the input dtype)."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

from kernel_helpers import DEVICE, DTYPES, TOLERANCE, rel_err  # noqa: E402

from sana.kernels import ucpe  # noqa: E402
from sana.kernels.ucpe.reference import ucpe_reference  # noqa: E402

# (batch, tokens, heads, head dim): a token tail, the WM's head dim 112 (14 groups, 28 pairs: padded tiles).
SHAPES = [
    pytest.param(2, 37, 3, 16, id="b2-n37-h3-d16-token-tail"),
    pytest.param(1, 9, 2, 112, id="b1-n9-h2-d112"),
]
MODES = [
    pytest.param(dict(), id="encode"),
    pytest.param(dict(inverse_rope=True), id="decode"),
    pytest.param(dict(downscale=True), id="downscale"),
    pytest.param(dict(downscale=True, inflation=True), id="downscale-inflation"),
]


def _inputs(b, n, h, d, dtype, device=DEVICE, translation=3.0):
    x = torch.randn(b, n, h, d, device=device).to(dtype)
    mats = torch.randn(b, n, 4, 4, device=device) / 2
    mats[..., :3, 3] *= translation  # the translations inflate the vectors: the downscale acts
    angles = torch.randn(n, d // 4, device=device)
    return x, mats.to(dtype), angles.cos(), angles.sin()


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("b, n, h, d", SHAPES)
def test_matches_reference(b, n, h, d, dtype, mode):
    torch.manual_seed(0)
    x, mats, cos, sin = _inputs(b, n, h, d, dtype)
    out = ucpe(x, mats, cos, sin, **mode)
    # The spec in fp32 from the same (rounded) inputs, rounded once: what the kernel computes.
    ref = ucpe_reference(x.float(), mats.float(), cos, sin, **mode)
    if mode.get("inflation"):
        (out, infl), (ref, ref_infl) = out, ref
        assert infl.shape == (b, n, h, 1) and infl.dtype == torch.float32
        assert rel_err(infl, ref_infl) < 1e-5
    assert out.shape == x.shape and out.dtype == dtype and out.is_contiguous()
    assert rel_err(out, ref.to(dtype)) < TOLERANCE[dtype]



@pytest.mark.parametrize("rows, heads, num_warps", [(16, 1, 2), (8, 2, 4)])
def test_every_launch_shape(rows, heads, num_warps):
    """Fewer heads a program than the tensor has (the last program's heads run past H when 2 does not divide 3)."""
    from sana.kernels.ucpe.triton import Config

    torch.manual_seed(0)
    x, mats, cos, sin = _inputs(2, 37, 3, 16, torch.float32)
    out, infl = ucpe(x, mats, cos, sin, downscale=True, inflation=True, config=Config(rows, heads, num_warps))
    ref, ref_infl = ucpe_reference(x, mats, cos, sin, downscale=True, inflation=True)
    assert rel_err(out, ref) < 1e-6 and rel_err(infl, ref_infl) < 1e-5

def test_downscale_shrinks_and_never_enlarges():
    torch.manual_seed(0)
    x, mats, cos, sin = _inputs(1, 16, 2, 16, torch.float32)
    mats[:] = torch.eye(4) * 0.1  # every vector shrinks (the rotated half keeps its norm): the downscale leaves it
    plain = ucpe(x, mats, cos, sin)
    assert torch.equal(ucpe(x, mats, cos, sin, downscale=True), plain)
    mats[:] = torch.eye(4) * 10.0  # every vector grows: back to the input's RMS
    grown = ucpe(x, mats, cos, sin, downscale=True)
    torch.testing.assert_close(grown.square().mean(-1), x.square().mean(-1), rtol=1e-5, atol=1e-6)


def test_strided_heads():
    """x may be a head view of a fused projection (token stride larger than H * D)."""
    torch.manual_seed(0)
    x, mats, cos, sin = _inputs(2, 11, 2, 16, torch.float32)
    wide = torch.cat([x, x], dim=2)[:, :, 1:3]  # [2, 11, 2, 16], token stride 64
    assert wide.stride(1) == 64
    assert rel_err(ucpe(wide, mats, cos, sin, downscale=True),
                   ucpe_reference(wide, mats, cos, sin, downscale=True)) < 1e-5


def test_the_model_path_matches():
    """`CameraTransforms.encode` / `decode` dispatch through ops.ucpe: the reference off CUDA, the same numbers."""
    from sana.models.world_camera import CameraTransforms

    torch.manual_seed(0)
    x, mats, cos, sin = _inputs(1, 6, 2, 16, torch.float32)
    camera = CameraTransforms(p=mats, p_t=mats.transpose(-1, -2).contiguous(), p_inv=mats, cos=cos, sin=sin)
    torch.testing.assert_close(camera.encode(x, camera.p_t), ucpe(x, camera.p_t, cos, sin, downscale=True))
    torch.testing.assert_close(camera.decode(x), ucpe(x, mats, cos, sin, inverse_rope=True))


def test_rejects_bad_inputs():
    x, mats, cos, sin = _inputs(1, 4, 2, 16, torch.float32)
    with pytest.raises(ValueError, match="multiple of 8"):
        ucpe(x[..., :12], mats, cos, sin)
    with pytest.raises(ValueError, match="mats must be"):
        ucpe(x, mats.transpose(-1, -2), cos, sin)
    with pytest.raises(ValueError, match="cos must be fp32"):
        ucpe(x, mats, cos.double(), sin)
    with pytest.raises(ValueError, match="sin must be fp32"):
        ucpe(x, mats, cos, sin[:, :2])


@pytest.mark.gpu
@pytest.mark.skipif(DEVICE != "cuda", reason="needs a CUDA GPU")
@pytest.mark.parametrize("mode", MODES)
def test_gpu_wm_shape_bf16(mode):
    torch.manual_seed(0)
    x, mats, cos, sin = _inputs(2, 21 * 880, 20, 112, torch.bfloat16, "cuda")
    out = ucpe(x, mats, cos, sin, **mode)
    ref = ucpe_reference(x.float(), mats.float(), cos, sin, **mode)
    if mode.get("inflation"):
        (out, _), (ref, _) = out, ref
    assert torch.isfinite(out).all()
    assert rel_err(out, ref) < 1e-2

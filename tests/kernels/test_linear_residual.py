"""The linear with the gated residual in its GEMM's epilogue, against its reference and the unfused block code."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

from kernel_helpers import DEVICE, DTYPES, TOLERANCE, rel_err  # noqa: E402

from sana import ops  # noqa: E402
from sana.kernels import linear_gated_residual  # noqa: E402
from sana.kernels.linear_residual.reference import linear_gated_residual_reference  # noqa: E402
from sana.kernels.linear_residual.triton import LAUNCH_SHAPES, LaunchShape  # noqa: E402

# (batch, tokens, K, D). The interpreter's tiles are 16 x 16 x 16: 24 tokens put a batch boundary inside a tile
# (the per-row gate), K = 40 leaves a K tail, D = 24 a column tail; 32 tokens keep each tile in one batch element.
SHAPES = [
    pytest.param(2, 24, 40, 24, id="b2-n24-k40-d24"),
    pytest.param(2, 32, 32, 48, id="b2-n32-one-batch-tiles"),
    pytest.param(3, 7, 16, 16, id="b3-n7"),
    pytest.param(1, 50, 64, 40, id="b1-n50"),
]
FORMS = [pytest.param(LaunchShape(), id="pointers"), pytest.param(LaunchShape(tma=True), id="descriptors"),
         pytest.param(LaunchShape(tma=True, persistent=True), id="persistent")]


@pytest.fixture
def fused_calls(monkeypatch):
    """Starts with the fused kernel off; `ops.set_linear_residual_kernel(mode)` then routes the ops' dispatch of it
    through the kernel (on the CPU too: the ops dispatch only CUDA tensors) and the returned list counts the calls."""
    calls = []

    def run_fused(*args):
        calls.append(1)
        return linear_gated_residual(*args)

    real = ops._kernel
    monkeypatch.setattr("sana.ops._kernel", lambda name, *tensors: run_fused if name == "linear_gated_residual"
                        else real(name, *tensors))
    monkeypatch.setattr("sana.ops._linear_residual_mode", "off")
    return calls


def _inputs(b, n, k, d, dtype, *, bias=True, gate=True, device=DEVICE, seed=0):
    gen = torch.Generator(device).manual_seed(seed)
    h = torch.randn(b, n, k, generator=gen, device=device).to(dtype)
    weight = (torch.randn(d, k, generator=gen, device=device) / k**0.5).to(dtype)
    b_ = torch.randn(d, generator=gen, device=device).to(dtype) if bias else None
    x = torch.randn(b, n, d, generator=gen, device=device).to(dtype)
    # a [B, 1, D] view of a [B, 6, D] table, as the block's modulation chunks are
    g = torch.randn(b, 6, d, generator=gen, device=device).to(dtype)[:, 2:3] if gate else None
    return h, weight, b_, x, g


@pytest.mark.parametrize("launch", FORMS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("b, n, k, d", SHAPES)
def test_matches_reference(b, n, k, d, dtype, launch):
    h, weight, bias, x, gate = _inputs(b, n, k, d, dtype)
    out = linear_gated_residual(h, weight, bias, x, gate, launch=launch)
    exact = linear_gated_residual_reference(h.double(), weight.double(), bias.double(), x.double(), gate.double())
    assert out.shape == x.shape and out.dtype == dtype and out.is_contiguous()
    if dtype == torch.float32:
        torch.testing.assert_close(out, exact.float(), rtol=1e-5, atol=1e-5)
    else:  # one rounding of the fp32 result: within a hair of rounding the exact value
        assert rel_err(out, exact) <= 1.05 * rel_err(exact.to(dtype), exact) + 1e-6


@pytest.mark.parametrize("bias, gate", [(False, True), (True, False), (False, False)],
                         ids=["no-bias", "no-gate", "bare"])
def test_bias_and_gate_are_optional(bias, gate):
    h, weight, b_, x, g = _inputs(2, 24, 40, 24, torch.float32, bias=bias, gate=gate)
    for launch in (LaunchShape(), LaunchShape(tma=True)):
        out = linear_gated_residual(h, weight, b_, x, g, launch=launch)
        expected = x + (h @ weight.T + (b_ if bias else 0)) * (g if gate else 1)
        torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


def test_strided_rows_and_the_input_left_alone():
    """h as a view with a row stride (a chunk of a wider projection); x is not written."""
    h, weight, bias, x, gate = _inputs(2, 24, 40, 24, torch.float32)
    wide = torch.randn(2, 24, 72, device=DEVICE)
    wide[..., 8:48] = h
    before = x.clone()
    out = linear_gated_residual(wide[..., 8:48], weight, bias, x, gate)
    torch.testing.assert_close(out, linear_gated_residual_reference(h, weight, bias, x, gate), rtol=1e-5, atol=1e-5)
    assert torch.equal(x, before)


@pytest.mark.skipif(DEVICE != "cuda", reason="launch shapes are a GPU matter (the interpreter uses small tiles)")
@pytest.mark.parametrize("launch", LAUNCH_SHAPES, ids=str)
def test_every_launch_shape_matches_on_a_gpu(launch):
    h, weight, bias, x, gate = _inputs(2, 1000, 320, 224, torch.bfloat16)
    out = linear_gated_residual(h, weight, bias, x, gate, launch=launch)
    exact = linear_gated_residual_reference(h.double(), weight.double(), bias.double(), x.double(), gate.double())
    assert rel_err(out, exact) < TOLERANCE[torch.bfloat16]


def test_bad_arguments_are_refused():
    h, weight, bias, x, gate = _inputs(2, 8, 16, 16, torch.float32)
    with pytest.raises(ValueError, match="weight must be a contiguous"):
        linear_gated_residual(h, weight[:, :8], bias, x, gate)
    with pytest.raises(ValueError, match="gate must be"):
        linear_gated_residual(h, weight, bias, x, gate[:1])
    with pytest.raises(ValueError, match="bias must be"):
        linear_gated_residual(h, weight, bias[:4], x, gate)
    with pytest.raises(ValueError, match="must be \\[B, N, K\\]"):
        linear_gated_residual(h[:1], weight, bias, x, gate)


def test_the_ops_dispatch_is_chosen_not_default(fused_calls):
    """Off unless chosen; where it runs, the block's result equals the unfused one up to the rounding skipped."""
    assert ops.linear_residual_mode() in ops.LINEAR_RESIDUAL_MODES
    with pytest.raises(ValueError, match="mode must be one of"):
        ops.set_linear_residual_kernel("yes")
    h, weight, bias, x, gate = _inputs(2, 24, 40, 24, torch.float32)
    linear = torch.nn.Linear(40, 24).to(DEVICE)
    with torch.no_grad():
        linear.weight.copy_(weight)
        linear.bias.copy_(bias)
    calls = fused_calls
    with torch.no_grad():
        unfused = ops.linear_gated_residual(x, gate, h, linear)
        assert not calls
        ops.set_linear_residual_kernel("residual")
        fused = ops.linear_gated_residual(x, gate, h, linear)
        assert len(calls) == 1
        shift, scale = gate * 0.5, gate * 0.25
        ops.linear_gated_residual_modulated_norm(x, gate, h, linear, shift, scale)
        assert len(calls) == 1  # "residual" leaves the norm's site alone
        ops.set_linear_residual_kernel("all")
        r, normed = ops.linear_gated_residual_modulated_norm(x, gate, h, linear, shift, scale)
        assert len(calls) == 2
    torch.testing.assert_close(fused, unfused, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(r, fused, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(normed, ops.modulated_layer_norm_reference(r, shift, scale, 1e-6), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("mode", ["residual", "all"])
def test_the_image_dit_with_fused_residuals_matches_it_without(mode, fused_calls):
    """The block's three output projections through the fused kernel (interpreter on the CPU): the same forward
    as the unfused one, block boundaries and the last block's plain residual included."""
    from sana.models.transformer import SanaTransformer, TransformerConfig

    config = TransformerConfig.from_dict(dict(
        in_channels=8, out_channels=8, num_attention_heads=4, attention_head_dim=8, num_layers=3,
        num_cross_attention_heads=2, cross_attention_head_dim=12, cross_attention_dim=32, caption_channels=40,
        mlp_ratio=2.5, sample_size=8, patch_size=1))
    torch.manual_seed(0)
    model = SanaTransformer(config).to(DEVICE).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(0.2 * torch.randn_like(p))
    x = torch.randn(2, 8, 8, 8, device=DEVICE)
    text = torch.randn(2, 10, 40, device=DEVICE)
    mask = torch.ones(2, 10, device=DEVICE, dtype=torch.long)
    mask[0, 6:] = 0
    t = torch.tensor([999.0, 300.0], device=DEVICE)
    with torch.no_grad():
        expected = model(x, text, t, text_mask=mask)
        assert not fused_calls
        ops.set_linear_residual_kernel(mode)
        got = model(x, text, t, text_mask=mask)
    # "residual": each block's self-attention output and the last block's Mix-FFN output (no next norm to feed)
    assert len(fused_calls) == (config.num_layers + 1 if mode == "residual" else 3 * config.num_layers)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


def test_the_video_dit_with_fused_residuals_matches_it_without(fused_calls):
    """The video block's two attention outputs through the fused kernel, with a per-frame timestep (the gate is
    then one row a frame's tokens, so tiles cross gate rows)."""
    from sana.models.video_transformer import SanaVideoTransformer, VideoTransformerConfig

    config = VideoTransformerConfig.from_dict(dict(
        num_attention_heads=2, attention_head_dim=16, num_layers=2, num_cross_attention_heads=3,
        cross_attention_head_dim=8, cross_attention_dim=32, caption_channels=20, mlp_ratio=3.0,
        qk_norm="rms_norm_across_heads", rope_max_seq_len=64, in_channels=8, out_channels=6, sample_size=22,
        patch_size=(1, 1, 1)))
    torch.manual_seed(0)
    model = SanaVideoTransformer(config).to(DEVICE).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(0.2 * torch.randn_like(p))
    x = torch.randn(1, 8, 3, 5, 6, device=DEVICE)
    text = torch.randn(1, 7, 20, device=DEVICE)
    t = torch.tensor([[900.0, 500.0, 100.0]], device=DEVICE)  # per latent frame
    with torch.no_grad():
        expected = model(x, text, t)
        assert not fused_calls
        ops.set_linear_residual_kernel("all")
        got = model(x, text, t)
    assert len(fused_calls) == 2 * config.num_layers
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


def test_hopper_takes_the_swept_launch_shapes(monkeypatch):
    from sana.kernels.linear_residual import triton as kernel

    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    assert kernel._default_launch(torch.device("cuda"), 32768) == kernel.HOPPER_LAUNCH
    assert kernel._default_launch(torch.device("cuda"), 2048) == kernel.HOPPER_LAUNCH_FEW_ROWS
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 9))
    assert kernel._default_launch(torch.device("cuda"), 32768) == LAUNCH_SHAPES[0]
    assert kernel._default_launch(torch.device("cpu"), 32768) == LAUNCH_SHAPES[0]

"""fp8 block linears (`sana.models.fp8`): what is replaced, how far the output moves, PAG and memory, on the CPU
(the reference path: the same quantization as the GPU's, the product in fp32)."""

from __future__ import annotations

import copy

import pytest
import torch

from sana.loading import load_transformer
from sana.models.fp8 import Fp8Linear, is_fp8, quantize_blocks_fp8
from tests.tiny_transformer import build_reference, inputs, our_output, relative_error

# fp8 e4m3 rounds weights and activations to 3 mantissa bits (~2^-4 relative each); through the three blocks of a
# tiny model with large random weights that moves the output by 3-9% (the real configs: tests/test_gpu_parity.py).
FP8_BUDGET = 0.15


@pytest.mark.parametrize("kind", ["sana", "sana1.5", "sprint"])
def test_quantized_blocks_stay_within_the_fp8_budget(kind, tmp_path):
    ref = build_reference(kind, tmp_path / "transformer")
    model = load_transformer(tmp_path)
    args = inputs(ref, batch=2)
    expected = our_output(model, *args)
    quantized = copy.deepcopy(model)
    # Tiny widths: the cross-attention (24 wide) is not a multiple of 16 and stays; the other four per block move.
    assert quantize_blocks_fp8(quantized) == 4 * len(model.blocks)
    assert is_fp8(quantized) and not is_fp8(model)
    block = quantized.blocks[0]
    assert isinstance(block.attn.qkv, Fp8Linear) and isinstance(block.ff.point, Fp8Linear)
    assert isinstance(block.cross_attn.q, torch.nn.Linear)
    assert block.attn.qkv.weight_fp8.dtype == torch.float8_e4m3fn
    got = our_output(quantized, *args)
    err = relative_error(got, expected)
    assert torch.isfinite(got).all()
    assert 1e-4 < err < FP8_BUDGET  # moved by the rounding, and not further


def test_perturbed_rows_use_the_quantized_value_projection(tmp_path):
    ref = build_reference("sana", tmp_path / "transformer")
    model = load_transformer(tmp_path)
    quantized = copy.deepcopy(model)
    quantize_blocks_fp8(quantized)
    args = inputs(ref, batch=3)
    expected = our_output(model, *args, perturbed_rows=1, perturbed_layers=(0, 2))
    got = our_output(quantized, *args, perturbed_rows=1, perturbed_layers=(0, 2))
    assert relative_error(got[2:], expected[2:]) < FP8_BUDGET
    plain = our_output(quantized, *args)
    assert relative_error(got[2:], plain[2:]) > 1e-2  # the perturbed row did change


def test_fp8_weights_take_a_byte_a_value(tmp_path):
    build_reference("sana", tmp_path / "transformer")
    model = load_transformer(tmp_path, dtype=torch.bfloat16)
    linear = model.blocks[0].ff.inverted
    quantized = Fp8Linear.from_linear(linear)
    assert quantized.weight_fp8.element_size() == 1 and quantized.weight_fp8.shape == linear.weight.shape
    assert quantized.weight_scale.dtype == torch.float32 and quantized.bias.dtype == torch.bfloat16
    dequantized = quantized.weight_fp8.float() * quantized.weight_scale[:, None]
    assert relative_error(dequantized, linear.weight) < 0.05
    x = torch.randn(2, 5, linear.in_features, dtype=torch.bfloat16)
    assert relative_error(quantized(x), linear(x)) < FP8_BUDGET
    assert torch.equal(quantized.output_rows(x, 16, 48), quantized(x)[..., 16:48])


CASES = [("sana", 0, (), "cpu"), ("sana1.5", 0, (), "cpu"), ("sana", 1, (0, 2), "cpu"),
         pytest.param("sana1.5", 0, (), "cuda", marks=pytest.mark.gpu),
         pytest.param("sana", 1, (0, 2), "cuda", marks=pytest.mark.gpu)]


@pytest.mark.parametrize("kind, rows, layers, device", CASES)
def test_norms_writing_quantized_rows_change_nothing(kind, rows, layers, device, tmp_path, monkeypatch):
    """The qkv and the Mix-FFN's first conv read their norm's fp8 form (`QuantizedRows`): the same quantization
    as the linear's own of the norm's output, so the same output bit for bit (with PAG rows sliced from it too).
    On a GPU in bf16: the norm kernels' fp8 forms against the plain kernels and the row quantizer."""
    from sana import ops
    from sana.models import transformer

    ref = build_reference(kind, tmp_path / "transformer")
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    quantized = load_transformer(tmp_path, dtype=dtype, device=device)
    quantize_blocks_fp8(quantized)
    args = [a.to(device) if isinstance(a, torch.Tensor) else a for a in inputs(ref, batch=3)]
    seen = []
    for name in ("modulated_layer_norm_fp8", "gated_residual_modulated_norm_fp8"):
        real = getattr(ops, name)
        monkeypatch.setattr(ops, name, lambda *a, real=real, name=name, **k: seen.append(name) or real(*a, **k))
    fused = our_output(quantized, *args, perturbed_rows=rows, perturbed_layers=layers)
    # Every block's two norms went the fp8 way: block 0's first alone, the others' in the residual pass before.
    assert seen.count("modulated_layer_norm_fp8") == 1
    assert seen.count("gated_residual_modulated_norm_fp8") == 2 * len(quantized.blocks) - 1

    class NeverFp8:  # isinstance fails: each norm writes its row and each fp8 linear quantizes it
        pass

    monkeypatch.setattr(transformer, "Fp8Linear", NeverFp8)
    unfused = our_output(quantized, *args, perturbed_rows=rows, perturbed_layers=layers)
    assert torch.equal(fused, unfused)


def test_the_video_dit_quantizes_the_same_linears_within_the_budget(tmp_path):
    """`sana video --fp8`: the video block names its linears as the image block does; its temporal conv stays."""
    from sana.loading import load_video_transformer
    from tests import tiny_video

    ref = tiny_video.build_reference("wan", tmp_path / "transformer")
    model = load_video_transformer(tmp_path)
    x, text, mask, t, *_ = tiny_video.inputs(ref)
    with torch.no_grad():
        expected = model(x, text, t, text_mask=mask)
        quantized = copy.deepcopy(model)
        # Tiny widths: the cross-attention (24 wide) stays; the other four linears of each block move.
        assert quantize_blocks_fp8(quantized) == 4 * len(model.blocks)
        block = quantized.blocks[0]
        assert isinstance(block.ff.point, Fp8Linear) and isinstance(block.ff.temporal, torch.nn.Conv2d)
        got = quantized(x, text, t, text_mask=mask)
    assert torch.isfinite(got).all() and 1e-4 < relative_error(got, expected) < FP8_BUDGET


def test_the_world_dit_quantizes_its_listed_linears_within_the_budget(tmp_path):
    """`sana world --fp8`: the world block lists its token linears (camera branch and Plücker projection too); the
    temporal and short convs and the GDN gates stay."""
    from sana.loading import load_world_transformer
    from sana.models.world_transformer import WorldBlock
    from tests import tiny_world

    tiny_world.build_reference(tmp_path / "transformer")
    model = load_world_transformer(tmp_path / "transformer")
    args = tiny_world.inputs()
    present = sum(getattr(getattr(block, parent) if parent else block, name, None) is not None
                  for block in model.blocks for parent, name in WorldBlock.FP8_LINEARS)
    with torch.no_grad():
        expected = model(*args)
        quantized = copy.deepcopy(model)
        assert quantize_blocks_fp8(quantized) == present >= 11 * len(model.blocks)  # the tiny widths are all x16
        block = quantized.blocks[0]
        assert isinstance(block.attn.q_proj_cam, Fp8Linear) and isinstance(block.mlp.temporal, torch.nn.Conv2d)
        assert isinstance(block.attn.beta_proj, torch.nn.Linear)
        got = quantized(*args)
    assert torch.isfinite(got).all() and 1e-4 < relative_error(got, expected) < FP8_BUDGET


def test_fp8_sizes_of_a_world_model_shrink_its_block_weights():
    from sana.memory import sizes_from_spec, with_fp8_blocks
    from sana.registry import get_spec

    spec = get_spec("wm-2.6b")
    sizes = sizes_from_spec(spec)
    fp8 = with_fp8_blocks(sizes, {"_class_name": "SanaWMTransformer3DModel", **spec.transformer})
    assert 0.5 * sizes.transformer_params < fp8.transformer_params < 0.7 * sizes.transformer_params
    assert fp8.block_params < 0.7 * sizes.block_params


def test_fp8_sizes_of_a_video_model_halve_its_block_weights():
    from sana.memory import sizes_from_spec, with_fp8_blocks
    from sana.registry import get_spec

    spec = get_spec("video-2b-480p")
    sizes = sizes_from_spec(spec)
    fp8 = with_fp8_blocks(sizes, spec.transformer)
    # "params" count bf16 halves: fp8 linears count a half each, the temporal conv and the rest stay whole.
    assert 0.5 * sizes.transformer_params < fp8.transformer_params < 0.7 * sizes.transformer_params
    assert fp8.block_params < 0.7 * sizes.block_params


VIDEO_CASES = [("wan", "cpu"), ("ltx2", "cpu"), pytest.param("wan", "cuda", marks=pytest.mark.gpu)]


@pytest.mark.parametrize("kind, device", VIDEO_CASES)
def test_video_norms_writing_quantized_rows_change_nothing(kind, device, tmp_path, monkeypatch):
    """The video block's norms write the fp8 linears' rows too: its first norm, the cross-attention's residual with
    the FFN's norm, and the block boundary's (the temporal conv term y2 inside), with per-token timesteps (image
    to video) grouping the rows. The same output bit for bit as norms writing rows the linears quantize."""
    from sana import ops
    from sana.loading import load_video_transformer
    from sana.models import video_transformer
    from tests import tiny_video

    ref = tiny_video.build_reference(kind, tmp_path / "transformer")
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    quantized = load_video_transformer(tmp_path, dtype=dtype, device=device)
    quantize_blocks_fp8(quantized)
    assert all(block.reads_fp8_rows for block in quantized.blocks)
    x, text, mask, t, *_ = [a.to(device) if isinstance(a, torch.Tensor) else a for a in tiny_video.inputs(ref)]
    per_token = t[:, None].expand(-1, x.shape[2]).clone()
    per_token[:, 0] = 0  # the first latent frame clean, as image to video keeps it
    calls = {"first": 0, "fused": 0}
    first, fused = ops.modulated_layer_norm_fp8, ops.gated_residual_modulated_norm_fp8
    monkeypatch.setattr(ops, "modulated_layer_norm_fp8",
                        lambda *a, **k: calls.__setitem__("first", calls["first"] + 1) or first(*a, **k))
    monkeypatch.setattr(ops, "gated_residual_modulated_norm_fp8",
                        lambda *a, **k: calls.__setitem__("fused", calls["fused"] + 1) or fused(*a, **k))
    with torch.no_grad():
        got = [quantized(x.to(dtype), text.to(dtype), timestep, text_mask=mask) for timestep in (t, per_token)]
    blocks = len(quantized.blocks)
    # one first norm a forward (the rest arrive fused from the block before); per block one fused norm, and one more
    # at each boundary
    assert calls == {"first": 2, "fused": 2 * (2 * blocks - 1)}

    class NeverFp8:  # isinstance fails: each norm writes its row and each fp8 linear quantizes it
        pass

    monkeypatch.setattr(video_transformer, "Fp8Linear", NeverFp8)
    with torch.no_grad():
        plain = [quantized(x.to(dtype), text.to(dtype), timestep, text_mask=mask) for timestep in (t, per_token)]
    assert all(torch.equal(a, b) for a, b in zip(got, plain))
    assert not torch.equal(got[0], got[1])  # the per-token timesteps did change the output

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

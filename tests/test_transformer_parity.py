"""Our DiT against diffusers' SanaTransformer2DModel on the same tiny random weights, fp32 on the CPU."""

from __future__ import annotations

import inspect

import pytest
import torch

from sana.loading import load_transformer
from sana.models.transformer import SanaTransformer, TransformerConfig, sincos_position_embedding
from tests.tiny_transformer import (KINDS, SAMPLE_SIZE, build_reference, inputs, our_output, reference_output,
                                    relative_error, transformer_config)

__all__ = ["build_reference", "inputs", "relative_error"]  # shared with the older loader tests

TOLERANCE = 1e-5
SIZES = {  # latent (height, width): the configured grid, non-square grids, odd sides
    1: [(8, 8), (4, 6), (5, 7), (12, 8)],
    2: [(8, 8), (4, 6), (12, 8)],
}


def _sizes(kind):
    return SIZES[transformer_config(kind)["patch_size"]]


@pytest.mark.parametrize("kind,size", [(k, s) for k in KINDS for s in _sizes(k)],
                         ids=[f"{k}-{s[0]}x{s[1]}" for k in KINDS for s in _sizes(k)])
def test_matches_diffusers(kind, size, tmp_path):
    ref = build_reference(kind, tmp_path / "transformer")
    ours = load_transformer(tmp_path)
    args = inputs(ref, batch=2, height=size[0], width=size[1])
    expected = reference_output(ref, *args)
    got = our_output(ours, *args)
    assert got.shape == expected.shape
    assert relative_error(got, expected) < TOLERANCE


def test_batch_rows_are_independent_and_padding_is_masked(tmp_path):
    ref = build_reference("sana1.5", tmp_path / "transformer")
    ours = load_transformer(tmp_path)
    x, text, mask, t, _ = inputs(ref, batch=2)
    full = our_output(ours, x, text, mask, t)
    alone = our_output(ours, x[:1], text[:1, :3], None, t[:1])  # row 0 keeps 3 tokens: same as dropping the rest
    assert relative_error(alone, full[:1]) < 1e-5
    changed = text.clone()
    changed[0, 3:] += 5.0  # padded tokens must not matter
    assert relative_error(our_output(ours, x, changed, mask, t), full) < 1e-6


@pytest.mark.parametrize("kind", ["sana", "sana1.5"])
def test_the_fused_block_boundary_changes_nothing(kind, tmp_path, monkeypatch):
    """Each block's last residual add computing the next block's first norm gives the very same output as the
    blocks run one by one (the references round alike), PAG rows included."""
    from sana.models import transformer

    ref = build_reference(kind, tmp_path / "transformer")
    ours = load_transformer(tmp_path)
    x, text, mask, t, guidance = inputs(ref, batch=2)
    calls = []
    real = transformer.first_norm_modulation
    monkeypatch.setattr(transformer, "first_norm_modulation", lambda *args: calls.append(1) or real(*args))

    def run():
        with torch.no_grad():
            return ours(x, text, t, mask, guidance, perturbed_rows=1, perturbed_layers=(1,))

    fused = run()
    assert len(calls) == len(ours.blocks)
    monkeypatch.setattr(transformer, "first_norm_modulation", lambda *args: None)
    assert torch.equal(fused, run())  # when the fusion is skipped (the video DiT's test checks when that is)


@pytest.mark.parametrize("kind", ["sana", "sana1.5"])
def test_pag_cfg_rows_match_diffusers(kind, tmp_path):
    """Batch [uncond, cond, perturbed] with diffusers' PAG-CFG processor on one block's self-attention."""
    from diffusers.models.attention_processor import PAGCFGSanaLinearAttnProcessor2_0

    ref = build_reference(kind, tmp_path / "transformer")
    ours = load_transformer(tmp_path)
    args = inputs(ref, batch=3)
    plain_ref = reference_output(ref, *args)
    ref.transformer_blocks[1].attn1.set_processor(PAGCFGSanaLinearAttnProcessor2_0())
    expected = reference_output(ref, *args)
    got = our_output(ours, *args, perturbed_rows=1, perturbed_layers=(1,))
    plain = our_output(ours, *args)
    # The identity path never uses the q/k norm, so the perturbed row matches for every family.
    assert relative_error(got[2:], expected[2:]) < TOLERANCE
    assert relative_error(got[2:], plain[2:]) > 1e-3  # the perturbed row really changed
    assert relative_error(got[:2], plain[:2]) < 1e-6  # the guided rows did not
    if kind == "sana":
        assert relative_error(got, expected) < TOLERANCE
    else:
        # diffusers' PAG processors skip norm_q/norm_k on the guided rows; we keep the model's own attention.
        assert relative_error(got[:2], plain_ref[:2]) < TOLERANCE


def test_pag_identity_rows_match_diffusers(tmp_path):
    """Batch [cond, perturbed] (PAG without CFG) with diffusers' identity processor on two blocks."""
    from diffusers.models.attention_processor import PAGIdentitySanaLinearAttnProcessor2_0

    ref = build_reference("sana", tmp_path / "transformer")
    ours = load_transformer(tmp_path)
    args = inputs(ref, batch=2)
    for index in (0, 2):
        ref.transformer_blocks[index].attn1.set_processor(PAGIdentitySanaLinearAttnProcessor2_0())
    expected = reference_output(ref, *args)
    got = our_output(ours, *args, perturbed_rows=1, perturbed_layers=(0, 2))
    assert relative_error(got, expected) < TOLERANCE


@pytest.mark.parametrize("size", [(8, 8), (4, 6), (7, 3), (16, 12)], ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("scale", [1.0, 2.0])
def test_position_embedding_equals_diffusers(size, scale):
    from diffusers.models.embeddings import get_2d_sincos_pos_embed

    expected = get_2d_sincos_pos_embed(32, size, base_size=SAMPLE_SIZE, interpolation_scale=scale,
                                       output_type="pt").float().unsqueeze(0)
    got = sincos_position_embedding(32, size[0], size[1], SAMPLE_SIZE, scale)
    assert got.shape == (1, size[0] * size[1], 32)
    assert torch.equal(got, expected)


def test_config_defaults_are_diffusers_defaults():
    from diffusers import SanaTransformer2DModel

    defaults = {name: p.default for name, p in inspect.signature(SanaTransformer2DModel.__init__).parameters.items()
                if p.default is not inspect.Parameter.empty}
    ours = TransformerConfig.from_dict({"_class_name": "SanaTransformer2DModel", "_diffusers_version": "0.32.0"})
    for name, value in defaults.items():
        assert getattr(ours, name) == value, name


@pytest.mark.parametrize("bad,match", [({"qk_norm": "layer_norm"}, "qk_norm"),
                                       ({"cross_attention_dim": 64}, "cross_attention_dim")])
def test_config_refuses_what_the_model_cannot_run(bad, match):
    with pytest.raises(ValueError, match=match):
        TransformerConfig.from_dict({**transformer_config("sana"), **bad})


def test_sprint_needs_guidance(tmp_path):
    build_reference("sprint", tmp_path / "transformer")
    ours = load_transformer(tmp_path)
    with pytest.raises(ValueError, match="guidance"):
        ours(torch.zeros(1, 8, 4, 4), torch.zeros(1, 3, 40), torch.ones(1))


@pytest.mark.parametrize("dtype,bound", [(torch.bfloat16, 5e-2), (torch.float16, 5e-3)], ids=["bf16", "fp16"])
def test_half_precision_is_as_close_to_fp32_as_diffusers(dtype, bound, tmp_path):
    """In half precision both models round, in different places (ours adds residuals and modulates in fp32 with one
    rounding); each is measured against the fp32 model, and ours must be no further from it than diffusers'."""
    ref = build_reference("sana1.5", tmp_path / "transformer")
    ours = load_transformer(tmp_path, dtype=dtype)
    assert all(p.dtype == dtype for p in ours.parameters())
    x, text, mask, t, _ = inputs(ref)
    truth = reference_output(ref, x, text, mask, t)
    ref = ref.to(dtype)
    theirs = reference_output(ref, x.to(dtype), text.to(dtype), mask, t)
    got = our_output(ours, x, text, mask, t)
    assert got.dtype == dtype
    ours_error, diffusers_error = relative_error(got.float(), truth), relative_error(theirs.float(), truth)
    assert ours_error < bound
    assert ours_error <= 1.25 * diffusers_error


def test_gradients_flow_with_and_without_checkpointing():
    torch.manual_seed(0)
    model = SanaTransformer(TransformerConfig.from_dict(transformer_config("sana1.5")))
    x, text, t = torch.randn(1, 8, 4, 4), torch.randn(1, 5, 40), torch.tensor([500.0])
    grads = []
    for checkpointing in (False, True):
        model.zero_grad()
        model.gradient_checkpointing = checkpointing
        model(x, text, t).square().mean().backward()
        grads.append(model.blocks[0].attn.qkv.weight.grad.clone())
    assert grads[0].abs().sum() > 0
    assert relative_error(grads[1], grads[0]) < 1e-6

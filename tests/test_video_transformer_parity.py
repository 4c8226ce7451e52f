"""Our SANA-Video DiT against diffusers' SanaVideoTransformer3DModel on the same tiny random weights, fp32 on the
CPU; and the loader's video layouts (diffusers folder, shards, variants, NVlabs names) and errors."""

from __future__ import annotations

import json
import re

import pytest
import torch
from safetensors.torch import load_file, save_file

from sana.errors import SanaError
from sana.loading import load_transformer, load_video_transformer, video_engine_to_diffusers
from sana.models.video_blocks import TemporalMixFFN, rope_axis_dims, rope_tables
from sana.models.video_transformer import SanaVideoTransformer, VideoTransformerConfig, timestep_groups
from tests.tiny_video import (KINDS, build_reference, first_frame_timesteps, inputs, our_output, reference_output,
                              relative_error, video_config)

TOLERANCE = 1e-5
# (frames, height, width) in latent pixels: one frame, non-square grids, odd token counts per side.
GRIDS = {"wan": [(3, 4, 6), (1, 6, 4), (5, 10, 6)], "ltx2": [(3, 4, 6), (2, 3, 5), (4, 5, 3)]}
TIMESTEPS = ("scalar", "first-frame", "per-token")


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    """kind -> (diffusers model, ours loaded from its saved folder, the folder)."""
    out = {}
    for kind in KINDS:
        folder = tmp_path_factory.mktemp(kind)
        ref = build_reference(kind, folder / "transformer")
        out[kind] = ref, load_video_transformer(folder), folder
    return out


def _timesteps(ref, x, t, mode: str) -> torch.Tensor:
    if mode == "scalar":
        return t
    per_token = first_frame_timesteps(ref, x, t)
    if mode == "per-token":  # varies inside frames, so no per-frame shortcut applies
        per_token = per_token + torch.arange(per_token[0].numel()).reshape(per_token.shape[1:]) * 3.0
    return per_token


@pytest.mark.parametrize("mode", TIMESTEPS)
@pytest.mark.parametrize("kind,grid", [(k, g) for k in KINDS for g in GRIDS[k]],
                         ids=[f"{k}-{'x'.join(map(str, g))}" for k in KINDS for g in GRIDS[k]])
def test_matches_diffusers(pairs, kind, grid, mode):
    ref, ours, _ = pairs[kind]
    x, text, mask, t = inputs(ref, batch=2, frames=grid[0], height=grid[1], width=grid[2])
    t = _timesteps(ref, x, t, mode)
    expected = reference_output(ref, x, text, mask, t)
    got = our_output(ours, x, text, mask, t)
    assert got.shape == expected.shape
    assert relative_error(got, expected) < TOLERANCE


def test_timestep_layouts_pick_the_cheapest_exact_grouping(pairs):
    ref, ours, _ = pairs["wan"]
    x, text, mask, t = inputs(ref, frames=3, height=4, width=6)
    grid = (3, 2, 3)
    first_frame = first_frame_timesteps(ref, x, t)  # [2, 1, 3, 2, 3]
    values, groups = timestep_groups(first_frame, 2, grid)
    assert groups == 3 and torch.equal(values, torch.stack([torch.zeros(2), t, t], dim=1).reshape(-1))
    assert timestep_groups(t, 2, grid)[1] == 1
    assert timestep_groups(torch.tensor(5.0), 2, grid)[0].tolist() == [5.0, 5.0]
    varied = first_frame.clone()
    varied[1, 0, 2, 1, 2] += 1.0
    assert timestep_groups(varied, 2, grid)[1] == 18
    with pytest.raises(ValueError, match="fits none"):
        timestep_groups(torch.zeros(2, 4), 2, grid)
    # Per-frame timesteps [B, F'] give the same output as diffusers' per-token layout.
    per_frame = first_frame[:, 0, :, 0, 0]
    assert relative_error(our_output(ours, x, text, mask, per_frame), reference_output(ref, x, text, mask, first_frame)) < TOLERANCE


def test_batch_rows_are_independent_and_padding_is_masked(pairs):
    ref, ours, _ = pairs["wan"]
    x, text, mask, t = inputs(ref, frames=3, height=4, width=6)
    full = our_output(ours, x, text, mask, t)
    alone = our_output(ours, x[:1], text[:1, :3], None, t[:1])  # row 0 keeps 3 tokens: same as dropping the rest
    assert relative_error(alone, full[:1]) < 1e-5
    changed = text.clone()
    changed[0, 3:] += 5.0
    assert relative_error(our_output(ours, x, changed, mask, t), full) < 1e-6


def test_guidance_embedding_matches_diffusers(tmp_path):
    ref = build_reference("wan", tmp_path / "transformer", guidance_embeds=True)
    ours = load_video_transformer(tmp_path)
    x, text, mask, t = inputs(ref, frames=2, height=4, width=4)
    guidance = torch.tensor([0.3, 0.7])
    with torch.no_grad():
        expected = ref(x, encoder_hidden_states=text, timestep=t, guidance=guidance, encoder_attention_mask=mask,
                       return_dict=False)[0]
        got = ours(x, text, t, text_mask=mask, guidance=guidance)
    assert relative_error(got, expected) < TOLERANCE


def test_config_options_match_diffusers(tmp_path):
    """Switches no released model uses: biased q/k/v, an affine FFN norm, no q/k norm, out_channels from in."""
    ref = build_reference("wan", tmp_path / "transformer", attention_bias=True, norm_elementwise_affine=True,
                          qk_norm=None, out_channels=None)
    ours = load_video_transformer(tmp_path)
    x, text, mask, t = inputs(ref, frames=3, height=4, width=6)
    for timestep in (t, first_frame_timesteps(ref, x, t)):
        assert relative_error(our_output(ours, x, text, mask, timestep),
                              reference_output(ref, x, text, mask, timestep)) < TOLERANCE


def test_the_fused_block_boundary_changes_nothing(pairs, monkeypatch):
    """Each block's last residual add computing the next block's first norm gives the very same output as the
    blocks run one by one (the references round alike); the fusion is skipped under autograd and when the next
    block's weights are elsewhere (streamed from host memory, sharded)."""
    from sana.models import video_transformer

    ref, ours, _ = pairs["wan"]
    x, text, mask, t = inputs(ref, batch=2, frames=3, height=4, width=6)
    calls = []
    real = video_transformer.first_norm_modulation
    monkeypatch.setattr(video_transformer, "first_norm_modulation",
                        lambda *args: calls.append(1) or real(*args))
    fused = our_output(ours, x, text, mask, t)
    assert len(calls) == len(ours.blocks)
    monkeypatch.setattr(video_transformer, "first_norm_modulation", lambda *args: None)
    assert torch.equal(fused, our_output(ours, x, text, mask, t))

    block, tokens = ours.blocks[1], torch.zeros(1, 4, ours.config.inner_dim)
    t_mod = torch.zeros(2, 6 * ours.config.inner_dim)
    with torch.no_grad():
        assert real(block, t_mod, tokens) is not None
        assert real(None, t_mod, tokens) is None
        assert real(block, t_mod, tokens.to("meta")) is None  # the block's weights are not where the tokens are
    with torch.enable_grad():
        assert real(block, t_mod, tokens) is None


def test_the_temporal_sum_in_one_pass_changes_nothing(pairs, monkeypatch):
    """Where the Triton implicit GEMM makes y + conv(y) (a GPU), the blocks take the one summed tensor; here the
    reference stands in for the kernel: the output of the two terms added in the residual pass, and the weight
    packed once per block however many forwards run."""
    from sana import ops
    from sana.kernels.temporal_conv.reference import pack_weight, temporal_conv_reference

    ref, ours, _ = pairs["wan"]
    x, text, mask, t = inputs(ref, batch=2, frames=3, height=4, width=6)
    expected = our_output(ours, x, text, mask, t)
    packs = []

    def summed(y, weight, tokens_per_frame, packed):
        weight_packed = packed()
        packs.append(weight_packed.data_ptr())
        assert torch.equal(weight_packed, pack_weight(weight).to(y.dtype))
        return y + temporal_conv_reference(y, weight, tokens_per_frame)

    monkeypatch.setattr(ops, "temporal_conv_plus_input", summed)
    for _ in range(2):  # fp32: x + gate * s against addcmul(x, gate, y + y2) differ in the last bit at most
        torch.testing.assert_close(our_output(ours, x, text, mask, t), expected, rtol=1e-5, atol=1e-6)
    assert len(packs) == 2 * len(ours.blocks) and len(set(packs)) == len(ours.blocks)  # packed once a block


def test_gradient_checkpointing_gives_the_same_gradients(pairs):
    _, ours, _ = pairs["ltx2"]
    x, text, mask, t = inputs(pairs["ltx2"][0], frames=2, height=3, width=4)
    grads = []
    for checkpointing in (False, True):
        ours.zero_grad()
        ours.gradient_checkpointing = checkpointing
        ours(x, text, t, text_mask=mask).square().mean().backward()
        grads.append(torch.cat([p.grad.flatten() for p in ours.parameters()]))
    ours.gradient_checkpointing = False
    ours.zero_grad(set_to_none=True)
    assert relative_error(grads[1], grads[0]) < 1e-6


# -- shared blocks ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("head_dim,grid", [(112, (5, 3, 4)), (16, (3, 2, 5)), (20, (1, 4, 4))])
def test_rope_tables_equal_diffusers_buffers(head_dim, grid):
    from diffusers.models.transformers.transformer_sana_video import WanRotaryPosEmbed

    cos, sin = WanRotaryPosEmbed(head_dim, (1, 1, 1), 64)(torch.zeros(1, 1, *grid))
    ours = rope_tables(head_dim, *grid, max_len=64)
    assert torch.equal(ours[0], cos.reshape(-1, head_dim)) and torch.equal(ours[1], sin.reshape(-1, head_dim))
    assert rope_axis_dims(112) == (40, 36, 36)
    with pytest.raises(ValueError, match="exceeds"):
        rope_tables(head_dim, 65, 1, 1, max_len=64)


def test_temporal_mix_ffn_matches_diffusers_with_gradients():
    from diffusers.models.transformers.transformer_sana_video import GLUMBTempConv

    torch.manual_seed(0)
    dim, ratio, (b, f, h, w) = 24, 2.5, (2, 4, 3, 5)
    ref = GLUMBTempConv(dim, dim, ratio, norm_type=None, residual_connection=False)
    for p in ref.parameters():
        p.data.normal_(0, 0.2)
    ours = TemporalMixFFN(dim, int(ratio * dim))
    ours.load_state_dict({"inverted.weight": ref.conv_inverted.weight[:, :, 0, 0], "inverted.bias": ref.conv_inverted.bias,
                          "depthwise.weight": ref.conv_depth.weight, "depthwise.bias": ref.conv_depth.bias,
                          "point.weight": ref.conv_point.weight[:, :, 0, 0], "temporal.weight": ref.conv_temp.weight})
    x = torch.randn(b, f, h, w, dim)
    x_ref, x_ours = x.clone().requires_grad_(), x.flatten(1, 3).clone().requires_grad_()
    expected, got = ref(x_ref).flatten(1, 3), ours(x_ours, f, h, w)
    assert relative_error(got, expected) < TOLERANCE
    expected.square().sum().backward()
    got.square().sum().backward()
    assert relative_error(x_ours.grad, x_ref.grad.flatten(1, 3)) < TOLERANCE
    assert relative_error(ours.temporal.weight.grad, ref.conv_temp.weight.grad) < TOLERANCE


# -- loading ------------------------------------------------------------------------------------------------

def _assert_matches(model, ref):
    x, text, mask, t = inputs(ref, frames=2, height=4, width=6)
    assert relative_error(our_output(model, x, text, mask, t), reference_output(ref, x, text, mask, t)) < TOLERANCE


def _config(folder) -> dict:
    return json.loads((folder / "transformer" / "config.json").read_text())


def test_load_transformer_dispatches_on_class_name(pairs):
    ref, _, folder = pairs["wan"]
    model = load_transformer(folder)
    assert isinstance(model, SanaVideoTransformer)
    _assert_matches(model, ref)


def test_sharded_and_variant_folders(pairs, tmp_path):
    ref, _, _ = pairs["ltx2"]
    ref.save_pretrained(tmp_path / "sharded" / "transformer", max_shard_size="20KB")
    assert (tmp_path / "sharded" / "transformer" / "diffusion_pytorch_model.safetensors.index.json").is_file()
    model = load_video_transformer(tmp_path / "sharded")
    assert len(model.load_report.files) > 1
    _assert_matches(model, ref)
    ref.save_pretrained(tmp_path / "variant" / "transformer", variant="fp16")
    model = load_video_transformer(tmp_path / "variant" / "transformer", variant="fp16")
    assert model.load_report.files == ["diffusion_pytorch_model.fp16.safetensors"]
    _assert_matches(model, ref)


def nvlabs_state(diffusers: dict[str, torch.Tensor], num_layers: int) -> dict[str, torch.Tensor]:
    """NVlabs SANA-Video names for a diffusers state dict, written out from the public conversion script's
    naming, independently of the loader's tables."""
    d = dict(diffusers)
    out = {}
    for name, original in [("patch_embedding", "x_embedder.proj"), ("caption_projection.linear_1", "y_embedder.y_proj.fc1"),
                           ("caption_projection.linear_2", "y_embedder.y_proj.fc2"),
                           ("time_embed.emb.timestep_embedder.linear_1", "t_embedder.mlp.0"),
                           ("time_embed.emb.timestep_embedder.linear_2", "t_embedder.mlp.2"),
                           ("time_embed.linear", "t_block.1"), ("proj_out", "final_layer.linear")]:
        out[f"{original}.weight"] = d.pop(f"{name}.weight")
        out[f"{original}.bias"] = d.pop(f"{name}.bias")
    out["attention_y_norm.weight"] = d.pop("caption_norm.weight")
    out["final_layer.scale_shift_table"] = d.pop("scale_shift_table")
    for i in range(num_layers):
        src, dst = f"transformer_blocks.{i}.", f"blocks.{i}."
        out[dst + "scale_shift_table"] = d.pop(src + "scale_shift_table")
        out[dst + "attn.qkv.weight"] = torch.cat([d.pop(src + f"attn1.to_{n}.weight") for n in "qkv"])
        out[dst + "attn.q_norm.weight"] = d.pop(src + "attn1.norm_q.weight")
        out[dst + "attn.k_norm.weight"] = d.pop(src + "attn1.norm_k.weight")
        out[dst + "attn.proj.weight"] = d.pop(src + "attn1.to_out.0.weight")
        out[dst + "attn.proj.bias"] = d.pop(src + "attn1.to_out.0.bias")
        for kind in ("weight", "bias"):
            out[dst + f"cross_attn.q_linear.{kind}"] = d.pop(src + f"attn2.to_q.{kind}")
            out[dst + f"cross_attn.kv_linear.{kind}"] = torch.cat([d.pop(src + f"attn2.to_{n}.{kind}") for n in "kv"])
            out[dst + f"cross_attn.proj.{kind}"] = d.pop(src + f"attn2.to_out.0.{kind}")
        out[dst + "cross_attn.q_norm.weight"] = d.pop(src + "attn2.norm_q.weight")
        out[dst + "cross_attn.k_norm.weight"] = d.pop(src + "attn2.norm_k.weight")
        for conv, original in (("conv_inverted", "inverted_conv"), ("conv_depth", "depth_conv")):
            out[dst + f"mlp.{original}.conv.weight"] = d.pop(src + f"ff.{conv}.weight")
            out[dst + f"mlp.{original}.conv.bias"] = d.pop(src + f"ff.{conv}.bias")
        out[dst + "mlp.point_conv.conv.weight"] = d.pop(src + "ff.conv_point.weight")
        out[dst + "mlp.t_conv.weight"] = d.pop(src + "ff.conv_temp.weight")
    assert not d, f"untranslated: {sorted(d)}"
    # Tensors the original checkpoints carry and the model never uses.
    out["y_embedder.y_embedding"] = torch.randn(5, 20)
    out["logvar_linear.weight"] = torch.randn(1, 32)
    return out


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_nvlabs_checkpoint(pairs, tmp_path, suffix):
    ref, _, folder = pairs["wan"]
    state = nvlabs_state(ref.state_dict(), ref.config.num_layers)
    path = tmp_path / f"SANA_Video_tiny{suffix}"
    if suffix == ".pth":
        torch.save({"state_dict": state}, path)
    else:
        save_file({k: v.contiguous() for k, v in state.items()}, path)
    model = load_video_transformer(path, config=_config(folder))
    assert model.load_report.unexpected == []
    _assert_matches(model, ref)


def test_engine_to_diffusers_inverts_the_mapping(pairs):
    ref, ours, _ = pairs["wan"]
    back = video_engine_to_diffusers(ours.state_dict(), guidance_embeds=False)
    expected = ref.state_dict()
    assert sorted(back) == sorted(expected)
    assert all(torch.equal(back[k], expected[k]) for k in expected)


def test_missing_and_misshapen_tensors_are_named(pairs, tmp_path):
    _, _, folder = pairs["wan"]
    state = load_file(folder / "transformer" / "diffusion_pytorch_model.safetensors")
    config = _config(folder)
    missing = dict(state)
    del missing["transformer_blocks.1.ff.conv_temp.weight"]
    save_file(missing, tmp_path / "missing.safetensors")
    with pytest.raises(SanaError, match=r"lacks 1 weight\(s\): transformer_blocks\.1\.ff\.conv_temp\.weight \("):
        load_video_transformer(tmp_path / "missing.safetensors", config=config)
    qkv = {k: v for k, v in missing.items() if not re.match(r"transformer_blocks\.1\.attn1\.to_[qkv]\.", k)}
    save_file(qkv, tmp_path / "no_qkv.safetensors")
    with pytest.raises(SanaError, match=r"lacks 2 weight\(s\): transformer_blocks\.1\.attn1\.to_q/to_k/to_v\.weight"):
        load_video_transformer(tmp_path / "no_qkv.safetensors", config=config)
    del missing["transformer_blocks.0.attn1.to_k.weight"]
    save_file(missing, tmp_path / "no_k.safetensors")
    with pytest.raises(SanaError, match=r"transformer_blocks\.0\.attn1\.to_k\.weight"):
        load_video_transformer(tmp_path / "no_k.safetensors", config=config)
    wrong = dict(state)
    wrong["patch_embedding.weight"] = torch.zeros(32, 16, 1, 1, 2)
    save_file(wrong, tmp_path / "wrong.safetensors")
    with pytest.raises(SanaError, match=r"'patch_embedding\.weight' has shape \(32, 16, 1, 1, 2\)") as info:
        load_video_transformer(tmp_path / "wrong.safetensors", config=config)
    assert "\n" not in str(info.value)


def test_bad_configs_are_refused(pairs):
    _, _, folder = pairs["wan"]
    config = _config(folder)
    for change, match in [({"patch_size": 2}, "patch_size"), ({"qk_norm": "layer_norm"}, "qk_norm"),
                          ({"cross_attention_dim": 24}, "cross_attention_dim")]:
        with pytest.raises(SanaError, match=match):
            load_video_transformer(folder, config={**config, **change})
    assert VideoTransformerConfig.from_dict(video_config("ltx2")).patch_size == (1, 1, 1)

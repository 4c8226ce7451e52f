"""Our SANA-WM DiT against diffusers' `SanaWMTransformer3DModel` on the same random weights (CPU, fp32), the
camera path being live, and loading diffusers folders, NVlabs-named files and broken checkpoints."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

from tiny_world import build_reference, camera_inputs, inputs, transformer_config

from sana.errors import SanaError
from sana.loading import load_transformer, load_world_transformer
from sana.models.world_camera import CameraTransforms, ray_matrices, rope_frequencies
from sana.models.world_transformer import SanaWorldTransformer

PARITY = 1e-5
SHAPES = [  # (batch, latent frames, height, width): non-square grids, several frames
    pytest.param(2, 3, 4, 6, id="b2-t3-4x6"),
    pytest.param(2, 4, 3, 8, id="b2-t4-3x8"),
]


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out.double() - ref.double()).norm() / ref.double().norm()).item()


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """(diffusers model, ours loaded from its saved folder, the folder)."""
    folder = tmp_path_factory.mktemp("wm") / "transformer"
    ref = build_reference(folder)
    return ref, load_world_transformer(folder), folder


def _reference(ref, x, timestep, text, mask, camera, plucker):
    with torch.no_grad():
        return ref(x, timestep, text, mask=mask, camera_conditions=camera, chunk_plucker=plucker,
                   return_dict=False)[0]


@pytest.mark.parametrize("batch, frames, height, width", SHAPES)
def test_matches_diffusers(models, batch, frames, height, width):
    ref, ours, _ = models
    args = inputs(batch, frames, height, width)
    with torch.no_grad():
        out = ours(*args)
    expected = _reference(ref, *args)
    assert out.shape == expected.shape == (batch, 8, frames, height, width)
    assert rel_err(out, expected) < PARITY


def test_without_camera_matches_diffusers(models):
    """No camera tensors: no camera branch and no Plücker add, in both."""
    ref, ours, _ = models
    x, timestep, text, mask, _, _ = inputs()
    with torch.no_grad():
        out = ours(x, timestep, text, mask)
    assert rel_err(out, _reference(ref, x, timestep, text, mask, None, None)) < PARITY


def test_attention_blocks_match_diffusers(models):
    """Each block's self-attention on the same input: both variants, both branches. The softmax blocks' bf16
    rounding and padded-head scale are pinned here without the whole model amplifying last-bit differences."""
    ref, ours, _ = models
    frames, height, width = 3, 4, 6
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(2, frames * height * width, 48, generator=gen)
    camera, _ = camera_inputs(2, frames, height, width, seed=1)
    freqs = ours.rope(frames, height, width, x.device)
    cameras = CameraTransforms.build(camera, height, width, freqs, 24)
    with torch.no_grad():
        for index, (theirs, mine) in enumerate(zip(ref.blocks, ours.blocks)):
            expected = theirs.attn(x, HW=(frames, height, width), rotary_emb=ref.rope((frames, height, width)),
                                   camera_conditions=camera)
            assert rel_err(mine.attn(x, frames, freqs, cameras), expected) < 1e-6, f"block {index}"


def test_rope_and_rays_match_diffusers():
    from diffusers.models.transformers.transformer_sana_wm import (
        SanaWMRotaryPosEmbed,
        _process_camera_conditions_ucpe,
    )

    freqs = rope_frequencies(112, 5, 22, 40)
    expected = SanaWMRotaryPosEmbed(112, (1, 1, 1), 1024)((5, 22, 40))[0, 0]
    assert freqs.dtype == torch.complex64 and torch.equal(freqs, expected)

    camera, _ = camera_inputs(2, 3, 4, 6, seed=2)
    rays, _ = _process_camera_conditions_ucpe(camera, 2, (3, 4, 6), (1, 1, 1))
    assert rel_err(ray_matrices(camera, 4, 6), rays.reshape(2, -1, 4, 4)) < 1e-6


def test_camera_is_live(models):
    """Another camera path changes the output through the ray transforms and through the Plücker embedding."""
    _, ours, _ = models
    x, timestep, text, mask, camera, plucker = inputs()
    other_camera, other_plucker = camera_inputs(2, 3, 4, 6, seed=7)
    with torch.no_grad():
        base = ours(x, timestep, text, mask, camera, plucker)
        by_rays = rel_err(ours(x, timestep, text, mask, other_camera, plucker), base)
        by_plucker = rel_err(ours(x, timestep, text, mask, camera, other_plucker), base)
    assert by_rays > 1e-3 and by_plucker > 1e-3  # parity holds to 1e-5


def test_timesteps_are_truncated(models):
    """diffusers embeds timestep.long(): 857.69 and 857 give the same output."""
    _, ours, _ = models
    x, timestep, text, mask, camera, plucker = inputs()
    with torch.no_grad():
        assert torch.equal(ours(x, timestep, text, mask, camera, plucker),
                           ours(x, timestep.floor(), text, mask, camera, plucker))


def test_bfloat16_runs_on_the_cpu(models):
    """The camera geometry runs in the model dtype (diffusers cannot do that on a CPU in bf16); close to fp32."""
    _, ours, folder = models
    half = load_world_transformer(folder, dtype=torch.bfloat16)
    args = inputs()
    with torch.no_grad():
        out = half(*args)
        assert out.dtype == torch.bfloat16
        assert rel_err(out, ours(*args)) < 5e-2


# -- loading ------------------------------------------------------------------------------------------------

def test_folder_load_reports_what_it_ignores(models):
    _, ours, folder = models
    report = ours.load_report
    assert report.files == ["diffusion_pytorch_model.safetensors"] and report.unexpected == []
    assert "raymap_embedder.proj.weight" in report.ignored and "blocks.0.attn.recall_gate" in report.ignored
    assert "blocks.1.attn.beta_proj.weight" in report.ignored  # GDN gate of a softmax block
    assert isinstance(load_transformer(folder.parent), SanaWorldTransformer)  # the model folder, by _class_name


def _nvlabs_names(state: dict) -> dict:
    """diffusers names -> the NVlabs checkpoint's (the timestep MLP), plus tensors only NVlabs files carry."""
    nvlabs = {"t_embedder.linear_1.": "t_embedder.mlp.0.", "t_embedder.linear_2.": "t_embedder.mlp.2."}
    out = {}
    for key, tensor in state.items():
        prefix = next((p for p in nvlabs if key.startswith(p)), None)
        out[key if prefix is None else nvlabs[prefix] + key[len(prefix):]] = tensor
    out["pos_embed"] = torch.zeros(1, 4, 48)
    out["y_embedder.y_embedding"] = torch.zeros(300, 16)
    return out


def test_nvlabs_single_file(models, tmp_path):
    ref, ours, folder = models
    state = load_file(folder / "diffusion_pytorch_model.safetensors")
    path = tmp_path / "sana_wm.safetensors"
    save_file(_nvlabs_names(state), path)
    with pytest.raises(SanaError, match="holds weights only"):
        load_world_transformer(path)
    model = load_world_transformer(path, config=transformer_config())
    assert model.load_report.unexpected == []
    args = inputs()
    with torch.no_grad():
        assert torch.equal(model(*args), ours(*args))


def _broken_folder(folder, tmp_path, edit):
    state = load_file(folder / "diffusion_pytorch_model.safetensors")
    edit(state)
    out = tmp_path / "broken"
    out.mkdir()
    (out / "config.json").write_text((folder / "config.json").read_text())
    save_file(state, out / "diffusion_pytorch_model.safetensors")
    return out


def test_missing_tensor_is_named(models, tmp_path):
    _, _, folder = models
    broken = _broken_folder(folder, tmp_path, lambda s: s.pop("blocks.2.mlp.t_conv.weight"))
    with pytest.raises(SanaError, match=r"lacks 1 weight\(s\): blocks\.2\.mlp\.t_conv\.weight"):
        load_world_transformer(broken)


def test_misshapen_tensor_is_named(models, tmp_path):
    _, _, folder = models
    def edit(state):
        state["blocks.0.attn.conv_k.weight"] = torch.zeros(48, 1, 3)
    with pytest.raises(SanaError, match=r"'blocks\.0\.attn\.conv_k\.weight' has shape \(48, 1, 3\)"):
        load_world_transformer(_broken_folder(folder, tmp_path, edit))


def test_unknown_tensor_is_reported(models, tmp_path):
    _, _, folder = models
    model = load_world_transformer(_broken_folder(folder, tmp_path, lambda s: s.update(extra=torch.zeros(2))))
    assert model.load_report.unexpected == ["extra"]


@pytest.mark.parametrize("change, message", [
    ({"patch_size": [1, 2, 2]}, "patch_size"),
    ({"cam_attn_compress": 2}, "cam_attn_compress"),
    ({"ffn_type": "mlp"}, "ffn_type"),
    ({"linear_head_dim": 20}, "multiple of 8"),
    ({"_class_name": "SanaVideoTransformer3DModel"}, "not a SANA-WM transformer"),
])
def test_unsupported_configs_are_refused(models, change, message):
    _, _, folder = models
    config = {**transformer_config(), "_class_name": "SanaWMTransformer3DModel", **change}
    with pytest.raises(SanaError, match=message):
        load_world_transformer(folder / "diffusion_pytorch_model.safetensors", config=config)


def test_camera_branch_attends_in_bf16_from_any_dtype():
    """diffusers' softmax camera branch casts q, k, v to float and then bf16 whatever the model's dtype, and pads
    the head to 128; the main branch casts only fp32. In an fp16 model the two differ."""
    import torch.nn.functional as F

    from sana.models.world_attention import softmax_attention_bf16

    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 12, 2, 112, generator=gen).half() for _ in range(3))

    def diffusers_rule(cast, pad):
        a, b, c = (t.transpose(1, 2) for t in (q, k, v))
        if cast:
            a, b, c = (t.float().bfloat16() for t in (a, b, c))
        if pad:
            a, b, c = (F.pad(t, (0, 16)) for t in (a, b, c))
        return F.scaled_dot_product_attention(a, b, c)[..., :112].transpose(1, 2).half()

    camera = softmax_attention_bf16(q, k, v, camera_branch=True)
    assert torch.equal(camera, diffusers_rule(cast=True, pad=True))
    assert not torch.equal(camera, diffusers_rule(cast=False, pad=True))
    assert torch.equal(softmax_attention_bf16(q, k, v), diffusers_rule(cast=False, pad=False))

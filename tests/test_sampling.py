"""Samplers, guidance and resolution binning against diffusers' own helpers."""

import numpy as np
import pytest
import torch

from sana import sampling
from sana.errors import UsageError
from sana.pipelines.sizes import aspect_ratio_bins, binned_size


def _diffusers_bins() -> dict:
    from diffusers.pipelines.pixart_alpha.pipeline_pixart_alpha import ASPECT_RATIO_512_BIN, ASPECT_RATIO_1024_BIN
    from diffusers.pipelines.pixart_alpha.pipeline_pixart_sigma import ASPECT_RATIO_2048_BIN
    from diffusers.pipelines.sana.pipeline_sana import ASPECT_RATIO_4096_BIN

    return {512: ASPECT_RATIO_512_BIN, 1024: ASPECT_RATIO_1024_BIN, 2048: ASPECT_RATIO_2048_BIN, 4096: ASPECT_RATIO_4096_BIN}


def test_bins_are_diffusers_tables_in_their_order():
    ours, theirs = aspect_ratio_bins(), _diffusers_bins()
    assert set(ours) == set(theirs)
    for native, table in theirs.items():
        assert list(ours[native]) == list(table)  # the order decides ties, as in diffusers' min()
        assert all([int(h), int(w)] == ours[native][r] and h == int(h) and w == int(w) for r, (h, w) in table.items())


@pytest.mark.parametrize("native", [512, 1024, 2048, 4096])
@pytest.mark.parametrize("size", [(1024, 1024), (1920, 1080), (768, 1344), (4096, 1024), (333, 999), (1000, 1111)],
                         ids=str)
def test_binning_matches_diffusers(native, size):
    from diffusers.image_processor import PixArtImageProcessor

    width, height = size
    ref_h, ref_w = PixArtImageProcessor.classify_height_width_bin(height, width, ratios=_diffusers_bins()[native])
    assert binned_size(width, height, native) == (ref_w, ref_h)


def test_binning_imports_no_diffusers_pipeline():
    import subprocess
    import sys

    code = ("import sys; from sana.pipelines.sizes import binned_size; binned_size(1920, 1080, 4096); "
            "print(any(m.startswith('diffusers.pipelines') for m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_models_without_bins_keep_the_size():
    assert binned_size(96, 64, 32) == (96, 64)


def test_guidance_combines_cfg_and_pag_rows():
    b = 2
    uncond, cond, perturbed = torch.randn(b, 3), torch.randn(b, 3), torch.randn(b, 3)
    both = sampling.guided(torch.cat([uncond, cond, perturbed]), batch=b, guidance=4.5, pag=2.0)
    torch.testing.assert_close(both, uncond + 4.5 * (cond - uncond) + 2.0 * (cond - perturbed))
    cfg_only = sampling.guided(torch.cat([uncond, cond]), batch=b, guidance=4.5, pag=0.0)
    torch.testing.assert_close(cfg_only, uncond + 4.5 * (cond - uncond))
    pag_only = sampling.guided(torch.cat([cond, perturbed]), batch=b, guidance=1.0, pag=3.0)
    torch.testing.assert_close(pag_only, cond + 3.0 * (cond - perturbed))


def test_noise_is_what_diffusers_draws_for_the_seed():
    from diffusers.utils.torch_utils import randn_tensor

    ours = sampling.initial_noise([sampling.cpu_generator(5), sampling.cpu_generator(6)], (4, 3, 2))
    ref = randn_tensor((2, 4, 3, 2), generator=[torch.Generator().manual_seed(5), torch.Generator().manual_seed(6)])
    torch.testing.assert_close(ours, ref, rtol=0, atol=0)


def test_flow_dpm_uses_the_shift():
    a = sampling.make_scheduler("flow-dpm", flow_shift=3.0)
    b = sampling.make_scheduler("flow-dpm", flow_shift=6.0)
    a.set_timesteps(20)
    b.set_timesteps(20)
    assert a.config.flow_shift == 3.0 and b.config.flow_shift == 6.0
    assert (b.sigmas[1:-1] > a.sigmas[1:-1]).all()  # a larger shift keeps more noise at every step


def test_unknown_sampler_and_sprint_steps_are_usage_errors():
    with pytest.raises(UsageError):
        sampling.make_scheduler("ddim", flow_shift=3.0)
    scm = sampling.make_scheduler("scm", flow_shift=3.0)
    with pytest.raises(UsageError):
        sampling.set_scm_timesteps(scm, 5, max_timesteps=1.5708, intermediate_timesteps=1.3)
    sampling.set_scm_timesteps(scm, 2, max_timesteps=1.5708, intermediate_timesteps=1.3)
    torch.testing.assert_close(scm.timesteps, torch.tensor([1.5708, 1.3, 0.0]))
    sampling.set_scm_timesteps(scm, 3, max_timesteps=1.5708, intermediate_timesteps=1.3)
    assert len(scm.timesteps) == 4


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_pixels_to_pil_equals_diffusers_postprocess(dtype):
    """Our uint8 conversion on the pixels' device gives diffusers' PIL image byte for byte, ties included."""
    from diffusers.image_processor import PixArtImageProcessor

    from sana.pipelines.image import pixels_to_pil

    torch.manual_seed(0)
    pixels = torch.rand(1, 3, 37, 53) * 2.4 - 1.2  # beyond [-1, 1] too: clamped
    ties = (torch.arange(256).float() + 0.5) / 255 * 2 - 1  # values that land on .5 after scaling
    pixels[0, 0, 0, :53] = ties[:53]
    pixels = pixels.to(dtype)
    ours = np.asarray(pixels_to_pil(pixels))
    theirs = np.asarray(PixArtImageProcessor(vae_scale_factor=32).postprocess(pixels, output_type="pil")[0])
    assert ours.shape == theirs.shape == (37, 53, 3) and ours.dtype == np.uint8
    assert np.array_equal(ours, theirs)

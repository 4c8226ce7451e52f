"""The SANA-Video pipelines against diffusers' `SanaVideoPipeline` / `SanaImageToVideoPipeline`: every frame at the
same seed, on tiny random pipelines with the Wan 2.1 and the LTX-2 VAE, in fp32 on the CPU."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from sana.errors import SanaError
from sana.pipelines import sizes
from sana.pipelines.common import Events
from sana.pipelines.video import VideoPipeline, VideoRequest, motion_prompt
from tests.cli_helpers import psnr
from tests.tiny_pipeline import build_tokenizer
from tests.tiny_video_pipeline import build_pipeline, first_frame, image_to_video_from

# Tiny clips: 9 frames (3 Wan / 2 LTX-2 latent frames); LTX-2's reflect padding needs >= 2 latents a side.
SIZES = {"wan": (64, 32), "ltx2": (96, 64)}
FRAMES, STEPS = 9, 4
PROMPT, NEGATIVE = "A Cat walking on the Grass", "blurry"


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """{name: (diffusers pipeline, folder)}, all saved before any runs (a run changes the tokenizer's state)."""
    tokenizer = build_tokenizer(tmp_path_factory.mktemp("tokenizer"))
    built = {}
    for name, vae, learned_sigma in (("wan", "wan", False), ("ltx2", "ltx2", False), ("wan-sigma", "wan", True)):
        path = tmp_path_factory.mktemp(name)
        built[name] = (build_pipeline(path, vae, seed=len(built), learned_sigma=learned_sigma, tokenizer=tokenizer),
                       path)
    return built


@pytest.fixture(scope="module")
def ours(models):
    return {name: VideoPipeline.from_pretrained(path, dtype=torch.float32, device="cpu")
            for name, (_, path) in models.items()}


def _request(name: str, **overrides) -> VideoRequest:
    width, height = SIZES[name.split("-")[0]]
    values = dict(prompt=PROMPT, seeds=[7], width=width, height=height, frames=FRAMES, steps=STEPS, guidance=6.0,
                  sampler="flow-dpm", flow_shift=8.0, negative_prompt=NEGATIVE, motion_score=30)
    return VideoRequest(**{**values, **overrides})


def _diffusers_frames(pipe, request: VideoRequest, image=None) -> list[np.ndarray]:
    """Each seed's frames as uint8 [F, H, W, 3], from diffusers with the motion score in the prompt."""
    kwargs = dict(negative_prompt=request.negative_prompt, num_inference_steps=request.steps,
                  guidance_scale=request.guidance, height=request.height, width=request.width, frames=request.frames,
                  use_resolution_binning=False, output_type="pil")
    prompt = motion_prompt(request.prompt, request.motion_score)
    clips = []
    for seed in request.seeds:  # diffusers' image-to-video cannot batch videos of one prompt
        generator = torch.Generator("cpu").manual_seed(seed)
        out = pipe(image, prompt, generator=generator, **kwargs) if image is not None else \
            pipe(prompt, generator=generator, **kwargs)
        clips.append(np.stack([np.asarray(frame) for frame in out.frames[0]]))
    return clips


def _assert_every_frame_matches(ours: torch.Tensor, ref: np.ndarray) -> None:
    assert tuple(ours.shape) == ref.shape, (tuple(ours.shape), ref.shape)
    assert ref.std() > 20  # the tiny VAE paints structure, so a match means something
    for index, (a, b) in enumerate(zip(ours.numpy(), ref)):
        assert psnr(a, b) >= 45, f"frame {index}: {psnr(a, b):.1f} dB"


@pytest.mark.parametrize("name", ["wan", "ltx2"])
def test_text_to_video_matches_diffusers(models, ours, name):
    request = _request(name)
    result = ours[name].generate(request)
    ref = _diffusers_frames(models[name][0], request)
    assert result.frames == FRAMES and result.generated_size == SIZES[name]
    _assert_every_frame_matches(result.videos[0], ref[0])


@pytest.mark.parametrize("name", ["wan", "ltx2"])
def test_image_to_video_matches_diffusers(models, ours, name):
    image = first_frame(80, 48)  # another aspect ratio: both sides resize it to the clip's size
    request = _request(name, sampler="flow-euler", image=image)
    result = ours[name].generate(request)
    ref = _diffusers_frames(image_to_video_from(models[name][0]), request, image=image)
    _assert_every_frame_matches(result.videos[0], ref[0])
    other = ours[name].generate(_request(name, sampler="flow-euler", image=first_frame(80, 48, seed=1)))
    assert psnr(other.videos[0][0].numpy(), result.videos[0][0].numpy()) < 40  # the first frame matters


def test_seeds_in_one_batch_are_the_single_runs(models, ours):
    request = _request("wan", seeds=[7, 8], negative_prompt="", motion_score=None)
    result = ours["wan"].generate(request)
    refs = _diffusers_frames(models["wan"][0], request)
    for clip, ref in zip(result.videos, refs):
        _assert_every_frame_matches(clip, ref)
    assert psnr(result.videos[0].numpy(), result.videos[1].numpy()) < 40


@pytest.mark.parametrize("mode", ["text", "image"])
def test_a_clip_of_a_batch_is_the_clip_made_alone_exactly(ours, mode):
    """`--from` replays one clip of a `--num N` batch alone: its latents must be the batch's to the bit. On one
    thread the blocks' matmuls give each row the same numbers at any batch size; image to video's per-frame
    timesteps are embedded once for every clip (the timestep MLP's rounding depends on how many rows it gets)."""
    pipe, decoded = ours["wan"], []
    image = first_frame(64, 32) if mode == "image" else None
    original, threads = pipe._decode, torch.get_num_threads()

    def spy(latents, width, height):
        decoded.append(latents.clone())
        return original(latents, width, height)

    pipe._decode = spy
    torch.set_num_threads(1)
    try:
        batch = pipe.generate(_request("wan", seeds=[7, 8], steps=2, image=image))
        alone = pipe.generate(_request("wan", seeds=[8], steps=2, image=image))
    finally:
        pipe._decode = original
        torch.set_num_threads(threads)
    assert torch.equal(decoded[1], decoded[2]) and torch.equal(batch.videos[1], alone.videos[0])


def test_learned_sigma_half_is_dropped_as_diffusers_does(models, ours):
    request = _request("wan-sigma", guidance=1.0)  # no CFG: a single forward
    _assert_every_frame_matches(ours["wan-sigma"].generate(request).videos[0],
                                _diffusers_frames(models["wan-sigma"][0], request)[0])


def test_frame_counts_snap_to_the_vae_rule_with_a_notice(ours):
    notices = []
    result = ours["ltx2"].generate(_request("ltx2", frames=12, steps=1), Events(on_notice=notices.append))
    assert result.frames == 9 and result.videos[0].shape[0] == 9
    assert notices == ["12 frames snapped to 9 (the LTX-2 VAE makes 8k+1 frames)"]


def test_a_nan_clip_is_refused(models):
    pipe = VideoPipeline.from_pretrained(models["wan"][1], dtype=torch.float32, device="cpu")
    with torch.no_grad():
        pipe.transformer.proj_out.weight.fill_(float("inf"))
    with pytest.raises(SanaError, match="NaN"):
        pipe.generate(_request("wan", steps=1))


def test_the_first_frame_keeps_its_latent_through_the_loop(ours):
    """Image to video: the scheduler never touches frame 0 (its prediction is dropped, its timestep is 0)."""
    pipe, seen = ours["wan"], []
    original = pipe.denoiser

    def spy(x, text, timestep, **kwargs):
        seen.append((x[:, :, :1].clone(), timestep.clone()))
        return original(x, text, timestep, **kwargs)

    pipe.denoiser = spy
    try:
        pipe.generate(_request("wan", sampler="flow-dpm", steps=3, image=first_frame(64, 32)))
    finally:
        pipe.denoiser = original
    assert all(torch.equal(x, seen[0][0]) for x, _ in seen)
    assert all((t[:, 0] == 0).all() and (t[:, 1:] > 0).all() for _, t in seen)


# -- sizes ------------------------------------------------------------------------------------------------------

def test_video_bins_are_diffusers_tables_in_their_order():
    from diffusers.pipelines.sana_video.pipeline_sana_video import ASPECT_RATIO_480_BIN, ASPECT_RATIO_720_BIN

    ours = sizes.video_aspect_ratio_bins()
    for key, table in (("480", ASPECT_RATIO_480_BIN), ("720", ASPECT_RATIO_720_BIN)):
        assert list(ours[key]) == list(table)
        assert all(ours[key][r] == [int(h), int(w)] for r, (h, w) in table.items())


@pytest.mark.parametrize("size", [(832, 480), (480, 832), (1280, 720), (640, 640), (333, 999), (1000, 200)], ids=str)
@pytest.mark.parametrize("sample_size", [30, 22])
def test_video_binning_matches_diffusers(size, sample_size):
    from diffusers.pipelines.sana_video.pipeline_sana_video import ASPECT_RATIO_480_BIN, ASPECT_RATIO_720_BIN
    from diffusers.video_processor import VideoProcessor

    table = ASPECT_RATIO_480_BIN if sample_size == 30 else ASPECT_RATIO_720_BIN
    height, width = VideoProcessor.classify_height_width_bin(size[1], size[0], ratios=table)
    assert sizes.video_binned_size(*size, sample_size) == (width, height)
    assert sizes.video_binned_size(*size, 8) == size  # other models: no bins


@pytest.mark.parametrize("frames, stride, snapped", [(81, 4, 81), (80, 4, 81), (79, 4, 81), (78, 4, 77), (1, 4, 1),
                                                     (2, 4, 1), (3, 4, 5), (81, 8, 81), (12, 8, 9), (13, 8, 17)])
def test_frames_snap_to_the_nearest_count_the_vae_makes(frames, stride, snapped):
    assert sizes.snap_frames(frames, stride) == snapped


@pytest.mark.parametrize("image, default, expected", [
    ((832, 480), (832, 480), (832, 480)),  # the default's shape keeps the default
    ((1664, 960), (832, 480), (832, 480)),
    ((480, 832), (832, 480), (480, 832)),  # portrait photo, portrait clip
    ((1000, 1000), (832, 480), (640, 640)),  # the default area at 1:1 (sqrt(832 * 480) = 632 -> 640)
    ((4000, 100), (128, 128), (256, 64)),  # clamped to 4:1
    ((100, 4000), (128, 128), (64, 256)),
    ((1280, 720), (1280, 704), (1280, 704)),  # within 2% of the default's shape
], ids=str)
def test_an_image_to_video_clip_takes_the_first_frames_shape(image, default, expected):
    size = sizes.first_frame_clip_size(image, default)
    assert size == expected
    assert all(side % 32 == 0 for side in size)
    if size != default:  # the same number of pixels as the default, within the rounding to 32
        assert abs(size[0] * size[1] / (default[0] * default[1]) - 1) < 0.15
    assert sizes.stretch_ratio(image, size) == pytest.approx(1.0, abs=0.1) or image in ((4000, 100), (100, 4000))


def test_resize_and_crop_is_diffusers_arithmetic():
    from diffusers.video_processor import VideoProcessor

    from sana.pipelines.common import resize_and_crop

    clip = torch.randn(1, 3, 4, 48, 80)
    ref = VideoProcessor.resize_and_crop_tensor(clip, 70, 50)
    ours = resize_and_crop(clip[0].transpose(0, 1), 70, 50).transpose(0, 1)[None]
    torch.testing.assert_close(ours, ref, rtol=0, atol=0)


def test_presets_hold_the_released_configs():
    """The registry's video DiTs are diffusers' classes at 2.057B parameters (the reference's counts)."""
    from diffusers import SanaVideoTransformer3DModel

    from sana.registry import get_spec

    for name, params in (("sana-video-2b-480p", 2_056_862_144), ("sana-video-2b-720p", 2_057_148_928)):
        spec = get_spec(name)
        config = {k: v for k, v in spec.transformer.items() if not k.startswith("_")}
        assert SanaVideoTransformer3DModel.extract_init_dict(config)[0] == config  # every key is the class's
        with torch.device("meta"):
            model = SanaVideoTransformer3DModel(**config)
        assert sum(p.numel() for p in model.parameters()) == params == spec.params["transformer"]
        assert config["mlp_ratio"] == 3.0 and spec.defaults["flow_shift"] == 8.0
        geometry = sizes.video_vae_geometry(spec.extra["vae"])
        assert geometry.channels == config["in_channels"]
    defaults = get_spec("sana-video-2b-480p").defaults
    assert (defaults["steps"], defaults["guidance"], defaults["frames"], defaults["fps"]) == (50, 6.0, 81, 16)
    assert (defaults["width"], defaults["height"], defaults["motion_score"]) == (832, 480, 30)
    json.dumps(defaults)


@pytest.mark.parametrize("kernel,stride", [((3, 3, 3), (1, 1, 1)), ((3, 1, 1), (2, 1, 1)), ((1, 1, 1), (1, 1, 1)),
                                           ((2, 3, 3), (1, 2, 2))])
def test_conv3d_runs_as_a_2d_convolution_over_stacked_frames(kernel, stride):
    """On a CPU, Wan's causal 3D convolutions run as one 2D convolution over the frames each output frame reads;
    the same result as F.conv3d (strided in time and space, with and without a bias)."""
    from sana.pipelines.video_vae import conv3d_as_conv2d

    torch.manual_seed(0)
    x = torch.randn(2, 5, 7, 9, 8)
    weight = torch.randn(4, 5, *kernel)
    for bias in (None, torch.randn(4)):
        expected = torch.nn.functional.conv3d(x, weight, bias, stride)
        got = conv3d_as_conv2d(x, weight, bias, stride)
        assert got.shape == expected.shape and got.is_contiguous()
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_wan_vae_convolutions_are_routed_on_the_cpu_only(models, ours):
    """The loaded Wan VAE's unpadded 3D convolutions take the 2D route (its padded ones, none in Wan, would not);
    the decode equals diffusers' own module's."""
    from diffusers import AutoencoderKLWan

    from sana.pipelines.video_vae import route_conv3d_on_cpu

    vae = ours["wan"].vae.module
    reference = AutoencoderKLWan.from_pretrained(models["wan"][1] / "vae").eval()
    convs = [m for m in vae.modules() if isinstance(m, torch.nn.Conv3d)]
    assert convs and all("_conv_forward" in vars(m) for m in convs)
    assert not any("_conv_forward" in vars(m) for m in reference.modules())
    latents = torch.randn(1, vae.config.z_dim, 3, 4, 8)
    with torch.no_grad():
        torch.testing.assert_close(vae.decode(latents).sample, reference.decode(latents).sample, rtol=1e-4, atol=1e-5)
    padded = torch.nn.Sequential(torch.nn.Conv3d(2, 2, 3, padding=1), torch.nn.Conv3d(2, 2, 1))
    assert route_conv3d_on_cpu(padded) == 1

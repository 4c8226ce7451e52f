"""The nano video model's parts on the CPU (random weights: the trained model comes from scripts/train_nano_video.sh
on a GPU): its folder in diffusers' layout gives diffusers' frames through our pipeline, the registry matches the
build, `sana video` falls back to it with a notice, the Wan-layout autoencoder trains, and the recipe runs."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from sana.nano.moving_shapes import SIDE
from tests.cli_helpers import psnr, run_sana
from tests.tiny_transformer import noise_all_parameters

REPO = Path(__file__).resolve().parents[1]
PROMPT = "a large red circle moving right on a white background"


@pytest.fixture(scope="module")
def nano_video(tmp_path_factory) -> Path:
    """A nano video model folder (fp32) with every weight noised, so its clips are not flat."""
    from sana.embedded import embedded_model_dir
    from sana.nano.video_autoencoder import build_video_vae
    from sana.nano.video_build import build_video_transformer, write_nano_video_model

    vae, transformer = build_video_vae(0), build_video_transformer(0)
    noise_all_parameters(vae, 1, scale=0.1)
    noise_all_parameters(transformer, 2, scale=0.05)
    path = tmp_path_factory.mktemp("nano-video") / "model"
    write_nano_video_model(path, vae, embedded_model_dir("nano"), transformer=transformer, dtype=torch.float32,
                           check_budget=False)
    return path


def test_the_folder_gives_diffusers_frames_through_our_pipeline(nano_video):
    from diffusers import SanaVideoPipeline

    from sana.pipelines.video import VideoPipeline, VideoRequest

    ours = VideoPipeline.from_pretrained(nano_video, dtype=torch.float32, device="cpu")
    request = VideoRequest(prompt=PROMPT, seeds=[5], width=SIDE, height=SIDE, frames=5, steps=2, guidance=3.0,
                           sampler="flow-dpm", flow_shift=3.0, motion_score=None)
    clip = ours.generate(request).videos[0].numpy()
    reference = SanaVideoPipeline.from_pretrained(nano_video, torch_dtype=torch.float32)(
        PROMPT, num_inference_steps=2, guidance_scale=3.0, height=SIDE, width=SIDE, frames=5,
        generator=torch.Generator().manual_seed(5), use_resolution_binning=False).frames[0]
    assert clip.shape == (5, SIDE, SIDE, 3)
    assert clip.std() > 5, "flat frames: the comparison would prove nothing"
    for index, (a, b) in enumerate(zip(clip, reference)):
        assert psnr(a, np.asarray(b)) >= 40, f"frame {index}"


def test_registry_preset_is_the_build():
    from sana.nano.video_autoencoder import build_video_vae
    from sana.nano.video_build import build_video_transformer, video_transformer_config
    from sana.registry import get_spec

    spec = get_spec("nano-video")
    built = json.loads(json.dumps(video_transformer_config()))
    assert {k: v for k, v in spec.transformer.items() if k != "_class_name"} == built
    assert spec.params["transformer"] == sum(p.numel() for p in build_video_transformer().parameters())
    assert spec.params["vae"] == sum(p.numel() for p in build_video_vae().parameters())
    d = spec.defaults
    assert (d["frames"], d["fps"], d["width"], d["height"], d["motion_score"]) == (17, 8, 128, 128, None)
    assert spec.family == "video" and spec.extra["embedded"] == "nano-video"


def test_sana_video_falls_back_to_nano_video_with_a_notice(tmp_path, nano_video):
    from sana.nano.motion_adherence import check_clip
    from sana.outputs import read_clip, read_metadata

    env = {"HF_HOME": str(tmp_path / "hf"), "HF_HUB_CACHE": str(tmp_path / "hf" / "hub"),
           "SANA_NANO_VIDEO_MODEL": str(nano_video)}
    out = tmp_path / "clip.mp4"
    result = run_sana("video", PROMPT, "--frames", "5", "--steps", "2", "-o", str(out), env=env)
    assert result.returncode == 0, result.stderr
    assert "built-in nano video model" in result.stderr
    frames, fps = read_clip(out)
    assert frames.shape == (5, SIDE, SIDE, 3) and fps == 8.0  # the preset's clip size and rate
    record = read_metadata(out)
    assert record.model == "nano-video" and record.prompt == PROMPT and record.extra["motion_score"] is None
    assert check_clip(frames, PROMPT).scene.caption == PROMPT  # the checker reads what the record says

    missing = run_sana("video", PROMPT, "--frames", "5", env={**env, "SANA_NANO_VIDEO_MODEL": str(tmp_path / "none")})
    assert missing.returncode != 0 and "no model is downloaded" in missing.stderr
    info = run_sana("models", "info", "nano-video", env={**env, "SANA_NANO_VIDEO_MODEL": str(tmp_path / "none")})
    assert "SANA_NANO_VIDEO_MODEL" in info.stdout


@pytest.mark.slow  # Wan's causal 3D convs on 17 frames of 128 px: ~1 min on two cores even this narrow
def test_the_video_autoencoder_trains_and_records_its_latent_statistics():
    from diffusers import AutoencoderKLWan

    from sana.nano.autoencoder import VaeTrainConfig
    from sana.nano.video_autoencoder import train_video_vae

    torch.manual_seed(0)  # a narrow Wan VAE: the loop, not the model, is under test
    small = AutoencoderKLWan(base_dim=4, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                             temperal_downsample=[False, True, True])
    cfg = VaeTrainConfig(steps=3, batch=1, lr=1e-3, warmup=1, eval_images=1, log_every=1)
    vae, report = train_video_vae(cfg, device="cpu", vae=small)
    assert report.steps_done == 3 and len(report.losses) == 3 and all(np.isfinite(r["loss"]) for r in report.losses)
    assert len(report.latents_std) == 16 and vae.config.latents_std == report.latents_std
    assert all(s > 0 for s in report.latents_std) and np.isfinite(report.psnr)


def test_autoencoder_crops_are_windows_of_the_clips_at_seeded_offsets():
    from sana.nano.video_autoencoder import random_crops

    clips = torch.arange(2 * 3 * 17 * 16 * 16, dtype=torch.float32).view(2, 3, 17, 16, 16)
    crops = random_crops(clips, 9, 8, seed=5)
    assert crops.shape == (2, 3, 9, 8, 8)
    for clip, crop in zip(clips, crops):  # each crop is one window of its own clip: find its corner, compare
        t, y, x = (int(v) for v in torch.nonzero(clip[0] == crop[0, 0, 0, 0])[0])
        assert torch.equal(clip[:, t:t + 9, y:y + 8, x:x + 8], crop)
    assert torch.equal(crops, random_crops(clips, 9, 8, seed=5))
    assert not torch.equal(crops, random_crops(clips, 9, 8, seed=6))
    assert random_crops(clips, None, None, seed=0) is clips
    assert random_crops(clips, 17, None, seed=0).shape == clips.shape
    for frames, side in ((8, None), (21, None), (None, 12), (None, 256)):
        with pytest.raises(ValueError):
            random_crops(clips, frames, side, seed=0)


def test_train_vae_checks_its_crop_before_torch():
    from tests.cli_helpers import run_sana

    result = run_sana("shapes", "train-vae", "out-never-written", "--video", "--crop-frames", "8")
    assert result.returncode != 0 and "1 + 4k" in result.stderr and "Traceback" not in result.stderr
    result = run_sana("shapes", "train-vae", "out-never-written", "--crop-side", "64")
    assert result.returncode != 0 and "--video" in result.stderr


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("kind", ["video", "image"])
def test_the_captured_autoencoder_step_trains_as_the_eager_one(kind):
    """The CUDA-graph step (capture after three eager steps, replays after) gives the eager loop's weights, for the
    Wan-layout clip autoencoder and the image DC-AE alike."""
    from diffusers import AutoencoderKLWan

    from sana.nano.autoencoder import VaeTrainConfig, batch_scenes, build_vae, fit_autoencoder, render_batch
    from sana.nano.moving_shapes import sample_motion_scenes
    from sana.nano.video_autoencoder import decode_unclamped, random_crops, render_clip_batch

    device = torch.device("cuda")
    results = []
    for graphed in (False, True):
        torch.manual_seed(0)
        if kind == "video":
            vae = AutoencoderKLWan(base_dim=8, z_dim=16, dim_mult=[1, 2, 2, 2], num_res_blocks=1,
                                   temperal_downsample=[False, True, True]).to(device).train()

            def batch_at(step):
                return random_crops(render_clip_batch(sample_motion_scenes(2, step, stream="t"), device=device), 9,
                                    64, step)

            encode = lambda target: vae.encode(target).latent_dist.mode()  # noqa: E731
            decode = lambda latents: decode_unclamped(vae, latents)  # noqa: E731
        else:
            vae = build_vae(0).to(device).train()

            def batch_at(step):
                return render_batch(batch_scenes(step, 4, 0, ()), device=device)

            encode, decode = (lambda target: vae.encode(target).latent), None  # noqa: E731
        initial = torch.cat([p.detach().flatten() for p in vae.parameters()])
        cfg = VaeTrainConfig(steps=8, batch=2, warmup=2, latent_noise=0.0, bf16=False, cuda_graph=graphed,
                             log_every=1)
        losses, done = fit_autoencoder(vae, cfg, device, time.perf_counter(), batch_at, encode=encode, decode=decode)
        results.append(([row["loss"] for row in losses], torch.cat([p.detach().flatten() for p in vae.parameters()])))
    (eager_losses, eager), (graph_losses, captured) = results
    assert np.allclose(eager_losses, graph_losses, rtol=1e-3), (eager_losses, graph_losses)
    assert (captured - eager).abs().max() < 1e-3 and (captured - initial).abs().max() > 1e-3  # trained, alike


def test_a_clock_budget_anneals_the_autoencoders_learning_rate_in_time():
    """Under --max-minutes the video autoencoder's cosine follows whichever budget ends first."""
    from sana.nano.autoencoder import VaeTrainConfig, _lr_at

    by_steps = VaeTrainConfig(steps=1000, lr=1e-3, warmup=10, max_seconds=60.0)
    by_time = VaeTrainConfig(steps=1000, lr=1e-3, warmup=10, max_seconds=60.0, anneal_by_time=True)
    assert _lr_at(5, by_time, elapsed=59.0) == _lr_at(5, by_steps) == pytest.approx(6e-4)  # warm-up counts steps
    assert _lr_at(100, by_steps, elapsed=60.0) > 9e-4  # the step cosine has barely begun
    assert _lr_at(100, by_time, elapsed=60.0) == pytest.approx(1e-4)  # the clock's budget is spent: a tenth
    assert _lr_at(100, by_time, elapsed=30.0) == pytest.approx(1e-3 * (0.1 + 0.45))  # halfway by the clock
    assert _lr_at(990, by_time, elapsed=1.0) == pytest.approx(_lr_at(990, by_steps))  # steps end first


@pytest.mark.slow
def test_the_recipe_runs_every_stage(tmp_path):
    """scripts/train_nano_video.sh end to end at toy sizes (an untrained autoencoder given as VAE, two DiT steps,
    four clips); the VAE stage is the autoencoder test's loop."""
    from sana.nano.video_autoencoder import build_video_vae
    from tests.cli_helpers import sana_executable

    build_video_vae(0).save_pretrained(tmp_path / "vae")
    env = dict(os.environ, SANA=sana_executable(), VAE=str(tmp_path / "vae"), STEPS="2", BATCH="2", NUM="4",
               SCORE_NUM="2", SHIP=str(tmp_path / "ship"), HF_HUB_OFFLINE="1")
    result = subprocess.run(["bash", str(REPO / "scripts" / "train_nano_video.sh"), str(tmp_path / "work")],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    work = tmp_path / "work"
    assert (work / "run" / "model" / "model_index.json").is_file() and not (work / "vae").exists()
    assert (work / "grid.gif").is_file() and "prompt adherence (clips)" in (work / "score.txt").read_text()
    config = json.loads((work / "run" / "train_config.json").read_text())
    assert (config["frames"], config["fps"], config["motion_score"], config["init"]) == (17, 8, None, "random")
    shipped = sum(f.stat().st_size for f in (tmp_path / "ship").rglob("*") if f.is_file())
    assert shipped < 25_000_000


def test_the_autoencoder_trains_on_its_decoder_output_before_the_clamp():
    """diffusers' Wan decode clamps to [-1, 1], which passes no gradient; training reads the output before it."""
    from diffusers import AutoencoderKLWan

    from sana.nano.video_autoencoder import decode_unclamped

    torch.manual_seed(0)
    small = AutoencoderKLWan(base_dim=4, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                             temperal_downsample=[False, True, True])
    with torch.no_grad():
        small.decoder.conv_out.bias.fill_(3.0)  # push every output past 1
    latents = torch.randn(1, 16, 2, 4, 4)
    raw = decode_unclamped(small, latents)
    clamped = small.decode(latents).sample
    assert raw.shape == clamped.shape == (1, 3, 5, 32, 32)
    assert raw.max() > 1.5 and torch.equal(raw.clamp(-1, 1), clamped)
    raw.mean().backward()
    assert small.decoder.conv_out.bias.grad.abs().sum() > 0  # a gradient the clamped output would not pass

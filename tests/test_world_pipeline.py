"""The SANA-WM pipeline against diffusers' `SanaWMPipeline`: every frame at the same seed on a tiny random pipeline,
in fp32 on the CPU, for an action string, a nerfstudio camera_path.json and a .npy path; the per-token step and
the clean first frame on their own."""

from __future__ import annotations

import json
import math
import types

import numpy as np
import pytest
import torch

from sana import sampling
from sana.camera import resolve_camera
from sana.camera.path import GL_TO_CV
from sana.errors import UsageError
from sana.pipelines.common import Events
from sana.pipelines.world import WorldPipeline, WorldRequest, frame_timesteps
from tests.cli_helpers import psnr
from tests.tiny_video_pipeline import first_frame
from tests.tiny_world_pipeline import HEIGHT, SHIFT, WIDTH, build_pipeline

FRAMES, STEPS, SEED = 17, 3, 7  # 17 frames: 3 latent frames
PROMPT, NEGATIVE = "A Cat walking on the Grass", "blurry"  # capitals: SANA-WM does not lower-case
IMAGE_SIZE = (130, 70)  # another aspect than 96x64, so the first frame is cropped and the intrinsics follow
ACTIONS = "w-8,jw-8"


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """(diffusers pipeline, its folder), saved before it runs."""
    path = tmp_path_factory.mktemp("tiny-world")
    return build_pipeline(path), path


@pytest.fixture(scope="module")
def ours(models):
    return WorldPipeline.from_pretrained(models[1], dtype=torch.float32, device="cpu")


def wandering_poses(count: int) -> np.ndarray:
    """OpenCV c2w [count, 4, 4] away from the origin: the first pose is not the identity."""
    poses = np.tile(np.eye(4), (count, 1, 1))
    for i in range(count):
        yaw, pitch = 0.3 + 0.04 * i, -0.1 + 0.02 * i
        cy, sy, cp, sp = math.cos(yaw), math.sin(yaw), math.cos(pitch), math.sin(pitch)
        ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
        rx = np.array([[1, 0, 0], [0, cp, -sp], [0, sp, cp]])
        poses[i, :3, :3] = ry @ rx
        poses[i, :3, 3] = [0.5 + 0.03 * i, -0.2, 1.0 + 0.06 * i]
    return poses


def camera_case(kind: str, tmp_path):
    """(our resolved CameraPath, the camera keyword arguments diffusers takes for the same path)."""
    width, height = IMAGE_SIZE
    if kind == "actions":
        intrinsics = [80.0, 78.0, 66.0, 34.0]
        path = resolve_camera(actions=ACTIONS, image_size=IMAGE_SIZE, intrinsics=",".join(map(str, intrinsics)))
        return path, dict(action=ACTIONS, intrinsics=intrinsics)
    poses = wandering_poses(FRAMES)
    if kind == "nerfstudio":  # at 16 fps, rendered at the image's size: no resampling, no rescaling
        fov = 55.0
        file = tmp_path / "camera_path.json"
        file.write_text(json.dumps({
            "camera_type": "perspective", "render_width": width, "render_height": height, "fps": 16,
            "seconds": FRAMES / 16, "camera_path": [{"camera_to_world": (pose @ GL_TO_CV).reshape(-1).tolist(),
                                                     "fov": fov, "aspect": width / height} for pose in poses]}))
        focal = (height / 2) / math.tan(math.radians(fov) / 2)
        return (resolve_camera(file, image_size=IMAGE_SIZE),
                dict(c2w=poses.astype(np.float32), intrinsics=[focal, focal, width / 2, height / 2]))
    file, k_file = tmp_path / "poses.npy", tmp_path / "K.npy"
    np.save(file, poses.astype(np.float32))
    k = np.array([[90.0, 0.0, 60.0], [0.0, 88.0, 37.0], [0.0, 0.0, 1.0]])
    np.save(k_file, k)
    return resolve_camera(file, image_size=IMAGE_SIZE, intrinsics=k_file), dict(c2w=poses.astype(np.float32),
                                                                                intrinsics=k)


def diffusers_frames(pipe, image, camera_kwargs) -> np.ndarray:
    out = pipe(image=image, prompt=PROMPT, negative_prompt=NEGATIVE, height=HEIGHT, width=WIDTH, num_frames=FRAMES,
               num_inference_steps=STEPS, guidance_scale=5.0, generator=torch.Generator("cpu").manual_seed(SEED),
               output_type="pil", **camera_kwargs)
    return np.stack([np.asarray(frame) for frame in out.frames])


@pytest.mark.parametrize("kind", ["actions", "nerfstudio", "npy"])
def test_every_frame_matches_diffusers(models, ours, kind, tmp_path):
    image = first_frame(*IMAGE_SIZE)
    path, camera_kwargs = camera_case(kind, tmp_path)
    assert path.num_frames == FRAMES
    request = WorldRequest(prompt=PROMPT, image=image, camera=path, seeds=[SEED], steps=STEPS, guidance=5.0,
                           flow_shift=SHIFT, width=WIDTH, height=HEIGHT, negative_prompt=NEGATIVE)
    phases = []
    result = ours.generate(request, Events(on_phase=phases.append))
    ref = diffusers_frames(models[0], image, camera_kwargs)

    assert result.frames == FRAMES and result.generated_size == (WIDTH, HEIGHT)
    assert phases == ["encode", "encode image", "denoise", "decode"]
    video = result.videos[0].numpy()
    assert video.shape == ref.shape == (FRAMES, HEIGHT, WIDTH, 3)
    assert ref.std() > 20  # the tiny VAE paints structure, so a match means something
    for index, (a, b) in enumerate(zip(video, ref)):
        assert psnr(a, b) >= 45, f"frame {index}: {psnr(a, b):.1f} dB"


def test_seeds_give_their_own_clips(ours):
    """Two seeds in one request: each clip is the one its seed alone gives."""
    image = first_frame(*IMAGE_SIZE)
    path = resolve_camera(actions="w-8", image_size=IMAGE_SIZE, fov=60.0)
    base = dict(prompt=PROMPT, image=image, camera=path, steps=2, guidance=1.0, flow_shift=SHIFT, width=WIDTH,
                height=HEIGHT)
    both = ours.generate(WorldRequest(seeds=[1, 2], **base)).videos
    alone = ours.generate(WorldRequest(seeds=[2], **base)).videos
    assert len(both) == 2 and torch.equal(both[1], alone[0]) and not torch.equal(both[0], both[1])


def test_sizes_must_suit_the_vae(ours):
    path = resolve_camera(actions="w-8", image_size=IMAGE_SIZE, fov=60.0)
    request = WorldRequest(prompt=PROMPT, image=first_frame(*IMAGE_SIZE), camera=path, seeds=[0], steps=1,
                           guidance=1.0, flow_shift=SHIFT, width=100, height=HEIGHT)
    with pytest.raises(UsageError, match="multiple of 32"):
        ours.generate(request)


# -- the step on its own ---------------------------------------------------------------------------------------

def test_per_token_step_is_plain_euler_on_the_moving_frames():
    from diffusers import FlowMatchEulerDiscreteScheduler

    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)
    scheduler.set_timesteps(4)
    gen = torch.Generator().manual_seed(0)
    latents, velocity = torch.randn(1, 4, 3, 2, 3, generator=gen), torch.randn(1, 4, 3, 2, 3, generator=gen)
    t = scheduler.timesteps[1]
    per_token = frame_timesteps(t, 1, 3).reshape(1, -1).repeat_interleave(6, dim=1)
    stepped = sampling.per_token_euler(scheduler, velocity, t, latents, per_token)
    sigma, sigma_next = scheduler.sigmas[1], scheduler.sigmas[2]
    assert torch.equal(stepped[:, :, 1:], latents[:, :, 1:] + (sigma_next - sigma) * velocity[:, :, 1:])
    assert torch.equal(stepped[:, :, :1], latents[:, :, :1])  # timestep 0: no change


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_first_frame_stays_clean_and_bf16_drops_steps_near_t_1000(dtype):
    """diffusers compares `t / 1000 - 1e-6 < 1 - mask` in the latents' dtype: in bf16 the steps at t = 1000 and
    998.26 (the first two of 60 at shift 9.8) keep the old latents everywhere; later steps move frames 1: only."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    scheduler = FlowMatchEulerDiscreteScheduler(shift=9.8)
    scheduler.set_timesteps(60)
    latents = torch.randn(1, 4, 3, 2, 3, generator=torch.Generator().manual_seed(1)).to(dtype)
    step = WorldPipeline._step(types.SimpleNamespace(dtype=dtype), scheduler, latents)
    velocity = torch.ones_like(latents)
    for index, t in enumerate(scheduler.timesteps[:3]):
        out = step(velocity, t, latents)
        assert out.dtype == dtype and torch.equal(out[:, :, :1], latents[:, :, :1])
        moved = not torch.equal(out[:, :, 1:], latents[:, :, 1:])
        assert moved == (dtype == torch.float32 or index == 2), (index, float(t))

"""SANA-WM's camera tensors and first-frame crop against diffusers 0.42.1's own functions, for an action string, a
nerfstudio path and a .npy path."""

from __future__ import annotations

import json
import math
import types

import numpy as np
import pytest
import torch
from diffusers.pipelines.sana_wm.cam_utils import prepare_camera, resize_and_center_crop as diffusers_crop
from diffusers.pipelines.sana_wm.image_processor import SanaWMImageProcessor
from diffusers.pipelines.sana_wm.pipeline_sana_wm import SanaWMPipeline
from PIL import Image

from sana.camera import resolve_camera
from sana.camera.conditioning import (camera_model_kwargs, camera_tensors, crop_geometry, resize_and_center_crop,
                                      world_inputs)
from sana.camera.path import GL_TO_CV

TOLERANCE = 1e-6
# stands in for the pipeline object in diffusers' methods that only read its VAE strides
PIPELINE_STRIDES = types.SimpleNamespace(vae_temporal_compression_ratio=8, vae_spatial_compression_ratio=32)


def random_image(width: int, height: int, seed: int = 0) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def smooth_poses(count: int, fps: float, seed: int = 0) -> np.ndarray:
    """OpenCV c2w [count, 4, 4]: a wandering camera away from the world origin (first pose not the identity)."""
    rng = np.random.default_rng(seed)
    rate, velocity, start = rng.normal(0, 0.3, 3), rng.normal(0, 0.4, 3), rng.normal(0, 1.0, 3)
    poses = np.tile(np.eye(4), (count, 1, 1))
    for i in range(count):
        t = i / fps
        angle = rate * t + 0.4
        cx, sx, cy, sy, cz, sz = (f(a) for a in angle for f in (math.cos, math.sin))
        rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
        ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
        rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
        poses[i, :3, :3] = rz @ ry @ rx
        poses[i, :3, 3] = start + velocity * t + 0.1 * np.sin(3 * t)
    return poses


def diffusers_tensors(c2w, intrinsics, image, num_frames):
    """What SanaWMPipeline computes from (c2w, intrinsics, image): its own steps, called one by one."""
    c2w, intr = SanaWMPipeline.prepare_camera_trajectory(PIPELINE_STRIDES, c2w, None, intrinsics, num_frames)
    pixel_values, intr = SanaWMImageProcessor(vae_scale_factor=32).preprocess_with_intrinsics(image, intr, 704, 1280)
    camera = prepare_camera(c2w, intr, target_size=(704, 1280), vae_stride=(8, 32, 32))
    return pixel_values, intr, camera["raymap"], camera["chunk_plucker"], c2w


def assert_same(ours, pixel_values, intrinsics, raymap, chunk_plucker):
    assert ours.pixel_values.shape == pixel_values.shape
    assert ours.raymap.shape == raymap.shape and ours.chunk_plucker.shape == chunk_plucker.shape
    torch.testing.assert_close(ours.pixel_values, pixel_values, rtol=0, atol=TOLERANCE)
    np.testing.assert_allclose(ours.intrinsics, intrinsics, rtol=0, atol=TOLERANCE * np.abs(intrinsics).max())
    torch.testing.assert_close(ours.raymap, raymap, rtol=0, atol=TOLERANCE)
    torch.testing.assert_close(ours.chunk_plucker, chunk_plucker, rtol=0, atol=TOLERANCE)


def test_action_string_matches_diffusers():
    image = random_image(500, 300)
    intrinsics = [400.0, 410.0, 250.0, 150.0]
    path = resolve_camera(actions="w-80,jw-40,il-40", image_size=image.size, intrinsics=intrinsics)
    ours = world_inputs(path, image)
    # the pipeline rolls the action string out itself
    c2w, intr = SanaWMPipeline.prepare_camera_trajectory(PIPELINE_STRIDES, None, "w-80,jw-40,il-40", intrinsics, 161)
    pixel_values, intr = SanaWMImageProcessor(vae_scale_factor=32).preprocess_with_intrinsics(image, intr, 704, 1280)
    camera = prepare_camera(c2w, intr, target_size=(704, 1280), vae_stride=(8, 32, 32))
    assert ours.raymap.shape == (21, 20) and ours.chunk_plucker.shape == (48, 21, 22, 40)
    assert_same(ours, pixel_values, intr, camera["raymap"], camera["chunk_plucker"])


def test_nerfstudio_path_matches_diffusers(tmp_path):
    image = random_image(640, 480, seed=1)  # 4:3 into 16:9: a vertical crop
    poses = smooth_poses(150, 30.0)  # 5 s at 30 fps: resampled to 16 fps and snapped
    data = {"camera_type": "perspective", "render_width": 1024, "render_height": 768, "fps": 30, "seconds": 5.0,
            "camera_path": [{"camera_to_world": (pose @ GL_TO_CV).reshape(-1).tolist(),
                             "fov": 50.0 + 0.05 * i, "aspect": 4 / 3} for i, pose in enumerate(poses)]}
    file = tmp_path / "camera_path.json"
    file.write_text(json.dumps(data))
    path = resolve_camera(file, image_size=image.size)
    assert path.num_frames == 73
    ours = world_inputs(path, image)
    assert_same(ours, *diffusers_tensors(path.c2w, path.intrinsics, image, path.num_frames)[:4])


def test_npy_path_matches_diffusers(tmp_path):
    image = random_image(720, 1280, seed=2)  # portrait into landscape
    poses = smooth_poses(41, 16.0, seed=3).astype(np.float32)
    k = np.array([[900.0, 0.0, 355.0], [0.0, 905.0, 650.0], [0.0, 0.0, 1.0]])
    np.save(tmp_path / "poses.npy", poses)
    np.save(tmp_path / "K.npy", k)
    path = resolve_camera(tmp_path / "poses.npy", image_size=image.size, intrinsics=tmp_path / "K.npy")
    ours = world_inputs(path, image)
    # diffusers gets the file's raw poses and K, and anchors them itself (in float32, where we use float64)
    assert_same(ours, *diffusers_tensors(np.load(tmp_path / "poses.npy"), k, image, 41)[:4])


def test_model_kwargs_match_diffusers():
    image = random_image(320, 180)
    path = resolve_camera(actions="wl-16", image_size=image.size, fov=60.0)
    ours = world_inputs(path, image)
    for guidance in (False, True):
        kwargs = camera_model_kwargs(ours, device="cpu", dtype=torch.bfloat16, guidance=guidance)
        ref = SanaWMPipeline._build_camera_kwargs(PIPELINE_STRIDES, path.c2w.astype(np.float32), ours.intrinsics,
                                                  (704, 1280), device="cpu", dtype=torch.bfloat16, do_cfg=guidance)
        assert kwargs.keys() == ref.keys()
        for key in kwargs:
            assert kwargs[key].dtype == torch.bfloat16 and kwargs[key].shape[0] == (2 if guidance else 1)
            assert torch.equal(kwargs[key], ref[key])


@pytest.mark.parametrize("size", [(1280, 704), (1920, 1080), (500, 300), (720, 1280), (1000, 1000), (1281, 705)])
def test_crop_geometry_matches_diffusers(size):
    image = random_image(*size)
    ours, geometry = resize_and_center_crop(image)
    ref, src, resized, offset = diffusers_crop(image)
    assert (geometry.src_size, geometry.resized_size, geometry.offset) == (src, resized, offset)
    assert crop_geometry(size) == geometry and np.array_equal(np.asarray(ours), np.asarray(ref))


def test_small_clip_and_other_image_size():
    # 10 frames (not 8k+1) still packs as diffusers does: 2 latent frames, the second chunk padded with frame 9
    poses = smooth_poses(10, 16.0)
    intrinsics = np.tile(np.array([600.0, 600.0, 640.0, 352.0], dtype=np.float32), (10, 1))
    raymap, chunk = camera_tensors(poses, intrinsics)
    ref = prepare_camera(poses.astype(np.float32), intrinsics, target_size=(704, 1280), vae_stride=(8, 32, 32))
    torch.testing.assert_close(raymap, ref["raymap"], rtol=0, atol=TOLERANCE)
    torch.testing.assert_close(chunk, ref["chunk_plucker"], rtol=0, atol=TOLERANCE)
    # a path resolved for another image size is rescaled to the image it is used with
    path = resolve_camera(actions="w-8", image_size=(640, 360), intrinsics=[500, 500, 320, 180])
    image = random_image(1280, 720)
    assert np.allclose(world_inputs(path, image).intrinsics[0],
                       world_inputs(path.scaled_to(1280, 720), image).intrinsics[0])

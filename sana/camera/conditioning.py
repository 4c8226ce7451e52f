"""SANA-WM's camera conditioning: the first frame's resize + centre crop, the intrinsics that follow it, and the
two camera tensors the DiT takes (the per-latent-frame raymap and the chunked Plücker map).

The arithmetic is diffusers 0.42.1's (`pipelines/sana_wm/cam_utils.py`, `image_processor.py` and
`SanaWMPipeline._build_camera_kwargs`) operation for operation, in float32 as there, so the tensors agree to
rounding. Pure functions; the one entry point for a pipeline is `world_inputs`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from .path import CameraPath

TARGET_HEIGHT = 704  # SANA-WM's only trained resolution
TARGET_WIDTH = 1280
VAE_STRIDE = (8, 32, 32)  # LTX-2 VAE: frames, height, width folded into one latent position


@dataclass(frozen=True)
class CropGeometry:
    """How an image of src_size becomes the target: resized to resized_size, then cropped at offset."""

    src_size: tuple[int, int]  # (width, height)
    resized_size: tuple[int, int]  # (width, height), each >= the target's
    offset: tuple[int, int]  # (left, top) of the crop in the resized image


@dataclass
class WorldInputs:
    """Everything SANA-WM's DiT needs from the camera path and the first frame."""

    pixel_values: torch.Tensor  # [1, 3, H, W] float32 in [-1, 1], the cropped first frame
    raymap: torch.Tensor  # [T_lat, 20] relative pose (16, row-major) + latent-grid fx, fy, cx, cy per latent frame
    chunk_plucker: torch.Tensor  # [6 * 8, T_lat, H / 32, W / 32] Plücker (d, t x d) of the 8 frames of each latent
    intrinsics: np.ndarray  # [F, 4] float32 fx, fy, cx, cy in pixels of the cropped image
    crop: CropGeometry


# ----------------------------------------------------------------------------------------------------------------
# The first frame
# ----------------------------------------------------------------------------------------------------------------

def crop_geometry(src_size: tuple[int, int], height: int = TARGET_HEIGHT, width: int = TARGET_WIDTH) -> CropGeometry:
    """Aspect-preserving resize that covers (height, width), then a centred crop (left/top rounded down)."""
    src_w, src_h = src_size
    scale = max(height / src_h, width / src_w)
    resized_w = max(width, int(round(src_w * scale)))
    resized_h = max(height, int(round(src_h * scale)))
    return CropGeometry((src_w, src_h), (resized_w, resized_h), ((resized_w - width) // 2, (resized_h - height) // 2))


def resize_and_center_crop(image: Image.Image, height: int = TARGET_HEIGHT, width: int = TARGET_WIDTH
                           ) -> tuple[Image.Image, CropGeometry]:
    """The image resized (Lanczos) and centre-cropped to (height, width), and the geometry used."""
    geometry = crop_geometry(image.size, height, width)
    resized = image.resize(geometry.resized_size, Image.LANCZOS)
    left, top = geometry.offset
    return resized.crop((left, top, left + width, top + height)), geometry


def transform_intrinsics_for_crop(intrinsics: np.ndarray, geometry: CropGeometry) -> np.ndarray:
    """[..., 4] fx, fy, cx, cy of the source image re-expressed for the resized and cropped one (same dtype)."""
    sx = geometry.resized_size[0] / geometry.src_size[0]
    sy = geometry.resized_size[1] / geometry.src_size[1]
    out = intrinsics.copy()
    out[..., 0] *= sx
    out[..., 2] = out[..., 2] * sx - geometry.offset[0]
    out[..., 1] *= sy
    out[..., 3] = out[..., 3] * sy - geometry.offset[1]
    return out


def image_to_tensor(image: Image.Image) -> torch.Tensor:
    """[1, 3, H, W] float32 in [-1, 1] from an RGB image (8 bits a channel)."""
    array = np.asarray(image.convert("RGB")).astype(np.float32) / 255.0  # [H, W, 3]
    return torch.from_numpy(array).permute(2, 0, 1).unsqueeze(0) * 2.0 - 1.0


# ----------------------------------------------------------------------------------------------------------------
# Camera tensors
# ----------------------------------------------------------------------------------------------------------------

def pose_inverse(poses: torch.Tensor) -> torch.Tensor:
    """Inverse [..., 4, 4] of rigid transforms as [R^T, -R^T t]."""
    rotation_t = poses[..., :3, :3].transpose(-1, -2)
    out = torch.zeros_like(poses)
    out[..., :3, :3] = rotation_t
    out[..., :3, 3:] = -rotation_t @ poses[..., :3, 3:]
    out[..., 3, 3] = 1.0
    return out


def plucker_map(intrinsics: torch.Tensor, poses: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Plücker coordinates [T, h, w, 6] = (d, t x d) of the ray through each integer pixel position.

    intrinsics [T, 4] fx, fy, cx, cy and poses [T, 4, 4] camera-to-world (OpenCV axes) on an h x w grid; d is the
    unit world direction of the camera ray ((j - cx) / fx, (i - cy) / fy, 1), t the camera centre.
    """
    frames = intrinsics.shape[0]
    rows, cols = torch.meshgrid(torch.arange(height, dtype=intrinsics.dtype),
                                torch.arange(width, dtype=intrinsics.dtype), indexing="ij")
    fx, fy, cx, cy = (intrinsics[:, k].view(frames, 1, 1) for k in range(4))
    cols, rows = cols[None].expand(frames, -1, -1), rows[None].expand(frames, -1, -1)
    directions = torch.stack([(cols - cx) / fx, (rows - cy) / fy, torch.ones_like(cols)], dim=-1)  # [T, h, w, 3]
    directions = torch.einsum("tij,thwj->thwi", poses[:, :3, :3], directions)
    directions = directions / torch.norm(directions, dim=-1, keepdim=True)
    origins = poses[:, :3, 3].view(frames, 1, 1, 3).expand_as(directions)
    return torch.cat([directions, torch.cross(origins, directions, dim=-1)], dim=-1)


def camera_tensors(c2w: np.ndarray, intrinsics: np.ndarray,
                   target_size: tuple[int, int] = (TARGET_HEIGHT, TARGET_WIDTH),
                   vae_stride: tuple[int, int, int] = VAE_STRIDE) -> tuple[torch.Tensor, torch.Tensor]:
    """(raymap [T_lat, 20], chunk_plucker [6 * st, T_lat, h, w]) for poses [F, 4, 4] and cropped intrinsics [F, 4].

    Poses are made relative to the first; intrinsics scaled to the latent grid (h = H // ss, w = W // ss).
    Latent frame k's raymap row is frame 8k's pose and intrinsics; its Plücker chunk stacks frames
    max(0, 8k - 7) .. +7 (the frames the causal VAE folds into it; frame 0's chunk is frames 0..7), repeating the
    last frame past the end, channel = 6 * frame_in_chunk + component.
    """
    num_frames = c2w.shape[0]
    time_stride, space_stride = vae_stride[0], vae_stride[-1]
    height, width = target_size
    latent_h, latent_w = height // space_stride, width // space_stride
    latent_frames = (num_frames - 1) // time_stride + 1

    poses = torch.from_numpy(np.asarray(c2w, dtype=np.float32)).float()
    relative = torch.matmul(pose_inverse(poses[0:1]).squeeze(0), poses[1:])
    poses = torch.cat([torch.eye(4).unsqueeze(0), relative], dim=0)  # [F, 4, 4]

    latent_intrinsics = torch.from_numpy(np.asarray(intrinsics, dtype=np.float32)).float().clone()
    latent_intrinsics[:, [0, 2]] *= latent_w / float(width)
    latent_intrinsics[:, [1, 3]] *= latent_h / float(height)

    time_indices = torch.arange(0, num_frames, time_stride)[:latent_frames]  # [T_lat]
    raymap = torch.cat([poses[time_indices].reshape(len(time_indices), -1), latent_intrinsics[time_indices]], dim=-1)

    # frames of each chunk [T_lat, st]: a chunk cut short by the clip's end repeats its last frame
    starts = (time_indices - (time_stride - 1)).clamp(min=0)
    members = torch.minimum(starts[:, None] + torch.arange(time_stride)[None], torch.tensor(num_frames - 1))
    plucker = plucker_map(latent_intrinsics, poses, latent_h, latent_w)  # [F, h, w, 6]
    chunks = plucker[members]  # [T_lat, st, h, w, 6]
    chunk_plucker = chunks.permute(1, 4, 0, 2, 3).reshape(time_stride * 6, latent_frames, latent_h, latent_w)
    return raymap, chunk_plucker


def world_inputs(path: CameraPath, image: Image.Image, height: int = TARGET_HEIGHT, width: int = TARGET_WIDTH,
                 vae_stride: tuple[int, int, int] = VAE_STRIDE) -> WorldInputs:
    """The cropped first frame and the camera tensors for a resolved path and its conditioning image.

    The path's intrinsics are rescaled first if the image is not the size the path was resolved for.
    """
    image = image if image.mode == "RGB" else image.convert("RGB")
    path = path.scaled_to(*image.size)
    intrinsics = path.intrinsics.astype(np.float32)
    cropped, geometry = resize_and_center_crop(image, height, width)
    intrinsics = transform_intrinsics_for_crop(intrinsics, geometry)
    raymap, chunk_plucker = camera_tensors(path.c2w, intrinsics, (height, width), vae_stride)
    return WorldInputs(image_to_tensor(cropped), raymap, chunk_plucker, intrinsics, geometry)


def camera_model_kwargs(inputs: WorldInputs, *, device: torch.device | str, dtype: torch.dtype,
                        guidance: bool) -> dict[str, torch.Tensor]:
    """The DiT's camera keyword arguments, batched ([B, T_lat, 20], [B, 48, T_lat, h, w]), twice over for CFG."""
    raymap = inputs.raymap.unsqueeze(0).to(device, dtype=dtype)
    chunk_plucker = inputs.chunk_plucker.unsqueeze(0).to(device, dtype=dtype)
    if guidance:
        raymap, chunk_plucker = torch.cat([raymap, raymap]), torch.cat([chunk_plucker, chunk_plucker])
    return {"camera_conditions": raymap, "chunk_plucker": chunk_plucker}

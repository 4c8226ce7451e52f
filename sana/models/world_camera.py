"""Per-token position transforms of the SANA-WM DiT: its rotary embedding (complex, fp32), the camera ray
matrices built from the per-frame camera conditions, and the UCPE transforms that move the camera branch's
queries, keys and values into each token's ray frame and back.

Tokens are ordered (frame, row, col) on the latent grid; token-major activations are [B, N, H, D].
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .. import ops
from .video_blocks import rope_axis_dims


# -- rotary embedding ---------------------------------------------------------------------------------------

def rope_frequencies(head_dim: int, frames: int, height: int, width: int, *, max_len: int = 1024,
                     theta: float = 10000.0, device: torch.device | str | None = None) -> torch.Tensor:
    """complex64 [frames * height * width, head_dim / 2]: e^(i * position * theta^(-2j / axis_dim)) per channel
    pair, pairs split [t | h | w] as Wan splits them (`rope_axis_dims`), tokens in (frame, row, col) order.

    diffusers' SanaWMRotaryPosEmbed computes the angles in fp32 (`get_1d_rotary_pos_embed`, freqs_dtype fp32) and
    keeps the table complex64 whatever the model dtype; the video DiT's `rope_tables` uses float64 angles, which
    differ from these by up to 2e-6 at 720p, so the WM table is its own.
    """
    if max(frames, height, width) > max_len:
        raise ValueError(f"token grid {frames}x{height}x{width} exceeds the rotary table length {max_len}")
    parts = []
    for axis, (dim, length) in enumerate(zip(rope_axis_dims(head_dim), (frames, height, width))):
        inv_freq = 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.float32, device=device) / dim))  # [dim/2]
        angles = torch.outer(torch.arange(length, device=device), inv_freq)  # [length, dim/2] fp32
        table = torch.polar(torch.ones_like(angles), angles)
        shape = [1, 1, 1, dim // 2]
        shape[axis] = length
        parts.append(table.view(shape).expand(frames, height, width, dim // 2))
    return torch.cat(parts, dim=-1).reshape(frames * height * width, head_dim // 2)


def angle_tables(freqs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A complex rotary table [N, P] as (cos, sin) fp32 views [N, P] (strided: no copy)."""
    pairs = torch.view_as_real(freqs)  # [N, P, 2]
    return pairs[..., 0], pairs[..., 1]


def camera_rope(freqs: torch.Tensor, head_dim: int) -> torch.Tensor:
    """The camera branch's rotary table for the second half of a head ([N, D/4]): not a table for D/2 channels
    but the first entries of each axis of the main table, as diffusers' `_slice_rope_for_cam` takes them."""
    t_main, h_main = head_dim // 2 - 2 * (head_dim // 6), head_dim // 6
    half = head_dim // 2
    t_cam, hw_cam = half // 2 - 2 * (half // 6), half // 6
    return torch.cat([freqs[:, :t_cam], freqs[:, t_main:t_main + hw_cam],
                      freqs[:, t_main + h_main:t_main + h_main + hw_cam]], dim=-1)


# -- camera rays ---------------------------------------------------------------------------------------------

def _focal_round_trip(focal: torch.Tensor, size: int) -> torch.Tensor:
    """diffusers turns each focal length into a field of view and back (its unified camera model with xi = 0);
    the trip is kept for the rounding it brings, in the camera's dtype."""
    a = 2.0 * focal / size
    fov = torch.rad2deg(2.0 * torch.atan(1.0 / a))  # asin(xi / sqrt(a^2 + 1)) = 0 drops out exactly
    half_angle = torch.deg2rad(0.5 * fov)
    return (size * 0.5) * torch.cos(half_angle) / torch.sin(half_angle).clamp_min(torch.finfo(focal.dtype).eps)


def ray_matrices(camera: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """camera [B, T, 20] (camera-to-world 4x4 row-major, then fx, fy, cx, cy on the latent grid) -> [B, T*H*W, 4, 4]
    world -> ray transforms P = [[R, -R t], [0, 1]], one per token, in camera's dtype.

    A token's ray d = normalize(((j - cx) / fx, (i - cy) / fy, 1)) (integer pixel centres) is rotated into the
    world; the ray frame has z along the ray, x = normalize(camera y x z), y = z x x (rows of R).
    """
    b, frames, _ = camera.shape
    dtype, device = camera.dtype, camera.device
    c2w = camera[..., :16].reshape(b, frames, 4, 4)
    fx = _focal_round_trip(camera[..., 16], width).reshape(-1, 1, 1)  # [B*T, 1, 1]
    fy = _focal_round_trip(camera[..., 17], height).reshape(-1, 1, 1)
    cx, cy = camera[..., 18].reshape(-1, 1, 1), camera[..., 19].reshape(-1, 1, 1)

    cols = torch.linspace(0, width - 1, width, dtype=dtype, device=device)
    rows = torch.linspace(0, height - 1, height, dtype=dtype, device=device)
    v, u = torch.meshgrid(rows, cols, indexing="ij")  # [H, W] each
    x, y = (u - cx) / fx, (v - cy) / fy  # [B*T, H, W]
    r2 = x * x + y * y
    gamma = torch.sqrt(1 + r2) / (1 + r2)  # 1 / |(x, y, 1)|, in diffusers' order of operations
    d_cam = torch.stack([gamma * x, gamma * y, gamma], dim=-1).view(b, frames, height, width, 3)

    rot, trans = c2w[..., :3, :3], c2w[..., :3, 3]  # [B, T, 3, 3], [B, T, 3]
    d_world = torch.einsum("btij,bthwj->bthwi", rot, d_cam)
    cam_y = rot[..., :, 1][:, :, None, None, :].expand(-1, -1, height, width, -1)
    z_ray = F.normalize(d_world, dim=-1, eps=1e-6)
    x_ray = F.normalize(torch.cross(cam_y, z_ray, dim=-1), dim=-1, eps=1e-6)
    y_ray = F.normalize(torch.cross(z_ray, x_ray, dim=-1), dim=-1, eps=1e-6)
    w2r = torch.stack([x_ray, y_ray, z_ray], dim=-1).transpose(-1, -2)  # [B, T, H, W, 3, 3], rows x, y, z
    t_w2r = -torch.einsum("bthwij,bthwj->bthwi", w2r, trans[:, :, None, None, :].expand(-1, -1, height, width, -1))
    mats = torch.zeros(b, frames, height, width, 4, 4, dtype=dtype, device=device)
    mats[..., :3, :3] = w2r
    mats[..., :3, 3] = t_w2r
    mats[..., 3, 3] = 1.0
    invalid = torch.isnan(d_world).any(-1)  # a zero focal length: identity, as diffusers
    mats[invalid] = torch.eye(4, dtype=dtype, device=device)
    return mats.reshape(b, frames * height * width, 4, 4)


def invert_rigid(mats: torch.Tensor) -> torch.Tensor:
    """[..., 4, 4] rigid transforms -> their inverses [[R^T, -R^T t], [0, 1]]."""
    rot_t = mats[..., :3, :3].transpose(-1, -2)
    out = torch.zeros_like(mats)
    out[..., :3, :3] = rot_t
    out[..., :3, 3] = -torch.einsum("...ij,...j->...i", rot_t, mats[..., :3, 3])
    out[..., 3, 3] = 1.0
    return out


@dataclass
class CameraTransforms:
    """What the camera branches of every block share: P [B, N, 4, 4] (world -> ray, decodes outputs), its
    transpose (encodes queries), its inverse (encodes keys and values), and the camera rotary angles as cos and
    sin tables [N, D/4] (fp32)."""

    p: torch.Tensor
    p_t: torch.Tensor
    p_inv: torch.Tensor
    cos: torch.Tensor
    sin: torch.Tensor

    @classmethod
    def build(cls, camera: torch.Tensor, height: int, width: int, freqs: torch.Tensor,
              head_dim: int) -> "CameraTransforms":
        p = ray_matrices(camera, height, width)
        angles = camera_rope(freqs, head_dim)  # complex [N, D/4]
        return cls(p=p, p_t=p.transpose(-1, -2).contiguous(), p_inv=invert_rigid(p),
                   cos=angles.real.float().contiguous(), sin=angles.imag.float().contiguous())

    def encode(self, x: torch.Tensor, mats: torch.Tensor, inflation: bool = False):
        """Queries (mats = p_t), keys or values (p_inv) [B, N, H, D] into the camera frame, shrunk back to their own
        RMS; with `inflation`, also the keys' squared norm ratio [B, N, H, 1]."""
        return ops.ucpe(x, mats, self.cos, self.sin, downscale=True, inflation=inflation)

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        """An attention output [B, N, H, D] back from the camera frame (P, the conjugate rotation)."""
        return ops.ucpe(x, self.p, self.cos, self.sin, inverse_rope=True)

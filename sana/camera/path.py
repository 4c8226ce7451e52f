"""The resolved camera path every input becomes, and the checks every reader shares.

Numpy only: `sana world --dry-run` resolves and describes a path without importing torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from ..errors import UsageError

# SANA-WM generates at 16 fps, and its causal VAE folds 8 pixel frames into one latent frame after the first,
# so a clip has 8k+1 frames.
MODEL_FPS = 16.0
FRAME_STRIDE = 8
MAX_WORLD_FRAMES = 961  # a minute at 16 fps (121 latent frames), the longest clip SANA-WM makes in one pass

# How far a rotation may stray from orthonormal before it is refused: loose enough for matrices printed with
# four decimals, tight enough to catch a scaled or sheared matrix.
RIGID_TOLERANCE = 1e-3

# Camera axes: OpenGL / nerfstudio (+x right, +y up, +z back) to OpenCV (+x right, +y down, +z forward) and back.
GL_TO_CV = np.diag([1.0, -1.0, -1.0, 1.0])

SOURCE_KINDS = ("nerfstudio", "schema", "npy", "realestate10k", "actions")


@dataclass(eq=False)
class CameraPath:
    """A camera path ready for SANA-WM: one pose and one set of intrinsics per generated frame."""

    c2w: np.ndarray  # [F, 4, 4] float64 camera-to-world, OpenCV camera axes; c2w[0] is the identity
    intrinsics: np.ndarray  # [F, 4] float64 fx, fy, cx, cy in pixels of image_size
    image_size: tuple[int, int]  # (width, height) of the conditioning image
    fps: float
    source_kind: str  # one of SOURCE_KINDS
    source: str  # the file as given, or the action string
    source_sha256: str  # of the file's bytes, or of the action string's UTF-8
    notices: tuple[str, ...] = ()  # one line each, for the CLI to print (frame snapping, resampling, ...)
    params: dict[str, Any] = field(default_factory=dict)  # resolver settings that shaped the path, for metadata
    path_frames: int | None = None  # frames the whole source path gives at `fps` (None: num_frames)

    @property
    def num_frames(self) -> int:
        return int(self.c2w.shape[0])

    @property
    def duration(self) -> float:
        """Seconds the clip lasts when played at `fps`."""
        return self.num_frames / self.fps

    @property
    def positions(self) -> np.ndarray:
        """Camera centres [F, 3] in the first camera's frame."""
        return self.c2w[:, :3, 3]

    def distance(self) -> float:
        """Length of the polyline through the camera centres, in path units (metres for metric paths)."""
        return float(np.linalg.norm(np.diff(self.positions, axis=0), axis=1).sum())

    def rotation_degrees(self) -> float:
        """Sum of the rotation angles between consecutive frames, in degrees."""
        return float(np.degrees(rotation_angles(self.c2w[:-1, :3, :3], self.c2w[1:, :3, :3]).sum()))

    def vertical_fov_degrees(self) -> np.ndarray:
        """Vertical field of view [F] in degrees implied by fy and the image height."""
        return np.degrees(2.0 * np.arctan(self.image_size[1] / (2.0 * self.intrinsics[:, 1])))

    def describe(self) -> str:
        """One line for `--dry-run`: frames, duration, distance travelled, total rotation, field of view, source."""
        fov = self.vertical_fov_degrees()
        fov_text = f"{fov[0]:.1f}°" if np.ptp(fov) < 0.05 else f"{fov.min():.1f}-{fov.max():.1f}°"
        return (f"{self.num_frames} frames ({self.duration:.2f} s at {self.fps:g} fps), "
                f"{self.distance():.2f} units travelled, {self.rotation_degrees():.1f}° of rotation, "
                f"vertical fov {fov_text} at {self.image_size[0]}x{self.image_size[1]}; "
                f"{self.source_kind} {self.source}")

    def scaled_to(self, width: int, height: int) -> CameraPath:
        """The same path with intrinsics for an image of another size (fx, cx scale with width; fy, cy with height)."""
        if (width, height) == tuple(self.image_size):
            return self
        intrinsics = scale_intrinsics(self.intrinsics, self.image_size, (width, height))
        return CameraPath(self.c2w, intrinsics, (int(width), int(height)), self.fps, self.source_kind, self.source,
                          self.source_sha256, self.notices, dict(self.params))

    def record(self) -> dict[str, Any]:
        """A JSON-ready summary for the output's metadata (the poses themselves go to the .camera.json)."""
        return {"kind": self.source_kind, "source": self.source, "sha256": self.source_sha256,
                "frames": self.num_frames, "fps": self.fps, "image_size": list(self.image_size), **self.params}


# ----------------------------------------------------------------------------------------------------------------
# Frame counts
# ----------------------------------------------------------------------------------------------------------------

def snap_num_frames(n: int, stride: int = FRAME_STRIDE, *, upper_bound: int | None = None) -> int:
    """The nearest stride*k + 1 to n (ties go up), but the lower one when the upper exceeds upper_bound.

    The same rule as diffusers' SANA-WM pipeline applies to the frames it is asked for.
    """
    if n < 1:
        return 1
    if (n - 1) % stride == 0:
        return n
    below = n - (n - 1) % stride
    above = below + stride
    snapped = below if n - below < above - n else above
    if upper_bound is not None and snapped > upper_bound:
        snapped = below
    return max(snapped, 1)


# ----------------------------------------------------------------------------------------------------------------
# Geometry shared by the readers
# ----------------------------------------------------------------------------------------------------------------

def rigid_inverse(c2w: np.ndarray) -> np.ndarray:
    """Inverse of rigid transforms [..., 4, 4] as [R^T, -R^T t]."""
    rotation_t = np.swapaxes(c2w[..., :3, :3], -1, -2)
    out = np.zeros_like(c2w)
    out[..., :3, :3] = rotation_t
    out[..., :3, 3] = -(rotation_t @ c2w[..., :3, 3:])[..., 0]
    out[..., 3, 3] = 1.0
    return out


def anchor_to_first(c2w: np.ndarray) -> np.ndarray:
    """Poses [F, 4, 4] re-expressed in the first camera's frame (inv(P0) @ Pi), the first set to the identity.

    SANA-WM only sees relative poses, so this loses nothing; it makes every source start at the same place.
    """
    out = rigid_inverse(c2w[0]) @ c2w
    out[0] = np.eye(4)
    return out


def rotation_angles(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Angles [N] in radians of the rotations taking each a[i] to b[i] (both [N, 3, 3])."""
    cos = (np.einsum("nij,nij->n", a, b) - 1.0) / 2.0  # trace(a^T b) = sum of the elementwise product
    return np.arccos(np.clip(cos, -1.0, 1.0))


def intrinsics_from_fov(fov_degrees: np.ndarray | float, width: float, height: float) -> np.ndarray:
    """[..., 4] fx, fy, cx, cy for a vertical field of view, square pixels and the principal point at the centre."""
    fov = np.asarray(fov_degrees, dtype=np.float64)
    focal = (height / 2.0) / np.tan(np.radians(fov) / 2.0)
    return np.stack(np.broadcast_arrays(focal, focal, width / 2.0, height / 2.0), axis=-1).astype(np.float64)


def scale_intrinsics(intrinsics: np.ndarray, from_size: tuple[float, float],
                     to_size: tuple[float, float]) -> np.ndarray:
    """Pixel intrinsics [..., 4] of an image of from_size (w, h) re-expressed for to_size."""
    sx, sy = to_size[0] / from_size[0], to_size[1] / from_size[1]
    return intrinsics * np.array([sx, sy, sx, sy])


# ----------------------------------------------------------------------------------------------------------------
# Checks: each raises a one-line UsageError naming where the bad value is and what was expected
# ----------------------------------------------------------------------------------------------------------------

def check_finite(values: np.ndarray, where: str) -> None:
    """Refuse NaN or infinite numbers."""
    if not np.all(np.isfinite(values)):
        raise UsageError(f"{where}: holds NaN or infinite values; expected finite numbers")


def check_fov(fov: float, where: str) -> float:
    """A vertical field of view in degrees, strictly between 0 and 180."""
    is_number = isinstance(fov, (int, float, np.floating, np.integer)) and not isinstance(fov, bool)
    if not is_number or not math.isfinite(fov) or not 0.0 < float(fov) < 180.0:
        raise UsageError(f"{where}: field of view {fov!r}; expected vertical degrees between 0 and 180")
    return float(fov)


def check_intrinsics_values(intrinsics: np.ndarray, where: str) -> None:
    """fx, fy positive and every value finite ([..., 4])."""
    check_finite(intrinsics, where)
    if np.any(intrinsics[..., :2] <= 0):
        raise UsageError(f"{where}: focal lengths must be positive; expected fx, fy, cx, cy in pixels")


def check_rigid(matrices: np.ndarray, name: Callable[[int], str]) -> None:
    """Refuse poses [N, 3|4, 4] with NaN/inf, a rotation that is not orthonormal with det +1, or (4x4) a last row
    other than 0 0 0 1. `name(i)` says where matrix i came from (a file's line, a JSON field)."""
    finite = np.isfinite(matrices).all(axis=(1, 2))
    if not finite.all():
        raise UsageError(f"{name(int(np.flatnonzero(~finite)[0]))}: holds NaN or infinite values; "
                         "expected finite numbers")
    rotations = matrices[:, :3, :3]
    gram_error = np.abs(np.swapaxes(rotations, 1, 2) @ rotations - np.eye(3)).max(axis=(1, 2))
    det = np.linalg.det(rotations)
    bad = np.flatnonzero((gram_error > RIGID_TOLERANCE) | (np.abs(det - 1.0) > RIGID_TOLERANCE))
    if bad.size:
        i = int(bad[0])
        problem = ("is a reflection (det -1)" if det[i] < 0
                   else f"is not a rotation (R^T R off by {gram_error[i]:.2g}, det {det[i]:.4f})")
        raise UsageError(f"{name(i)}: the 3x3 rotation {problem}; expected a rigid camera-to-world transform "
                         "(orthonormal, det +1, no scale)")
    if matrices.shape[1] == 4:
        bad = np.flatnonzero(np.abs(matrices[:, 3] - np.array([0.0, 0.0, 0.0, 1.0])).max(axis=1) > 1e-6)
        if bad.size:
            i = int(bad[0])
            raise UsageError(f"{name(i)}: last row is {matrices[i, 3].tolist()}; expected 0 0 0 1")


# ----------------------------------------------------------------------------------------------------------------
# What a reader returns
# ----------------------------------------------------------------------------------------------------------------

@dataclass(eq=False)
class SourcePath:
    """A path as a file gives it, before resampling to 16 fps, re-anchoring, scaling and frame snapping."""

    c2w: np.ndarray  # [N, 4, 4] camera-to-world, OpenCV camera axes, the file's world frame
    times: np.ndarray  # [N] seconds, strictly increasing
    intrinsics: np.ndarray | None  # [N, 4] fx, fy, cx, cy in pixels of the conditioning image; None: the file has none
    interpolation: str = "linear"  # how positions are resampled: "linear" or "spline"
    notices: list[str] = field(default_factory=list)


def frame_times(count: int, fps: float) -> np.ndarray:
    """Times [count] of consecutive frames at fps."""
    return np.arange(count) / float(fps)

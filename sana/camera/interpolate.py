"""Resampling camera paths in time: slerp for rotations, linear or Catmull-Rom for positions, linear for intrinsics.

Quaternions here are w-first (w, x, y, z) and unit length.
"""

from __future__ import annotations

import math

import numpy as np

from .path import MODEL_FPS

INTERPOLATIONS = ("spline", "linear")


# ----------------------------------------------------------------------------------------------------------------
# Rotations <-> quaternions
# ----------------------------------------------------------------------------------------------------------------

def matrix_to_quaternion(rotations: np.ndarray) -> np.ndarray:
    """Unit quaternions [N, 4] (w, x, y, z) of rotation matrices [N, 3, 3].

    Row c of the symmetric table below is 4 q_c q; dividing the row of the largest |q_c| by 4 |q_c| gives q with
    no division by a small number (Shepperd's method). The result is normalised, which also absorbs small
    non-orthonormality of the input.
    """
    m = np.asarray(rotations, dtype=np.float64)
    m00, m01, m02 = m[:, 0, 0], m[:, 0, 1], m[:, 0, 2]
    m10, m11, m12 = m[:, 1, 0], m[:, 1, 1], m[:, 1, 2]
    m20, m21, m22 = m[:, 2, 0], m[:, 2, 1], m[:, 2, 2]
    wx, wy, wz = m21 - m12, m02 - m20, m10 - m01  # 4 w x, 4 w y, 4 w z
    xy, xz, yz = m01 + m10, m02 + m20, m12 + m21  # 4 x y, 4 x z, 4 y z
    table = np.stack([
        np.stack([1.0 + m00 + m11 + m22, wx, wy, wz], axis=1),
        np.stack([wx, 1.0 + m00 - m11 - m22, xy, xz], axis=1),
        np.stack([wy, xy, 1.0 - m00 + m11 - m22, yz], axis=1),
        np.stack([wz, xz, yz, 1.0 - m00 - m11 + m22], axis=1),
    ], axis=1)  # [N, 4, 4]
    rows = np.arange(len(m))
    pivot = np.diagonal(table, axis1=1, axis2=2).argmax(axis=1)
    q = table[rows, pivot] / (2.0 * np.sqrt(table[rows, pivot, pivot]))[:, None]
    q = np.where(q[:, :1] < 0, -q, q)  # w >= 0: one of the two equivalent signs, chosen for determinism
    return q / np.linalg.norm(q, axis=1, keepdims=True)


def quaternion_to_matrix(quaternions: np.ndarray) -> np.ndarray:
    """Rotation matrices [N, 3, 3] of quaternions [N, 4] (w, x, y, z); normalised first."""
    q = np.asarray(quaternions, dtype=np.float64)
    q = q / np.linalg.norm(q, axis=-1, keepdims=True)
    w, x, y, z = q[..., 0], q[..., 1], q[..., 2], q[..., 3]
    return np.stack([
        np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)], axis=-1),
        np.stack([2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)], axis=-1),
        np.stack([2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], axis=-1),
    ], axis=-2)


def continuous_quaternions(q: np.ndarray) -> np.ndarray:
    """q [N, 4] with signs flipped so consecutive quaternions have a non-negative dot product (shortest arcs)."""
    q = q.copy()
    for i in range(1, len(q)):
        if np.dot(q[i - 1], q[i]) < 0:
            q[i] = -q[i]
    return q


def slerp(q0: np.ndarray, q1: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Spherical linear interpolation [N, 4] between unit quaternions q0, q1 [N, 4] at fractions u [N]."""
    dot = np.clip(np.einsum("ni,ni->n", q0, q1), -1.0, 1.0)
    q1 = np.where(dot[:, None] < 0, -q1, q1)
    dot = np.abs(dot)
    theta = np.arccos(dot)
    sin_theta = np.sin(theta)
    small = sin_theta < 1e-9  # (nearly) equal rotations: the linear blend is exact to rounding there
    safe = np.where(small, 1.0, sin_theta)
    w0 = np.where(small, 1.0 - u, np.sin((1.0 - u) * theta) / safe)
    w1 = np.where(small, u, np.sin(u * theta) / safe)
    q = w0[:, None] * q0 + w1[:, None] * q1
    return q / np.linalg.norm(q, axis=1, keepdims=True)


# ----------------------------------------------------------------------------------------------------------------
# Positions
# ----------------------------------------------------------------------------------------------------------------

def catmull_rom_tangents(times: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Tangents [N, D] of a Catmull-Rom spline through points [N, D] at times [N] (non-uniform knots).

    Inner tangents are (p[i+1] - p[i-1]) / (t[i+1] - t[i-1]); the ends use the one-sided difference.
    """
    tangents = np.empty_like(points)
    if len(points) == 1:
        tangents[:] = 0.0
        return tangents
    tangents[0] = (points[1] - points[0]) / (times[1] - times[0])
    tangents[-1] = (points[-1] - points[-2]) / (times[-1] - times[-2])
    if len(points) > 2:
        tangents[1:-1] = (points[2:] - points[:-2]) / (times[2:] - times[:-2])[:, None]
    return tangents


def _segments(times: np.ndarray, new_times: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each new time, the segment index i (times[i] <= t <= times[i+1]) and the fraction u in [0, 1]."""
    i = np.clip(np.searchsorted(times, new_times, side="right") - 1, 0, len(times) - 2)
    u = np.clip((new_times - times[i]) / (times[i + 1] - times[i]), 0.0, 1.0)
    return i, u


def interpolate_positions(times: np.ndarray, points: np.ndarray, new_times: np.ndarray,
                          method: str = "linear") -> np.ndarray:
    """points [N, D] at times [N] evaluated at new_times [M]: "linear" or "spline" (cubic Hermite, Catmull-Rom
    tangents; passes through every point)."""
    if len(times) == 1:
        return np.repeat(points[:1], len(new_times), axis=0)
    i, u = _segments(times, new_times)
    p0, p1 = points[i], points[i + 1]
    if method == "linear":
        return p0 + u[:, None] * (p1 - p0)
    h = (times[i + 1] - times[i])[:, None]
    tangents = catmull_rom_tangents(times, points)
    m0, m1 = tangents[i] * h, tangents[i + 1] * h
    u = u[:, None]
    u2, u3 = u * u, u * u * u
    return ((2 * u3 - 3 * u2 + 1) * p0 + (u3 - 2 * u2 + u) * m0 + (-2 * u3 + 3 * u2) * p1 + (u3 - u2) * m1)


def interpolate_rotations(times: np.ndarray, rotations: np.ndarray, new_times: np.ndarray) -> np.ndarray:
    """Rotations [N, 3, 3] at times [N] slerped to new_times [M] -> [M, 3, 3]."""
    q = continuous_quaternions(matrix_to_quaternion(rotations))
    if len(times) == 1:
        return quaternion_to_matrix(np.repeat(q[:1], len(new_times), axis=0))
    i, u = _segments(times, new_times)
    return quaternion_to_matrix(slerp(q[i], q[i + 1], u))


# ----------------------------------------------------------------------------------------------------------------
# Whole paths
# ----------------------------------------------------------------------------------------------------------------

def grid_frame_count(duration: float, fps: float = MODEL_FPS) -> int:
    """How many frames k/fps stay within `duration` seconds (a small tolerance keeps an end on the grid)."""
    return int(math.floor(duration * fps + 1e-6)) + 1


def model_frame_times(start: float, end: float, fps: float = MODEL_FPS) -> np.ndarray:
    """Times start + k/fps for every k that stays within end."""
    return start + np.arange(grid_frame_count(end - start, fps)) / fps


def resample_path(times: np.ndarray, c2w: np.ndarray, intrinsics: np.ndarray | None, new_times: np.ndarray,
                  positions: str = "linear") -> tuple[np.ndarray, np.ndarray | None]:
    """Poses [N, 4, 4] (and intrinsics [N, 4], if any) at times [N] evaluated at new_times [M].

    Rotations slerp between neighbours, positions follow `positions` ("linear" or "spline"), intrinsics lerp.
    """
    times = np.asarray(times, dtype=np.float64)
    out = np.zeros((len(new_times), 4, 4))
    out[:, :3, :3] = interpolate_rotations(times, c2w[:, :3, :3], new_times)
    out[:, :3, 3] = interpolate_positions(times, c2w[:, :3, 3], new_times, positions)
    out[:, 3, 3] = 1.0
    new_intrinsics = None
    if intrinsics is not None:
        new_intrinsics = interpolate_positions(times, intrinsics, new_times, "linear")
    return out, new_intrinsics

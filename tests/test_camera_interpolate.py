"""Quaternions, slerp and Catmull-Rom resampling used to bring every path to 16 fps."""

from __future__ import annotations

import numpy as np
import pytest

from sana.camera.interpolate import (interpolate_positions, interpolate_rotations, matrix_to_quaternion,
                                     model_frame_times, quaternion_to_matrix, slerp)
from sana.camera.path import rotation_angles


def random_quaternions(count: int, seed: int = 0) -> np.ndarray:
    q = np.random.default_rng(seed).normal(size=(count, 4))
    return q / np.linalg.norm(q, axis=1, keepdims=True)


def test_quaternion_round_trip():
    q = random_quaternions(500)
    rotations = quaternion_to_matrix(q)
    assert np.allclose(np.swapaxes(rotations, 1, 2) @ rotations, np.eye(3), atol=1e-12)
    back = matrix_to_quaternion(rotations)
    assert np.allclose(np.abs(np.einsum("ni,ni->n", q, back)), 1.0, atol=1e-12)  # q and -q are one rotation
    # half turns, where the trace-based formula alone divides by zero
    for diagonal in ([1, -1, -1], [-1, 1, -1], [-1, -1, 1]):
        half_turn = np.diag(np.array(diagonal, dtype=float))[None]
        assert np.allclose(quaternion_to_matrix(matrix_to_quaternion(half_turn)), half_turn)


def test_slerp_constant_rate_and_shortest_arc():
    q0, q1 = random_quaternions(2, seed=1)
    u = np.linspace(0, 1, 11)
    path = quaternion_to_matrix(slerp(np.tile(q0, (11, 1)), np.tile(q1, (11, 1)), u))
    steps = rotation_angles(path[:-1], path[1:])
    assert np.allclose(steps, steps[0], atol=1e-9)  # equal angle per equal step
    flipped = quaternion_to_matrix(slerp(np.tile(q0, (11, 1)), np.tile(-q1, (11, 1)), u))
    assert np.allclose(flipped, path, atol=1e-12)  # -q1 is the same rotation: the same (short) arc
    same = slerp(q0[None], q0[None], np.array([0.5]))
    assert np.allclose(same, q0)


def test_rotation_keyframes_are_passed_through():
    times = np.array([0.0, 0.7, 1.0, 2.2])
    rotations = quaternion_to_matrix(random_quaternions(4, seed=2))
    out = interpolate_rotations(times, rotations, times)
    assert np.allclose(out, rotations, atol=1e-12)


def test_catmull_rom():
    times = np.array([0.0, 0.5, 1.75, 2.0, 3.0])
    line = np.outer(times, [1.0, -2.0, 0.5]) + 3.0  # points on a line at uneven times
    new_times = np.linspace(0.0, 3.0, 37)
    spline = interpolate_positions(times, line, new_times, "spline")
    assert np.allclose(spline, np.outer(new_times, [1.0, -2.0, 0.5]) + 3.0)  # linear motion stays linear
    curve = np.column_stack([np.sin(times), np.cos(times), times ** 2])
    assert np.allclose(interpolate_positions(times, curve, times, "spline"), curve)  # through every key
    linear = interpolate_positions(times, curve, np.array([0.25]), "linear")
    assert np.allclose(linear, (curve[0] + curve[1]) / 2)


def test_model_frame_times():
    assert model_frame_times(0.0, 1.0).tolist() == pytest.approx(np.arange(17) / 16)
    assert len(model_frame_times(0.0, 89 / 30)) == 48
    assert len(model_frame_times(0.0, 0.0)) == 1

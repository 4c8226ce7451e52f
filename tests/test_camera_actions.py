"""The action language against diffusers 0.42.1's parser and integrator, frame snapping, and action paths."""

from __future__ import annotations

import math

import numpy as np
import pytest
from diffusers.pipelines.sana_wm.cam_utils import action_string_to_c2w, snap_num_frames as diffusers_snap

from sana.camera import ACTION_HELP, resolve_camera, snap_num_frames
from sana.camera.actions import actions_to_c2w, parse_actions
from sana.errors import UsageError

ACTION_STRINGS = [
    "w-80,jw-40,w-40",  # the pipeline's documented example
    "i-100,l-75,wd-20,k-200,ASD-10, none-3,-4",  # pitch limit both ways, case, spaces, an empty key list
    "ikjl-10，wasd-5",  # full-width comma, opposite keys cancel
    "il-90,w-30,kj-30,sd-12,aw-7",
]


@pytest.mark.parametrize("actions", ACTION_STRINGS, ids=range(len(ACTION_STRINGS)))
def test_actions_match_diffusers(actions):
    ours = actions_to_c2w(actions)
    ref = action_string_to_c2w(actions)
    assert ours.shape == ref.shape and ours.dtype == np.float64
    # same float64 integration: rounding ours to float32 gives diffusers' array bit for bit
    assert np.array_equal(ours.astype(np.float32), ref)


def test_action_semantics():
    # l-75 at 1.2 degrees a frame is a quarter turn to the right: forward (+z) becomes +x
    quarter = actions_to_c2w("l-75")[-1]
    assert np.allclose(quarter[:3, 2], [1.0, 0.0, 0.0], atol=1e-12)
    # i looks up (OpenCV y is down), and the pitch stops at 84 degrees: the 71st step would pass 85
    up = actions_to_c2w("i-100")
    pitch = np.degrees(np.arctan2(-up[:, 1, 2], up[:, 2, 2]))
    assert pitch[70] == pytest.approx(84.0) and pitch[-1] == pytest.approx(84.0) and pitch[10] > 0
    # forward motion stays on the horizontal plane even when pitched
    pitched = actions_to_c2w("i-30,w-10")
    assert np.allclose(pitched[-1, :3, 3], [0.0, 0.0, 0.5], atol=1e-12)
    # a diagonal adds both steps
    assert np.allclose(actions_to_c2w("wd-1")[-1, :3, 3], [0.05, 0.0, 0.05])
    # speed and turn rate replace the defaults
    assert np.allclose(actions_to_c2w("w-10", speed=0.1)[-1, :3, 3], [0.0, 0.0, 1.0])
    assert np.allclose(actions_to_c2w("l-10", turn_rate=9.0)[-1, :3, 2], [1.0, 0.0, 0.0], atol=1e-12)
    assert len(parse_actions("w-80,jw-40,w-40")) == 160


@pytest.mark.parametrize("actions, expected", [
    ("x-5", "unknown key 'x'"),
    ("wq-5", "unknown key 'q'"),
    ("w-0", "frame count '0'"),
    ("w-abc", "frame count 'abc'"),
    ("w5", "expected KEYS-FRAMES"),
    ("w-5,", "segment 2"),
    ("  ", "empty"),
])
def test_bad_actions(actions, expected):
    with pytest.raises(UsageError) as info:
        actions_to_c2w(actions)
    message = str(info.value)
    assert expected in message and "--actions" in message and "\n" not in message
    with pytest.raises(ValueError):  # diffusers refuses them too
        action_string_to_c2w(actions)


@pytest.mark.parametrize("count", ["\u0663", "\uff13", "\u00b3"])  # Arabic-Indic 3, full-width 3, superscript 3
def test_a_count_is_written_in_ascii_digits(count):
    with pytest.raises(UsageError, match="expected a positive whole number"):
        actions_to_c2w(f"w-{count}")


def test_help_table_names_every_key():
    for key in "wasdijkl":
        assert f" {key} " in ACTION_HELP
    assert "none" in ACTION_HELP and "0.05" in ACTION_HELP and "1.2" in ACTION_HELP and "85" in ACTION_HELP


def test_snap_num_frames_matches_diffusers():
    for n in range(-2, 200):
        assert snap_num_frames(n) == diffusers_snap(n)
        for bound in (1, 9, 97, 101, 161):
            assert snap_num_frames(n, upper_bound=bound) == diffusers_snap(n, upper_bound=bound)
    assert snap_num_frames(101) == 105 and snap_num_frames(101, upper_bound=101) == 97


def test_resolve_actions():
    path = resolve_camera(actions="w-80,jw-40,w-40", image_size=(1690, 928), intrinsics=[800, 800, 845, 464])
    assert path.num_frames == 161 and path.c2w.shape == (161, 4, 4) and path.intrinsics.shape == (161, 4)
    assert np.array_equal(path.c2w[0], np.eye(4)) and path.source_kind == "actions" and not path.notices
    assert path.distance() == pytest.approx(8.0) and path.rotation_degrees() == pytest.approx(48.0)
    line = path.describe()
    assert "161 frames" in line and "10.06 s" in line and "8.00 units" in line and "48.0°" in line
    assert len(path.source_sha256) == 64

    slow = resolve_camera(actions="w-80", image_size=(1280, 704), fov=60.0, speed=0.025, pose_scale=2.0)
    assert slow.positions[-1] == pytest.approx([0.0, 0.0, 4.0])  # 80 x 0.025 x 2
    fy = 352 / math.tan(math.radians(30.0))
    assert slow.intrinsics[0] == pytest.approx([fy, fy, 640.0, 352.0])

    snapped = resolve_camera(actions="w-99", image_size=(1280, 704), fov=60.0)  # 100 poses -> 97
    assert snapped.num_frames == 97 and "100 frames -> 97" in snapped.notices[0]
    asked = resolve_camera(actions="w-99", image_size=(1280, 704), fov=60.0, num_frames=41)
    assert asked.num_frames == 41 and not asked.notices


def test_actions_need_intrinsics_or_fov():
    with pytest.raises(UsageError) as info:
        resolve_camera(actions="w-10", image_size=(1280, 704))
    assert "--fov" in str(info.value) and "--intrinsics" in str(info.value)
    with pytest.raises(UsageError, match="both given"):
        resolve_camera(actions="w-10", image_size=(1280, 704), fov=50.0, intrinsics=[1, 1, 1, 1])
    with pytest.raises(UsageError, match="exactly one"):
        resolve_camera(image_size=(1280, 704), fov=50.0)
    with pytest.raises(UsageError, match="--fov"):
        resolve_camera(actions="w-10", image_size=(1280, 704), fov=190.0)
    with pytest.raises(UsageError, match="--speed"):
        resolve_camera(actions="w-10", image_size=(1280, 704), fov=50.0, speed=0.0)

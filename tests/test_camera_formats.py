"""The camera-file readers through the one resolver: nerfstudio, sana's schema, .npy, RealEstate10K, and bad input."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from sana.camera import resolve_camera
from sana.camera.interpolate import matrix_to_quaternion
from sana.camera.path import GL_TO_CV, anchor_to_first
from sana.errors import UsageError

IMAGE = (960, 540)


def rot_y(angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


def rot_x(angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])


def orbit(times: np.ndarray, start: tuple[float, float, float] = (0.3, -0.2, 1.0)) -> np.ndarray:
    """OpenCV c2w [N, 4, 4]: a camera turning at a constant 20 deg/s about a tilted axis while moving in a line."""
    base = rot_x(0.3) @ rot_y(0.5)
    poses = np.tile(np.eye(4), (len(times), 1, 1))
    for i, t in enumerate(times):
        poses[i, :3, :3] = base @ rot_y(math.radians(20.0) * t)
        poses[i, :3, 3] = np.array(start) + t * np.array([0.4, 0.05, 0.9])
    return poses


def nerfstudio_file(tmp_path, c2w_cv: np.ndarray, fps: float, *, fov=50.0, render=(1920, 1080), **extra):
    data = {"camera_type": "perspective", "render_width": render[0], "render_height": render[1], "fps": fps,
            "seconds": len(c2w_cv) / fps, "keyframes": [], "smoothness_value": 0.5, "is_cycle": False,
            "camera_path": [{"camera_to_world": (pose @ GL_TO_CV).reshape(-1).tolist(), "fov": fov,
                             "aspect": render[0] / render[1]} for pose in c2w_cv]}
    data.update(extra)
    file = tmp_path / "camera_path.json"
    file.write_text(json.dumps(data))
    return file


def one_line_error(call, *fragments):
    with pytest.raises(UsageError) as info:
        call()
    message = str(info.value)
    assert "\n" not in message, message
    for fragment in fragments:
        assert fragment in message, message
    return message


# ----------------------------------------------------------------------------------------------------------------
# nerfstudio
# ----------------------------------------------------------------------------------------------------------------

def test_nerfstudio_at_16_fps(tmp_path):
    poses = orbit(np.arange(33) / 16.0)
    file = nerfstudio_file(tmp_path, poses, 16)
    path = resolve_camera(file, image_size=IMAGE)
    assert path.source_kind == "nerfstudio" and path.num_frames == 33 and not path.notices
    assert np.allclose(path.c2w, anchor_to_first(poses), atol=1e-12)
    focal = 540.0 / math.tan(math.radians(25.0))  # ns-render's f at 1080 rows, halved for the 540-row image
    assert path.intrinsics[5] == pytest.approx([focal / 2, focal / 2, 480.0, 270.0])
    assert path.params["intrinsics"] == "path"


def test_nerfstudio_resampled_from_30_fps(tmp_path):
    poses = orbit(np.arange(90) / 30.0)
    path = resolve_camera(nerfstudio_file(tmp_path, poses, 30), image_size=IMAGE)
    # 89/30 s holds 48 frames at 16 fps, snapped down to 41
    assert path.num_frames == 41 and any("resampled to 48 frames" in n for n in path.notices)
    # constant angular velocity about one axis and linear motion: slerp and lerp recover them exactly
    assert np.allclose(path.c2w, anchor_to_first(orbit(np.arange(41) / 16.0)), atol=1e-9)


def test_nerfstudio_other_aspect_and_fov_flag(tmp_path):
    file = nerfstudio_file(tmp_path, orbit(np.arange(9) / 16.0), 16, render=(1000, 1000))
    path = resolve_camera(file, image_size=IMAGE)
    assert "scaled per axis" in path.notices[0]
    flagged = resolve_camera(file, image_size=IMAGE, fov=70.0)
    assert flagged.vertical_fov_degrees() == pytest.approx(70.0) and "--fov replaces" in flagged.notices[-1]


@pytest.mark.parametrize("camera_type", ["fisheye", "equirectangular", "omnidirectional", "vr180"])
def test_nerfstudio_refuses_non_pinhole(tmp_path, camera_type):
    file = nerfstudio_file(tmp_path, orbit(np.arange(9) / 16.0), 16, camera_type=camera_type)
    one_line_error(lambda: resolve_camera(file, image_size=IMAGE), "camera_path.json", "field camera_type",
                   camera_type, "perspective")


def test_nerfstudio_without_fov_needs_a_flag(tmp_path):
    file = nerfstudio_file(tmp_path, orbit(np.arange(9) / 16.0), 16)
    data = json.loads(file.read_text())
    for entry in data["camera_path"]:
        del entry["fov"]
    file.write_text(json.dumps(data))
    one_line_error(lambda: resolve_camera(file, image_size=IMAGE), "no intrinsics", "--fov", "--intrinsics")
    assert resolve_camera(file, image_size=IMAGE, fov=40.0).vertical_fov_degrees()[0] == pytest.approx(40.0)


# ----------------------------------------------------------------------------------------------------------------
# sana's schema
# ----------------------------------------------------------------------------------------------------------------

def write_json(tmp_path, data, name="path.json"):
    file = tmp_path / name
    file.write_text(json.dumps(data))
    return file


def test_schema_pose_forms_agree(tmp_path):
    poses = orbit(np.arange(9) / 16.0)
    quats = matrix_to_quaternion(poses[:, :3, :3])
    frames = []
    for i, pose in enumerate(poses):
        if i % 3 == 0:
            frames.append({"c2w": pose.tolist()})
        elif i % 3 == 1:
            frames.append({"position": pose[:3, 3].tolist(), "quaternion": quats[i].tolist()})
        else:  # look along the camera's z with its -y as up: the same pose
            frames.append({"position": pose[:3, 3].tolist(), "look_at": (pose[:3, 3] + 2 * pose[:3, 2]).tolist(),
                           "up": (-pose[:3, 1]).tolist()})
    path = resolve_camera(write_json(tmp_path, {"fps": 16, "fov": 55, "frames": frames}), image_size=IMAGE)
    assert path.source_kind == "schema" and path.num_frames == 9
    assert np.allclose(path.c2w, anchor_to_first(poses), atol=1e-12)
    assert path.vertical_fov_degrees() == pytest.approx(55.0)

    gl = [{"c2w": (pose @ GL_TO_CV).reshape(-1).tolist()} for pose in poses]  # flat row-major, OpenGL axes
    opengl = resolve_camera(write_json(tmp_path, {"convention": "opengl", "fov": 55, "frames": gl}), image_size=IMAGE)
    assert np.allclose(opengl.c2w, path.c2w, atol=1e-12)


def test_schema_look_at_default_up(tmp_path):
    frames = [{"position": [i, 0, 0], "look_at": [i, 0, 5]} for i in range(9)]  # sliding right, looking ahead
    path = resolve_camera(write_json(tmp_path, {"fov": 60, "frames": frames}), image_size=IMAGE)
    assert np.allclose(path.c2w[1], [[1, 0, 0, 1], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]])
    # OpenGL's default up is +y: a camera looking down -z sees the same upright image
    frames = [{"position": [0, 0, -i], "look_at": [0, 0, -20]} for i in range(9)]  # moving forward along -z
    path = resolve_camera(write_json(tmp_path, {"convention": "opengl", "fov": 60, "frames": frames}),
                          image_size=IMAGE)
    assert np.allclose(path.c2w[1], [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 1], [0, 0, 0, 1]], atol=1e-12)


def test_schema_keyframes(tmp_path):
    keys = [{"position": [0, 0, 0], "look_at": [0, 0, 1], "time": 0.0, "fov": 50},
            {"position": [1, 0, 1], "look_at": [1, 0, 2], "time": 1.0, "fov": 50},
            {"position": [2, 0, 0], "look_at": [3, 0, 0], "time": 2.5,
             "intrinsics": [1000, 1000, 640, 360]}]
    data = {"width": 1280, "height": 720, "frames": keys}
    spline = resolve_camera(write_json(tmp_path, data), image_size=IMAGE)
    linear = resolve_camera(write_json(tmp_path, {**data, "interpolation": "linear"}), image_size=IMAGE)
    assert spline.num_frames == 41 and "41 frames" in spline.notices[0] and "Catmull-Rom" in spline.notices[0]
    for path in (spline, linear):  # keyframes are passed through at t = 0 and 1 s
        assert np.allclose(path.positions[16], [1, 0, 1], atol=1e-12)
        assert np.allclose(path.c2w[16, :3, :3], np.eye(3), atol=1e-12)
    assert np.allclose(linear.positions[8], [0.5, 0, 0.5])
    assert not np.allclose(spline.positions[8], [0.5, 0, 0.5])  # the spline bends through the middle key
    # intrinsics lerp from fov 50 to the last key's, scaled from 1280x720 to the 960x540 image
    assert spline.intrinsics[40] == pytest.approx([750.0, 750.0, 480.0, 270.0])


def test_a_path_spanning_hours_builds_only_the_frames_a_clip_can_use(tmp_path):
    """Keyframe times in microseconds (2e6 s): 32 million frames at 16 fps; only the longest clip's are built."""
    keys = [{"position": [0, 0, 0], "look_at": [0, 0, 1], "time": 0}, {"position": [0, 0, 5], "look_at": [0, 0, 6],
                                                                        "time": 2_000_000}]
    data = {"fov": 60, "interpolation": "linear", "frames": keys}
    whole = resolve_camera(write_json(tmp_path, data), image_size=IMAGE)
    assert whole.num_frames == 961 and whole.path_frames == 32_000_001
    assert "resampled to 32000001 frames" in whole.notices[-1]
    short = resolve_camera(write_json(tmp_path, data), image_size=IMAGE, num_frames=17)
    assert short.num_frames == 17 and np.allclose(short.c2w, whole.c2w[:17])
    assert short.positions[16][2] == pytest.approx(5 / 2_000_000)  # 1 s along a 5 m, 2e6 s path


@pytest.mark.parametrize("frames, expected", [
    ([{"position": [0, 0, 0]}], "frames[0]: pose given as position"),
    ([{"c2w": np.eye(4).tolist(), "position": [0, 0, 0], "look_at": [0, 0, 1]}], "frames[0]: pose given as"),
    ([{"c2w": np.eye(4).tolist(), "rotation": [1, 0, 0, 0]}], "frames[0]: unknown key 'rotation'"),
    ([{"c2w": [[1, 0, 0], [0, 1, 0], [0, 0, 1]]}], "frames[0].c2w"),
    ([{"c2w": (2 * np.eye(4)).tolist()}], "frames[0]: the 3x3 rotation is not a rotation"),
    ([{"c2w": np.diag([1.0, 1.0, -1.0, 1.0]).tolist()}], "frames[0]: the 3x3 rotation is a reflection"),
    ([{"position": [0, 0, 0], "quaternion": [2, 0, 0, 0]}], "frames[0].quaternion: length 2"),
    ([{"position": [0, 0, 0], "look_at": [0, 0, 0]}], "look_at equals position"),
    ([{"position": [0, 0, 0], "look_at": [0, 1, 0]}], "parallel to up"),
    ([{"c2w": np.eye(4).tolist(), "time": 0}, {"c2w": np.eye(4).tolist()}], "frames[1].time: missing"),
    ([{"c2w": np.eye(4).tolist(), "time": 1}, {"c2w": np.eye(4).tolist(), "time": 1}], "frames[1].time: 1 s"),
    ([{"c2w": np.eye(4).tolist(), "fov": 50}, {"c2w": np.eye(4).tolist()}], "frames[1]: no fov or intrinsics"),
    ([{"c2w": np.eye(4).tolist(), "fov": 0}], "frames[0].fov"),
    ([{"c2w": np.eye(4).tolist(), "intrinsics": [1, 1, 1]}], "field width"),
])
def test_schema_errors(tmp_path, frames, expected):
    file = write_json(tmp_path, {"frames": frames})
    one_line_error(lambda: resolve_camera(file, image_size=IMAGE, fov=None if "fov" in frames[0] else 50.0),
                   "path.json", expected)


def test_schema_nan_and_options(tmp_path):
    file = tmp_path / "nan.json"
    file.write_text('{"fov": 50, "frames": [{"position": [0, NaN, 0], "look_at": [0, 0, 1]}]}')
    one_line_error(lambda: resolve_camera(file, image_size=IMAGE), "frames[0].position", "NaN")
    frames = [{"c2w": np.eye(4).tolist()}]
    for field, value in (("convention", "blender"), ("interpolation", "cubic"), ("fps", -1), ("version", 2)):
        file = write_json(tmp_path, {"fov": 50, "frames": frames, field: value})
        one_line_error(lambda: resolve_camera(file, image_size=IMAGE), f"field {field}")


# ----------------------------------------------------------------------------------------------------------------
# .npy poses and intrinsics
# ----------------------------------------------------------------------------------------------------------------

def test_npy_with_intrinsics_forms(tmp_path):
    poses = orbit(np.arange(17) / 16.0)
    np.save(tmp_path / "poses.npy", poses.astype(np.float32))
    k = np.array([[500.0, 0, 480], [0, 510, 270], [0, 0, 1]])
    per_frame = np.tile([500.0, 510, 480, 270], (17, 1))
    np.save(tmp_path / "K.npy", k)
    np.save(tmp_path / "K_frames.npy", np.tile(k, (17, 1, 1)))
    np.save(tmp_path / "vec.npy", per_frame)
    (tmp_path / "K.txt").write_text("# fx fy cx cy\n500 510 480 270\n")
    for value in (tmp_path / "K.npy", tmp_path / "K_frames.npy", tmp_path / "vec.npy", tmp_path / "K.txt",
                  "500,510,480,270", [500, 510, 480, 270], per_frame):
        path = resolve_camera(tmp_path / "poses.npy", image_size=IMAGE, intrinsics=value)
        assert path.source_kind == "npy" and path.num_frames == 17
        assert np.allclose(path.intrinsics, per_frame), value
    assert np.allclose(path.c2w, anchor_to_first(poses.astype(np.float32).astype(np.float64)), atol=1e-12)
    assert path.params["intrinsics"] == "--intrinsics"


def test_npy_errors(tmp_path):
    np.save(tmp_path / "poses.npy", orbit(np.arange(9) / 16.0))
    cases = [
        (np.zeros((2, 3)), "shape (2, 3)"),
        (np.ones((2, 5)), "shape (2, 5)"),
        (np.ones((9, 3, 4)), "shape (9, 3, 4)"),
        (np.tile([1.0, 1, 1, 1], (3, 1)), "3 rows for 9 frames"),
        (np.array([[500.0, 3, 480], [0, 510, 270], [0, 0, 1]]), "not a pinhole camera matrix"),
        (np.array([500.0, -1, 480, 270]), "focal lengths must be positive"),
    ]
    for k, expected in cases:
        np.save(tmp_path / "K.npy", k)
        one_line_error(lambda: resolve_camera(tmp_path / "poses.npy", image_size=IMAGE, intrinsics=tmp_path / "K.npy"),
                       expected)
    one_line_error(lambda: resolve_camera(tmp_path / "poses.npy", image_size=IMAGE), "--fov", "--intrinsics")
    one_line_error(lambda: resolve_camera(tmp_path / "poses.npy", image_size=IMAGE, intrinsics="500,500,320"),
                   "'500,500,320'", "4 numbers")
    np.save(tmp_path / "bad.npy", np.zeros((5, 3, 4)))
    one_line_error(lambda: resolve_camera(tmp_path / "bad.npy", image_size=IMAGE, fov=50.0), "bad.npy",
                   "(5, 3, 4)", "(F, 4, 4)")
    poses = orbit(np.arange(9) / 16.0)
    poses[4, 1, 1] = np.inf
    np.save(tmp_path / "inf.npy", poses)
    one_line_error(lambda: resolve_camera(tmp_path / "inf.npy", image_size=IMAGE, fov=50.0), "pose [4]", "infinite")
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    one_line_error(lambda: resolve_camera(tmp_path / "objects.npy", image_size=IMAGE, fov=50.0), "Python objects")
    one_line_error(lambda: resolve_camera(tmp_path / "poses.npy", image_size=IMAGE, fov=50.0, num_frames=17),
                   "gives 9 frames", "17 were asked")


# ----------------------------------------------------------------------------------------------------------------
# RealEstate10K / CameraCtrl
# ----------------------------------------------------------------------------------------------------------------

def realestate_text(c2w: np.ndarray, timestamps_us: list[int]) -> str:
    lines = ["https://www.youtube.com/watch?v=example"]
    for pose, stamp in zip(c2w, timestamps_us):
        w2c = np.linalg.inv(pose)[:3]
        lines.append(" ".join([str(stamp), "0.474812461", "0.844111024", "0.5", "0.5", "0", "0"]
                              + [f"{v:.12f}" for v in w2c.reshape(-1)]))
    return "\n".join(lines) + "\n"


def test_realestate(tmp_path):
    poses = orbit(np.arange(9) / 16.0)
    file = tmp_path / "cameras.txt"
    file.write_text(realestate_text(poses, [1_000_000 + 62_500 * i for i in range(9)]))  # exactly 16 fps
    path = resolve_camera(file, image_size=IMAGE)
    assert path.source_kind == "realestate10k" and path.num_frames == 9 and not path.notices
    assert np.allclose(path.c2w, anchor_to_first(poses), atol=1e-9)
    assert path.intrinsics[0] == pytest.approx([0.474812461 * 960, 0.844111024 * 540, 480, 270])

    sparse = orbit(np.arange(7) * 0.3)  # a pose every 0.3 s, as CameraCtrl's clips are sampled
    file.write_text(realestate_text(sparse, [int(300_000 * i) for i in range(7)]))
    path = resolve_camera(file, image_size=IMAGE)
    assert path.num_frames == 25 and np.allclose(path.c2w, anchor_to_first(orbit(np.arange(25) / 16.0)), atol=1e-9)


def test_realestate_errors(tmp_path):
    poses = orbit(np.arange(3) / 16.0)
    good = realestate_text(poses, [0, 62_500, 125_000]).splitlines()
    file = tmp_path / "cameras.txt"
    file.write_text("\n".join([good[0], good[1], good[2].rsplit(" ", 1)[0], good[3]]))
    one_line_error(lambda: resolve_camera(file, image_size=IMAGE), "cameras.txt line 3", "18 fields", "19 numbers")
    fields = good[2].split()
    fields[7] = "3.0"  # a scaled rotation
    file.write_text("\n".join([good[0], good[1], " ".join(fields), good[3]]))
    one_line_error(lambda: resolve_camera(file, image_size=IMAGE), "cameras.txt line 3", "not a rotation")
    file.write_text("\n".join([good[0], good[2], good[1], good[3]]))
    one_line_error(lambda: resolve_camera(file, image_size=IMAGE), "cameras.txt line 3", "increasing timestamps")


# ----------------------------------------------------------------------------------------------------------------
# Shared behaviour and bad input
# ----------------------------------------------------------------------------------------------------------------

def test_pose_scale_and_snapping(tmp_path):
    poses = orbit(np.arange(20) / 16.0)
    np.save(tmp_path / "poses.npy", poses)
    base = resolve_camera(tmp_path / "poses.npy", image_size=IMAGE, fov=50.0)
    scaled = resolve_camera(tmp_path / "poses.npy", image_size=IMAGE, fov=50.0, pose_scale=2.5)
    assert base.num_frames == 17 and "20 frames -> 17" in base.notices[0]
    assert np.allclose(scaled.positions, 2.5 * base.positions) and np.array_equal(scaled.c2w[:, :3, :3],
                                                                                  base.c2w[:, :3, :3])
    assert scaled.distance() == pytest.approx(2.5 * base.distance())


def test_unknown_and_malformed_files(tmp_path):
    bad_json = tmp_path / "broken.json"
    bad_json.write_text('{"frames": [\n  {"c2w": [1, 2,]}\n]}')
    one_line_error(lambda: resolve_camera(bad_json, image_size=IMAGE), "broken.json line 2 column", "malformed JSON")
    other = write_json(tmp_path, {"poses": []}, "other.json")
    one_line_error(lambda: resolve_camera(other, image_size=IMAGE), "other.json", "\"frames\"", "camera_path")
    binary = tmp_path / "photo.png"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)))
    one_line_error(lambda: resolve_camera(binary, image_size=IMAGE), "photo.png", "not a camera path kind")
    one_line_error(lambda: resolve_camera(tmp_path / "missing.json", image_size=IMAGE), "missing.json", "not found")


def test_resolver_does_not_import_torch():
    code = ("import sys; import sana.camera, sana.camera.resolve, sana.camera.export; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_documented_examples_resolve(tmp_path):
    doc = (Path(__file__).resolve().parents[1] / "docs" / "camera-paths.md").read_text(encoding="utf-8")
    examples = re.findall(r"```json\n(.*?)```", doc, flags=re.S)
    assert len(examples) == 3
    counts = []
    for i, example in enumerate(examples):
        file = tmp_path / f"example{i}.json"
        file.write_text(example)
        path = resolve_camera(file, image_size=IMAGE)
        assert path.source_kind == "schema"
        counts.append(path.num_frames)
    assert counts[1] == 81  # the keyframed orbit: 5 s at 16 fps

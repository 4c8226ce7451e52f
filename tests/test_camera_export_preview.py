"""Writing a resolved path as .camera.json (read back through the resolver) and drawing its preview PNG."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from sana.camera import resolve_camera
from sana.camera.export import camera_json, camera_json_path, write_camera_json
from sana.camera.preview import draw_preview, save_preview, time_colour

IMAGE = (1280, 704)


@pytest.fixture
def action_path():
    return resolve_camera(actions="w-40,jw-40,il-28", image_size=IMAGE, intrinsics=[700.0, 690.0, 630.0, 360.0],
                          pose_scale=1.5)


def test_round_trip_through_the_schema_half(tmp_path, action_path):
    file = write_camera_json(action_path, tmp_path / "clip.camera.json")
    back = resolve_camera(file, image_size=IMAGE)
    assert back.source_kind == "schema" and not back.notices
    assert np.array_equal(back.c2w, action_path.c2w) and np.array_equal(back.intrinsics, action_path.intrinsics)
    assert back.fps == action_path.fps and back.image_size == action_path.image_size
    data = json.loads(file.read_text())
    assert data["source"]["kind"] == "actions" and data["source"]["pose_scale"] == 1.5


def test_nerfstudio_half(tmp_path, action_path):
    data = json.loads(write_camera_json(action_path, tmp_path / "clip.camera.json").read_text())
    frames = action_path.num_frames
    assert data["camera_type"] == "perspective" and data["fps"] == 16 and data["seconds"] * 16 == frames
    assert (data["render_width"], data["render_height"]) == IMAGE and len(data["camera_path"]) == frames
    entry = data["camera_path"][0]
    assert len(entry["camera_to_world"]) == 16 and entry["aspect"] == pytest.approx(1280 / 704)
    # first camera level in nerfstudio's z-up world, looking along +y (OpenGL camera: -z forward, +y up)
    first = np.array(entry["camera_to_world"]).reshape(4, 4)
    assert np.allclose(first[:3, 2], [0, -1, 0]) and np.allclose(first[:3, 1], [0, 0, 1])
    # viewer keyframes every 8 frames plus the last, their transitions adding up to the clip's length
    keyframes = data["keyframes"]
    assert len(keyframes) == len(set(range(0, frames, 8)) | {frames - 1})
    assert all(set(k) >= {"matrix", "fov", "aspect"} for k in keyframes)
    assert _viewer_keyframe_times(data) == pytest.approx(np.array(sorted(set(range(0, frames, 8)) | {frames - 1})) / 16)

    # nerfstudio's half alone reads back to the same poses; its intrinsics come from fov, so fx = fy and the
    # principal point is centred, as they were not here
    del data["frames"]
    (tmp_path / "ns.json").write_text(json.dumps(data))
    back = resolve_camera(tmp_path / "ns.json", image_size=IMAGE)
    assert back.source_kind == "nerfstudio" and back.num_frames == frames
    assert np.allclose(back.c2w, action_path.c2w, atol=1e-12)
    assert np.allclose(back.intrinsics[:, 1], action_path.intrinsics[:, 1])
    assert np.allclose(back.intrinsics[:, 2:], [640.0, 352.0])


def test_camera_json_path():
    assert str(camera_json_path("out/clip.mp4")) == "out/clip.camera.json"
    assert str(camera_json_path("clip")) == "clip.camera.json"


def test_preview_png(tmp_path, action_path):
    file = save_preview(action_path, tmp_path / "preview.png", every=8)
    image = Image.open(file)
    assert image.format == "PNG" and image.size == (1280, 720)
    pixels = np.asarray(image.convert("RGB")).reshape(-1, 3)
    for marker in (time_colour(0.0), time_colour(1.0)):  # start and end markers
        assert (pixels == marker).all(axis=1).any()
    left, right = np.asarray(image)[100:600, 80:620], np.asarray(image)[100:600, 700:1220]
    assert (left != 255).any() and (right != 255).any()  # both views drew something
    assert not np.array_equal(np.asarray(draw_preview(action_path, every=32)), np.asarray(image))


def test_preview_of_degenerate_paths():
    still = resolve_camera(actions="none-8", image_size=IMAGE, fov=60.0)  # no motion at all
    turn = resolve_camera(actions="l-40", image_size=IMAGE, fov=60.0)  # rotation only
    one = resolve_camera(actions="w-1", image_size=IMAGE, fov=60.0)  # snapped to a single frame
    assert one.num_frames == 1
    for path in (still, turn, one):
        assert draw_preview(path).size == (1280, 720)


def test_preview_and_export_need_no_matplotlib_or_torch():
    code = ("import sys; import sana.camera.preview, sana.camera.export; "
            "assert 'matplotlib' not in sys.modules and 'torch' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


def _viewer_keyframe_times(data: dict) -> np.ndarray:
    """When nerfstudio's viewer reaches each keyframe (its `compute_transition_times_cumsum`, no loop): a keyframe's
    transition is the one that ends at it, the first keyframe's unused."""
    durations = [k["override_transition_sec"] if k["override_transition_enabled"] else data["default_transition_sec"]
                 for k in data["keyframes"][1:]]
    return np.concatenate([[0.0], np.cumsum(durations)])


def test_nerfstudio_keyframes_reach_each_frame_on_time(action_path):
    """A path whose last keyframe step is short (20 frames: keys 0, 8, 16, 19): the viewer reaches every keyframe
    at its frame's time, so the short step is the last keyframe's."""
    import dataclasses

    short = dataclasses.replace(action_path, c2w=action_path.c2w[:20], intrinsics=action_path.intrinsics[:20])
    data = camera_json(short)
    assert _viewer_keyframe_times(data) == pytest.approx(np.array([0, 8, 16, 19]) / 16.0)
    assert [k["override_transition_enabled"] for k in data["keyframes"]] == [False, False, False, True]


def test_a_refined_clip_camera_file_renders_the_clip_and_replays_the_path(tmp_path, action_path):
    """A refined clip shows every frame but the first: nerfstudio's half holds the clip's poses (in the same
    world), the schema half the whole path stage 1 followed, which a replay resolves again."""
    from sana.camera.export import camera_record

    extra, text = camera_record(action_path, tmp_path / "clip.mp4", frames=action_path.num_frames - 1)
    data = json.loads(text)
    whole = camera_json(action_path)
    assert len(data["frames"]) == action_path.num_frames and data["clip_starts_at_frame"] == 1
    assert data["camera_path"] == whole["camera_path"][1:]
    assert data["seconds"] * 16 == action_path.num_frames - 1
    assert _viewer_keyframe_times(data)[-1] == pytest.approx((action_path.num_frames - 2) / 16)
    (tmp_path / "clip.camera.json").write_text(text)
    again = resolve_camera(tmp_path / "clip.camera.json", image_size=IMAGE)
    assert np.allclose(again.c2w, action_path.c2w, atol=1e-12)
    assert "clip_starts_at_frame" not in json.loads(camera_record(action_path, tmp_path / "b.mp4")[1])

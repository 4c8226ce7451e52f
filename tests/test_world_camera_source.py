"""What `sana world` follows (no model, no torch): --camera / --actions, --from's camera file or, when that file is
gone or replaced, the source and settings the clip recorded; options that would do nothing refused; a path cut to
the model's default frames said; per-pose intrinsics resampled with their poses; the first frame upright."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from sana.camera import resolve_camera
from sana.camera.export import camera_record, write_camera_json
from sana.errors import UsageError
from sana_cli.world_camera import camera_source, resolve_path

IMAGE = (130, 70)
FLAGS = {"camera": None, "actions": None, "intrinsics": None, "fov": None, "pose_scale": None, "speed": None,
         "turn_rate": None, "camera_fps": None}


def _poses(count: int) -> np.ndarray:
    poses = np.tile(np.eye(4), (count, 1, 1))
    poses[:, 2, 3] = np.linspace(0.0, 1.0, count)  # straight ahead
    return poses


def _clip(tmp_path: Path, path, name: str = "walk.mp4") -> tuple[Path, SimpleNamespace]:
    """A clip's record as `sana world` writes it (the clip file itself is not read here), its camera file beside."""
    clip = tmp_path / name
    extra, text = camera_record(path, clip)
    write_camera_json(path, tmp_path / extra["camera_file"], text)
    return clip, SimpleNamespace(extra=extra)


def _follow(flags: dict, record=None, clip=None, frames=None, default=161):
    return resolve_path(camera_source({**FLAGS, **flags}, record, clip), IMAGE, frames, default)


def test_replay_reads_the_camera_file_written_with_the_clip(tmp_path):
    asked = resolve_camera(actions="w-8,jw-8", image_size=IMAGE, fov=60.0)
    clip, record = _clip(tmp_path, asked)
    again = _follow({}, record, clip)
    assert again.source_kind == "schema" and np.allclose(again.c2w, asked.c2w, atol=1e-12)


def test_a_replaced_camera_file_is_not_replayed(tmp_path, capsys):
    """walk.gif made after walk.mp4 writes the same walk.camera.json: walk.mp4's replay notices and resolves its
    recorded actions again, with the recorded settings."""
    asked = resolve_camera(actions="w-8,jw-8", image_size=IMAGE, fov=60.0, speed=0.1)
    clip, record = _clip(tmp_path, asked)
    write_camera_json(resolve_camera(actions="s-16", image_size=IMAGE, fov=50.0), tmp_path / "walk.camera.json")
    again = _follow({}, record, clip)
    assert "not the camera file written with walk.mp4" in capsys.readouterr().err
    assert again.source_kind == "actions" and np.allclose(again.c2w, asked.c2w)
    assert np.allclose(again.intrinsics, asked.intrinsics)


def test_a_replay_without_the_camera_file_uses_every_recorded_setting(tmp_path):
    """.npy poses read at --camera-fps 32 with typed --intrinsics: both recorded, so the replay needs neither."""
    np.save(tmp_path / "poses.npy", _poses(33))
    asked = resolve_camera(tmp_path / "poses.npy", image_size=IMAGE, intrinsics="100,100,65,35", source_fps=32.0)
    assert asked.num_frames == 17 and asked.c2w[-1, 2, 3] == pytest.approx(1.0)
    clip, record = _clip(tmp_path, asked)
    (tmp_path / "walk.camera.json").unlink()
    again = _follow({}, record, clip)
    assert again.source_kind == "npy" and np.allclose(again.c2w, asked.c2w)
    assert np.allclose(again.intrinsics, asked.intrinsics)
    # an explicit --fov replaces the recorded intrinsics
    wider = _follow({"fov": 90.0}, record, clip)
    assert wider.intrinsics[0, 1] < asked.intrinsics[0, 1]


def test_a_replay_needs_the_intrinsics_file_it_cannot_rebuild(tmp_path):
    np.save(tmp_path / "poses.npy", _poses(17))
    np.save(tmp_path / "K.npy", np.tile([100.0, 100.0, 65.0, 35.0], (17, 1)))
    asked = resolve_camera(tmp_path / "poses.npy", image_size=IMAGE, intrinsics=str(tmp_path / "K.npy"))
    clip, record = _clip(tmp_path, asked)
    (tmp_path / "walk.camera.json").unlink()
    with pytest.raises(UsageError, match="intrinsics came from a file"):
        _follow({}, record, clip)
    assert np.allclose(_follow({"intrinsics": str(tmp_path / "K.npy")}, record, clip).intrinsics, asked.intrinsics)


def test_a_changed_source_file_is_refused_when_the_camera_file_is_gone(tmp_path):
    np.save(tmp_path / "poses.npy", _poses(17))
    clip, record = _clip(tmp_path, resolve_camera(tmp_path / "poses.npy", image_size=IMAGE, fov=60.0))
    (tmp_path / "walk.camera.json").unlink()
    np.save(tmp_path / "poses.npy", _poses(25))
    with pytest.raises(UsageError, match="not the camera path the clip recorded"):
        _follow({}, record, clip)


@pytest.mark.parametrize("flags", [{"speed": 0.5}, {"turn_rate": 3.0}])
def test_action_options_are_refused_where_they_would_do_nothing(tmp_path, flags):
    np.save(tmp_path / "poses.npy", _poses(17))
    with pytest.raises(UsageError, match="to --actions, not to --camera FILE"):
        _follow({"camera": str(tmp_path / "poses.npy"), "fov": 60.0, **flags})
    clip, record = _clip(tmp_path, resolve_camera(actions="w-16", image_size=IMAGE, fov=60.0))
    with pytest.raises(UsageError, match="to --actions, not to a replay"):
        _follow(flags, record, clip)
    with pytest.raises(UsageError, match="--camera-fps applies to .npy poses"):
        resolve_camera(actions="w-16", image_size=IMAGE, fov=60.0, source_fps=30.0)


def test_a_path_cut_to_the_default_frames_says_so(capsys):
    path = _follow({"actions": "w-40", "fov": 60.0}, default=17)
    assert path.num_frames == 17
    assert "gives 41 frames; the clip takes the first 17 (give --frames N for up to 41)" in capsys.readouterr().err
    _follow({"actions": "w-16", "fov": 60.0}, default=17)
    assert capsys.readouterr().err == ""


def test_per_pose_intrinsics_are_resampled_with_their_poses(tmp_path):
    """33 poses at 32 fps with a K row each: frame k of the clip is pose 2k, and takes that pose's row."""
    np.save(tmp_path / "poses.npy", _poses(33))
    rows = np.stack([np.linspace(100.0, 132.0, 33), np.linspace(100.0, 132.0, 33), np.full(33, 65.0),
                     np.full(33, 35.0)], axis=1)
    np.save(tmp_path / "K.npy", rows)
    path = resolve_camera(tmp_path / "poses.npy", image_size=IMAGE, intrinsics=str(tmp_path / "K.npy"),
                          source_fps=32.0)
    assert path.num_frames == 17 and np.allclose(path.intrinsics, rows[::2])
    assert any("resampled with the poses" in notice for notice in path.notices)


def test_the_first_frame_is_upright_as_shown(tmp_path):
    """A JPEG stored sideways with EXIF orientation 6 is read as it is shown (diffusers' load_image does too)."""
    from sana_cli.clip_settings import open_first_frame

    stored = Image.new("RGB", (64, 36), (200, 40, 40))
    exif = stored.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to show
    stored.save(tmp_path / "phone.jpg", exif=exif)
    assert open_first_frame(str(tmp_path / "phone.jpg")).image.size == (36, 64)

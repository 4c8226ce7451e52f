"""The moving-shapes grammar (clips of the nano video model) and its analytic checker: rendered clips pass, each
kind of mistake fails, MP4 round trips pass, and `sana shapes make --video` writes what `sana finetune` reads."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from sana.errors import SanaError
from sana.nano.motion_adherence import MIN_DISPLACEMENT, check_clip, clip_grid, score_video_model
from sana.nano.moving_shapes import (FRAMES, JITTER, SIDE, MotionScene, parse_motion_caption,
                                     render_clip, sample_motion_scenes)
from sana.nano.shapes import COLORS
from tests.cli_helpers import assert_one_line_error, run_sana

ONE = "a large red circle moving right on a white background"
TWO = "a small blue square moving left at the top and a large green triangle moving right at the bottom on a black background"


def _replace(scene: MotionScene, index: int = 0, **changes) -> MotionScene:
    objects = list(scene.objects)
    objects[index] = dataclasses.replace(objects[index], **changes)
    return MotionScene(tuple(objects), scene.background)


# -- grammar -------------------------------------------------------------------------------------------------

def test_captions_paths_and_the_exact_numbers():
    one, two = parse_motion_caption(ONE), parse_motion_caption(TWO)
    assert one.caption == ONE and two.caption == TWO
    assert one.objects[0].start == (0.25, 0.5) and one.objects[0].end == (0.75, 0.5)
    top, bottom = two.objects
    assert (top.start, top.end) == ((0.75, 0.27), (0.25, 0.27))
    assert (bottom.start, bottom.end) == ((0.25, 0.73), (0.75, 0.73))
    assert parse_motion_caption("a small blue circle moving up on a gray background").objects[0].start == (0.5, 0.75)
    assert parse_motion_caption("A Small Blue Circle moving  down on a gray background.").objects[0].end == (0.5, 0.75)
    clip = render_clip(one)
    assert clip.shape == (FRAMES, SIDE, SIDE, 3) == (17, 128, 128, 3) and clip.dtype == np.uint8
    assert tuple(clip[0, 0, 0]) == (245, 245, 245)  # the image grammar's white
    assert tuple(clip[0, 64, 32]) == COLORS["red"]  # the centre of frame 0 is at x 0.25 (pixel 32), y 0.5
    assert tuple(clip[-1, 64, 96]) == COLORS["red"] and tuple(clip[-1, 64, 32]) == (245, 245, 245)


@pytest.mark.parametrize("text", [
    "a large red circle moving sideways on a white background",
    "a large red circle moving up at the top and a small blue square moving left at the bottom on a white background",
    "a large red circle moving left at the top and a small red square moving left at the bottom on a white background",
    "a large red circle on the left on a white background",
])
def test_captions_outside_the_grammar_are_refused(text):
    with pytest.raises(SanaError):
        parse_motion_caption(text)


def test_sampling_is_deterministic_and_within_the_grammar():
    scenes = sample_motion_scenes(200, 3)
    assert [s.caption for s in sample_motion_scenes(50, 3)] == [s.caption for s in scenes[:50]]
    counts = {1: 0, 2: 0}
    for scene in scenes:
        counts[len(scene.objects)] += 1
        for obj in scene.objects:
            assert max(map(abs, (*obj.start_jitter, *obj.end_jitter))) <= JITTER
        if len(scene.objects) == 2:
            assert scene.objects[0].color != scene.objects[1].color
    assert counts[1] > 60 and counts[2] > 60
    assert {o.direction for s in scenes for o in s.objects} == {"left", "right", "up", "down"}


# -- the checker ---------------------------------------------------------------------------------------------

def test_rendered_clips_pass_and_jitter_never_breaks_them():
    for scene in sample_motion_scenes(40, 0):
        result = check_clip(render_clip(scene), scene)
        assert result.fully_correct, (scene.caption, result.attributes())
        for check in result.objects:
            assert check.displacement >= 0.5 - 2 * JITTER - 0.02


def _drawn_instead(mistake: str, asked: MotionScene) -> np.ndarray:
    """The clip of `asked` with one mistake."""
    if mistake in ("color", "shape", "size", "direction"):
        value = {"color": "orange", "shape": "square", "size": "small", "direction": "left"}[mistake]
        return render_clip(_replace(asked, **{mistake: value}))
    if mistake == "still":  # it stays at its start
        return np.repeat(render_clip(asked)[:1], FRAMES, axis=0)
    if mistake == "short":  # it moves 0.25 of the side, under the threshold
        return render_clip(asked)[[4] * 8 + [12] * 9]
    if mistake == "extra":  # a stray yellow square in the middle frame
        clip = render_clip(asked)
        clip[FRAMES // 2, 100:116, 100:116] = COLORS["yellow"]
        return clip
    if mistake == "background":
        return render_clip(MotionScene(asked.objects, "gray"))
    if mistake == "rows":  # the first object moves at the bottom, the second at the top
        return _render_swapped(asked)
    if mistake == "missing":  # the second object is never drawn
        return render_clip(MotionScene((dataclasses.replace(asked.objects[0], row=None),), asked.background))
    raise AssertionError(mistake)


def _render_swapped(scene: MotionScene) -> np.ndarray:
    from sana.nano.moving_shapes import render_frame

    top, bottom = scene.objects
    swapped = object.__new__(MotionScene)  # skips the grammar's check: the rows are the mistake
    object.__setattr__(swapped, "objects", (dataclasses.replace(top, row="bottom"), dataclasses.replace(bottom, row="top")))
    object.__setattr__(swapped, "background", scene.background)
    return np.stack([render_frame(swapped, i / (FRAMES - 1)) for i in range(FRAMES)])


MISTAKES = {"color": "color", "shape": "shape", "size": "size", "direction": "motion", "still": "motion",
            "short": "motion", "extra": "no_extras", "background": "background", "rows": "position",
            "missing": "color"}


@pytest.mark.parametrize("mistake", sorted(MISTAKES))
def test_each_kind_of_mistake_fails(mistake):
    asked = parse_motion_caption(TWO if mistake in ("rows", "missing") else ONE)
    result = check_clip(_drawn_instead(mistake, asked), asked)
    assert not result.fully_correct, mistake
    assert not result.attributes()[MISTAKES[mistake]], (mistake, result.attributes())
    if mistake == "short":
        assert 0 < result.objects[0].displacement < MIN_DISPLACEMENT


def test_mp4_round_trip_passes(tmp_path):
    from sana.outputs import GenerationRecord, read_clip, save_video

    for i, scene in enumerate(sample_motion_scenes(6, 1)):
        path = save_video(render_clip(scene), tmp_path / f"{i}.mp4", GenerationRecord(prompt=scene.caption), fps=8)
        frames, fps = read_clip(path)
        assert fps == 8 and frames.shape == (FRAMES, SIDE, SIDE, 3)
        assert check_clip(frames, scene).fully_correct, scene.caption


def test_scoring_a_perfect_and_a_frozen_generator():
    def perfect(prompts, seeds):
        return [render_clip(parse_motion_caption(p)) for p in prompts]

    def frozen(prompts, seeds):
        return [np.repeat(render_clip(parse_motion_caption(p))[:1], FRAMES, axis=0) for p in prompts]

    report = score_video_model(perfect, 6, 0)
    assert report.summary()["one-object"] == 100.0 and report.summary()["two-object"] == 100.0
    assert len(report.rows_of("one-object")) == 3 and json.dumps(report.prompts[0].row())
    assert score_video_model(frozen, 4, 0).percent("one-object", "motion") == 0.0
    grid = clip_grid([perfect([ONE], [0])[0]] * 3, [True, False, True], columns=2)
    assert grid.shape == (FRAMES, 2 * (SIDE + 6), 2 * (SIDE + 6), 3)


# -- the command ---------------------------------------------------------------------------------------------

def test_make_video_writes_clips_captions_and_metadata(tmp_path):
    out = tmp_path / "clips"
    result = run_sana("shapes", "make", str(out), "--video", "--num", "3", "--seed", "2")
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in (out / "metadata.jsonl").read_text().splitlines()]
    assert [r["file_name"] for r in rows] == ["000000.mp4", "000001.mp4", "000002.mp4"]
    scenes = sample_motion_scenes(3, 2)
    assert [r["text"] for r in rows] == [s.caption for s in scenes]
    assert (out / "000001.txt").read_text().strip() == scenes[1].caption
    assert json.loads((out / "shapes.json").read_text())["frames"] == 17
    frames = run_sana("shapes", "make", str(out), "--video", "--num", "2", "--format", "png", "--force")
    assert frames.returncode == 0, frames.stderr
    assert sorted(p.name for p in out.iterdir()) == ["000000", "000000.txt", "000001", "000001.txt",
                                                     "metadata.jsonl", "shapes.json"]
    assert len(list((out / "000000").glob("frame_*.png"))) == 17
    assert "for images" in assert_one_line_error(run_sana("shapes", "make", str(tmp_path / "x"), "--video", "--holdout"))
    assert "--format" in assert_one_line_error(run_sana("shapes", "make", str(tmp_path / "y"), "--video",
                                                        "--format", "avi"))


def test_worker_processes_write_the_clips_one_process_writes(tmp_path, monkeypatch):
    """A large set is written by spawned worker processes: the same frames, captions and metadata, in order."""
    from PIL import Image

    from sana.nano import moving_shapes

    serial = moving_shapes.write_video_dataset(tmp_path / "serial", 6, 3, fmt="png")
    monkeypatch.setattr(moving_shapes, "PROCESS_FROM", 4)
    monkeypatch.setattr(moving_shapes.os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    seen = []
    pooled = moving_shapes.write_video_dataset(tmp_path / "pooled", 6, 3, fmt="png",
                                               on_progress=lambda done, total: seen.append((done, total)))
    assert pooled == serial and seen[-1] == (6, 6) and len(seen) == 6
    for name in ("metadata.jsonl", "000005.txt"):
        assert (tmp_path / "pooled" / name).read_text() == (tmp_path / "serial" / name).read_text()
    for clip in ("000000", "000005"):
        frames = sorted(p.name for p in (tmp_path / "serial" / clip).glob("*.png"))
        assert frames == sorted(p.name for p in (tmp_path / "pooled" / clip).glob("*.png")) and frames
        for frame in frames:
            a, b = (np.asarray(Image.open(tmp_path / run / clip / frame)) for run in ("serial", "pooled"))
            assert np.array_equal(a, b)

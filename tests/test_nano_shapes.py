"""The shapes grammar: exact captions, deterministic sampling, rendering, parsing, and `sana shapes make`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sana.errors import SanaError
from sana.nano.shapes import (BACKGROUNDS, COLORS, DEFAULT_HOLDOUT, MAX_JITTER, OPPOSITE, POSITIONS, SIZES, Scene,
                              ShapeObject, allowed_pairs, parse_caption, render, sample_scenes, shape_mask,
                              write_dataset)
from tests.cli_helpers import assert_one_line_error, run_sana


def _strip_jitter(scene: Scene) -> Scene:
    return Scene(tuple(ShapeObject(o.size, o.color, o.shape, o.position) for o in scene.objects), scene.background)


# -- captions and specs --------------------------------------------------------------------------------------

def test_captions_use_the_exact_wording():
    one = Scene((ShapeObject("small", "red", "circle", "left"),), "white")
    two = Scene((ShapeObject("large", "blue", "square", "top"), ShapeObject("small", "green", "triangle", "bottom")), "black")
    center = Scene((ShapeObject("large", "purple", "triangle", "center"),), "gray")
    assert one.caption == "a small red circle on the left on a white background"
    assert two.caption == "a large blue square at the top and a small green triangle at the bottom on a black background"
    assert center.caption == "a large purple triangle in the center on a gray background"


@pytest.mark.parametrize("objects, message", [
    ((ShapeObject("small", "red", "circle", "left"), ShapeObject("small", "red", "square", "right")), "different colours"),
    ((ShapeObject("small", "red", "circle", "left"), ShapeObject("small", "blue", "square", "top")), "opposite sides"),
    ((ShapeObject("small", "red", "circle", "center"), ShapeObject("small", "blue", "square", "left")), "opposite sides"),
    ((ShapeObject("tiny", "red", "circle", "left"),), "unknown value"),
    ((ShapeObject("small", "red", "circle", "left", (0.05, 0.0)),), "jitter"),
], ids=["same-colour", "not-opposite", "center-pair", "unknown-size", "jitter"])
def test_scenes_outside_the_grammar_are_refused(objects, message):
    with pytest.raises(ValueError, match=message):
        Scene(objects, "white")


def test_parse_caption_inverts_caption():
    for scene in sample_scenes(300, 4, holdout=()):
        assert parse_caption(scene.caption) == _strip_jitter(scene)
    assert parse_caption("  A Small RED circle  on the left on a white background.") == parse_caption(
        "a small red circle on the left on a white background")


@pytest.mark.parametrize("text", [
    "a small red circle on the left",
    "a small pink circle on the left on a white background",
    "a small red circle on the left and a large red square on the right on a white background",
    "a small red circle on the left and a large blue square at the top on a white background",
    "a cat on a white background",
], ids=["no-background", "unknown-colour", "same-colour", "not-opposite", "free-text"])
def test_parse_caption_refuses_other_text(text):
    with pytest.raises(SanaError, match="shapes grammar"):
        parse_caption(text)


# -- sampling ------------------------------------------------------------------------------------------------

def test_sampling_is_deterministic_and_prefix_stable():
    assert sample_scenes(40, 7) == sample_scenes(40, 7)
    assert sample_scenes(10, 7) == sample_scenes(40, 7)[:10]  # scene i depends on (seed, i) only
    assert sample_scenes(40, 7) != sample_scenes(40, 8)
    assert sample_scenes(40, 7) != sample_scenes(40, 7, stream="eval-1")


def test_samples_follow_the_grammar_and_cover_it():
    scenes = sample_scenes(1500, 0)
    held = set(DEFAULT_HOLDOUT)
    seen = {"size": set(), "color": set(), "shape": set(), "position": set(), "background": set(), "pair": set()}
    counts = {1: 0, 2: 0}
    for scene in scenes:
        counts[len(scene.objects)] += 1
        seen["background"].add(scene.background)
        for obj in scene.objects:
            assert obj.pair not in held
            assert max(abs(obj.jitter[0]), abs(obj.jitter[1])) <= MAX_JITTER
            for key in ("size", "color", "shape", "position"):
                seen[key].add(getattr(obj, key))
            seen["pair"].add(obj.pair)
        if len(scene.objects) == 2:
            first, second = scene.objects
            assert first.color != second.color and OPPOSITE[first.position] == second.position
    assert seen["size"] == set(SIZES) and seen["color"] == set(COLORS) and seen["position"] == set(POSITIONS)
    assert seen["background"] == set(BACKGROUNDS) and seen["pair"] == set(allowed_pairs(DEFAULT_HOLDOUT))
    assert 0.4 < counts[2] / len(scenes) < 0.6
    # every held-out pair's colour and shape is still seen in training with other partners
    for color, shape in DEFAULT_HOLDOUT:
        assert any(c == color for c, _ in seen["pair"]) and any(s == shape for _, s in seen["pair"])


def test_required_pairs_give_the_held_out_set():
    for scene in sample_scenes(200, 1, required=DEFAULT_HOLDOUT, stream="eval-heldout"):
        pairs = [o.pair for o in scene.objects]
        assert sum(p in DEFAULT_HOLDOUT for p in pairs) == 1  # exactly one: the other object is a seen pair


def test_unknown_holdout_pairs_are_refused():
    with pytest.raises(ValueError, match="unknown colour-shape pair"):
        allowed_pairs([("red", "hexagon")])


# -- rendering -----------------------------------------------------------------------------------------------

def test_render_draws_filled_shapes_of_the_right_geometry():
    scene = Scene((ShapeObject("large", "red", "triangle", "left", (0.02, -0.01)),
                   ShapeObject("small", "blue", "square", "right", (-0.03, 0.04))), "gray")
    image = render(scene)
    assert image.shape == (256, 256, 3) and image.dtype == np.uint8
    colours = {tuple(c) for c in image.reshape(-1, 3)}
    assert colours == {BACKGROUNDS["gray"], COLORS["red"], COLORS["blue"]}  # no outline, no anti-aliasing

    red = (image == COLORS["red"]).all(-1)
    rows, cols = np.nonzero(red)
    r = 0.20 * 256
    cx, cy = (0.25 + 0.02) * 256, (0.5 - 0.01) * 256
    assert abs((cols.min() + cols.max() + 1) / 2 - cx) <= 1 and abs((rows.min() + rows.max() + 1) / 2 - cy) <= 1
    assert abs(cols.max() + 1 - cols.min() - 2 * r) <= 2 and abs(rows.max() + 1 - rows.min() - 2 * r) <= 2
    widths = red.sum(1)[rows.min() : rows.max() + 1]
    assert widths[0] <= 3 and widths[-1] >= 2 * r - 2  # apex up, base at the bottom
    assert abs(red.sum() - 2 * r * r) / (2 * r * r) < 0.02  # triangle area = (2r)^2 / 2

    blue = (image == COLORS["blue"]).all(-1)
    assert abs(blue.sum() - (2 * 0.10 * 256) ** 2) / (2 * 0.10 * 256) ** 2 < 0.05


@pytest.mark.parametrize("shape, area", [("circle", np.pi), ("square", 4.0), ("triangle", 2.0)])
def test_shape_areas_match_their_formulas(shape, area):
    mask = shape_mask(shape, (0.5, 0.5), 0.3, side=512)
    assert mask.sum() / 512**2 == pytest.approx(area * 0.3**2, rel=0.01)


def test_two_objects_never_overlap():
    closest = Scene((ShapeObject("large", "red", "square", "left", (MAX_JITTER, 0)),
                     ShapeObject("large", "blue", "square", "right", (-MAX_JITTER, 0))), "white")
    image = render(closest)
    red_end = np.nonzero((image == COLORS["red"]).all(-1).any(0))[0].max()
    blue_start = np.nonzero((image == COLORS["blue"]).all(-1).any(0))[0].min()
    assert blue_start - red_end - 1 >= 4  # background columns between them


# -- datasets ------------------------------------------------------------------------------------------------

def test_write_dataset_writes_pairs_metadata_and_settings(tmp_path):
    scenes = write_dataset(tmp_path, 12, seed=5)
    assert sorted(p.name for p in tmp_path.glob("*.png")) == [f"{i:06d}.png" for i in range(12)]
    rows = [json.loads(line) for line in (tmp_path / "metadata.jsonl").read_text().splitlines()]
    assert rows == [{"file_name": f"{i:06d}.png", "text": s.caption} for i, s in enumerate(scenes)]
    for i, scene in enumerate(scenes):
        assert (tmp_path / f"{i:06d}.txt").read_text().strip() == scene.caption
        assert np.array_equal(np.asarray(Image.open(tmp_path / f"{i:06d}.png")), render(scene))
    info = json.loads((tmp_path / "shapes.json").read_text())
    assert info["seed"] == 5 and info["num"] == 12 and [tuple(p) for p in info["holdout"]] == list(DEFAULT_HOLDOUT)


def test_the_finetune_data_reader_reads_a_dataset(tmp_path):
    from sana.training.data import scan_folder

    scenes = write_dataset(tmp_path, 5, seed=1)
    samples, report = scan_folder(tmp_path)
    assert [s.caption for s in samples] == [s.caption for s in scenes]
    assert report.skipped_count == 0 and {(s.width, s.height) for s in samples} == {(256, 256)}


def test_make_command_writes_refuses_and_replaces(tmp_path):
    out = tmp_path / "data"
    result = run_sana("shapes", "make", str(out), "--num", "8", "--seed", "3")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(out)
    first = (out / "metadata.jsonl").read_text()
    assert first == "".join(json.dumps({"file_name": f"{i:06d}.png", "text": s.caption}) + "\n"
                            for i, s in enumerate(sample_scenes(8, 3)))

    refused = run_sana("shapes", "make", str(out), "--num", "4")
    assert refused.returncode == 2
    assert "not empty" in assert_one_line_error(refused)

    (out / "notes.md").write_text("mine")  # not sana's: --force neither deletes it nor writes a dataset beside it
    refused = run_sana("shapes", "make", str(out), "--num", "4", "--force")
    assert "holds notes.md, which sana did not write" in assert_one_line_error(refused)
    assert (out / "notes.md").exists() and (out / "000007.png").exists()  # refused before anything was touched
    (out / "notes.md").unlink()
    (out / ".DS_Store").write_text("")  # hidden: left, and training skips it
    replaced = run_sana("shapes", "make", str(out), "--num", "4", "--seed", "3", "--no-holdout", "--force")
    assert replaced.returncode == 0, replaced.stderr
    assert sorted(p.name for p in out.glob("*.png")) == [f"{i:06d}.png" for i in range(4)]  # no stale pairs
    assert (out / ".DS_Store").exists()
    assert json.loads((out / "shapes.json").read_text())["holdout"] == []


def test_force_replaces_only_what_the_dataset_record_accounts_for(tmp_path):
    out = tmp_path / "data"
    assert run_sana("shapes", "make", str(out), "--num", "3").returncode == 0
    Image.new("RGB", (8, 8)).save(out / "000005.png")  # numbered like sana's pairs, but past the record's 3
    refused = run_sana("shapes", "make", str(out), "--num", "2", "--force")
    assert "holds 000005.png, which sana did not write" in assert_one_line_error(refused)
    assert (out / "000002.png").exists()

    # A folder without sana's record is the user's, numbered names and all: nothing is deleted.
    own = tmp_path / "own"
    own.mkdir()
    Image.new("RGB", (8, 8)).save(own / "000005.png")
    Image.new("RGB", (8, 8)).save(own / "my_photo.png")
    refused = run_sana("shapes", "make", str(own), "--num", "2", "--force")
    assert "holds 000005.png and 1 more, which sana did not write" in assert_one_line_error(refused)
    assert sorted(p.name for p in own.iterdir()) == ["000005.png", "my_photo.png"]


def test_force_replaces_clips_with_images_leaving_no_mixed_dataset(tmp_path):
    from sana.nano.shapes import clear_dataset, made_dataset

    out = tmp_path / "data"
    made = run_sana("shapes", "make", str(out), "--video", "--num", "2", "--format", "png")
    assert made.returncode == 0, made.stderr
    (out / "000000" / "notes.md").write_text("mine")  # inside a frames clip: refused, as the frames writer does
    refused = run_sana("shapes", "make", str(out), "--num", "2", "--force")
    assert "holds notes.md, which sana did not write" in assert_one_line_error(refused)
    (out / "000000" / "notes.md").unlink()
    replaced = run_sana("shapes", "make", str(out), "--num", "2", "--force")
    assert replaced.returncode == 0, replaced.stderr
    assert sorted(p.name for p in out.iterdir()) == ["000000.png", "000000.txt", "000001.png", "000001.txt",
                                                     "metadata.jsonl", "shapes.json"]
    # An interrupted write is known by its record, written before the pairs.
    (out / "metadata.jsonl").unlink()
    assert made_dataset(out) == (sorted(out.iterdir()), []) and clear_dataset(out) == 5


def test_make_into_a_folder_that_cannot_be_written_is_one_line(tmp_path):
    if not Path("/proc/self").is_dir():
        pytest.skip("needs Linux's /proc")
    # root passes every permission check there, yet nothing can be created in /proc
    message = assert_one_line_error(run_sana("shapes", "make", "/proc/sana-shapes", "--num", "2"))
    assert "cannot write to /proc/sana-shapes" in message and "PermissionError" not in message


# -- `sana shapes check` on datasets ---------------------------------------------------------------------------

def _check(*args) -> tuple:
    """(the result, {path: "correct" / "wrong: ..." / why it was not checked}) of `sana shapes check ARGS`."""
    result = run_sana("shapes", "check", *map(str, args))
    assert "Traceback" not in result.stderr, result.stderr
    verdicts = {}
    for line in result.stdout.splitlines():
        path, verdict = line.split(": ", 1)
        verdicts[path] = verdict.removeprefix("not checked: ")
    return result, verdicts


def test_check_reads_a_made_dataset_folder_by_its_captions(tmp_path):
    """A folder is checked file by file against the captions `sana finetune` reads: metadata.jsonl first, then the
    same-name .txt."""
    data = tmp_path / "data"
    assert run_sana("shapes", "make", str(data), "--num", "3", "--seed", "2").returncode == 0
    result, verdicts = _check(data)
    assert result.returncode == 0, result.stdout + result.stderr
    assert verdicts == {str(data / f"{i:06d}.png"): "correct" for i in range(3)}
    assert "3 file(s): 3 correct, 0 wrong" in result.stderr

    # metadata.jsonl wins over a .txt, as in training; without metadata.jsonl the .txt is read.
    wrong = "a small red circle on the left on a white background"
    (data / "000000.txt").write_text(wrong + "\n")
    assert _check(data)[1][str(data / "000000.png")] == "correct"
    rows = [json.loads(line) for line in (data / "metadata.jsonl").read_text().splitlines()]
    rows[1]["text"] = wrong
    (data / "metadata.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    result, verdicts = _check(data)
    assert result.returncode == 1 and verdicts[str(data / "000001.png")].startswith("wrong")
    (data / "metadata.jsonl").unlink()
    result, verdicts = _check(data / "000000.png", data / "000002.png")
    assert verdicts[str(data / "000000.png")].startswith("wrong") and verdicts[str(data / "000002.png")] == "correct"


def test_check_names_what_it_cannot_check(tmp_path):
    data = tmp_path / "data"
    assert run_sana("shapes", "make", str(data), "--num", "1").returncode == 0
    (data / "garbage.png").write_bytes(b"not a png")
    Image.new("RGB", (64, 64), "white").save(tmp_path / "uncaptioned.png")
    (tmp_path / "empty").mkdir()
    result, verdicts = _check(data, tmp_path / "uncaptioned.png", tmp_path / "empty", tmp_path / "missing.png")
    assert result.returncode == 1
    assert verdicts == {str(data / "000000.png"): "correct",
                        str(data / "garbage.png"): "not an image (it cannot be read)",
                        str(tmp_path / "uncaptioned.png"): "no stored prompt or caption file (pass --caption)",
                        str(tmp_path / "empty"): "nothing to check in this folder",
                        str(tmp_path / "missing.png"): "not found"}


@pytest.mark.parametrize("fmt", ["mp4", "png"])
def test_check_video_reads_made_clips(tmp_path, fmt):
    """`--video` checks clips (files, or folders of PNG frames) with the moving-shapes checker; without it a clip
    is named as one."""
    clips = tmp_path / "clips"
    assert run_sana("shapes", "make", str(clips), "--num", "2", "--video", "--format", fmt).returncode == 0
    names = [clips / (f"{i:06d}.mp4" if fmt == "mp4" else f"{i:06d}") for i in range(2)]
    result, verdicts = _check("--video", clips)
    assert result.returncode == 0, result.stdout + result.stderr
    assert verdicts == {str(name): "correct" for name in names} and "2 clip(s): 2 correct" in result.stderr
    result, verdicts = _check("--video", names[0], "--caption", "a large red circle moving right on a white background")
    assert result.returncode == 1 and verdicts[str(names[0])].startswith("wrong")
    result, verdicts = _check(clips)
    assert result.returncode == 1
    assert verdicts == {str(name): "a clip (check clips with --video)" for name in names}


def test_check_video_refuses_stills(tmp_path):
    data = tmp_path / "data"
    assert run_sana("shapes", "make", str(data), "--num", "1").returncode == 0
    result, verdicts = _check("--video", data)
    assert result.returncode == 1
    assert verdicts == {str(data / "000000.png"): "a still image, not a clip (check images without --video)"}


def test_check_reads_images_in_class_subfolders(tmp_path):
    """Subfolders of images are images (the layout fine-tuning takes), not folders of video frames."""
    data = tmp_path / "data"
    assert run_sana("shapes", "make", str(data / "sub"), "--num", "2").returncode == 0
    result, verdicts = _check(data)
    assert result.returncode == 0, result.stderr
    assert verdicts == {str(data / "sub" / "000000.png"): "correct", str(data / "sub" / "000001.png"): "correct"}

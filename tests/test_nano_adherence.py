"""The analytic adherence checker: ground truth scores 100%, every kind of mistake is caught, scoring a model."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from PIL import ImageFilter

from sana.nano.adherence import (SETS, check_image, components, evaluation_prompts, sample_grid, score_model,
                                 shape_prototypes)
from sana.nano.shapes import DEFAULT_HOLDOUT, Scene, ShapeObject, parse_caption, render, render_image, sample_scenes
from tests.cli_helpers import run_sana

ONE = Scene((ShapeObject("large", "red", "triangle", "left", (0.01, -0.02)),), "white")
TWO = Scene((ShapeObject("small", "blue", "circle", "top", (-0.03, 0.02)),
             ShapeObject("large", "yellow", "square", "bottom", (0.02, 0.0))), "black")


def _with(scene: Scene, index: int = 0, background: str | None = None, **changes) -> Scene:
    objects = list(scene.objects)
    objects[index] = dataclasses.replace(objects[index], **changes)
    return Scene(tuple(objects), background or scene.background)


def _wrong(result) -> set[str]:
    return {name for name, ok in result.attributes().items() if not ok}


# -- ground truth --------------------------------------------------------------------------------------------

def test_ground_truth_is_fully_correct():
    scenes = sample_scenes(60, 11, holdout=()) + sample_scenes(20, 11, required=DEFAULT_HOLDOUT, stream="eval-heldout")
    for scene in scenes:
        result = check_image(render(scene), scene.caption)
        assert result.fully_correct, (scene.caption, result)
        for check in result.objects:
            assert check.found_shape == check.expected.shape and check.found_size == check.expected.size


@pytest.mark.parametrize("variant", ["pil", "float", "blur", "upsampled", "small"])
def test_ground_truth_survives_formats_and_mild_degradation(variant):
    for scene in sample_scenes(12, 2, holdout=()):
        image = {
            "pil": lambda: render_image(scene),
            "float": lambda: render(scene) / 255.0,
            "blur": lambda: render_image(scene).filter(ImageFilter.GaussianBlur(2)),
            "upsampled": lambda: np.kron(render(scene, 64), np.ones((4, 4, 1), np.uint8)),  # blocky edges
            "small": lambda: render(scene, 128),
        }[variant]()
        assert check_image(image, scene).fully_correct, (variant, scene.caption)


def test_shape_prototypes_are_the_box_fill_ratios():
    protos = shape_prototypes()
    assert protos["square"][0] == pytest.approx(1.0)
    assert protos["circle"][0] == pytest.approx(np.pi / 4, abs=0.01)
    assert protos["triangle"][0] == pytest.approx(0.5, abs=0.01)


# -- mistakes ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("asked, drawn, expected_wrong", [
    (ONE, _with(ONE, color="orange"), {"color", "shape", "position", "size", "no_extras"}),
    (ONE, _with(ONE, shape="square"), {"shape"}),
    (ONE, _with(ONE, shape="circle"), {"shape"}),
    (ONE, _with(ONE, position="right"), {"position"}),
    (ONE, _with(ONE, position="center"), {"position"}),
    (ONE, _with(ONE, size="small"), {"size"}),
    (ONE, _with(ONE, background="gray"), {"background"}),
    (TWO, _with(TWO, 1, shape="triangle"), {"shape"}),
    (TWO, _with(TWO, 0, size="large"), {"size"}),
], ids=["colour", "square-for-triangle", "circle-for-triangle", "position", "center-for-left", "size", "background",
        "second-shape", "first-size"])
def test_each_mistake_is_caught(asked, drawn, expected_wrong):
    result = check_image(render(drawn), asked.caption)
    assert not result.fully_correct
    assert _wrong(result) == expected_wrong, result


def test_swapped_two_object_positions_are_wrong():
    swapped = Scene(tuple(dataclasses.replace(o, position=p) for o, p in zip(TWO.objects, ("bottom", "top"))), "black")
    assert _wrong(check_image(render(swapped), TWO)) == {"position"}


def test_missing_and_extra_objects_are_caught():
    empty = Scene((ShapeObject("small", "green", "circle", "center"),), "white")
    blank = np.full((256, 256, 3), 245, np.uint8)
    missing = check_image(blank, empty)
    assert _wrong(missing) == {"color", "shape", "position", "size"} and missing.objects[0].area == 0.0

    extra = check_image(render(TWO), Scene((TWO.objects[0],), "black"))  # the yellow square was not asked for
    assert _wrong(extra) == {"no_extras"} and extra.extra_objects == ["yellow"]

    twice = render(ONE)
    twice[:, 160:] = render(_with(ONE, position="right"))[:, 160:]  # a second red triangle
    assert check_image(twice, ONE).extra_objects == ["red"]


def test_an_upside_down_triangle_is_no_shape():
    centered = Scene((ShapeObject("large", "purple", "triangle", "center"),), "white")
    flipped = check_image(np.flipud(render(centered)), centered)
    assert flipped.objects[0].found_shape is None and _wrong(flipped) == {"shape"}


def test_speckles_are_neither_objects_nor_shape_errors():
    image = render(ONE)
    rng = np.random.default_rng(0)
    ys, xs = rng.integers(0, 256, 200), rng.integers(0, 256, 200)
    image[ys, xs] = (40, 80, 220)  # isolated blue pixels
    assert check_image(image, ONE).fully_correct


def test_components_are_four_connected_and_sorted():
    mask = np.zeros((8, 8), bool)
    mask[0:3, 0:3] = True  # 9 px
    mask[3, 3] = True  # diagonal neighbour only: its own region
    mask[5:8, 4:8] = True  # 12 px
    regions = components(mask)
    assert [int(r.sum()) for r in regions] == [12, 9, 1]
    assert [int(r.sum()) for r in components(mask, min_pixels=5)] == [12, 9]


# -- scoring a model -----------------------------------------------------------------------------------------

def test_evaluation_prompts_are_fixed_and_split_into_sets():
    plan = evaluation_prompts(20, 3, num_heldout=8)
    assert plan == evaluation_prompts(20, 3, num_heldout=8)
    by_set = {name: [scene for s, scene, _ in plan if s == name] for name in SETS}
    assert [len(by_set[n]) for n in SETS] == [10, 10, 8]
    assert all(len(s.objects) == 1 for s in by_set["one-object"]) and all(len(s.objects) == 2 for s in by_set["two-object"])
    for name in ("one-object", "two-object"):
        assert not any(o.pair in DEFAULT_HOLDOUT for s in by_set[name] for o in s.objects)
    assert all(any(o.pair in DEFAULT_HOLDOUT for o in s.objects) for s in by_set["held-out"])
    assert len({seed for _, _, seed in plan}) == len(plan)  # one image seed a prompt


def _ground_truth(prompts, seeds):
    """What a perfect model draws: the caption's scene, jittered by the seed."""
    images = []
    for prompt, seed in zip(prompts, seeds):
        scene = parse_caption(prompt)
        jitter = ((seed % 7 - 3) / 100, (seed % 5 - 2) / 100)
        images.append(render_image(Scene(tuple(dataclasses.replace(o, jitter=jitter) for o in scene.objects),
                                         scene.background)))
    return images


def test_score_model_gives_ground_truth_100_percent():
    calls = []

    def generate(prompts, seeds):
        calls.append(len(prompts))
        return _ground_truth(prompts, seeds)

    seen = []
    report = score_model(generate, 12, 0, num_heldout=6, batch_size=5, on_result=lambda entry, image: seen.append(entry))
    assert report.summary() == {"one-object": 100.0, "two-object": 100.0, "held-out": 100.0}
    assert calls == [5, 5, 5, 3] and len(seen) == 18
    json.dumps([p.row() for p in report.prompts])  # rows are plain data


def test_score_model_catches_a_broken_model():
    def squares_only(prompts, seeds):  # right colours and places, always squares
        scenes = [parse_caption(p) for p in prompts]
        return [render(Scene(tuple(dataclasses.replace(o, shape="square") for o in s.objects), s.background))
                for s in scenes]

    report = score_model(squares_only, 40, 1, num_heldout=20)
    for name in SETS:
        rows = report.rows_of(name)
        all_square = sum(all(o.shape == "square" for o in parse_caption(p.prompt).objects) for p in rows)
        assert report.percent(name) == pytest.approx(100.0 * all_square / len(rows))
        assert report.percent(name, "color") == 100.0 and report.percent(name, "position") == 100.0
    assert report.percent("two-object") < 50.0

    blank = score_model(lambda prompts, seeds: [np.zeros((256, 256, 3), np.uint8)] * len(prompts), 4, 0)
    assert blank.summary() == {"one-object": 0.0, "two-object": 0.0, "held-out": 0.0}


def test_score_model_refuses_a_wrong_number_of_images():
    with pytest.raises(ValueError, match="returned 0 image"):
        score_model(lambda prompts, seeds: [], 4, 0)


def test_sample_grid_frames_each_image():
    images = [render_image(ONE)] * 5
    grid = sample_grid(images, [True, False, True, True, False], columns=4, tile=32, frame=2)
    assert grid.size == (4 * 36, 2 * 36)
    assert grid.getpixel((0, 0)) == (40, 170, 60) and grid.getpixel((36, 0)) == (210, 40, 40)


# -- the command line ----------------------------------------------------------------------------------------

def test_check_command(tmp_path):
    path = tmp_path / "two.png"
    render_image(TWO).save(path)
    good = run_sana("shapes", "check", str(path), "--caption", TWO.caption)
    assert good.returncode == 0, good.stderr
    assert "correct" in good.stdout and "wrong" not in good.stdout
    bad = run_sana("shapes", "check", str(path), "--caption", _with(TWO, 1, shape="circle").caption)
    assert bad.returncode == 1 and "wrong: shape" in bad.stdout


def test_check_command_checks_every_file_and_sums_up(tmp_path):
    """A missing file and an image without a stored prompt are reported on their own lines; the others are still
    checked, and the summary counts all three kinds."""
    from sana.outputs import GenerationRecord, save_image

    stored = tmp_path / "stored.png"
    save_image(render_image(TWO), stored, GenerationRecord(prompt=TWO.caption, model="nano", seed=0))
    plain = tmp_path / "plain.png"
    render_image(TWO).save(plain)
    result = run_sana("shapes", "check", str(tmp_path / "missing.png"), str(plain), str(stored))
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    lines = result.stdout.splitlines()
    assert "missing.png: not checked: not found" in lines[0]
    assert "plain.png: not checked: no stored prompt" in lines[1]
    assert lines[2].endswith("stored.png: correct")
    assert "3 file(s): 1 correct, 0 wrong, 2 not checked" in result.stderr


# -- the integer route for uint8 images and the vectorised regions ----------------------------------------

def _checker_cases() -> list[tuple[np.ndarray, object]]:
    """(uint8 image, scene) pairs the checker gets right and wrong: drawn scenes, degraded, mismatched, noise."""
    from PIL import Image, ImageFilter

    from sana.nano.shapes import DEFAULT_HOLDOUT, render, sample_scenes

    rng = np.random.default_rng(7)
    scenes = sample_scenes(9, 5, holdout=()) + sample_scenes(3, 5, required=DEFAULT_HOLDOUT, stream="eval-heldout")
    cases = []
    for i, scene in enumerate(scenes):
        image = render(scene)
        noisy = np.clip(image.astype(np.int16) + rng.integers(-40, 41, image.shape), 0, 255).astype(np.uint8)
        blurred = np.asarray(Image.fromarray(image).filter(ImageFilter.GaussianBlur(3)))
        speckled = image.copy()
        speckled[rng.integers(0, 256, 300), rng.integers(0, 256, 300)] = rng.integers(0, 256, (300, 3))
        blobs = image.copy()
        for _ in range(3):  # off-scene rectangles of random palette-ish colours
            y, x, h, w = rng.integers(0, 220), rng.integers(0, 220), rng.integers(3, 36), rng.integers(3, 36)
            blobs[y : y + h, x : x + w] = rng.integers(0, 256, 3)
        cases += [(image, scene), (noisy, scene), (blurred, scene), (speckled, scene), (blobs, scene),
                  (np.flipud(image).copy(), scene), (image, scenes[i - 1]),
                  (np.kron(render(scene, 64), np.ones((4, 4, 1), np.uint8)), scene), (render(scene, 128), scene)]
    return cases


def test_uint8_images_get_the_float_route_verdicts():
    """uint8 images are labelled in integers (`palette_labels_uint8`); float images of the same pixels take the
    float route: the same regions, background and verdicts."""
    from sana.nano.adherence import look

    cases = _checker_cases()
    results = [check_image(image.astype(np.float32), scene) for image, scene in cases]
    assert 0.2 < sum(r.fully_correct for r in results) / len(results) < 0.8  # both kinds of verdict are covered
    for (image, scene), expected in zip(cases, results):
        assert check_image(image, scene) == expected, scene.caption
    for image, _ in cases[:40]:
        frame, reference = look(image), look(image.astype(np.float32))
        assert frame.background == reference.background and frame.regions.keys() == reference.regions.keys()
        for name, regions in reference.regions.items():
            assert len(frame.regions[name]) == len(regions) and all(
                np.array_equal(a, b) for a, b in zip(frame.regions[name], regions)), name


def test_integer_palette_labels_keep_the_tolerance_and_the_first_of_ties():
    from sana.nano.adherence import COLOR_TOLERANCE, palette_labels, palette_labels_uint8, to_array

    red, white = (220, 40, 40), (245, 245, 245)
    pixels = np.array([[[160, 40, 40],  # exactly 60 from red: still red
                        [159, 40, 40],  # 61: no colour
                        [(red[0] + white[0]) // 2, 142, 142],  # between red and white, nearer red
                        [0, 0, 0]]], np.uint8)
    expected = palette_labels(to_array(pixels))
    assert expected[0, 0] == 0 and expected[0, 1] == -1
    np.testing.assert_array_equal(palette_labels_uint8(pixels, COLOR_TOLERANCE), expected)
    every = np.random.default_rng(1).integers(0, 256, (64, 64, 3)).astype(np.uint8)
    np.testing.assert_array_equal(palette_labels_uint8(every, COLOR_TOLERANCE), palette_labels(to_array(every)))


def _components_reference(mask: np.ndarray, min_pixels: int = 0) -> list[np.ndarray]:
    """`components` written plainly: row runs, each joined to the overlapping runs of the row above, the groups
    largest first (ties in order of their first run)."""
    runs, row_runs = [], []
    for row in range(mask.shape[0]):
        edges = np.flatnonzero(np.diff(np.concatenate(([0], mask[row].astype(np.int8), [0]))))
        row_runs.append(range(len(runs), len(runs) + len(edges) // 2))
        runs.extend((row, int(a), int(b)) for a, b in zip(edges[::2], edges[1::2]))
    parent = list(range(len(runs)))

    def root(i):
        while parent[i] != i:
            i = parent[i]
        return i

    for row in range(1, mask.shape[0]):
        for i in row_runs[row]:
            for j in row_runs[row - 1]:
                if runs[i][1] < runs[j][2] and runs[j][1] < runs[i][2]:
                    parent[root(i)] = root(j)
    groups = {}
    for i in range(len(runs)):
        groups.setdefault(root(i), []).append(i)
    sized = sorted(((sum(runs[i][2] - runs[i][1] for i in m), m) for m in groups.values()), key=lambda g: -g[0])
    regions = []
    for rank, (area, members) in enumerate(sized):
        if rank > 0 and area < min_pixels:
            break
        region = np.zeros(mask.shape, dtype=bool)
        for i in members:
            region[runs[i][0], runs[i][1]:runs[i][2]] = True
        regions.append(region)
    return regions


def test_components_are_the_reference_regions_in_order():
    rng = np.random.default_rng(3)
    masks = [rng.random((40, 57)) < p for p in (0.05, 0.3, 0.5, 0.6, 0.8)]
    masks += [np.zeros((9, 9), bool), np.ones((9, 9), bool)]
    diagonal = np.zeros((8, 8), bool)
    diagonal[0:3, 0:3] = diagonal[3, 3] = diagonal[5:8, 4:8] = True  # a diagonal neighbour is a region of its own
    for mask in masks + [diagonal]:
        for min_pixels in (0, 3, 40):
            expected = _components_reference(mask, min_pixels)
            found = components(mask, min_pixels)
            assert len(found) == len(expected) and all(np.array_equal(a, b) for a, b in zip(found, expected))

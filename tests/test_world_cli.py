"""`sana world` through the installed entry point on a tiny SANA-WM folder: the clip with its `.camera.json` and
metadata, `--from` replaying the same path (frames against diffusers), `--preview` and `--dry-run` without a
model, and every bad input as one line with nothing written."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from sana.camera import resolve_camera
from sana.camera.actions import actions_sha256
from tests.cli_helpers import assert_one_line_error, psnr, run_sana
from tests.tiny_video_pipeline import first_frame
from tests.tiny_world_pipeline import HEIGHT, WIDTH, build_pipeline

COMMON = ("--device", "cpu", "--dtype", "fp32")
TINY = ("--res", f"{WIDTH}x{HEIGHT}", "--steps", "3")
ACTIONS = "w-8,jw-8"  # 17 frames
IMAGE_SIZE = (130, 70)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-world")
    return build_pipeline(path, seed=2), path


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    path = tmp_path_factory.mktemp("first") / "first.png"
    first_frame(*IMAGE_SIZE).save(path)
    return path


def _frames_folder(folder) -> np.ndarray:
    return np.stack([np.asarray(Image.open(p)) for p in sorted(folder.glob("frame_*.png"))])


@pytest.mark.slow
def test_clip_camera_file_metadata_and_replay(tiny, image, tmp_path):
    from sana.outputs import file_sha256, read_clip

    pipe, model_dir = tiny
    clip = tmp_path / "world.mp4"
    args = ("world", "A Cat walking", "--image", str(image), "--actions", ACTIONS, "--fov", "60", "--model",
            str(model_dir), *TINY, "--cfg", "4", "--seed", "5", "--negative", "blurry", "-o", str(clip), *COMMON)
    result = run_sana(*args)
    assert result.returncode == 0, result.stderr
    frames, fps = read_clip(clip)
    assert frames.shape == (17, HEIGHT, WIDTH, 3) and fps == 16.0

    # The record: settings, the first frame and the camera source with their hashes, the resolved path's file.
    meta = json.loads(run_sana("info", str(clip), "--json").stdout)
    assert (meta["family"], meta["frames"], meta["seed"], meta["steps"], meta["sampler"]) == ("wm", 17, 5, 3,
                                                                                              "flow-euler")
    assert meta["prompt"] == "A Cat walking" and meta["flow_shift"] == 3.0 and meta["guidance"] == 4.0
    extra = meta["extra"]
    assert extra["image_sha256"] == file_sha256(image) and extra["camera"] == ACTIONS
    assert extra["camera_sha256"] == actions_sha256(ACTIONS) and extra["camera_kind"] == "actions"
    assert extra["camera_file"] == "world.camera.json" and extra["camera_settings"]["fov"] == 60.0
    assert extra["camera_file_sha256"] == file_sha256(tmp_path / "world.camera.json")

    # The camera file beside the clip: both formats, the schema half giving back the same path.
    camera_file = tmp_path / "world.camera.json"
    data = json.loads(camera_file.read_text())
    assert len(data["frames"]) == len(data["camera_path"]) == 17 and data["camera_type"] == "perspective"
    asked = resolve_camera(actions=ACTIONS, image_size=IMAGE_SIZE, fov=60.0)
    again = resolve_camera(camera_file, image_size=IMAGE_SIZE)
    assert np.allclose(again.c2w, asked.c2w, atol=1e-12) and np.allclose(again.intrinsics, asked.intrinsics)

    # An existing clip is never replaced without --force: refused before anything loads.
    before = clip.read_bytes()
    assert "exists" in assert_one_line_error(run_sana(*args))
    assert clip.read_bytes() == before

    # --from replays the record and the same camera path: lossless frames equal diffusers' at that seed.
    out = tmp_path / "replay"
    result = run_sana("world", "--from", str(clip), "--format", "png", "-o", f"{out}/", *COMMON)
    assert result.returncode == 0, result.stderr
    (folder,) = [p for p in out.iterdir() if p.is_dir()]
    assert (out / f"{folder.name}.camera.json").is_file()
    ref = pipe(image=Image.open(image).convert("RGB"), prompt="A Cat walking", negative_prompt="blurry",
               action=ACTIONS, intrinsics=asked.intrinsics[0].tolist(), height=HEIGHT, width=WIDTH, num_frames=17,
               num_inference_steps=3, guidance_scale=4.0, generator=torch.Generator().manual_seed(5),
               output_type="pil").frames
    ours = _frames_folder(folder)
    assert ours.shape == (17, HEIGHT, WIDTH, 3)
    for index, (a, b) in enumerate(zip(ours, ref)):
        assert psnr(a, np.asarray(b)) >= 45, f"frame {index}"

    # Another clip of the same name in another format would share world.camera.json: --force does not take it.
    camera_before = camera_file.read_bytes()
    other = run_sana("world", "A Cat walking", "--image", str(image), "--actions", "s-16", "--fov", "60", "--model",
                     str(model_dir), *TINY, "-o", str(tmp_path / "world.gif"), "--force", *COMMON)
    assert "camera file of" in assert_one_line_error(other) and camera_file.read_bytes() == camera_before
    assert not (tmp_path / "world.gif").exists()

    # A camera file replaced since the clip was made is not replayed: the clip's recorded source is resolved again.
    from sana.camera.export import write_camera_json

    write_camera_json(resolve_camera(actions="s-16", image_size=IMAGE_SIZE, fov=60.0), camera_file)
    dry = run_sana("world", "--from", str(clip), "--dry-run", *COMMON)
    assert dry.returncode == 0, dry.stderr
    assert "not the camera file written with world.mp4" in dry.stderr
    assert f"actions {ACTIONS}" in dry.stdout and "17 frames" in dry.stdout
    camera_file.write_bytes(camera_before)

    # --force replaces a frames folder whole, so one holding a file sana did not write is refused before any work
    (folder / "notes.txt").write_text("mine")
    again = run_sana("world", "--from", str(clip), "--format", "png", "-o", f"{out}/", "--force", *COMMON)
    assert "notes.txt" in assert_one_line_error(again) and (folder / "notes.txt").read_text() == "mine"


def test_a_renamed_clip_replays_from_any_folder(tiny, image, tmp_path):
    """Relative --image and --camera paths are recorded absolute, and a clip renamed with its camera file finds
    that file under its new name: `--from` gives the same frames from another folder."""
    import shutil

    from sana.camera.export import write_camera_json
    from sana.outputs import read_clip, read_metadata

    _, model_dir = tiny
    work, share, elsewhere = tmp_path / "work", tmp_path / "share", tmp_path / "elsewhere"
    for folder in (work, share, elsewhere):
        folder.mkdir()
    shutil.copy(image, work / "first.png")
    camera = resolve_camera(actions=ACTIONS, image_size=IMAGE_SIZE, fov=60.0)
    write_camera_json(camera, work / "path.json")
    result = run_sana("world", "a walk", "--image", "first.png", "--camera", "path.json", "--model", str(model_dir),
                      *TINY, "--seed", "2", "-o", "walk.mp4", *COMMON, cwd=work)
    assert result.returncode == 0, result.stderr
    extra = read_metadata(work / "walk.mp4").extra
    assert extra["image"] == str((work / "first.png").resolve()) and extra["camera"] == str((work / "path.json").resolve())
    (work / "walk.mp4").rename(share / "best.mp4")
    (work / "walk.camera.json").rename(share / "best.camera.json")
    (work / "path.json").unlink()  # the recorded source is gone: only the renamed camera file can give the path
    result = run_sana("world", "--from", str(share / "best.mp4"), "-o", "again.mp4", *COMMON, cwd=elsewhere)
    assert result.returncode == 0, result.stderr
    assert np.array_equal(read_clip(share / "best.mp4")[0], read_clip(elsewhere / "again.mp4")[0])


def test_preview_draws_the_path_without_a_model(image, tmp_path):
    """The registry model is not downloaded here: the preview needs none. Without --image it draws at 1280x704."""
    for extra in (("--image", str(image), "--fov", "60"), ("--fov", "60")):
        preview = tmp_path / f"preview-{len(extra)}.png"
        result = run_sana("world", "--actions", "w-40,jl-40", *extra, "--model", "sana-wm", "--preview",
                          str(preview))
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == str(preview)
        assert Image.open(preview).format == "PNG" and Image.open(preview).size[0] > 100
    assert "exists" in assert_one_line_error(run_sana("world", "--actions", "w-8", "--fov", "60", "--model",
                                                      "sana-wm", "--preview", str(preview)))
    nested = tmp_path / "new" / "folder" / "path.png"  # made, as -o makes a clip's folder
    result = run_sana("world", "--actions", "w-8", "--fov", "60", "--model", "sana-wm", "--preview", str(nested),
                      "--json")
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)
    assert answer["preview"] == str(nested.resolve()) and answer["frames"] == 9 and Image.open(nested).format == "PNG"


def test_dry_run_prints_the_clip_the_path_and_the_plan(tiny, image, tmp_path):
    _, model_dir = tiny
    result = run_sana("world", "a street", "--image", str(image), "--actions", ACTIONS, "--fov", "60", "--model",
                      str(model_dir), *TINY, "--dry-run", "-o", str(tmp_path / "x.mp4"), *COMMON, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "17 frames (1.06 s at 16 fps) at 96x64, latent 3x2x3" in result.stdout
    assert "camera: 17 frames (1.06 s at 16 fps)" in result.stdout and "actions w-8,jw-8" in result.stdout
    assert "memory plan" in result.stdout and not list(tmp_path.iterdir())
    result = run_sana("world", "a street", "--image", str(image), "--actions", ACTIONS, "--fov", "60", "--model",
                      str(model_dir), *TINY, "--dry-run", "--json", *COMMON, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    plan = json.loads(result.stdout)  # one JSON object, as `sana gen` / `sana video` print
    (clip,) = plan["clips"]
    assert plan["dry_run"] is True and (clip["frames"], clip["width"], clip["steps"], clip["refiner"]) == (
        17, WIDTH, 3, None) and "actions w-8,jw-8" in clip["camera"] and "memory" in plan
    assert not list(tmp_path.iterdir())


def test_a_minute_is_one_pass_and_the_plan_says_what_it_needs(image, tmp_path):
    """961 frames (a minute at 16 fps) planned from the registry: 121 latent frames, one DiT pass."""
    result = run_sana("world", "a long walk", "--image", str(image), "--actions", "w-960", "--fov", "60",
                      "--model", "sana-wm", "--frames", "961", "--dry-run", "--device", "cpu")
    assert result.returncode == 0, result.stderr
    assert "961 frames (60.06 s at 16 fps) at 1280x704, latent 121x22x40, 106,480 tokens" in result.stdout
    if "does not fit" in result.stdout:
        assert "needs about" in result.stdout


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bad")
    (folder / "malformed.json").write_text('{"fps": 16,\n "frames": [\n  {"c2w": [1, 2}\n ]}\n')
    (folder / "unknown.yaml").write_text("camera:\n  - [1, 2]\n")
    scaled = np.eye(4)
    scaled[:3, :3] *= 1.3
    (folder / "nonrigid.json").write_text(json.dumps({"fov": 60, "frames": [{"c2w": np.eye(4).tolist()},
                                                                            {"c2w": scaled.tolist()}]}))
    poses = np.tile(np.eye(4), (17, 1, 1)).astype(np.float32)
    poses[5, 0, 3] = np.nan
    np.save(folder / "nan.npy", poses)
    entry = {"camera_to_world": np.eye(4).reshape(-1).tolist(), "fov": 50}
    (folder / "fisheye.json").write_text(json.dumps({"camera_type": "fisheye", "render_width": 130,
                                                     "render_height": 70, "fps": 16, "seconds": 1,
                                                     "camera_path": [entry] * 16}))
    np.save(folder / "short.npy", np.tile(np.eye(4), (9, 1, 1)).astype(np.float32))
    np.save(folder / "K.npy", np.ones((2, 3)))
    return folder


BAD = {
    "malformed": (("--camera", "{bad}/malformed.json", "--fov", "60"), ("malformed.json line 3 column 16",)),
    "unknown kind": (("--camera", "{bad}/unknown.yaml", "--fov", "60"), ("unknown.yaml", "not a camera path kind")),
    "non-rigid": (("--camera", "{bad}/nonrigid.json"), ("nonrigid.json field frames[1]", "not a rotation")),
    "nan": (("--camera", "{bad}/nan.npy", "--fov", "60"), ("nan.npy pose [5]", "NaN")),
    "fisheye": (("--camera", "{bad}/fisheye.json"), ("fisheye.json field camera_type", "perspective")),
    "too few poses": (("--camera", "{bad}/short.npy", "--fov", "60", "--frames", "17"),
                      ("short.npy", "9 frames", "17 were asked for")),
    "unknown key": (("--actions", "wx-8", "--fov", "60"), ("segment 1 'wx-8'", "unknown key 'x'")),
    "zero count": (("--actions", "w-8,s-0", "--fov", "60"), ("segment 2 's-0'", "positive whole number")),
    "intrinsics shape": (("--actions", "w-8", "--intrinsics", "{bad}/K.npy"), ("K.npy", "shape (2, 3)", "(3, 3)")),
    "no image": (("--actions", "w-8", "--fov", "60", "--no-image"), ("no --image",)),
    "image model": (("--actions", "w-8", "--fov", "60", "--model", "sana-1.6b"),
                    ("sana-1.6b is a SANA image model", "sana gen")),
    "fp8 on a cpu": (("--actions", "w-8", "--fov", "60", "--fp8"), ("--fp8 needs an NVIDIA GPU",)),
}


@pytest.mark.parametrize("case", BAD)
def test_bad_input_is_one_line_and_writes_nothing(tiny, image, bad_files, case, tmp_path):
    args, words = BAD[case]
    args = [a.format(bad=bad_files) for a in args]
    first = [] if "--no-image" in args else ["--image", str(image)]
    args = [a for a in args if a != "--no-image"]
    model = [] if "--model" in args else ["--model", str(tiny[1])]
    out = tmp_path / "out"
    result = run_sana("world", "a prompt", *first, *model, *args, *TINY, "-o", f"{out}/", *COMMON, cwd=tmp_path)
    message = assert_one_line_error(result)
    for word in words:
        assert word in message, message
    assert not out.exists() and [p.name for p in tmp_path.iterdir()] == []


# Input errors with no model downloaded: each names its own mistake, not the missing model.
WITHOUT_MODEL = {
    "action key": (("--actions", "q-80", "--fov", "60"), ("unknown key 'q'",)),
    "no fov": (("--actions", "w-8"), ("carry no intrinsics", "--fov")),
    "fov range": (("--actions", "w-8", "--fov", "500"), ("--fov", "500")),
    "camera file": (("--camera", "{tmp}/absent.json", "--fov", "60"), ("absent.json not found",)),
    "image file": (("--actions", "w-8", "--fov", "60", "--image", "{tmp}/absent.png"), ("absent.png not found",)),
    "clip suffix": (("--actions", "w-8", "--fov", "60", "-o", "x.avi"), ("'.avi'",)),
    "clip suffix, dry run": (("--actions", "w-8", "--fov", "60", "-o", "x.avi", "--dry-run"), ("'.avi'",)),
    "intrinsics": (("--actions", "w-8", "--intrinsics", "1,2,3"), ("--intrinsics '1,2,3'", "4 numbers")),
    "frames past the maximum": (("--actions", "w-2100", "--fov", "60", "--frames", "2000"),
                                ("--frames 2000 is out of range", "961")),
    "actions past the maximum": (("--actions", "w-99999999999", "--fov", "60"), ("--actions make", "961")),
    "intrinsics not finite": (("--actions", "w-8", "--intrinsics", "nan,1,2,3"), ("4 numbers", "finite")),
    "speed with a file": (("--camera", "{tmp}/absent.json", "--fov", "60", "--speed", "0.5"),
                          ("--speed applies to --actions",)),
    "empty camera path": (("--camera", "", "--fov", "60"), ("--camera: an empty path",)),
    "camera fps with actions": (("--actions", "w-8", "--fov", "60", "--camera-fps", "30"),
                                ("--camera-fps applies to .npy poses",)),
    "dtype": (("--actions", "w-8", "--fov", "60", "--dtype", "fp64"), ("unknown --dtype 'fp64'",)),
    "preview not a png": (("--actions", "w-8", "--fov", "60", "--preview", "p.jpg"), ("the preview is a PNG",)),
    "clip where nothing is written": (("--actions", "w-8", "--fov", "60", "-o", "/proc/c.mp4"),
                                      ("/proc is not writable",)),
}


@pytest.mark.parametrize("case", WITHOUT_MODEL)
def test_input_errors_come_before_the_missing_model(image, case, tmp_path):
    args, words = WITHOUT_MODEL[case]
    args = [a.format(tmp=tmp_path) for a in args]
    first = [] if "--image" in args else ["--image", str(image)]
    result = run_sana("world", "a prompt", *first, *args, cwd=tmp_path, env={"HF_HUB_CACHE": str(tmp_path / "hub")})
    message = assert_one_line_error(result)
    assert "no model is downloaded" not in message
    for word in words:
        assert word in message, message


def test_without_a_model_good_input_reaches_the_missing_model(image, tmp_path):
    result = run_sana("world", "a prompt", "--image", str(image), "--actions", "w-8", "--fov", "60", cwd=tmp_path,
                      env={"HF_HUB_CACHE": str(tmp_path / "hub")})
    assert "no model is downloaded" in assert_one_line_error(result)


def test_an_existing_preview_names_the_preview_option(image, tmp_path):
    preview = tmp_path / "path.png"
    preview.write_bytes(b"kept")
    args = ("world", "--actions", "w-8", "--fov", "60", "--model", "sana-wm", "--preview", str(preview))
    message = assert_one_line_error(run_sana(*args))
    assert f"--preview {preview} exists" in message and "--force" in message and " -o" not in message
    assert preview.read_bytes() == b"kept"
    assert run_sana(*args, "--force").returncode == 0 and Image.open(preview).format == "PNG"


def test_checks_and_preview_import_no_torch(tiny, image, bad_files, tmp_path):
    """Bad input fails, and a preview is drawn, before torch is imported."""
    import subprocess
    import sys

    script = (
        "import sys\nfrom sana_cli.app import app\n"
        "for args in sys.argv[1:]:\n"
        "    try:\n        app(args.split('|'), standalone_mode=False)\n    except Exception as exc:\n"
        "        print(type(exc).__name__)\n"
        "print('torch' in sys.modules)\n"
    )
    common = f"world|p|--image|{image}|--model|{tiny[1]}|--fov|60"
    runs = [f"{common}|--camera|{bad_files}/nan.npy", f"{common}|--actions|w-8|--dtype|fp64",
            f"{common}|--actions|w-8|--preview|{tmp_path}/p.png"]
    result = subprocess.run([sys.executable, "-c", script, *runs], capture_output=True, text=True, timeout=120)
    assert result.stdout.split() == ["UsageError", "UsageError", str(tmp_path / "p.png"), "False"], \
        result.stdout + result.stderr

"""`sana video` through the installed entry point: frames against diffusers, the clip's metadata (`sana info`,
`--from`), overwriting, a dry run from the registry, and every bad input as one line with nothing written."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from tests.cli_helpers import assert_one_line_error, psnr, run_sana
from tests.tiny_video_pipeline import build_pipeline, first_frame

COMMON = ("--device", "cpu", "--dtype", "fp32")
TINY = ("--res", "64x32", "--frames", "9", "--steps", "3")


@pytest.fixture(autouse=True)
def one_thread_count(monkeypatch):
    """Tests here compare frames across processes; left to choose, each process takes the cores idle when it starts,
    and another thread count sums in another order."""
    monkeypatch.setenv("SANA_THREADS", "1")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-video")
    return build_pipeline(path, "wan", seed=3), path


def _frames_folder(folder) -> np.ndarray:
    return np.stack([np.asarray(Image.open(p)) for p in sorted(folder.glob("frame_*.png"))])


@pytest.mark.slow
def test_every_frame_matches_diffusers(tiny, tmp_path):
    pipe, model_dir = tiny
    result = run_sana("video", "A Dog running", "--model", str(model_dir), *TINY, "--cfg", "5", "--seed", "4",
                      "--negative", "static", "--format", "png", "-o", f"{tmp_path}/", *COMMON)
    assert result.returncode == 0, result.stderr
    (folder,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    assert folder.name == "a-dog-running-4"
    ref = pipe("A Dog running motion score: 30.", negative_prompt="static", num_inference_steps=3, guidance_scale=5.0,
               height=32, width=64, frames=9, generator=torch.Generator().manual_seed(4), use_resolution_binning=False,
               ).frames[0]
    ours = _frames_folder(folder)
    assert ours.shape == (9, 32, 64, 3)
    for index, (a, b) in enumerate(zip(ours, ref)):
        assert psnr(a, np.asarray(b)) >= 45, f"frame {index}"


@pytest.mark.slow
def test_image_to_video_mp4_records_and_replays(tiny, tmp_path):
    from sana.outputs import file_sha256, read_clip

    _, model_dir = tiny
    image = tmp_path / "first.png"
    first_frame(64, 32).save(image)
    clip = tmp_path / "clip.mp4"
    args = ("video", "a bird flying", "--image", str(image), "--model", str(model_dir), *TINY, "--seed", "9",
            "--motion-score", "12", "--fps", "8", "-o", str(clip), *COMMON)
    result = run_sana(*args)
    assert result.returncode == 0, result.stderr
    meta = json.loads(run_sana("info", str(clip), "--json").stdout)
    assert (meta["frames"], meta["fps"], meta["seed"], meta["sampler"], meta["flow_shift"]) == (9, 8.0, 9, "flow-euler", 8.0)
    assert meta["prompt"] == "a bird flying" and meta["family"] == "video"
    assert meta["extra"]["motion_score"] == 12 and meta["extra"]["image_sha256"] == file_sha256(image)
    assert meta["extra"]["mode"] == "image-to-video" and "predicted peak" in meta["extra"]["memory"]
    assert meta["extra"]["vae_dtype"] == "fp32"
    frames, fps = read_clip(clip)
    assert frames.shape == (9, 32, 64, 3) and fps == 8.0

    # An existing clip is never replaced without --force: refused before anything loads.
    before = clip.read_bytes()
    assert "exists" in assert_one_line_error(run_sana(*args))
    assert clip.read_bytes() == before

    # --from replays the record (the first frame included) and --force overwrites: the same frames again.
    result = run_sana("video", "--from", str(clip), "-o", str(clip), "--force", *COMMON)
    assert result.returncode == 0, result.stderr
    again, _ = read_clip(clip)
    assert np.array_equal(again, frames)
    assert json.loads(run_sana("info", str(clip), "--json").stdout)["extra"]["image_sha256"] == file_sha256(image)

    # Explicit flags win over the record.
    result = run_sana("video", "--from", str(clip), "--frames", "17", "--fps", "12", "--dry-run", *COMMON)
    assert result.returncode == 0, result.stderr
    assert "1 clip(s) of 17 frames at 12 fps (1.42 s), 64x32" in result.stdout


def test_dry_run_plans_480p_from_the_registry_without_weights(tmp_path):
    result = run_sana("video", "x", "--model", "sana-video-2b-480p", "--frames", "80", "--max-vram", "16G",
                      "--dry-run", cwd=tmp_path, env={"HF_HUB_CACHE": str(tmp_path / "hub")})
    assert result.returncode == 0, result.stderr
    assert "80 frames snapped to 81" in result.stderr
    for expected in ("1 clip(s) of 81 frames at 16 fps (5.06 s), 832x480", "memory plan: sana-video-2b-480p",
                     "transformer (2.06B params)", "predicted peak"):
        assert expected in result.stdout, expected
    assert not (tmp_path / "hub").exists() and not list(tmp_path.iterdir())


def test_image_to_video_takes_the_first_frames_shape_unless_res_says(tmp_path):
    image = tmp_path / "portrait.png"
    first_frame(480, 832).save(image)
    common = ("video", "x", "--model", "sana-video-2b-480p", "--image", str(image), "--dry-run")
    env = {"HF_HUB_CACHE": str(tmp_path / "hub")}
    result = run_sana(*common, env=env)
    assert result.returncode == 0, result.stderr
    assert "480x832" in result.stdout and "the shape of the 480x832 first frame" in result.stderr
    assert "stretched" not in result.stderr
    result = run_sana(*common, "--res", "832x480", env=env)  # asked for: kept, and the stretch said
    assert result.returncode == 0, result.stderr
    assert "832x480" in result.stdout and "first frame is stretched to 832x480" in result.stderr
    result = run_sana(*common, "--res", "480p", env=env)  # a size class: at the frame's shape
    assert result.returncode == 0, result.stderr
    assert "480x832" in result.stdout and "stretched" not in result.stderr


def test_prompts_file_dry_run_plans_every_line(tiny, tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    lines = [{"prompt": "a cat, motion score: 10.", "seed": 1}, {"prompt": "a dog", "steps": 2, "num": 2}]
    prompts.write_text("".join(json.dumps(line) + "\n" for line in lines))
    result = run_sana("video", "--prompts", str(prompts), "--model", str(tiny[1]), "--res", "64x32", "--frames", "10",
                      "--dry-run", *COMMON)
    assert result.returncode == 0, result.stderr
    assert "10 frames snapped to 9" in result.stderr and "its own motion score" in result.stderr
    assert "1 clip(s) of 9 frames" in result.stdout and "2 clip(s) of 9 frames" in result.stdout
    assert "memory plan" in result.stdout and list(tmp_path.iterdir()) == [prompts]
    prompts.write_text(json.dumps({"prompt": "a cat", "pag": 2.0}) + "\n")
    assert "pag" in assert_one_line_error(run_sana("video", "--prompts", str(prompts), "--model", str(tiny[1]),
                                                   *COMMON))


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bad-inputs")
    first_frame(64, 32).save(folder / "good.png")
    (folder / "corrupt.png").write_bytes((folder / "good.png").read_bytes()[:60])
    (folder / "text.png").write_text("not an image")
    return folder


@pytest.mark.parametrize("args, words", [
    (("--frames", "0"), "--frames 0"),
    (("--frames", "10000"), "--frames 10000"),
    (("--res", "70x100"), "multiple of 32"),
    (("--fps", "0"), "--fps 0"),
    (("--image", "{bad}/missing.png"), "not found"),
    (("--image", "{bad}/corrupt.png"), "not an image"),
    (("--image", "{bad}/text.png"), "not an image"),
    (("--motion-score", "high"), "motion-score"),
    (("--motion-score", "-5"), "--motion-score -5 is below 0"),
    (("--sampler", "scm"), "sampler"),
    (("--format", "avi"), "format"),
    (("--model", "no-such-model"), "unknown model"),
    (("--model", "nano"), "sana gen"),
    (("--vae-dtype", "fp64"), "unknown --vae-dtype 'fp64'"),
    (("--fp8",), "--fp8 needs an NVIDIA GPU"),
], ids=["frames-0", "frames-10000", "size", "fps-0", "image-missing", "image-corrupt", "image-not-an-image",
        "motion-score", "motion-score-negative", "sampler", "format", "unknown-model", "image-model", "vae-dtype", "fp8-on-a-cpu"])
def test_bad_input_is_one_line_and_writes_nothing(tiny, bad_files, args, words, tmp_path):
    _, model_dir = tiny
    args = tuple(a.replace("{bad}", str(bad_files)) for a in args)
    base = ("video", "a dog", "--model", str(model_dir), "--steps", "1", "-o", str(tmp_path / "x.mp4"), *COMMON)
    message = assert_one_line_error(run_sana(*base, *args, cwd=tmp_path))
    assert words in message
    assert list(tmp_path.iterdir()) == []


def test_gen_refuses_a_video_model_naming_sana_video(tiny, tmp_path):
    message = assert_one_line_error(run_sana("gen", "a dog", "--model", str(tiny[1]), "-o", str(tmp_path / "x.png"),
                                             *COMMON))
    assert "is a SANA-Video model" in message and "sana video" in message
    assert list(tmp_path.iterdir()) == []

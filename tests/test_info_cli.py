"""`sana info` through the installed entry point."""

from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest
from PIL import Image, PngImagePlugin

from sana.outputs import GenerationRecord, save_image, save_video
from sana.outputs.video import ffmpeg_exe
from tests.cli_helpers import assert_one_line_error, run_sana


RECORD = GenerationRecord(
    prompt="a [bold]lighthouse[/bold] at dusk, 灯台 🌅", negative_prompt="blurry, lowres", model="sana-1.6b",
    model_repo="Efficient-Large-Model/Sana_1600M_1024px_diffusers", model_revision="0123abcd", family="sana",
    seed=1234, steps=18, guidance=4.5, pag=2.0, pag_layers=[8], sampler="flow-euler", flow_shift=3.0, width=48,
    height=32, dtype="bf16", loras=[{"path": "style.safetensors", "scale": 0.75}], version="0.1.0",
    timings={"load": 2.5, "denoise": 7.25}, extra={"device": "cuda:0"},
)


@pytest.fixture(params=[".png", ".jpg", ".webp"])
def image_file(request, tmp_path) -> Path:
    return save_image(Image.new("RGB", (48, 32), "teal"), tmp_path / f"lighthouse{request.param}", RECORD)


def test_info_prints_a_table(image_file):
    result = run_sana("info", str(image_file))
    assert result.returncode == 0, result.stderr
    rows = {line.split("│")[1].strip(): line.split("│")[2].strip()
            for line in result.stdout.splitlines() if line.count("│") == 3}
    # markup-like brackets in a prompt are shown as written
    assert rows["Prompt"] == RECORD.prompt
    assert rows["Negative prompt"] == "blurry, lowres"
    assert rows["Model"] == "sana-1.6b"
    assert rows["Model repo"] == "Efficient-Large-Model/Sana_1600M_1024px_diffusers"
    assert rows["Seed"] == "1234" and rows["Steps"] == "18" and rows["CFG scale"] == "4.5"
    assert rows["PAG scale"] == "2.0 (layers 8)"
    assert rows["Sampler"] == "flow-euler" and rows["Size"] == "48x32" and rows["Dtype"] == "bf16"
    assert rows["LoRAs"] == "style.safetensors x0.75"
    assert rows["Time: denoise"] == "7.25 s"
    assert rows["Version"] == "sana 0.1.0"


def test_info_json_is_the_full_record(image_file):
    result = run_sana("info", str(image_file), "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == json.loads(RECORD.to_json())
    assert GenerationRecord.from_json(result.stdout) == RECORD


def test_info_shows_another_tools_parameters(tmp_path):
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", "a castle\nNegative prompt: ugly\nSteps: 30, Sampler: Euler a, CFG scale: 7, "
                                "Seed: 99, Size: 512x768, Model: sd15, Version: v1.10.1")
    path = tmp_path / "other.png"
    Image.new("RGB", (8, 8)).save(path, pnginfo=info)
    result = run_sana("info", str(path))
    assert result.returncode == 0, result.stderr
    assert "a castle" in result.stdout and "512x768" in result.stdout
    assert "Euler a" in result.stdout and "sd15" in result.stdout
    data = json.loads(run_sana("info", str(path), "--json").stdout)
    assert (data["seed"], data["steps"], data["guidance"], data["negative_prompt"]) == (99, 30, 7.0, "ugly")


def test_info_errors_are_one_line(tmp_path):
    assert "not found" in assert_one_line_error(run_sana("info", str(tmp_path / "missing.png")))
    (tmp_path / "notes.png").write_text("not an image")
    assert "not an image" in assert_one_line_error(run_sana("info", str(tmp_path / "notes.png")))
    Image.new("RGB", (8, 8)).save(tmp_path / "plain.png")
    assert "no generation metadata" in assert_one_line_error(run_sana("info", str(tmp_path / "plain.png"), "--json"))


CLIP_RECORD = GenerationRecord(
    prompt="a paper boat [drifting] down a stream", model="video-2b-480p", family="sana-video", seed=7, steps=50,
    guidance=6.0, width=32, height=32, frames=5, fps=16.0, version="0.1.0",
    extra={"motion_score": 30, "image_sha256": "ab" * 32},
)
CLIP_NAMES = {"mp4": "boat.mp4", "gif": "boat.gif", "webp": "boat.webp", "png": "boat"}


@pytest.fixture(params=list(CLIP_NAMES))
def clip_file(request, tmp_path):
    frames = np.random.default_rng(0).integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    return save_video(frames, tmp_path / CLIP_NAMES[request.param], CLIP_RECORD, fps=16)


def test_info_on_a_clip(clip_file):
    result = run_sana("info", str(clip_file))
    assert result.returncode == 0, result.stderr
    rows = {line.split("│")[1].strip(): line.split("│")[2].strip()
            for line in result.stdout.splitlines() if line.count("│") == 3}
    assert rows["Prompt"] == CLIP_RECORD.prompt and rows["Family"] == "sana-video"
    assert (rows["Size"], rows["Frames"], rows["FPS"]) == ("32x32", "5", "16")
    assert rows["motion_score"] == "30" and rows["image_sha256"] == "ab" * 32
    result = run_sana("info", str(clip_file), "--json")
    assert result.returncode == 0, result.stderr
    read = GenerationRecord.from_json(result.stdout)
    if clip_file.suffix == ".mp4":  # the writer records the quality it encoded at
        assert read.extra.pop("crf") == 18
    assert read == CLIP_RECORD


def test_info_on_a_clip_without_metadata(tmp_path):
    path = tmp_path / "plain.mp4"
    subprocess.run([ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-f", "lavfi", "-i", "testsrc=size=32x32",
                    "-frames:v", "2", "-pix_fmt", "yuv420p", str(path)], check=True)
    assert "no generation metadata" in assert_one_line_error(run_sana("info", str(path)))

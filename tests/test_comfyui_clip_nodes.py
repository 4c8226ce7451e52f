"""Sana Video and Sana World without ComfyUI, on tiny random pipelines: frames as ComfyUI's IMAGE batch
[F, H, W, 3] in 0..1, diffusers' frames for text to video, the first frame and the camera path taken as
`sana video` / `sana world` take them, and the clip's record for Sana Save."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.cli_helpers import psnr
from tests.tiny_video_pipeline import build_pipeline as build_video, first_frame

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the pack is a top-level folder of the checkout

import comfyui_sana  # noqa: E402
from sana.errors import SanaError  # noqa: E402

NODES = comfyui_sana.NODE_CLASS_MAPPINGS


def _load(path: Path):
    return NODES["SanaEngineModelLoader"]().load(str(path), "fp32", "auto")[0]


def _image(width: int, height: int) -> torch.Tensor:
    return torch.from_numpy(np.asarray(first_frame(width, height)).astype(np.float32) / 255.0)[None]


@pytest.fixture(scope="module")
def tiny_video(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-video")
    return build_video(path, "wan", seed=3), _load(path)


def test_video_node_gives_diffusers_frames_and_a_clip_record(tiny_video):
    reference, model = tiny_video
    frames, (record,) = NODES["SanaEngineVideo"]().generate(model, "A Dog running", "static", 4, 64, 32, 9, 3, 5.0,
                                                          "auto", 0.0, 30, 12.0)
    assert frames.shape == (9, 32, 64, 3) and frames.dtype == torch.float32
    assert 0.0 <= float(frames.min()) and float(frames.max()) <= 1.0
    expected = reference("A Dog running motion score: 30.", negative_prompt="static", num_inference_steps=3,
                         guidance_scale=5.0, height=32, width=64, frames=9, generator=torch.Generator().manual_seed(4),
                         use_resolution_binning=False).frames[0]
    ours = (frames.numpy() * 255).round().astype(np.uint8)
    for index, (a, b) in enumerate(zip(ours, expected)):
        assert psnr(a, np.asarray(b)) >= 45, f"frame {index}"
    assert (record["frames"], record["fps"], record["sampler"], record["family"]) == (9, 12.0, "flow-dpm", "video")
    assert record["extra"]["motion_score"] == 30 and record["extra"]["mode"] == "text-to-video"


def test_video_node_with_a_first_frame_is_image_to_video(tiny_video):
    _, model = tiny_video
    frames, (record,) = NODES["SanaEngineVideo"]().generate(model, "A Dog running", "", 1, 64, 32, 8, 2, 1.0, "auto",
                                                          0.0, -1, 16.0, image=_image(64, 32))
    assert frames.shape == (9, 32, 64, 3)  # 8 frames snapped to the Wan VAE's 4k+1
    assert record["sampler"] == "flow-euler" and record["extra"]["mode"] == "image-to-video"
    assert record["extra"]["motion_score"] is None


def test_world_node_follows_an_action_path(tmp_path):
    from tests.tiny_world_pipeline import HEIGHT, WIDTH, build_pipeline as build_world

    build_world(tmp_path / "tiny-world", seed=2)
    model = _load(tmp_path / "tiny-world")
    world = NODES["SanaEngineWorld"]()
    frames, (record,) = world.generate(model, _image(130, 70), "a street", "", "w-8,jw-8", 1, WIDTH, HEIGHT, 0, 2,
                                       5.0, 0.0, fov=50.0)
    assert frames.shape == (17, HEIGHT, WIDTH, 3) and 0.0 <= float(frames.min()) and float(frames.max()) <= 1.0
    assert (record["frames"], record["fps"], record["family"]) == (17, 16.0, "wm")
    assert record["extra"]["camera"] == "w-8,jw-8" and record["extra"]["camera_kind"] == "actions"
    with pytest.raises(SanaError, match="^an action string carries no intrinsics"):
        world.generate(model, _image(130, 70), "a street", "", "w-8", 1, WIDTH, HEIGHT, 0, 2, 5.0, 0.0)
    with pytest.raises(SanaError, match="Sana Video takes a SANA-Video model"):
        NODES["SanaEngineVideo"]().generate(model, "x", "", 0, 64, 32, 9, 2, 1.0, "auto", 0.0, 30, 16.0)
    with pytest.raises(SanaError, match="has no refiner/"):
        world.generate(model, _image(130, 70), "a street", "", "w-8", 1, WIDTH, HEIGHT, 0, 2, 5.0, 0.0, fov=50.0,
                       refine=True)


def test_world_node_refines_as_sana_world_does(tmp_path):
    """refine on: the clip `sana world --refiner` makes at that seed, one frame fewer, recorded as refined."""
    from tests.cli_helpers import run_sana
    from tests.tiny_world_pipeline import HEIGHT, WIDTH, build_pipeline as build_world, build_refiner

    build_world(tmp_path / "tiny-world", seed=2)
    build_refiner(tmp_path / "tiny-world" / "refiner", seed=4)  # found in the model folder
    model = _load(tmp_path / "tiny-world")
    frames, (record,) = NODES["SanaEngineWorld"]().generate(model, _image(130, 70), "a street", "", "w-8,jw-8", 1,
                                                            WIDTH, HEIGHT, 0, 2, 5.0, 0.0, fov=50.0, refine=True)
    assert frames.shape == (16, HEIGHT, WIDTH, 3) and record["frames"] == 16
    assert record["extra"]["refiner"]["dropped_first_frames"] == 1
    image = tmp_path / "first.png"
    first_frame(130, 70).save(image)
    out = tmp_path / "cli"
    result = run_sana("world", "a street", "--image", str(image), "--actions", "w-8,jw-8", "--fov", "50", "--model",
                      str(tmp_path / "tiny-world"), "--refine", "--res", f"{WIDTH}x{HEIGHT}", "--steps", "2",
                      "--cfg", "5", "--seed", "1", "--format", "png", "-o", f"{out}/", "--device", "cpu",
                      "--dtype", "fp32", env={"SANA_THREADS": str(torch.get_num_threads())})
    assert result.returncode == 0, result.stderr
    (folder,) = [p for p in out.iterdir() if p.is_dir()]
    from PIL import Image

    theirs = np.stack([np.asarray(Image.open(p)) for p in sorted(folder.glob("frame_*.png"))])
    ours = (frames.numpy() * 255).round().astype(np.uint8)
    assert min(psnr(a, b) for a, b in zip(ours, theirs)) >= 40


def _saved_clip(frames, info, folder: Path, monkeypatch) -> Path:
    from comfyui_sana import host

    monkeypatch.setattr(host, "output_directory", lambda: folder)
    result = NODES["SanaEngineSave"]().save(frames, "clips/run", info)
    return folder / "clips" / result["ui"]["images"][0]["filename"]


def _assert_replayed_elsewhere(command: str, clip: Path, frames: torch.Tensor, tmp_path: Path) -> None:
    """`sana COMMAND --from CLIP` run in another folder gives the node's frames, lossless (PNG frames)."""
    from PIL import Image

    from tests.cli_helpers import run_sana

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    result = run_sana(command, "--from", str(clip), "--format", "png", "-o", "again/", "--device", "cpu",
                      "--dtype", "fp32", cwd=elsewhere)
    assert result.returncode == 0, result.stderr
    (folder,) = [p for p in (elsewhere / "again").iterdir() if p.is_dir()]
    replayed = np.stack([np.asarray(Image.open(p)) for p in sorted(folder.glob("frame_*.png"))])
    assert np.array_equal(replayed, (frames.numpy() * 255).round().astype(np.uint8))


def test_an_image_to_video_clip_saved_from_comfyui_replays_with_sana_video(tiny_video, tmp_path, monkeypatch):
    """Sana Save writes the first frame beside the clip and the record names it (absolute, with its sha256), so
    `sana video --from` from any folder makes the same frames; a prompt with its own motion score gets none
    appended at the motion score's default, as `sana video` reads it."""
    from sana.outputs import read_metadata

    _, model = tiny_video
    frames, info = NODES["SanaEngineVideo"]().generate(model, "A Dog running, motion score: 10.", "", 3, 64, 32, 9, 2,
                                                       4.0, "auto", 0.0, -2, 12.0, image=_image(64, 32))
    assert info[0]["extra"]["motion_score"] is None
    clip = _saved_clip(frames, info, tmp_path / "comfy", monkeypatch)
    record = read_metadata(clip)
    first = clip.with_name(clip.stem + ".first.png")
    assert record.extra["image"] == str(first.resolve()) and first.is_file() and "_first_frame_png" not in record.extra
    _assert_replayed_elsewhere("video", clip, frames, tmp_path)


def test_a_world_clip_saved_from_comfyui_replays_with_sana_world(tmp_path, monkeypatch):
    """Sana Save writes the camera file and the first frame beside a world clip, as `sana world` does: `--from`
    alone replays it, from any folder, with the same frames; the node's zeros are the model's defaults."""
    from sana.outputs import read_metadata
    from tests.tiny_world_pipeline import HEIGHT, WIDTH, build_pipeline as build_world

    build_world(tmp_path / "tiny-world", seed=2)
    model = _load(tmp_path / "tiny-world")
    frames, info = NODES["SanaEngineWorld"]().generate(model, _image(130, 70), "a street", "", "w-8,jw-8", 1,
                                                       WIDTH, HEIGHT, 0, 2, -1.0, 0.0, fov=50.0)
    assert info[0]["guidance"] == model.world_defaults().cfg
    clip = _saved_clip(frames, info, tmp_path / "comfy", monkeypatch)
    record = read_metadata(clip)
    assert (clip.parent / record.extra["camera_file"]).is_file() and "_camera_json" not in record.extra
    _assert_replayed_elsewhere("world", clip, frames, tmp_path)

"""`sana finetune` on clips with a tiny random SANA-Video pipeline, on the CPU: the clip folder (every kind of clip,
captions, bad files), resampling and the frame rule, the data-kind checks, the LoRA in diffusers and in `sana video
--lora`, the full-model export and an exact resume."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sana.errors import UsageError
from tests.cli_helpers import assert_one_line_error, psnr, run_sana
from tests.tiny_video_pipeline import build_pipeline

COLOURS = {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (40, 80, 220), "yellow": (240, 210, 40)}
TINY = ("--res", "32", "--frames", "9", "--device", "cpu", "--batch-size", "2")


@pytest.fixture(scope="module")
def video_model(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("tiny-video")
    build_pipeline(path, "wan", seed=3)
    return path


def moving_square(colour: str, frames: int = 12, size: tuple[int, int] = (64, 32)) -> np.ndarray:
    """uint8 [frames, h, w, 3]: a square moving right 4 px a frame on grey."""
    width, height = size
    clip = np.full((frames, height, width, 3), 128, np.uint8)
    for t in range(frames):
        x = (4 + 4 * t) % (width - 12)
        clip[t, height // 4: height // 4 + height // 2, x:x + 12] = COLOURS[colour]
    return clip


def make_clips(folder: Path, count: int = 4, fps: float = 16) -> Path:
    from sana.outputs import GenerationRecord, save_video

    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        colour = list(COLOURS)[i % len(COLOURS)]
        save_video(moving_square(colour), folder / f"c{i}.mp4", GenerationRecord(prompt=colour), fps=fps)
        (folder / f"c{i}.txt").write_text(f"a {colour} square moving right")
    return folder


# -- the clip folder ----------------------------------------------------------------------------------------

def test_scan_reads_every_clip_kind_resamples_and_reports_bad_files(tmp_path):
    import imageio_ffmpeg

    from sana.outputs import GenerationRecord, save_video
    from sana.training.video_data import plan_clips, read_clip_frames, scan_clip_folder

    data = tmp_path / "clips"
    data.mkdir()
    save_video(moving_square("red"), data / "a.mp4", GenerationRecord(prompt="x"), fps=16)  # 12 frames at 16 fps
    (data / "a.txt").write_text("a red square")
    save_video(moving_square("green", 10), data / "b.gif", GenerationRecord(prompt="x"), fps=8)
    writer = imageio_ffmpeg.write_frames(str(data / "c.webm"), (64, 32), fps=8, codec="libvpx-vp9", macro_block_size=1)
    writer.send(None)
    for frame in moving_square("blue", 9):
        writer.send(frame)
    writer.close()
    frames = data / "d"  # a folder of frames, captioned and timed by metadata.jsonl
    frames.mkdir()
    for i, frame in enumerate(moving_square("yellow", 7)):
        Image.fromarray(frame).save(frames / f"f{i}.png")
    (data / "metadata.jsonl").write_text("\n".join(json.dumps(r) for r in [
        {"file_name": "b.gif", "text": "a green square"}, {"file_name": "c.webm", "text": "a blue square"},
        {"file_name": "d", "text": "a yellow square", "fps": 8}]))
    (data / "empty.mp4").write_bytes(b"")
    (data / "empty.txt").write_text("nothing")
    (data / "broken.mp4").write_bytes(b"\x00\x01not a video" * 50)
    (data / "broken.txt").write_text("noise")
    save_video(moving_square("red", 3), data / "short.mp4", GenerationRecord(prompt="x"), fps=8)
    (data / "short.txt").write_text("too short")
    save_video(moving_square("red"), data / "uncaptioned.mp4", GenerationRecord(prompt="x"), fps=8)
    Image.fromarray(moving_square("red")[0]).save(data / "still.png")

    samples, report = scan_clip_folder(data)
    assert [s.path.name for s in samples] == ["a.mp4", "b.gif", "c.webm", "d", "short.mp4"]
    assert [(s.frames, s.fps) for s in samples[:4]] == [(12, 16.0), (10, 8.0), (9, 8.0), (7, 8.0)]
    assert samples[3].caption == "a yellow square"
    kept, plans = plan_clips(samples, report, buckets=[(32, 32), (64, 32)], frames=9, fps=8, temporal=4, min_frames=5)
    assert [s.path.name for s in kept] == ["a.mp4", "b.gif", "c.webm", "d"]
    # 12 frames at 16 fps hold 6 at 8 fps: snapped down to 5 (4k+1), every second source frame.
    assert plans[0].indices == (0, 2, 4, 6, 8) and plans[0].bucket == (64, 32, 5)
    assert plans[1].bucket == (64, 32, 9) and plans[3].bucket == (64, 32, 5)
    lines = "\n".join(report.lines())
    assert lines.startswith("4 clip(s) used")
    for reason, name in [("unreadable or empty video", "empty.mp4"), ("unreadable or empty video", "broken.mp4"),
                         ("no caption", "uncaptioned.mp4"), ("shorter than 5 frames", "short.mp4"),
                         ("a still image among clips", "still.png")]:
        assert reason in lines and name in lines, (reason, lines)
    pixels = read_clip_frames(kept[0], plans[0])
    assert pixels.shape == (5, 32, 64, 3)
    source = moving_square("red")
    assert psnr(pixels[2], source[4]) > 30 and psnr(pixels[2], source[3]) < psnr(pixels[2], source[4])


def test_a_clip_named_like_a_protocol_is_read_from_a_relative_folder(tmp_path, monkeypatch):
    """ffmpeg reads `take:2.mp4` as the protocol `take` unless given the path absolutely."""
    from sana.outputs import GenerationRecord, save_video
    from sana.training.video_data import plan_clips, read_clip_frames, scan_clip_folder

    save_video(moving_square("red"), tmp_path / "take:2.mp4", GenerationRecord(prompt="x"), fps=8)
    (tmp_path / "take:2.txt").write_text("a red square")
    monkeypatch.chdir(tmp_path)
    samples, report = scan_clip_folder(Path("."))
    assert [s.path.name for s in samples] == ["take:2.mp4"] and samples[0].frames == 12, list(report.lines())
    kept, plans = plan_clips(samples, report, buckets=[(64, 32)], frames=9, fps=8, temporal=4, min_frames=5)
    assert read_clip_frames(kept[0], plans[0]).shape == (9, 32, 64, 3)


def test_wrong_kind_of_data_is_one_line_error(tmp_path, video_model):
    from sana_cli.finetune_video import check_data_kind

    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray(moving_square("red")[0]).save(images / "x.png")
    (images / "x.txt").write_text("a red square")
    result = run_sana("finetune", str(images), "--model", str(video_model), "--out", str(tmp_path / "run"), *TINY)
    assert "holds images, not clips" in assert_one_line_error(result)
    clips = make_clips(tmp_path / "clips", count=1)
    with pytest.raises(UsageError, match="holds video clips, not images"):
        check_data_kind(clips, video=False)
    check_data_kind(clips, video=True)


# -- outputs ------------------------------------------------------------------------------------------------

def test_lora_gives_the_same_frames_in_diffusers_and_sana_video(tmp_path, video_model):
    from diffusers import SanaVideoPipeline

    data = make_clips(tmp_path / "data")
    out = tmp_path / "run"
    result = run_sana("finetune", str(data), "--model", str(video_model), "--out", str(out), *TINY, "--steps", "3",
                      "--lr", "5e-2", "--lora-rank", "4", "--lora-alpha", "8",
                      "--lora-targets", "to_q,to_k,to_v,to_out.0,conv_inverted,conv_point",
                      "--val-prompt", "a red square moving right", "--val-steps", "2", "--checkpoint-every", "3")
    assert result.returncode == 0, result.stderr
    lora = out / "pytorch_lora_weights.safetensors"
    assert result.stdout.strip() == str(lora) and "4 clip(s) used" in result.stderr
    from sana.lora import lora_base_class

    assert lora_base_class(lora) == "SanaVideoTransformer3DModel"  # an image model refuses it (tests/test_lora.py)
    assert re.search(r"^train 3/3 loss \S+ \| [\d.]+ clips/s", result.stderr, re.M), result.stderr
    assert "encoded 4 clip latents in" in result.stderr  # what caching cost, for runs logged to a file
    sample = out / "samples" / "step-000003-0.mp4"
    from sana.outputs import read_metadata

    # The step's LoRA is only in a checkpoint: the sample names the base model (loadable), the run and the step.
    record = read_metadata(sample)
    assert Path(record.model) == video_model.resolve() and record.loras == []
    assert record.extra["training_step"] == 3 and Path(record.extra["run"]) == out.resolve()
    replayed = run_sana("video", "--from", str(sample), "--device", "cpu", "--format", "gif", "-o", str(tmp_path / "replay.gif"))
    assert replayed.returncode == 0, replayed.stderr
    config = json.loads((out / "train_config.json").read_text())
    assert (config["frames"], config["fps"], config["motion_score"]) == (9, 16.0, 30)  # the 480p preset's rate

    prompt, clips = "a red square moving right", tmp_path / "clips"
    made = run_sana("video", prompt, "--model", str(video_model), "--lora", str(out), "--res", "64x32", "--frames", "9",
                    "--steps", "3", "--seed", "4", "--format", "png", "-o", f"{clips}/", "--device", "cpu", "--dtype", "fp32")
    assert made.returncode == 0, made.stderr
    (clip,) = [p for p in clips.iterdir() if p.is_dir()]
    ours = np.stack([np.asarray(Image.open(p)) for p in sorted(clip.glob("frame_*.png"))])
    record = json.loads((clip / "clip.json").read_text())
    assert record["loras"][0]["path"] == str(lora)

    pipe = SanaVideoPipeline.from_pretrained(video_model, torch_dtype=torch.float32)

    def frames():
        return pipe(f"{prompt} motion score: 30.", num_inference_steps=3, guidance_scale=6.0, height=32, width=64,
                    frames=9, generator=torch.Generator().manual_seed(4), use_resolution_binning=False).frames[0]

    plain = frames()
    pipe.load_lora_weights(str(out))
    reference = frames()
    assert ours.shape == (9, 32, 64, 3)
    for index, (a, b, c) in enumerate(zip(ours, reference, plain)):
        assert psnr(a, np.asarray(b)) >= 40, f"frame {index}"
    assert np.mean([psnr(a, np.asarray(c)) for a, c in zip(ours, plain)]) < 30, "the LoRA changed nothing"


def _config(data: Path, model: Path, out: Path, **changes):
    from sana.training.config import TrainConfig

    out.mkdir(parents=True, exist_ok=True)
    base = TrainConfig(data=str(data), out=str(out), model_dir=str(model), mode="full", resolution=32, batch_size=2,
                       steps=4, lr=1e-3, frames=9, fps=16, motion_score=30, device="cpu", checkpoint_every=2,
                       save_dtype="fp32", cache_dir=str(out.parent / "cache"))
    return dataclasses.replace(base, **changes)


def test_a_res_off_the_32_px_grid_says_what_clips_train_at(tmp_path, video_model):
    from sana.training.trainer import TrainEvents
    from sana.training.video_trainer import VideoTrainer

    data = make_clips(tmp_path / "data", count=1)
    notes = []
    trainer = VideoTrainer(_config(data, video_model, tmp_path / "run", resolution=40, frames=5),
                           TrainEvents(on_notice=notes.append))
    trainer.scan(video_model)
    assert "--res 40: clip sides are multiples of 32 for this model, so square clips train at 32x32" in notes, notes


@pytest.mark.slow
def test_full_export_is_a_video_model_and_resume_is_exact(tmp_path, video_model):
    from diffusers import SanaVideoTransformer3DModel
    from safetensors.torch import load_file

    from sana.training.video_trainer import run

    data = make_clips(tmp_path / "data")
    straight = run(_config(data, video_model, tmp_path / "straight"))
    assert straight.output == tmp_path / "straight" / "model"
    SanaVideoTransformer3DModel.from_pretrained(straight.output / "transformer")  # diffusers reads our export
    assert json.loads((straight.output / "model_index.json").read_text())["_class_name"] == "SanaVideoPipeline"

    run(_config(data, video_model, tmp_path / "resumed", steps=2))
    resumed = run(_config(data, video_model, tmp_path / "resumed"), resume=True)
    assert resumed.step == 4 and resumed.last_loss == straight.last_loss
    a = load_file(str(tmp_path / "straight" / "checkpoints" / "step-000004" / "weights.safetensors"))
    b = load_file(str(tmp_path / "resumed" / "checkpoints" / "step-000004" / "weights.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    made = run_sana("video", "a red square moving right", "--model", str(straight.output), "--res", "64x32",
                    "--frames", "9", "--steps", "2", "-o", str(tmp_path / "x.mp4"), "--device", "cpu")
    assert made.returncode == 0, made.stderr


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["lora", "full"])
def test_two_processes_match_one_with_the_global_batch(tmp_path, video_model, mode):
    """`--gpus N`'s processes on the CPU (gloo): DDP (LoRA) and FSDP2 (full) on 2 processes x batch 1 train what
    1 process x batch 2 trains (the image test's tolerances: Adam's near-zero-gradient steps may differ by a step)."""
    import os
    import subprocess
    import sys

    data = make_clips(tmp_path / "data")
    extra = ["--steps", "2", "--lr", "1e-3", "--checkpoint-every", "2", "--lora-rank", "4", "--cache", str(tmp_path / "c")]
    extra += ["--full"] if mode == "full" else []
    args = ["finetune", str(data), "--model", str(video_model), *TINY, *extra]
    one = run_sana(*args, "--out", str(tmp_path / "one"))
    assert one.returncode == 0, one.stderr
    args[args.index("--batch-size") + 1] = "1"
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "-m",
                          "sana_cli", *args, "--out", str(tmp_path / "two")], capture_output=True, text=True,
                         timeout=600, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert two.returncode == 0, two.stderr[-3000:]
    rows = [[r.split(",")[1:4] for r in (tmp_path / name / "loss.csv").read_text().splitlines()[1:]]
            for name in ("one", "two")]
    for a, b in zip(*rows):
        np.testing.assert_allclose(np.array(a, dtype=float), np.array(b, dtype=float), rtol=1e-3)


@pytest.mark.slow
def test_the_gpu_benchmark_script_runs_on_a_cpu():
    """scripts/bench_finetune_video.py (the 2B LoRA step on a GPU) at the nano-video config, both sides."""
    import subprocess
    import sys

    script = Path(__file__).resolve().parents[1] / "scripts" / "bench_finetune_video.py"
    result = subprocess.run([sys.executable, str(script), "--model", "nano-video", "--width", "128", "--height", "128",
                             "--frames", "17", "--device", "cpu", "--precision", "fp32", "--warmup", "1", "--steps", "1",
                             "--rank", "4", "--diffusers"], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["impl"] for r in rows] == ["sana", "diffusers"] and all(r["step_s"] > 0 for r in rows)


def test_the_latent_cache_encodes_as_many_samples_as_a_pixel_budget_allows():
    """8 images of 1024 px at once as before; small clips in larger batches; one long 480p clip alone."""
    from sana.training.cache import MAX_ENCODE_BATCH, encode_batch

    assert encode_batch((1024, 1024)) == 8 and encode_batch((2048, 2048)) == 2 and encode_batch((4096, 4096)) == 1
    assert encode_batch((128, 128, 17)) == 30 and encode_batch((256, 256)) == MAX_ENCODE_BATCH
    assert encode_batch((832, 480, 81)) == 1 and encode_batch((1280, 704, 121)) == 1

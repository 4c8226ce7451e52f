"""Clip outputs: the record's clip fields, MP4 / GIF / WebP / PNG-frames round trips, atomic writes, naming."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageSequence

from sana.errors import SanaError, UsageError
from sana.outputs.naming import prompt_stem
from sana.outputs import (
    GenerationRecord,
    clip_format,
    parse_a1111,
    plan_clip_paths,
    read_clip,
    read_metadata,
    save_video,
)
from sana.outputs import video as video_module
from sana.outputs.video import ffmpeg_exe, mp4_tags, parse_ffmetadata
from tests.cli_helpers import psnr

READER_REGEX = r"""\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)"""
SUFFIXES = {"mp4": ".mp4", "gif": ".gif", "webp": ".webp", "png": ""}
# Lowest PSNR (dB) a frame may come back with: H.264 at crf 18 and WebP at quality 95 lose little, a GIF has 256
# colours a frame, PNG frames are exact.
MIN_PSNR = {"mp4": 32.0, "gif": 25.0, "webp": 35.0, "png": float("inf")}


def moving_gradient(frames: int = 9, height: int = 64, width: int = 64) -> np.ndarray:
    """uint8 [F, H, W, 3]: smooth colour waves that move a few pixels a frame, so every frame differs."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    t = np.arange(frames, dtype=np.float32)[:, None, None]
    red = 128 + 100 * np.sin((x + 3 * t) / 9)
    green = 128 + 100 * np.cos((y - 2 * t) / 11)
    blue = 128 + 80 * np.sin((x + y + 5 * t) / 15)
    return np.stack(np.broadcast_arrays(red, green, blue), axis=-1).round().astype(np.uint8)


def clip_record(**changes) -> GenerationRecord:
    values = dict(
        prompt='a paper boat "drifting" = ; # \\ down a stream, 紙の船 🌊\nsecond line: calm',
        negative_prompt="blurry, static", model="video-2b-480p",
        model_repo="Efficient-Large-Model/SANA-Video_2B_480p_diffusers", family="sana-video", seed=42, steps=50, guidance=6.0, sampler="flow-dpm", flow_shift=8.0, width=64, height=64,
        dtype="bf16", version="0.1.0", timings={"denoise": 12.5, "decode": 1.5},
        extra={"motion_score": 30, "image": "first.png", "image_sha256": "ab" * 32},
    )
    values.update(changes)
    return GenerationRecord(**values)


def clip_path(tmp_path, fmt: str, name: str = "clip"):
    return tmp_path / f"{name}{SUFFIXES[fmt]}"


def written(fmt: str, crf: int = 18, **changes) -> GenerationRecord:
    """The record a clip of `fmt` comes back with: an MP4's also says the crf it was encoded at."""
    record = clip_record(**changes)
    if fmt == "mp4":
        record.extra["crf"] = crf
    return record


# ------------------------------------------------------------------------------------------------------------------
# The record's clip fields
# ------------------------------------------------------------------------------------------------------------------

def test_clip_fields_in_json_and_a1111():
    record = clip_record(frames=81, fps=16.0)
    assert GenerationRecord.from_json(record.to_json()) == record
    last_line = record.to_a1111().split("\n")[-1]
    pairs = dict(re.findall(READER_REGEX, last_line))
    assert (pairs["Size"], pairs["Frames"], pairs["FPS"]) == ("64x64", "81", "16.0")
    back = GenerationRecord.from_a1111(record.to_a1111())
    for key in ("prompt", "negative_prompt", "model", "seed", "steps", "guidance", "width", "height", "frames", "fps",
                "family", "version"):
        assert getattr(back, key) == getattr(record, key), key


def test_images_have_no_clip_fields_in_a1111():
    text = clip_record().to_a1111()
    assert "Frames" not in text and "FPS" not in text


def test_another_tools_frames_and_fps_are_read():
    record = GenerationRecord.from_a1111("a cat\nSteps: 20, Seed: 3, Frames: 16, FPS: 8, Sampler: Euler a")
    assert (record.frames, record.fps, record.sampler) == (16, 8.0, None)
    assert parse_a1111(clip_record(frames=5, fps=12.5).to_a1111())["FPS"] == "12.5"


@pytest.mark.parametrize("text", ['{"prompt": "x", "frames": 2.5}', '{"prompt": "x", "fps": "fast"}',
                                  '{"prompt": "x", "frames": true}'], ids=["fractional-frames", "text-fps", "bool"])
def test_bad_clip_fields_are_rejected(text):
    with pytest.raises(SanaError, match="has a bad value"):
        GenerationRecord.from_json(text)


# ------------------------------------------------------------------------------------------------------------------
# Round trips
# ------------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("fmt", ["mp4", "gif", "webp", "png"])
def test_clip_round_trips(tmp_path, fmt):
    frames = moving_gradient()
    path = save_video(frames, clip_path(tmp_path, fmt), clip_record(), fps=8)
    assert path == clip_path(tmp_path, fmt)
    # the written record gains the clip's frame count and rate
    assert read_metadata(path) == written(fmt, frames=9, fps=8.0)
    back, fps = read_clip(path)
    assert back.shape == frames.shape and back.dtype == np.uint8
    # GIF delays are whole 1/100 s: 8 fps is written as 120, 130, 120, ... ms
    assert fps == pytest.approx(8.0, abs=0.05 if fmt == "gif" else 1e-9)
    for index in range(len(frames)):  # frame by frame, so a dropped or shifted frame shows
        assert psnr(back[index], frames[index]) >= MIN_PSNR[fmt], index
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]  # nothing else left beside it


def test_png_frames_layout(tmp_path):
    frames = moving_gradient(frames=3)
    folder = save_video(frames, tmp_path / "boat", clip_record(), fps=24)
    assert sorted(p.name for p in folder.iterdir()) == ["clip.json", "frame_00000.png", "frame_00001.png",
                                                         "frame_00002.png"]
    record = clip_record(frames=3, fps=24.0)
    assert json.loads((folder / "clip.json").read_text(encoding="utf-8")) == json.loads(record.to_json())
    # the first frame is a complete image of ours on its own; the others are plain
    assert read_metadata(folder / "frame_00000.png") == record
    with Image.open(folder / "frame_00001.png") as image:
        assert "sana" not in image.info and "parameters" not in image.info
    # without clip.json, the folder's record comes from the first frame
    (folder / "clip.json").unlink()
    assert read_metadata(folder) == record


def test_mp4_container_tags(tmp_path):
    record = clip_record()
    path = save_video(moving_gradient(), tmp_path / "clip.mp4", record, fps=16)
    tags = mp4_tags(path)
    expected = written("mp4", frames=9, fps=16.0)
    assert GenerationRecord.from_json(tags["comment"]) == expected
    assert tags["description"] == expected.to_a1111()
    probe = subprocess.run([ffmpeg_exe(), "-hide_banner", "-i", str(path)], capture_output=True, text=True).stderr
    assert "h264" in probe and "yuv420p(tv, bt709" in probe and "16 fps" in probe
    data = path.read_bytes()
    assert 0 <= data.find(b"moov") < data.find(b"mdat")  # +faststart: the index before the media data


@pytest.mark.parametrize("fmt", ["mp4", "gif", "webp", "png"])
def test_frames_from_a_generator_are_written_as_they_come(tmp_path, fmt):
    frames = moving_gradient(frames=5)
    produced = []

    def decoder():
        for frame in frames:
            produced.append(1)
            yield frame.copy()

    path = save_video(decoder(), clip_path(tmp_path, fmt), clip_record(frames=5), fps=12.5)
    assert len(produced) == 5
    assert read_metadata(path) == written(fmt, frames=5, fps=12.5)
    back, _ = read_clip(path)
    assert len(back) == 5


def test_odd_sizes_are_padded_for_mp4(tmp_path):
    frames = moving_gradient(frames=5, height=33, width=47)
    path = save_video(frames, tmp_path / "odd.mp4", clip_record(width=47, height=33), fps=8)
    back, _ = read_clip(path)
    assert back.shape == (5, 34, 48, 3)  # yuv420p needs even sides: the last row and column repeated
    assert psnr(back[:, :33, :47], frames) >= MIN_PSNR["mp4"]
    record = read_metadata(path)
    assert (record.width, record.height) == (47, 33)


def test_a_clip_of_one_frame(tmp_path):
    frame = moving_gradient(frames=1)
    for fmt in ("mp4", "gif", "webp", "png"):
        path = save_video(frame, clip_path(tmp_path, fmt), clip_record(), fps=8)
        assert read_metadata(path).frames == 1
        assert len(read_clip(path)[0]) == 1


def test_a_colon_name_in_the_current_folder_is_not_an_ffmpeg_protocol(tmp_path, monkeypatch):
    # ffmpeg reads "take:2.mp4" (and the temporary ".take:2.mp4....tmp") as the protocol "take" unless given a path
    monkeypatch.chdir(tmp_path)
    frames = moving_gradient(frames=3)
    path = save_video(frames, Path("take:2.mp4"), clip_record(), fps=8)
    assert read_metadata(Path("take:2.mp4")) == written("mp4", frames=3, fps=8.0)
    assert mp4_tags(Path("take:2.mp4"))["comment"]
    back, fps = read_clip(path)
    assert back.shape == frames.shape and fps == 8.0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["take:2.mp4"]


def test_the_crf_is_recorded_for_mp4_only(tmp_path):
    path = save_video(moving_gradient(frames=2), tmp_path / "clip.mp4", clip_record(), fps=8, crf=30)
    assert read_metadata(path).extra["crf"] == 30
    # a record that carries a crf (one converted from an MP4) loses it where the format has none
    for fmt in ("gif", "webp", "png"):
        path = save_video(moving_gradient(frames=2), clip_path(tmp_path, fmt), written("mp4", crf=30), fps=8)
        assert "crf" not in read_metadata(path).extra, fmt


def test_a_gif_plays_at_most_50_fps(tmp_path):
    assert video_module.playable_fps("gif", 240) == 50.0 and video_module.playable_fps("x.gif", 12) == 12.0
    assert video_module.playable_fps("mp4", 240) == 240.0 and video_module.playable_fps("webp", 240) == 240.0
    # faster delays would be 0 and 10 ms, which browsers play as 100 ms: refused, not written wrong
    with pytest.raises(UsageError, match="a GIF cannot play 240 fps"):
        save_video(moving_gradient(frames=3), tmp_path / "fast.gif", clip_record(), fps=240)
    assert list(tmp_path.iterdir()) == []
    path = save_video(moving_gradient(frames=3), tmp_path / "fast.gif", clip_record(), fps=50)
    with Image.open(path) as image:
        assert [frame.info["duration"] for frame in ImageSequence.Iterator(image)] == [20, 20, 20]
    assert read_metadata(path).fps == 50.0


# ------------------------------------------------------------------------------------------------------------------
# Atomicity and overwrite rules
# ------------------------------------------------------------------------------------------------------------------

def failing_decoder(frames, fail_at: int, failure: BaseException):
    for index, frame in enumerate(frames):
        if index == fail_at:
            raise failure
        yield frame


@pytest.mark.parametrize("failure", [RuntimeError("decode failed"), KeyboardInterrupt()], ids=["error", "interrupt"])
@pytest.mark.parametrize("fmt", ["mp4", "gif", "webp", "png"])
def test_a_failure_mid_clip_leaves_nothing(tmp_path, fmt, failure):
    with pytest.raises(type(failure)):
        save_video(failing_decoder(moving_gradient(), 4, failure), clip_path(tmp_path, fmt), clip_record(), fps=8)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("fmt", ["mp4", "png"])
def test_a_failed_forced_write_keeps_the_old_clip(tmp_path, fmt):
    path = save_video(moving_gradient(frames=3), clip_path(tmp_path, fmt), clip_record(seed=1), fps=8)
    with pytest.raises(RuntimeError):
        save_video(failing_decoder(moving_gradient(), 2, RuntimeError("oom")), path, clip_record(seed=2), fps=8,
                   force=True)
    assert read_metadata(path).seed == 1
    assert [p.name for p in tmp_path.iterdir()] == [path.name]


def test_an_ffmpeg_failure_is_one_sana_error(tmp_path, monkeypatch):
    monkeypatch.setattr(video_module, "_MP4_FILTER", "no_such_filter")
    with pytest.raises(SanaError, match="ffmpeg could not write the MP4: ") as caught:
        save_video(moving_gradient(), tmp_path / "clip.mp4", clip_record(), fps=8)
    assert "\n" not in str(caught.value)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("fmt", ["mp4", "gif", "webp", "png"])
def test_no_overwrite_without_force(tmp_path, fmt):
    path = clip_path(tmp_path, fmt)
    save_video(moving_gradient(frames=2), path, clip_record(seed=1), fps=8)
    with pytest.raises(SanaError, match=re.escape(f"{path} exists; use --force")):
        save_video(moving_gradient(frames=2), path, clip_record(seed=2), fps=8)
    assert read_metadata(path).seed == 1
    save_video(moving_gradient(frames=3), path, clip_record(seed=2), fps=8, force=True)
    assert read_metadata(path).seed == 2 and len(read_clip(path)[0]) == 3
    assert [p.name for p in tmp_path.iterdir()] == [path.name]
    if fmt == "png":  # a forced folder is replaced whole, so one holding a file sana did not write is refused
        (path / "notes.txt").write_text("mine")
        with pytest.raises(SanaError, match="holds notes.txt, which sana did not write"):
            save_video(moving_gradient(frames=2), path, clip_record(seed=3), fps=8, force=True)
        assert (path / "notes.txt").read_text() == "mine" and read_metadata(path).seed == 2


def test_a_file_in_the_way_of_a_frames_folder(tmp_path):
    path = tmp_path / "clip"
    path.write_bytes(b"something else")
    with pytest.raises(SanaError, match="exists; use --force"):
        save_video(moving_gradient(frames=2), path, clip_record(), fps=8)
    with pytest.raises(SanaError, match="is a file, not a folder of PNG frames"):  # --force replaces frames only
        save_video(moving_gradient(frames=2), path, clip_record(), fps=8, force=True)
    assert path.read_bytes() == b"something else"


def test_bad_arguments(tmp_path):
    frames = moving_gradient(frames=2)
    with pytest.raises(UsageError, match="frame rate"):
        save_video(frames, tmp_path / "a.mp4", clip_record(), fps=0)
    with pytest.raises(UsageError, match="crf"):
        save_video(frames, tmp_path / "a.mp4", clip_record(), fps=8, crf=60)
    with pytest.raises(ValueError, match="uint8"):
        save_video(frames.astype(np.float32), tmp_path / "a.mp4", clip_record(), fps=8)
    with pytest.raises(ValueError, match="record.fps"):
        save_video(frames, tmp_path / "a.mp4", clip_record(fps=24.0), fps=8)
    with pytest.raises(ValueError, match="no frames"):
        save_video(iter([]), tmp_path / "a.gif", clip_record(), fps=8)
    # an iterable that ends early: the record said more frames, so nothing is written
    with pytest.raises(ValueError, match="record.frames is 5 but 2"):
        save_video(iter(frames), tmp_path / "a.webp", clip_record(frames=5), fps=8)
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------------------------------------------
# Formats and naming
# ------------------------------------------------------------------------------------------------------------------

def test_clip_format():
    assert [clip_format(name) for name in ("mp4", ".GIF", "webp", "png")] == ["mp4", "gif", "webp", "png"]
    assert clip_format("out/boat.MP4") == "mp4" and clip_format("out/boat") == "png"
    with pytest.raises(UsageError, match="folder"):
        clip_format("boat.png")
    with pytest.raises(UsageError, match="cannot write '.avi' clips"):
        clip_format("boat.avi")


def test_clip_names_in_a_directory(tmp_path):
    assert plan_clip_paths(str(tmp_path), prompt="A paper boat!", seeds=[7, 8], force=False) == [
        tmp_path / "a-paper-boat-7.mp4", tmp_path / "a-paper-boat-8.mp4"]
    assert plan_clip_paths(str(tmp_path) + "/", prompt="a boat", seeds=[1], fmt="gif", force=False) == [
        tmp_path / "a-boat-1.gif"]
    # PNG frames: one folder per clip, named like a file without a suffix; the same seed twice gets "-2"
    assert plan_clip_paths(str(tmp_path), prompt="a boat", seeds=[1, 1], fmt="png", force=False) == [
        tmp_path / "a-boat-1", tmp_path / "a-boat-1-2"]
    (tmp_path / "a-boat-1").mkdir()
    with pytest.raises(SanaError, match="a-boat-1 exists"):
        plan_clip_paths(str(tmp_path), prompt="a boat", seeds=[1], fmt="png", force=False)
    # a prompt with no ASCII word: the fallback and a hash of the prompt, so two such prompts never share a name
    assert plan_clip_paths(str(tmp_path), prompt="宇宙", seeds=[3], force=False) == [
        tmp_path / f"{prompt_stem('宇宙', fallback='clip')}-3.mp4"]
    assert prompt_stem("宇宙", fallback="clip").startswith("clip-")


def test_clip_names_in_the_current_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a-dog-5.mp4").write_bytes(b"old")
    with pytest.raises(SanaError, match="a-dog-5.mp4 exists"):
        plan_clip_paths(None, prompt="a dog", seeds=[5], force=False)
    assert plan_clip_paths(None, prompt="a dog", seeds=[5], force=True)[0].resolve() == tmp_path / "a-dog-5.mp4"


def test_explicit_clip_paths(tmp_path):
    out = tmp_path / "boat.webp"
    assert plan_clip_paths(str(out), prompt="p", seeds=[9], force=False) == [out]
    assert plan_clip_paths(str(out), prompt="p", seeds=[9, 10], fmt="webp", force=False) == [
        tmp_path / "boat-1.webp", tmp_path / "boat-2.webp"]
    assert plan_clip_paths(str(out), prompt="p", seeds=[4], force=False, index_start=3) == [tmp_path / "boat-4.webp"]
    out.write_bytes(b"old")
    with pytest.raises(SanaError, match="boat.webp exists; use --force"):
        plan_clip_paths(str(out), prompt="p", seeds=[1], force=False)
    assert plan_clip_paths(str(out), prompt="p", seeds=[1], force=True) == [out]


@pytest.mark.parametrize("out, fmt, message", [
    ("boat.mp4", "gif", "is a .mp4 file but the format asked for is gif"),
    ("boat.png", None, "PNG frames are written as one folder per clip"),
    ("boat.mp4", "png", "PNG frames are written as one folder per clip"),
    ("boat", None, "has no clip suffix"),
    ("boat.avi", None, "cannot write '.avi' clips"),
], ids=["format-conflict", "png-file", "png-format", "no-suffix", "unknown-suffix"])
def test_bad_clip_outputs(tmp_path, out, fmt, message):
    with pytest.raises(UsageError, match=re.escape(message)):
        plan_clip_paths(str(tmp_path / out), prompt="p", seeds=[1], fmt=fmt, force=False)


# ------------------------------------------------------------------------------------------------------------------
# Reading
# ------------------------------------------------------------------------------------------------------------------

def test_ffmetadata_parsing():
    text = (";FFMETADATA1\nmajor_brand=isom\n# a comment=not a tag\ncomment={\"a\": \"x\\=y\\;z\\#w\\\\\"}\n"
            "description=line one\\\nline two\nempty=\n[STREAM]\ncomment=per stream\n")
    assert parse_ffmetadata(text) == {"major_brand": "isom", "comment": '{"a": "x=y;z#w\\"}',
                                      "description": "line one\nline two", "empty": ""}


def encode_plain_mp4(path, *metadata: str) -> None:
    command = [ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-f", "lavfi", "-i", "testsrc=size=32x32:rate=4",
               "-frames:v", "2", "-c:v", "libx264", "-pix_fmt", "yuv420p"]
    for tag in metadata:
        command += ["-metadata", tag]
    subprocess.run([*command, str(path)], check=True, capture_output=True)


def test_reads_an_mp4_with_only_a1111_text(tmp_path):
    path = tmp_path / "other.mp4"
    encode_plain_mp4(path, "description=a lighthouse\nSteps: 30, Seed: 99, Size: 32x32, Frames: 2, FPS: 4",
                     "comment=made with another tool")
    record = read_metadata(path)
    assert (record.prompt, record.steps, record.seed, record.frames, record.fps) == ("a lighthouse", 30, 99, 2, 4.0)


def test_clip_read_errors(tmp_path):
    plain = tmp_path / "plain.mp4"
    encode_plain_mp4(plain, "comment=holiday video")  # a comment that is neither our JSON nor A1111 text
    with pytest.raises(SanaError, match="has no generation metadata"):
        read_metadata(plain)
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"\0\0\0\x18ftypisom" + b"\0" * 64)
    with pytest.raises(SanaError, match="not an image or clip that can be read"):
        read_metadata(broken)
    (tmp_path / "empty").mkdir()
    with pytest.raises(SanaError, match="not a file or a PNG-frames folder"):
        read_metadata(tmp_path / "empty")
    with pytest.raises(SanaError, match="no frame_"):
        read_clip(tmp_path / "empty")

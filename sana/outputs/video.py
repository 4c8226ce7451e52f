"""Writing clips with their generation metadata, and reading their frames back.

One record, four forms, each chosen by the target's suffix (or `fmt`):
- .mp4: H.264 in yuv420p at `crf` (MP4_CRF = 18 by default: visually lossless for generated clips at a few
  Mbit/s), BT.709-tagged so players show the colours we converted with, `+faststart` so it plays while it
  downloads. Encoded by the ffmpeg that imageio-ffmpeg ships, frames streamed to it as they come. The JSON record
  (with the crf it was encoded at, `extra.crf`) goes in the container's `comment` tag and the A1111 text in
  `description`: both are standard MP4 tags that the default muxer keeps and that ffprobe and players show.
  yuv420p needs even sides: an odd width or height is padded by repeating the last column or row (the record keeps
  the generated size). ffmpeg is always given absolute paths (`ffmpeg_path`): it reads `take:2.mp4` as a protocol.
- .gif: looping animated GIF, 256 colours a frame (Pillow's median cut, dithered), the JSON record in a comment
  extension. GIF delays are whole 1/100 s, so each frame's delay is rounded such that the clip's length stays
  right (8 fps gives 120, 130, 120, ... ms); browsers play delays under 20 ms as 100 ms, so a GIF is refused
  above GIF_MAX_FPS (50: `playable_fps` gives the rate to write instead).
- .webp: looping animated WebP, lossy at quality 95 as still WebPs are (lossless frames would be several times
  larger for no visible gain), the record in EXIF and XMP exactly as in a still WebP.
- PNG frames (a path without a suffix, or fmt "png"): a folder of lossless `frame_00000.png`, ... whose first
  frame carries the PNG metadata chunks of a still image, plus `clip.json` with the record. Forced, it replaces
  the folder whole (an earlier, longer clip's frames go too), so it refuses a folder holding anything else.
MP4 and PNG frames are written frame by frame; Pillow's GIF and WebP encoders gather every frame before writing
(GIF keeps 8-bit palette frames, a third of the RGB bytes), so those two suit short clips and previews.
Every output is written atomically (see `atomic.py`) and never replaces an existing one unless forced.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import math
import numbers
import os
import re
import subprocess
import tempfile
from collections.abc import Iterable, Iterator
from fractions import Fraction
from pathlib import Path

import numpy as np
from PIL import Image, ImageSequence, UnidentifiedImageError

from ..errors import SanaError, UsageError
from .atomic import atomic_directory, atomic_file
from .images import metadata_options
from .record import GenerationRecord

CLIP_SUFFIXES = {"mp4": ".mp4", "gif": ".gif", "webp": ".webp", "png": ""}  # format -> suffix ("": a folder)
CLIP_FORMATS = tuple(CLIP_SUFFIXES)
MP4_CRF = 18
# GIF delays are whole 1/100 s and browsers play delays under 20 ms as 100 ms: 50 fps is the fastest a GIF plays.
GIF_MAX_FPS = 50.0
MP4_JSON_KEY = "comment"
MP4_PARAMETERS_KEY = "description"
# Linux caps one command-line argument at 128 KiB; the metadata travels to ffmpeg as arguments.
MP4_MAX_METADATA_CHARS = 100_000
PNG_FRAME_NAME = "frame_{:05d}.png"
CLIP_JSON = "clip.json"
_PNG_FRAME_FILE = re.compile(r"frame_\d{5,}\.png")  # the names PNG_FRAME_NAME makes
# Convert RGB -> YUV with the BT.709 matrix and say so in the stream, so players do not guess BT.601 for HD.
_MP4_FILTER = ("scale=out_color_matrix=bt709:out_range=tv,format=yuv420p,"
               "setparams=color_primaries=bt709:color_trc=bt709:colorspace=bt709:range=tv")
_FFMPEG_TIMEOUT_S = 120


def clip_format(path_or_format: str | Path) -> str:
    """"mp4", "gif", "webp" or "png" (PNG frames) for a format name (a str such as "mp4" or ".gif") or a path.

    A path's suffix decides; a path without one is a PNG-frames folder. UsageError for anything else.
    """
    if isinstance(path_or_format, str) and path_or_format.lower().lstrip(".") in CLIP_SUFFIXES:
        return path_or_format.lower().lstrip(".")
    path = Path(path_or_format)
    suffix = path.suffix.lower()
    if not suffix:
        return "png"
    for fmt, fmt_suffix in CLIP_SUFFIXES.items():
        if suffix == fmt_suffix:
            return fmt
    if suffix == ".png":
        raise UsageError(f"{path}: PNG frames are written as a folder", "give a folder name without a suffix")
    raise UsageError(f"cannot write '{suffix}' clips", "use .mp4, .gif, .webp, or a folder for PNG frames")


def save_video(frames: np.ndarray | Iterable[np.ndarray], path: Path, record: GenerationRecord, *, fps: float,
               force: bool = False, crf: int | None = None, fmt: str | None = None) -> Path:
    """Write a clip with record's metadata, atomically; refuses to replace an existing file or folder unless force.

    frames: uint8 [F, H, W, 3], or an iterable of uint8 [H, W, 3] frames, written as they come (a decoder can
    yield them one by one: MP4 and PNG frames then never hold the whole clip; see the module docstring for GIF
    and WebP). The format comes from path's suffix (see `clip_format`), or from fmt. The record is written with
    `fps` and, for an array, `frames` filled in; for an iterable give `record.frames` yourself (the MP4 metadata
    is written before the first frame).
    crf: H.264 quality for .mp4, 0 (best) to 51 (worst), default MP4_CRF; an MP4's record says it (`extra.crf`).
    A GIF above GIF_MAX_FPS is refused (`playable_fps` gives the rate to write).
    """
    path = Path(path)
    fmt = clip_format(fmt if fmt is not None else path)
    if isinstance(fps, bool) or not (isinstance(fps, numbers.Real) and math.isfinite(fps) and fps > 0):
        raise UsageError(f"the frame rate must be a positive number, not {fps}")
    crf = MP4_CRF if crf is None else crf
    if isinstance(crf, bool) or not (isinstance(crf, numbers.Integral) and 0 <= crf <= 51):
        raise UsageError(f"crf must be a whole number from 0 to 51, not {crf}")
    fps, crf = float(fps), int(crf)
    if fmt == "gif" and fps > GIF_MAX_FPS:
        raise UsageError(f"a GIF cannot play {fps:g} fps", f"GIF plays at most {GIF_MAX_FPS:g} fps; write "
                         f"{GIF_MAX_FPS:g} fps or another format")
    record = _clip_record(record, frames, fps)
    # The quality an MP4 was encoded at is part of how it was made; other formats have none (a record converted
    # from an MP4 loses its crf).
    extra = {k: v for k, v in record.extra.items() if k != "crf"}
    record = dataclasses.replace(record, extra={**extra, "crf": crf} if fmt == "mp4" else extra)
    stream = _checked_frames(frames)
    if fmt == "png":
        with atomic_directory(path, force=force) as folder:
            _check_count(_write_png_frames(stream, folder, record), record)
            if force:  # last, so a file put there while the frames were written is seen too
                check_replaceable_frames(path)
        return path
    with atomic_file(path, force=force) as temp:
        if fmt == "mp4":
            count = _write_mp4(stream, temp, record, fps, crf)
        else:
            with open(temp, "wb") as file:
                write = _write_gif if fmt == "gif" else _write_webp
                count = write(stream, file, record, fps)
        _check_count(count, record)
    return path


def check_replaceable_frames(path: Path) -> None:
    """SanaError unless a forced save may replace the PNG-frames folder at `path` (or there is none).

    The folder is replaced whole, so it may hold only what the frames writer makes (frame_NNNNN.png and
    clip.json): a user's file put there, or a file or link in the folder's place, is never deleted.
    """
    path = Path(path)
    if path.is_symlink() or (path.exists() and not path.is_dir()):
        raise SanaError(f"{path} is {'a link' if path.is_symlink() else 'a file'}, not a folder of PNG frames, so "
                        "--force does not replace it", "move it, or choose another -o")
    if not path.exists():
        return
    try:
        foreign = sorted(entry.name for entry in path.iterdir() if entry.is_symlink() or not entry.is_file()
                         or not (_PNG_FRAME_FILE.fullmatch(entry.name) or entry.name == CLIP_JSON))
    except OSError as exc:
        raise SanaError(f"cannot read {path}: {exc.strerror or exc}", "choose another -o") from None
    if foreign:
        more = f" and {len(foreign) - 1} more" if len(foreign) > 1 else ""
        raise SanaError(f"{path} holds {foreign[0]}{more}, which sana did not write and --force would delete with "
                        "the old frames", "move it out of the folder, or choose another -o")


def playable_fps(fmt: str, fps: float) -> float:
    """The rate a clip of `fmt` can be written at: `fps`, or for a GIF at most GIF_MAX_FPS."""
    return min(float(fps), GIF_MAX_FPS) if clip_format(fmt) == "gif" else float(fps)


def _clip_record(record: GenerationRecord, frames: object, fps: float) -> GenerationRecord:
    if record.fps is not None and not math.isclose(record.fps, fps):
        raise ValueError(f"record.fps is {record.fps} but the clip is written at {fps} fps")
    count = record.frames
    if isinstance(frames, np.ndarray):
        if frames.ndim != 4:
            raise ValueError(f"frames must be [F, H, W, 3], got shape {list(frames.shape)}")
        if count is not None and count != len(frames):
            raise ValueError(f"record.frames is {count} but {len(frames)} frames were given")
        count = len(frames)
    return dataclasses.replace(record, fps=fps, frames=count)


def _check_count(count: int, record: GenerationRecord) -> None:
    if record.frames is not None and count != record.frames:
        raise ValueError(f"record.frames is {record.frames} but {count} frames were written")


def _checked_frames(frames: np.ndarray | Iterable[np.ndarray]) -> Iterator[np.ndarray]:
    """Each frame as a uint8 [H, W, 3] array (views of an array, not copies), all of the first one's size."""
    shape = None
    for frame in frames:
        frame = np.asarray(frame)
        if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
            raise ValueError(f"a frame must be a uint8 [H, W, 3] array, got {frame.dtype} {list(frame.shape)}")
        if shape is None:
            shape = frame.shape
        elif frame.shape != shape:
            raise ValueError(f"frames change size: {list(shape)} then {list(frame.shape)}")
        yield frame
    if shape is None:
        raise ValueError("no frames to write")


# ----------------------------------------------------------------------------------------------------------------
# The four writers; each returns the number of frames it wrote
# ----------------------------------------------------------------------------------------------------------------

def _write_mp4(frames: Iterator[np.ndarray], temp: Path, record: GenerationRecord, fps: float, crf: int) -> int:
    first = next(frames)
    height, width = first.shape[:2]
    pad = ((0, height % 2), (0, width % 2), (0, 0))
    json_text, a1111 = record.to_json(), record.to_a1111().replace("\0", "")
    if len(json_text) + len(a1111) > MP4_MAX_METADATA_CHARS:
        raise SanaError("the metadata is too long for an MP4", "write .webp, .gif or PNG frames instead")
    command = [
        ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "error", "-y",
        "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{width + width % 2}x{height + height % 2}",
        "-r", str(Fraction(fps).limit_denominator(1001)), "-i", "pipe:0",
        "-an", "-c:v", "libx264", "-crf", str(crf), "-vf", _MP4_FILTER, "-pix_fmt", "yuv420p",
        "-movflags", "+faststart",
        "-metadata", f"{MP4_JSON_KEY}={json_text}", "-metadata", f"{MP4_PARAMETERS_KEY}={a1111}",
        "-f", "mp4", ffmpeg_path(temp),
    ]
    count = 0
    with tempfile.TemporaryFile() as log:  # a file, not a pipe: a full pipe would stall ffmpeg
        process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=log)
        try:
            try:
                for frame in itertools.chain([first], frames):
                    if pad[0][1] or pad[1][1]:
                        frame = np.pad(frame, pad, mode="edge")
                    process.stdin.write(np.ascontiguousarray(frame).data)
                    count += 1
                process.stdin.close()
            except BrokenPipeError:  # ffmpeg stopped early; its exit status and log say why
                with contextlib.suppress(BrokenPipeError):
                    process.stdin.close()
            code = process.wait()
        except BaseException:
            process.kill()
            process.wait()
            raise
        if code != 0:
            log.seek(0)
            lines = [line for line in log.read().decode("utf-8", "replace").splitlines() if line.strip()]
            # "[out#0/mp4 @ 0x5613...] Error closing file: ...": the bracket names ffmpeg's internals, not the cause
            reason = re.sub(r"^\[[^\]]* @ 0x[0-9a-f]+\]\s*", "", lines[-1]) if lines else f"exit status {code}"
            raise SanaError(f"ffmpeg could not write the MP4: {reason}")
    return count


def _write_gif(frames: Iterator[np.ndarray], file, record: GenerationRecord, fps: float) -> int:
    # Quantized as they come: a palette frame is a third of the RGB bytes, and Pillow needs them all at once.
    paletted = [Image.fromarray(frame).quantize(256) for frame in frames]
    paletted[0].save(file, format="GIF", save_all=True, append_images=paletted[1:], loop=0,
                     duration=_gif_delays(len(paletted), fps), comment=record.to_json().encode("utf-8"))
    return len(paletted)


def _gif_delays(count: int, fps: float) -> list[int]:
    """Per-frame delays in ms, whole 1/100 s each, rounded so that frame i still starts at about i / fps."""
    starts = [round(index * 100 / fps) for index in range(count + 1)]  # in 1/100 s
    return [10 * (end - start) for start, end in zip(starts, starts[1:])]


def _write_webp(frames: Iterator[np.ndarray], file, record: GenerationRecord, fps: float) -> int:
    images = [Image.fromarray(frame) for frame in frames]
    # A float duration: Pillow accumulates it and rounds each timestamp, so the clip's length stays right.
    images[0].save(file, format="WEBP", save_all=True, append_images=images[1:], loop=0, duration=1000 / fps,
                   **metadata_options("WEBP", record))
    return len(images)


def _write_png_frames(frames: Iterator[np.ndarray], folder: Path, record: GenerationRecord) -> int:
    count = 0
    for index, frame in enumerate(frames):
        options = metadata_options("PNG", record) if index == 0 else {}
        with open(folder / PNG_FRAME_NAME.format(index), "wb") as file:
            Image.fromarray(frame).save(file, format="PNG", **options)
            file.flush()
            os.fsync(file.fileno())
        count += 1
    with open(folder / CLIP_JSON, "w", encoding="utf-8") as file:
        file.write(record.to_json(indent=2) + "\n")
        file.flush()
        os.fsync(file.fileno())
    return count


# ----------------------------------------------------------------------------------------------------------------
# ffmpeg and reading clips back
# ----------------------------------------------------------------------------------------------------------------

def ffmpeg_path(path: Path | str) -> str:
    """A path as ffmpeg must be given it: absolute, since ffmpeg reads a name such as `take:2.mp4` as the
    protocol `take` (a leading `/` never reads as one)."""
    return str(Path(path).absolute())


def ffmpeg_exe() -> str:
    """The ffmpeg binary imageio-ffmpeg provides (or the one IMAGEIO_FFMPEG_EXE names)."""
    try:
        import imageio_ffmpeg

        return imageio_ffmpeg.get_ffmpeg_exe()
    except (ImportError, RuntimeError):
        raise SanaError("ffmpeg is not available for MP4 files", "pip install imageio-ffmpeg") from None


def mp4_tags(path: Path) -> dict[str, str]:
    """A clip's container tags (MP4, MOV, MKV, ...), read with `ffmpeg -i path -f ffmetadata -`."""
    command = [ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "error", "-i", ffmpeg_path(path),
               "-map_metadata", "0", "-f", "ffmetadata", "-"]
    try:
        result = subprocess.run(command, capture_output=True, timeout=_FFMPEG_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise SanaError(f"{path}: ffmpeg took over {_FFMPEG_TIMEOUT_S} s to read the metadata") from None
    if result.returncode != 0:
        raise UsageError(f"{path} is not an image or clip that can be read")
    return parse_ffmetadata(result.stdout.decode("utf-8", errors="replace"))


def parse_ffmetadata(text: str) -> dict[str, str]:
    """The global "key=value" tags of an FFMETADATA1 text.

    ffmpeg escapes "=", ";", "#", "\\" and newlines with a backslash; lines starting with ";" or "#" are
    comments, and a "[SECTION]" line starts the per-stream and chapter tags, which we do not need.
    """
    tags: dict[str, str] = {}
    key: str | None = None
    part: list[str] = []
    escaped = skipping = False
    line_start = True
    for char in text + "\n":
        if skipping:
            skipping = char != "\n"
            line_start = not skipping
            continue
        if escaped:
            part.append(char)
            escaped = line_start = False
        elif char == "\\":
            escaped = True
        elif char == "\n":
            if key is not None:
                tags[key] = "".join(part)
            key, part, line_start = None, [], True
        elif line_start and char in ";#":
            skipping = True
        elif line_start and char == "[":
            break
        elif char == "=" and key is None:
            key, part = "".join(part), []
            line_start = False
        else:
            part.append(char)
            line_start = False
    return tags


def read_clip(path: Path) -> tuple[np.ndarray, float | None]:
    """A clip's frames, uint8 [F, H, W, 3], and its frame rate (None when a PNG-frames folder does not say).

    GIF and WebP rates come from the frame delays, so they are as close to the written rate as whole 1/100 s
    (GIF) or 1 ms (WebP) delays allow; an MP4's is the stream's.
    """
    path = Path(path)
    if path.is_dir():
        return _read_png_frames(path)
    if not path.is_file():
        raise UsageError(f"{path} not found")
    try:
        with Image.open(path) as image:
            frames, delays = [], []
            for frame in ImageSequence.Iterator(image):
                frames.append(np.asarray(frame.convert("RGB")))
                delays.append(frame.info.get("duration") or 0)  # set once the frame is loaded (WebP)
            fps = 1000 * len(delays) / sum(delays) if sum(delays) else None
            return np.stack(frames), fps
    except UnidentifiedImageError:
        pass
    except (OSError, SyntaxError, ValueError):
        raise UsageError(f"{path} is not a clip that can be read") from None
    return _read_with_ffmpeg(path)


def _read_with_ffmpeg(path: Path) -> tuple[np.ndarray, float | None]:
    import imageio_ffmpeg

    ffmpeg_exe()  # the usual error when there is no ffmpeg
    try:
        reader = imageio_ffmpeg.read_frames(ffmpeg_path(path), pix_fmt="rgb24")
        meta = next(reader)
        width, height = meta["size"]
        frames = [np.frombuffer(data, np.uint8).reshape(height, width, 3) for data in reader]
    except (OSError, RuntimeError, StopIteration):
        raise UsageError(f"{path} is not a clip that can be read") from None
    if not frames:
        raise SanaError(f"{path} has no frames")
    return np.stack(frames), float(meta["fps"])


def _read_png_frames(folder: Path) -> tuple[np.ndarray, float | None]:
    from .reading import read_metadata

    names = sorted(folder.glob("frame_*.png"))
    if not names:
        raise SanaError(f"{folder} has no frame_*.png files")
    frames = []
    for name in names:
        with Image.open(name) as image:
            frames.append(np.asarray(image.convert("RGB")))
    try:
        fps = read_metadata(folder).fps
    except SanaError:
        fps = None
    return np.stack(frames), fps

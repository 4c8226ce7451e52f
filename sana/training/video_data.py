"""Training clips: a folder of videos with captions, the frames a model trains on, aspect buckets, decoding.

A clip is a video file (`.mp4`, `.webm`, `.mov`, `.mkv`, `.avi`, `.m4v`, `.gif`) or a folder of frames (image
files in name order: a folder holding images and nothing else). Captions come from `metadata.jsonl` (`file_name`
may name a file or a frames folder) or a same-name `.txt` beside the file or folder, as for images. Clips are
read by the ffmpeg imageio-ffmpeg ships (GIFs by Pillow, for their frame delays).

Every clip is resampled to the model's frame rate (the source frame nearest each target time) and cut to the
training length from its start; a shorter clip is snapped down to the longest count the VAE's frame rule allows
(k * temporal + 1), and one shorter than `min_frames` is skipped and reported. Buckets are (width, height,
frames): the trained 480p / 720p aspect bins at those sizes, a 32-px grid of ratios 1:4 .. 4:1 elsewhere.
"""

from __future__ import annotations

import json
import math
import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from ..errors import UsageError
from ..outputs.video import ffmpeg_path
from .data import (IMAGE_SUFFIXES, RUN_MARKER, SIDECAR_SUFFIXES, CaptionUnreadable, DataReport, check_data_folder,
                   metadata_rows, nearest_bucket, no_usable, note_upscaled, ratio_grid, row_caption, sample_caption)

VIDEO_SUFFIXES = {".mp4", ".webm", ".mov", ".mkv", ".avi", ".m4v", ".gif"}
FRAME_SUFFIXES = IMAGE_SUFFIXES - {".gif"}  # a frames folder holds still images
SIZE_MULTIPLE = 32  # the SANA-Video pipelines' rule for clip sides


@dataclass(frozen=True)
class ClipSample:
    path: Path  # a video file or a folder of frames
    caption: str
    width: int
    height: int
    frames: int  # frames in the source
    fps: float | None  # the source's rate; None for a frames folder that does not say (taken as the model's)


@dataclass(frozen=True)
class ClipPlan:
    """What training takes of a clip: `indices` of source frames, resized to (width, height)."""

    width: int
    height: int
    indices: tuple[int, ...]

    @property
    def bucket(self) -> tuple[int, int, int]:
        return self.width, self.height, len(self.indices)


class ClipReport(DataReport):
    """A DataReport that counts clips."""

    def lines(self, examples: int = 3) -> list[str]:
        lines = super().lines(examples)
        lines[0] = f"{self.used} clip(s) used"
        return lines


# -- finding clips ----------------------------------------------------------------------------------------

def _frame_files(folder: Path) -> list[Path] | None:
    """The frames of a frames folder in name order, or None when `folder` is not one (it holds anything but
    still images and sidecars, or fewer than two images)."""
    frames = []
    for path in folder.iterdir():
        if path.name.startswith("."):
            continue
        suffix = path.suffix.lower()
        if path.is_dir() or (suffix not in FRAME_SUFFIXES and suffix not in SIDECAR_SUFFIXES):
            return None
        if suffix in FRAME_SUFFIXES:
            frames.append(path)
    return sorted(frames, key=_natural_key) if len(frames) >= 2 else None


def _natural_key(path: Path) -> list:
    """frame2 before frame10."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path.name)]


def find_clips(root: Path, *, frames_folders: bool = True) -> tuple[list[Path], list[Path], list[Path]]:
    """(clips: video files and frames folders, still images, other files) under `root`, sorted; hidden entries and
    caption sidecars are left out. No file is opened. Without `frames_folders` (an image model's data) every
    folder is searched and its images are images."""
    clips, images, others = [], [], []

    def walk(folder: Path) -> None:
        for path in sorted(folder.iterdir()):
            if path.name.startswith("."):
                continue  # .DS_Store, .cache, our own cache
            if path.is_dir():
                if (path / RUN_MARKER).is_file():
                    continue  # a `sana finetune` run folder inside the data: its samples are not data
                (clips.append(path) if frames_folders and _frame_files(path) is not None else walk(path))
                continue
            suffix = path.suffix.lower()
            if suffix in VIDEO_SUFFIXES:
                clips.append(path)
            elif suffix in IMAGE_SUFFIXES:
                images.append(path)
            elif suffix not in SIDECAR_SUFFIXES:
                others.append(path)

    walk(root)
    return clips, images, others


def clips_and_images(root: Path) -> tuple[list[Path], list[Path]]:
    """(clips, still images) under `root` for telling video data from image data. A folder of images counts as one
    clip only when it is captioned as one (a same-name `.txt` beside it or a metadata.jsonl row naming it) and
    none of its images has a caption of its own: `data/cats/*.png` and `data/train/metadata.jsonl` are images."""
    root = Path(root).expanduser()
    clips, images, _ = find_clips(root)
    rows = metadata_rows(root, DataReport(root=root))
    kept = []
    for clip in clips:
        frames = _frame_files(clip) if clip.is_dir() else None
        if frames is None:
            kept.append(clip)  # a video file
        elif ((caption_file(clip).is_file() or clip.resolve() in rows)
              and not any(f.with_suffix(".txt").is_file() or f.resolve() in rows for f in frames)):
            kept.append(clip)
        else:
            images += frames
    return kept, sorted(images)


def caption_file(path: Path) -> Path:
    """The same-name caption beside a file (`clip.txt` for `clip.mp4`) or a frames folder (`clip.txt` for `clip/`)."""
    return path.with_name(path.name + ".txt") if path.is_dir() else path.with_suffix(".txt")


def _probe(path: Path) -> tuple[int, int, int, float | None] | None:
    """(width, height, frames, fps) of a clip, or None when it cannot be read or has no frames."""
    from PIL import Image

    try:
        if path.is_dir():
            frames = _frame_files(path)
            with Image.open(frames[0]) as first:
                width, height = first.size
            return width, height, len(frames), _folder_fps(path)
        if path.suffix.lower() == ".gif":
            with Image.open(path) as image:
                count = getattr(image, "n_frames", 1)
                delays = []
                for index in range(count):
                    image.seek(index)
                    delays.append(image.info.get("duration") or 0)
                fps = 1000.0 * count / sum(delays) if sum(delays) else None
                return image.size[0], image.size[1], count, fps
        import imageio_ffmpeg

        reader = imageio_ffmpeg.read_frames(ffmpeg_path(path))
        try:
            meta = next(reader)
        finally:
            reader.close()
        frames, _ = imageio_ffmpeg.count_frames_and_secs(ffmpeg_path(path))
        width, height = meta["size"]
        return (width, height, frames, float(meta["fps"])) if frames > 0 and meta.get("fps") else None
    except (OSError, RuntimeError, ValueError, StopIteration, SyntaxError, KeyError, TypeError,
            Image.DecompressionBombError):  # the last: a frame too large to decode safely, which is no OSError
        return None


def _folder_fps(folder: Path) -> float | None:
    """A frames folder's rate: the `clip.json` record `sana` writes beside PNG frames, when there is one."""
    record = folder / "clip.json"
    try:
        fps = json.loads(record.read_text(encoding="utf-8")).get("fps") if record.is_file() else None
        return float(fps) if fps else None
    except (OSError, ValueError, AttributeError):
        return None


def captioned_clips(root: Path, report: DataReport, *, caption: str | None = None, trigger: str | None = None
                    ) -> Iterator[tuple[Path, str, dict]]:
    """(clip, caption, its metadata.jsonl row) under `root` in path order, before any clip is opened; what is left
    out goes to `report` (whole once the iterator is). A folder of images and no clips is a one-line error: it is
    image data."""
    meta = metadata_rows(root, report)
    clips, images, others = find_clips(root)
    if images and not clips:
        raise UsageError(f"{root} holds images, not clips",
                         "fine-tune an image model with it (e.g. --model sana-1.6b), or give a folder of videos")
    for path in images:
        report.skip("a still image among clips", path)
    for path in others:
        report.skip("not a video", path)
    for path in clips:
        row = meta.get(path.resolve(), {})
        try:
            text = sample_caption(caption, row_caption(row), caption_file(path), trigger)
        except CaptionUnreadable:
            report.skip("caption file is not UTF-8 text", caption_file(path))
            continue
        if text is None:
            report.skip("no caption", path)
            continue
        yield path, text, row


CLIPS_HINT = "put videos (or folders of frames) with same-name .txt captions or a metadata.jsonl there"


def check_clips(data: str, *, caption: str | None = None, trigger: str | None = None) -> None:
    """A one-line error unless the folder holds a captioned clip, found without opening one (the walk stops at
    the first); clips that turn out unreadable or short are the trainer's to find."""
    root = check_data_folder(data)
    report = ClipReport(root=root)
    if next(captioned_clips(root, report, caption=caption, trigger=trigger), None) is None:
        raise no_usable("clips", data, report, CLIPS_HINT)


def scan_clip_folder(root: Path, *, caption: str | None = None, trigger: str | None = None
                     ) -> tuple[list[ClipSample], ClipReport]:
    """Every usable (clip, caption) under `root`, sorted by path, and the report of what was skipped. A folder of
    images and no clips is a one-line error: it is image data."""
    root = check_data_folder(root)
    report = ClipReport(root=root)
    candidates = list(captioned_clips(root, report, caption=caption, trigger=trigger))
    # Probing starts an ffmpeg process a file: threads overlap them.
    with ThreadPoolExecutor(max_workers=min(16, (os.cpu_count() or 1) * 2)) as pool:
        probes = list(pool.map(_probe, [path for path, _, _ in candidates]))
    samples = []
    for (path, text, row), probe in zip(candidates, probes):
        if probe is None:
            report.skip("unreadable or empty video", path)
            continue
        width, height, frames, fps = probe
        if isinstance(row.get("fps"), (int, float)) and row["fps"] > 0:
            fps = float(row["fps"])  # metadata.jsonl may state a frames folder's rate
        samples.append(ClipSample(path, text, width, height, frames, fps))
    report.used = len(samples)
    return samples, report


# -- frames and buckets -----------------------------------------------------------------------------------

def native_resolution(transformer_config: dict, spatial: int) -> int:
    """The side a video DiT was trained at: sample_size tokens x the VAE's spatial stride x the patch height
    (480p: 30 x 8 x 2 = 480)."""
    patch = transformer_config.get("patch_size") or (1, 2, 2)
    return int(transformer_config.get("sample_size", 30)) * spatial * int(patch[1])


def snap_down(frames: int, temporal: int) -> int:
    """The longest count of at most `frames` that the VAE's rule allows: k * temporal + 1."""
    return (max(1, frames) - 1) // temporal * temporal + 1


def resampled_length(frames: int, source_fps: float, fps: float) -> int:
    """Frames at `fps` within a source clip of `frames` frames at `source_fps` (its first to its last frame)."""
    return math.floor((frames - 1) * fps / source_fps + 1e-6) + 1


def source_indices(count: int, source_fps: float, fps: float, source_frames: int) -> tuple[int, ...]:
    """The source frame nearest each of `count` target times j / fps (j from 0)."""
    return tuple(min(source_frames - 1, math.floor(j * source_fps / fps + 0.5)) for j in range(count))


def clip_buckets(resolution: int, native: int, sample_size: int) -> list[tuple[int, int]]:
    """(width, height) buckets for a video model: its trained aspect bins when training at its native size (the
    480p / 720p tables, chosen by sample_size 30 / 22 as the pipelines choose them), else ratios 1:4 .. 4:1 of
    about resolution^2 pixels on a 32-px grid."""
    from ..pipelines.sizes import VIDEO_BIN_TABLES, video_aspect_ratio_bins

    table = VIDEO_BIN_TABLES.get(int(sample_size))
    if table is not None and resolution == native:
        return sorted({(int(w), int(h)) for h, w in video_aspect_ratio_bins()[table].values()})
    return ratio_grid(resolution, SIZE_MULTIPLE)


def plan_clips(samples: list[ClipSample], report: DataReport, *, buckets: list[tuple[int, int]], frames: int,
               fps: float, temporal: int, min_frames: int) -> tuple[list[ClipSample], list[ClipPlan]]:
    """What training takes of each sample (`frames` at `fps` from its start, snapped down to the rule when it is
    shorter); samples shorter than `min_frames` after resampling are skipped and reported."""
    kept, plans = [], []
    for sample in samples:
        source_fps = sample.fps or fps
        available = resampled_length(sample.frames, source_fps, fps)
        count = snap_down(min(frames, available), temporal)
        if count < min_frames:
            report.skip(f"shorter than {min_frames} frames at {fps:g} fps", sample.path)
            continue
        width, height = nearest_bucket(sample.width, sample.height, buckets)
        kept.append(sample)
        plans.append(ClipPlan(width, height, source_indices(count, source_fps, fps, sample.frames)))
    report.used = len(kept)
    note_upscaled(kept, [(plan.width, plan.height) for plan in plans], report)
    return kept, plans


# -- decoding ---------------------------------------------------------------------------------------------

def read_clip_frames(sample: ClipSample, plan: ClipPlan) -> np.ndarray:
    """The planned frames, uint8 [T, height, width, 3], each scaled to cover the bucket and centre-cropped.
    Raises OSError when the clip cannot be decoded or ends before a planned frame."""
    from PIL import Image, ImageOps

    wanted = set(plan.indices)
    found: dict[int, Image.Image] = {}
    for index, frame in enumerate(_frames_of(sample.path)):
        if index in wanted:
            found[index] = frame
        if len(found) == len(wanted):
            break
    if len(found) < len(wanted):
        raise OSError(f"{sample.path} ends after {len(found)} of the {len(wanted)} frames planned")
    size = (plan.width, plan.height)
    return np.stack([np.asarray(ImageOps.fit(found[i].convert("RGB"), size, method=Image.Resampling.BICUBIC))
                     for i in plan.indices])


def _frames_of(path: Path):
    """PIL frames of a clip, in order, decoded as they are asked for."""
    from PIL import Image, ImageSequence

    if path.is_dir():
        for name in _frame_files(path) or []:
            with Image.open(name) as image:
                image.load()
                yield image.copy()
        return
    if path.suffix.lower() == ".gif":
        with Image.open(path) as image:
            for frame in ImageSequence.Iterator(image):
                yield frame.convert("RGB")
        return
    import imageio_ffmpeg

    reader = imageio_ffmpeg.read_frames(ffmpeg_path(path), pix_fmt="rgb24")
    try:
        width, height = next(reader)["size"]
        for data in reader:
            yield Image.frombuffer("RGB", (width, height), data, "raw", "RGB", 0, 1)
    except (RuntimeError, StopIteration) as exc:
        raise OSError(str(exc)) from None
    finally:
        reader.close()

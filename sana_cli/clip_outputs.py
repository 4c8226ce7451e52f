"""What `sana video` writes: each job's format, the rate a format can play, a dry run's report, and the save that
keeps a clip it could not write where asked (a server's clips too)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from sana.errors import SanaError, UsageError

from . import console

def job_format(paths: list[Path], settings: dict[str, Any], fmt: str | None) -> str:
    """The clip format a job writes: its planned paths' (a dry run plans none: --format, else -o's suffix, else
    MP4, as `plan_clip_paths` decides)."""
    from sana.outputs import clip_format

    if paths:
        return clip_format(paths[0])
    out = settings.get("out")
    if fmt is None and out and Path(out).suffix:
        try:
            return clip_format(out)
        except UsageError:
            pass
    return fmt or "mp4"


FORMAT_NAMES = {"mp4": "MP4", "gif": "GIF", "webp": "WebP", "png": "PNG frames"}


def writable_fps(fps: float, fmt: str, notices: set[str]) -> float:
    """The rate a clip is written (and recorded) at: a GIF is capped at the 50 fps it can play, with a notice."""
    from sana.outputs.video import GIF_MAX_FPS, playable_fps

    written = playable_fps(fmt, fps)
    if written != fps:
        once(notices, f"a GIF cannot play faster than {GIF_MAX_FPS:g} fps (its frame delays are whole 1/100 s and "
                      f"browsers slow delays under 20 ms): {fps:g} fps is written and recorded as {written:g} fps "
                      f"(write .mp4 or .webp for more)")
    return written


def once(notices: set[str], message: str) -> None:
    """A notice printed once a run (a prompts file's jobs would repeat it)."""
    if message not in notices:
        notices.add(message)
        console.notice(message)


def print_dry_run(model_arg: str, requests: list, generated: list[tuple[int, int]], formats: list[str], plan) -> None:
    """The clips a run would make and its memory plan: lines and the plan's table, or with --json one JSON object."""
    if console.settings.json:
        clips = [{"prompt": request.prompt, "seeds": list(request.seeds), "frames": request.frames, "fps": fps,
                  "seconds": round(request.frames / fps, 3), "width": request.width, "height": request.height,
                  "generated_size": list(size), "format": fmt, "steps": request.steps, "cfg": request.guidance,
                  "sampler": request.sampler, "flow_shift": request.flow_shift, "motion_score": request.motion_score,
                  "mode": "image-to-video" if first else "text-to-video"}
                 for (request, _, fps, first), size, fmt in zip(requests, generated, formats)]
        from .generation import plan_json

        console.json_line({"dry_run": True, "model": model_arg, "clips": clips, "memory": plan_json(plan)})
        return
    for (request, _, fps, _), (gen_w, gen_h) in zip(requests, generated):
        console.out.print(f"{len(request.seeds)} clip(s) of {request.frames} frame{'s' if request.frames != 1 else ''} at {fps:g} fps "
                          f"({request.frames / fps:.2f} s), {request.width}x{request.height} "
                          f"(generated at {gen_w}x{gen_h}): {request.prompt}", highlight=False, markup=False)
    from .generation import plan_table

    console.table(plan_table(plan, model_arg))


def unsaved_path(path: Path) -> Path:
    """Where a clip that could not be saved at `path` is kept: the system temp folder, under a name of this run."""
    return Path(tempfile.gettempdir()) / f"sana-unsaved-{os.getpid()}-{Path(path).name}"


def save_or_keep_clip(save, path: Path) -> Path:
    """`save(target, temp)` at `path`; when the clip cannot be written there (a full disk, a folder gone, ffmpeg
    failing) it is written in the system temp folder instead (a file that fails there too, as PNG frames, which
    need no encoder) and the one-line error says where: minutes of generation are never lost to a failed save."""
    from sana.outputs import clip_format

    try:
        return save(path, False)
    except UsageError:  # a bad argument fails the same anywhere
        raise
    except (OSError, SanaError) as exc:
        reason = (exc.strerror if isinstance(exc, OSError) else None) or str(exc)
    kept = unsaved_path(path)
    # PNG frames need no encoder: the last resort of a file format (a folder name without dots, so no suffix)
    targets = [kept] if clip_format(path) == "png" else [kept, kept.with_name(kept.name.replace(".", "-"))]
    for target in targets:
        try:
            save(target, True)
        except (OSError, SanaError):
            continue
        how = " as PNG frames" if target != kept else ""
        raise SanaError(f"could not save {path}: {reason}", f"it is kept{how} at {target}")
    raise SanaError(f"could not save {path}: {reason}", f"and it could not be kept in {kept.parent} either")


def write_served_clip(path: Path, data: bytes, force: bool) -> Path:
    """A server's MP4 (its record embedded) written at `path`: as it came for .mp4, else its frames decoded and
    written through the same writer in the format asked for (the record's rate capped as a GIF needs). A failed
    save keeps the clip in the temp folder, as a local run does."""
    from sana.outputs import clip_format

    if clip_format(path) == "mp4":
        def save(target: Path, temp: bool) -> Path:
            from sana.outputs.atomic import atomic_file

            with atomic_file(target, force=force or temp) as file:
                file.write_bytes(data)
            return target

        return save_or_keep_clip(save, path)

    import dataclasses

    from sana.outputs import read_clip, read_metadata, save_video
    from sana.outputs.video import playable_fps

    try:
        with tempfile.TemporaryDirectory(prefix="sana-served-") as folder:  # ffmpeg reads files, not bytes
            mp4 = Path(folder) / "clip.mp4"
            mp4.write_bytes(data)
            record = read_metadata(mp4)
            frames, stream_fps = read_clip(mp4)
    except OSError as exc:
        raise SanaError(f"could not decode the server's clip for {path}: {exc.strerror or exc}",
                        "write it as .mp4, which needs no decoding") from None
    fps = record.fps or stream_fps
    if record.width and record.height:  # an odd side was padded for yuv420p
        frames = frames[:, :record.height, :record.width]
    written_fps = playable_fps(path, fps)
    if written_fps != fps:
        console.notice(f"a GIF cannot play faster than {written_fps:g} fps: the server's {fps:g} fps clip is written "
                       f"and recorded as {written_fps:g} fps")
    if clip_format(path) == "png":
        console.notice("a server sends H.264 MP4: the PNG frames are decoded from it, not lossless")
    record = dataclasses.replace(record, fps=written_fps, frames=len(frames))
    return save_or_keep_clip(lambda target, temp: save_video(frames, target, record, fps=written_fps,
                                                             force=force or temp), path)

"""Sana Save: images (or a clip) into ComfyUI's output folder with our metadata and ComfyUI's.

A PNG carries what `sana gen` writes (the A1111 "parameters" text, the "sana" JSON record, the XMP AI-generated
mark: `sana info` and `sana gen --from` read it) and what ComfyUI's SaveImage writes (the API graph as "prompt" and
the UI workflow as "workflow": dropping the file on ComfyUI loads the graph). A clip (frames with a SANA_INFO from
Sana Video or Sana World) becomes an MP4 carrying our record, as `sana video` writes it. Under ComfyUI's
`--disable-metadata` neither is written: the files hold the pixels only.
"""

from __future__ import annotations

import json
import logging

from . import convert, host

log = logging.getLogger("sana.comfyui")
PNG_COMPRESS_LEVEL = 4  # ComfyUI's SaveImage level: a fraction of the time of 9 for a few percent more bytes


class SanaSave:
    DESCRIPTION = ("Saves to ComfyUI's output folder with our metadata (A1111 parameters, the JSON record) and "
                   "ComfyUI's workflow; a clip from Sana Video / World becomes an MP4.")
    CATEGORY = "sana"
    FUNCTION = "save"
    RETURN_TYPES = ()
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"images": ("IMAGE",),
                             "filename_prefix": ("STRING", {"default": "sana", "tooltip": "Name before the counter; "
                                                            "may hold a subfolder (sana/portraits)."})},
                "optional": {"info": ("SANA_INFO", {"tooltip": "The record from a Sana node: without it only "
                                                               "ComfyUI's workflow is written."})},
                "hidden": {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"}}

    def save(self, images, filename_prefix="sana", info=None, prompt=None, extra_pnginfo=None):
        count, height, width = images.shape[0], images.shape[1], images.shape[2]
        folder, name, counter, subfolder = host.output_path(filename_prefix, width, height)
        records = _records(info, count)
        embed = not host.metadata_disabled()  # ComfyUI's --disable-metadata: the pixels only, as its SaveImage
        if len(records) == 1 and records[0].frames == count > 1:  # the whole clip
            file = f"{name}_{counter:05}_.mp4"
            return _save_clip(images, _with_side_files(records[0], folder / file, embed), folder, file, subfolder,
                              embed)
        if not embed:
            records, prompt, extra_pnginfo = [], None, None
        results = []
        for index, image in enumerate(images):
            file = f"{name}_{counter + index:05}_.png"
            record = _with_side_files(records[index], folder / file, embed) if records else None
            _write_png(convert.image_to_pil(image), folder / file, record, prompt, extra_pnginfo)
            results.append({"filename": file, "subfolder": subfolder, "type": "output"})
        return {"ui": {"images": results}}


def _records(info, count: int) -> list:
    """The records true of the images: one an image, or a clip's one record when the images are all its frames;
    else [] (with a warning), and the files get none of ours. A clip's record on frames cut from it, or one
    image's record on a batch, would tell of a file other than the one it is in."""
    from sana.outputs import GenerationRecord

    if not info:
        return []
    records = [GenerationRecord(**item) for item in info]
    clip = next((r for r in records if r.frames is not None), None)
    if clip is None and len(records) == count:
        return records
    if clip is not None and len(records) == 1 and clip.frames == count:
        return records
    if clip is not None:
        log.warning("sana: %d images of a %d-frame clip; saving them without the clip's record (it would tell "
                    "of frames they are not)", count, clip.frames)
    else:
        log.warning("sana: %d records for %d images; saving them without our records", len(records), count)
    return []


def _with_side_files(record, output, embed: bool):
    """The record as the file at `output` carries it: what a clip node handed over beside it (`convert`'s
    FIRST_FRAME_KEY and CAMERA_JSON_KEY) written next to the output, as `sana world` writes `<clip>.camera.json`,
    and named in the record with its sha256, so `sana video --from` / `sana world --from` find the first frame
    and the camera path from any folder. Under --disable-metadata nothing is written beside it."""
    import base64
    import dataclasses
    import hashlib

    from sana.camera.export import camera_json_path
    from sana.outputs.atomic import atomic_file

    extra = dict(record.extra)  # ComfyUI may hand the same cached SANA_INFO to another Save
    first, camera_text = extra.pop(convert.FIRST_FRAME_KEY, None), extra.pop(convert.CAMERA_JSON_KEY, None)
    if embed and first is not None:
        data = base64.b64decode(first)
        path = output.with_name(output.name[: -len(output.suffix)] + ".first.png")
        with atomic_file(path, force=False) as temp:
            temp.write_bytes(data)
        extra.update(image=str(path.resolve()), image_sha256=hashlib.sha256(data).hexdigest())
    if embed and camera_text is not None:
        path = camera_json_path(output)
        with atomic_file(path, force=False) as temp:
            temp.write_text(camera_text, encoding="utf-8")
        extra.update(camera_file=path.name, camera_file_sha256=hashlib.sha256(camera_text.encode("utf-8")).hexdigest())
    return dataclasses.replace(record, extra=extra)


def _write_png(image, path, record, prompt, extra_pnginfo) -> None:
    from PIL.PngImagePlugin import PngInfo

    from sana.outputs.atomic import atomic_file
    from sana.outputs.images import metadata_options

    info = metadata_options("PNG", record)["pnginfo"] if record is not None else PngInfo()
    if prompt is not None:
        info.add_text("prompt", json.dumps(prompt))
    for key, value in (extra_pnginfo or {}).items():
        info.add_text(key, json.dumps(value))
    with atomic_file(path, force=False) as temp:
        image.save(temp, format="PNG", pnginfo=info, compress_level=PNG_COMPRESS_LEVEL)


def _save_clip(images, record, folder, file: str, subfolder: str, embed: bool) -> dict:
    from sana.outputs import save_video

    frames, fps = convert.image_to_uint8(images), record.fps or 16.0
    if embed:
        save_video(frames, folder / file, record, fps=fps)
    else:
        _save_bare_mp4(frames, folder / file, record, fps)
    return {"ui": {"images": [{"filename": file, "subfolder": subfolder, "type": "output"}], "animated": (True,)}}


def _save_bare_mp4(frames, path, record, fps: float) -> None:
    """An MP4 with no tags: encoded as `save_video` encodes every clip (which writes the record), then copied
    into place with the container's tags dropped."""
    import subprocess
    import tempfile
    from pathlib import Path

    from sana.errors import SanaError
    from sana.outputs import save_video
    from sana.outputs.atomic import atomic_file
    from sana.outputs.video import ffmpeg_exe, ffmpeg_path

    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".sana-") as scratch:
        encoded = save_video(frames, Path(scratch) / "clip.mp4", record, fps=fps)
        with atomic_file(path, force=False) as temp:
            copied = subprocess.run([ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "error", "-y",
                                     "-i", ffmpeg_path(encoded), "-map_metadata", "-1", "-c", "copy",
                                     "-movflags", "+faststart", "-f", "mp4", ffmpeg_path(temp)],
                                    capture_output=True)
            if copied.returncode != 0:
                raise SanaError(f"could not write {path}: {copied.stderr.decode(errors='replace').strip()}")

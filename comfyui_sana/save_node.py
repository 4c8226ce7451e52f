"""Sana Save: images (or a clip) into ComfyUI's output folder with our metadata and ComfyUI's.

A PNG carries what `sana gen` writes (the A1111 "parameters" text, the "sana" JSON record, the XMP AI-generated
mark: `sana info` and `sana gen --from` read it) and what ComfyUI's SaveImage writes (the API graph as "prompt" and
the UI workflow as "workflow": dropping the file on ComfyUI loads the graph). A clip (frames with a SANA_INFO from
Sana Video or Sana World) becomes an MP4 carrying our record, as `sana video` writes it.
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
        if records and records[0].frames and records[0].frames == count > 1:
            return _save_clip(images, records[0], folder, name, counter, subfolder)
        results = []
        for index, image in enumerate(images):
            file = f"{name}_{counter + index:05}_.png"
            _write_png(convert.image_to_pil(image), folder / file, records[index] if records else None, prompt,
                       extra_pnginfo)
            results.append({"filename": file, "subfolder": subfolder, "type": "output"})
        return {"ui": {"images": results}}


def _records(info, count: int) -> list:
    """One GenerationRecord an image (a single record serves every frame of a clip, or every image), or []."""
    from sana.outputs import GenerationRecord

    if not info:
        return []
    records = [GenerationRecord(**item) for item in info]
    if len(records) == count or len(records) == 1:
        return records if len(records) == count else records * count
    log.warning("sana: %d records for %d images; saving ComfyUI's metadata only", len(records), count)
    return []


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


def _save_clip(images, record, folder, name: str, counter: int, subfolder: str) -> dict:
    from sana.outputs import save_video

    file = f"{name}_{counter:05}_.mp4"
    save_video(convert.image_to_uint8(images), folder / file, record, fps=record.fps or 16.0)
    return {"ui": {"images": [{"filename": file, "subfolder": subfolder, "type": "output"}], "animated": (True,)}}

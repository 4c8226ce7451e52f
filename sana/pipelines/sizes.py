"""Generation sizes: the trained aspect-ratio bins (image and video) and the frame counts a video VAE takes.

No torch here: the CLI checks sizes and frame counts with it before anything heavy is imported. The bins are
diffusers' ASPECT_RATIO_*_BIN tables kept as package data (`sana/aspect_ratios.json`,
`sana/video_aspect_ratios.json`), so binning never imports diffusers' pipelines (~2 s of a fresh process).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path

BINNED_RESOLUTIONS = (512, 1024, 2048, 4096)  # image models' native sizes with trained aspect-ratio bins
# Video models: diffusers picks the table from the transformer's sample_size (480p: 30, 720p: 22).
VIDEO_BIN_TABLES = {30: "480", 22: "720"}


def _read_bins(name: str) -> dict[str, dict[str, list[int]]]:
    return json.loads(resources.files("sana").joinpath(name).read_text(encoding="utf-8"))


@lru_cache(maxsize=1)
def aspect_ratio_bins() -> dict[int, dict[str, list[int]]]:
    """native px -> {height / width as diffusers writes it: [height, width]}: PixArt's 512 / 1024 / 2048 and
    SANA's 4096 tables, in diffusers' order (the order breaks ties)."""
    return {int(native): table for native, table in _read_bins("aspect_ratios.json").items()}


@lru_cache(maxsize=1)
def video_aspect_ratio_bins() -> dict[str, dict[str, list[int]]]:
    """"480" / "720" -> {ratio: [height, width]}: diffusers' ASPECT_RATIO_480_BIN and ASPECT_RATIO_720_BIN."""
    return _read_bins("video_aspect_ratios.json")


def closest_bin(width: int, height: int, table: dict[str, list[int]]) -> tuple[int, int]:
    """(width, height) of the bin whose height / width ratio is nearest, the first one on a tie (as diffusers)."""
    ratio = height / width
    closest = min(table, key=lambda r: abs(float(r) - ratio))
    h, w = table[closest]
    return int(w), int(h)


FIRST_FRAME_ASPECT_LIMIT = 4.0  # the most elongated shape the trained bins go to (1:4 and 4:1)


def first_frame_clip_size(image_size: tuple[int, int], default_size: tuple[int, int],
                          multiple: int = 32) -> tuple[int, int]:
    """The clip size for an image-to-video job that names none: the model's default area at the first frame's
    shape (clamped to 1:4 .. 4:1), each side a multiple of `multiple`, so a portrait photo makes a portrait clip
    instead of one stretched to the default landscape size. An image of the default's shape keeps the default."""
    image_w, image_h = image_size
    default_w, default_h = default_size
    aspect = min(max(image_w / image_h, 1 / FIRST_FRAME_ASPECT_LIMIT), FIRST_FRAME_ASPECT_LIMIT)
    if abs(math.log(aspect / (default_w / default_h))) < 0.02:
        return default_w, default_h
    area = default_w * default_h
    width = max(multiple, round(math.sqrt(area * aspect) / multiple) * multiple)
    height = max(multiple, round(math.sqrt(area / aspect) / multiple) * multiple)
    return width, height


def stretch_ratio(image_size: tuple[int, int], clip_size: tuple[int, int]) -> float:
    """How much resizing the first frame to the clip distorts it: the ratio of the two shapes, >= 1."""
    ratio = (image_size[0] / image_size[1]) / (clip_size[0] / clip_size[1])
    return max(ratio, 1 / ratio)


def binned_size(width: int, height: int, native: int) -> tuple[int, int]:
    """The trained aspect bin nearest to width/height for an image model of `native` px; unchanged without bins."""
    if native not in BINNED_RESOLUTIONS:
        return width, height
    return closest_bin(width, height, aspect_ratio_bins()[native])


def video_binned_size(width: int, height: int, sample_size: int) -> tuple[int, int]:
    """The trained aspect bin for a video model whose transformer has `sample_size` (30: 480p, 22: 720p);
    unchanged for other models (small test models, fine-tunes at other sizes)."""
    table = VIDEO_BIN_TABLES.get(int(sample_size))
    if table is None:
        return width, height
    return closest_bin(width, height, video_aspect_ratio_bins()[table])


# -- video VAEs ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class VideoVaeGeometry:
    """What a video VAE does to a clip's shape, from its `config.json` alone."""

    class_name: str  # diffusers' class: AutoencoderKLWan | AutoencoderKLLTX2Video
    label: str  # for messages: "Wan 2.1" | "LTX-2"
    spatial: int  # pixels per latent along a side
    temporal: int  # frames per latent frame after the first
    channels: int  # latent channels


# class -> (label, config keys of the spatial stride, the temporal stride and the latent channels, their defaults),
# the keys diffusers' SANA-Video pipelines read (LTX-2's computed attributes are not used: they are wrong there).
VIDEO_VAES = {
    "AutoencoderKLWan": ("Wan 2.1", ("scale_factor_spatial", "scale_factor_temporal", "z_dim"), (8, 4, 16)),
    "AutoencoderKLLTX2Video": ("LTX-2", ("spatial_compression_ratio", "temporal_compression_ratio",
                                         "latent_channels"), (None, None, 128)),
}


def video_vae_geometry(config: dict) -> VideoVaeGeometry:
    """Strides and channels of a video VAE config; ValueError for other VAEs or missing strides."""
    name = config.get("_class_name", "")
    if name not in VIDEO_VAES:
        raise ValueError(f"{name or 'an unnamed VAE'} is not a video VAE this pipeline knows "
                         f"({', '.join(VIDEO_VAES)})")
    label, keys, defaults = VIDEO_VAES[name]
    values = [config.get(key, default) for key, default in zip(keys, defaults)]
    missing = [key for key, value in zip(keys, values) if not value]
    if missing:
        raise ValueError(f"the {label} VAE config does not set {', '.join(missing)}")
    return VideoVaeGeometry(name, label, *(int(v) for v in values))


def read_video_vae_geometry(model_dir: Path) -> VideoVaeGeometry:
    """The geometry of `model_dir/vae` from its config alone (no weights read, no torch)."""
    from ..components import read_json, require_component
    from ..errors import SanaError

    config = read_json(require_component(model_dir, "vae") / "config.json")
    try:
        return video_vae_geometry(config)
    except ValueError as exc:
        raise SanaError(f"{model_dir}: {exc}") from None


# -- frames -------------------------------------------------------------------------------------------------

def snap_frames(frames: int, temporal_stride: int) -> int:
    """The nearest frame count the VAE produces: k * stride + 1 (Wan 2.1: 4k+1, LTX-2: 8k+1), at least 1.

    diffusers floors other counts silently (`frames=11` gives 9 with Wan); we round to the nearest and say so.
    """
    k = math.floor((frames - 1) / temporal_stride + 0.5)
    return max(0, k) * temporal_stride + 1


def latent_frames(frames: int, temporal_stride: int) -> int:
    """Latent frames of a clip of `frames` frames: the first frame alone, then one per `temporal_stride`."""
    return (frames - 1) // temporal_stride + 1


def clip_seconds(frames: int, fps: float) -> float:
    return frames / fps

"""Decode tile geometry: DC-AE tiles for images, spatial tiles and temporal pieces for video VAEs.

Every tiled decoder here (ours for the DC-AE, diffusers' for Wan and LTX-2) starts a tile at every stride and
blends neighbours over the overlap, so a tile and its stride are chosen together: the fewest tiles that cover a
side with at least the overlap, spread evenly, with no useless sliver at the far edge.
"""

from __future__ import annotations

import math

from .sizes import Workload

# DC-AE (images). Tiles cost their overlap: at 4096 px on the H100 the decode takes 0.96 s whole, 1.01 s in 2x2
# tiles of 2176 px, 1.13 s in 3x3 of 1504 px, 1.26 s in 4x4 of 1152 px, while moving the text encoder off the
# GPU costs ~0.1 s. So the planner first looks for a tier that allows tiles of at least GOOD_TILE_PX, and only
# then accepts smaller.
GOOD_TILE_PX = 1280
MIN_TILE_PX = 512
TILE_OVERLAP_PX = 128
# Tiles an out-of-memory decode steps through, largest first.
TILE_LADDER_PX = (3072, 2048, 1536, 1024, 768, 512)

# Video VAEs (diffusers' `enable_tiling`): frames are at most 1280 px wide, and diffusers' own defaults are 256 px
# tiles overlapping by 64 (Wan) and 512 by 64 (LTX-2). Assumed like the DC-AE's: larger tiles cost less.
VIDEO_GOOD_TILE_PX = 512
VIDEO_MIN_TILE_PX = 256
VIDEO_TILE_OVERLAP_PX = 64
VIDEO_TILE_LADDER_PX = (1024, 768, 512, 384, 256)
# LTX-2 temporal pieces (`tile_sample_min_num_frames`, pixel frames; each piece decodes frames / 8 + 1 latent
# frames and overlaps the next by one latent frame, so its stride is frames - 8). 16 is diffusers' default and
# the least that leaves a stride; pieces decode their overlap twice, so larger ones cost less.
FRAME_LADDER = (64, 32, 16)


def tile_geometry(work: Workload, scale: int, tile: int | None, overlap_px: int = TILE_OVERLAP_PX):
    """((tile, stride) along the height, (tile, stride) along the width) in latents, or None for one piece.

    Tiles are at most `tile` px and overlap by at least `overlap_px` (or a quarter tile, if less); the stride is
    chosen so that the tiles spread evenly and no sliver of a tile is left at the far edge.
    """
    if tile is None:
        return None
    max_tile = max(1, tile // scale)
    overlap = max(1, min(overlap_px // scale, max_tile // 4))
    axes = (_axis(work.height // scale, max_tile, overlap), _axis(work.width // scale, max_tile, overlap))
    if all(t == size for (t, _), size in zip(axes, (work.height // scale, work.width // scale))):
        return None
    return axes


def video_tile_geometry(work: Workload, scale: int, tile: int | None):
    """`tile_geometry` with the video VAEs' overlap (diffusers' blend width)."""
    return tile_geometry(work, scale, tile, VIDEO_TILE_OVERLAP_PX)


def tile_area_px(work: Workload, scale: int, geometry) -> int:
    """Pixels of the largest tile in flight (the whole image or frame in one piece)."""
    if geometry is None:
        return work.width * work.height
    return geometry[0][0] * geometry[1][0] * scale * scale


def tile_counts(work: Workload, scale: int, geometry) -> tuple[int, int]:
    """(columns, rows) of tiles (1, 1 for one piece)."""
    if geometry is None:
        return 1, 1
    (_, stride_h), (_, stride_w) = geometry
    return math.ceil(work.width / (stride_w * scale)), math.ceil(work.height / (stride_h * scale))


def frame_piece(frames: int | None, temporal: int) -> tuple[int, int] | None:
    """diffusers' (`tile_sample_min_num_frames`, `tile_sample_stride_num_frames`) of a temporal piece, or None."""
    if frames is None:
        return None
    return frames, frames - temporal


def frames_in_flight(decoded: int, frames: int | None) -> int:
    """Pixel frames one temporal piece decodes at once (frames + the latent frame it shares; all when None)."""
    return decoded if frames is None else min(decoded, frames + 1)


def _axis(size: int, max_tile: int, overlap: int) -> tuple[int, int]:
    """(tile, stride) for one side: the fewest tiles of at most `max_tile` whose last one adds more than the
    overlap (diffusers starts a tile at every stride, so a stride too short leaves a useless sliver)."""
    if size <= max_tile:
        return size, size
    for count in range(math.ceil((size - overlap) / (max_tile - overlap)), size + 1):
        stride = math.ceil(size / count)
        if stride + overlap <= max_tile and size - (count - 1) * stride > overlap:
            return stride + overlap, stride
    return max_tile, max_tile - overlap  # tiles of a few latents: accept a sliver


def smaller_tile(tile: int | None, work: Workload, scale: int) -> int | None:
    """The next DC-AE tile of the ladder below the current one (the image's longer side when untiled)."""
    current = tile if tile is not None else max(work.width, work.height)
    smaller = [t for t in TILE_LADDER_PX if t < current]
    if smaller:
        return smaller[0]
    if tile is None:  # a small image: the smallest tile (it decodes in one piece, as the last resort before tiers)
        return TILE_LADDER_PX[-1]
    return None


def smaller_video_tile(tile: int | None, work: Workload) -> int | None:
    """The next video tile of the ladder below the current one (None when the smallest is reached)."""
    current = tile if tile is not None else max(work.width, work.height)
    smaller = [t for t in VIDEO_TILE_LADDER_PX if t < current]
    return smaller[0] if smaller else None


def smaller_piece(frames: int | None, decoded: int) -> int | None:
    """The next temporal piece below the current one that decodes fewer frames at once (None: none left)."""
    current = frames_in_flight(decoded, frames)
    smaller = [f for f in FRAME_LADDER if f + 1 < current]
    return smaller[0] if smaller else None


def tiles_text(work: Workload, scale: int, geometry) -> str:
    """E.g. "2x2 tiles of 2176 px" (columns x rows)."""
    (tile_h, _), (tile_w, _) = geometry
    cols, rows = tile_counts(work, scale, geometry)
    side = f"{tile_w * scale}x{tile_h * scale}" if tile_w != tile_h else f"{tile_w * scale}"
    return f"{cols}x{rows} tiles of {side} px"


def decode_overhead(work: Workload, scale: int, geometry, latent_frames: int, temporal: int,
                    frames: int | None) -> float:
    """Latents decoded over latents in the clip: what the overlaps of spatial tiles and temporal pieces cost
    (1.0 decodes everything once). Pieces start every (frames - temporal) / temporal latent frames, as diffusers'
    loop does, and decode frames / temporal + 1 latent frames each (fewer at the end)."""
    h, w = work.height // scale, work.width // scale
    cols, rows = tile_counts(work, scale, geometry)
    spatial = 1.0 if geometry is None else cols * rows * geometry[0][0] * geometry[1][0] / (h * w)
    if frames is None:
        return spatial
    length, stride = frames // temporal + 1, max(1, (frames - temporal) // temporal)
    decoded = sum(min(length, latent_frames - start) for start in range(0, latent_frames, stride))
    return spatial * decoded / latent_frames

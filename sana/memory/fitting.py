"""Fitting the VAE's decode into what a plan leaves: the whole image or clip when it fits, else the largest tiles
(and, for LTX-2 clips, temporal pieces) that do. Each function takes a `MemoryPlan` and returns it with its
decode settings, or None when the plan does not fit at all."""

from __future__ import annotations

import math
from dataclasses import replace
from typing import TYPE_CHECKING

from . import estimates as est
from . import tiles
from .clips import clip_shape
from .estimates import DTYPE_BYTES

if TYPE_CHECKING:
    from .plan import MemoryPlan

# Temporal pieces decode their overlap twice (64 frames: 9 latent frames a piece, a stride of 7): the planner
# first looks for a tier that decodes pieces of at least this many frames, as it does for tiles.
GOOD_PIECE_FRAMES = 64


def fit_tile(plan: "MemoryPlan", min_tile: int) -> "MemoryPlan | None":
    """`plan` with the whole image decoded at once when that fits, else the largest DC-AE tile (>= min_tile px)
    that does; None when the plan does not fit at all."""
    if max(plan.peak("encode"), plan.peak("denoise")) > plan.budget:
        return None
    if plan.peak("decode") <= plan.budget:  # decode_tile is None here: the whole image
        return plan
    room = plan.budget - (plan.peak("decode") - plan.activations("decode")) - (
        plan.work.width * plan.work.height * est.DECODE_OUTPUT_BYTES_PER_PIXEL)
    per_pixel = est.decode_pixel_bytes(plan.sizes, DTYPE_BYTES[plan.vae_dt], kernels=plan.device.kernels)
    if room <= 0:
        return None
    f = plan.sizes.vae_scale_factor
    tile = int(math.sqrt(room / per_pixel)) // f * f
    geometry = tiles.tile_geometry(plan.work, f, tile) if tile >= f else None
    # The tiles actually decoded spread evenly and may be smaller than the largest that fits.
    smallest_acceptable = min(min_tile, max(plan.work.width, plan.work.height))
    if geometry is None or max(geometry[0][0], geometry[1][0]) * f < smallest_acceptable:
        return None
    return replace(plan, decode_tile=tile)


def fit_clip_decode(plan: "MemoryPlan", min_tile: int) -> "MemoryPlan | None":
    """`plan` with the cheapest decode of a clip that fits: whole frames of the whole clip when they fit, else,
    for each temporal piece (LTX-2) or none, the largest spatial tile (>= min_tile px) that fits, taking the one
    whose overlaps decode the fewest latents twice; None when nothing fits."""
    if max(plan.peak("encode"), plan.peak("denoise")) > plan.budget:
        return None
    s, w = plan.sizes, plan.work
    shape = clip_shape(s, w)
    pieces = [None]
    if s.vae_kind == "ltx2":
        good = min_tile > tiles.VIDEO_MIN_TILE_PX
        pieces += [f for f in tiles.FRAME_LADDER if f + 1 < shape.frames and (f >= GOOD_PIECE_FRAMES or not good)]
    f = s.vae_scale_factor
    smallest_acceptable = min(min_tile, max(w.width, w.height))
    vae_bytes = DTYPE_BYTES[plan.vae_dt]
    best, best_cost = None, math.inf
    for piece in pieces:
        candidate = replace(plan, decode_tile=None, decode_frames=piece)
        if not _decode_fits(candidate):
            weights = candidate.peak("decode") - candidate.activations("decode")
            room = plan.budget - weights - est.clip_output_bytes(s, w, vae_bytes)
            per_pixel = est.decode_pixel_bytes(s, vae_bytes, kernels=False) * est.clip_frames_in_flight(s, w, piece)
            if room <= 0:
                continue
            in_flight = est.clip_frames_in_flight(s, w, piece) * s.vae_decoder_width
            area = min(room / per_pixel, est.VIDEO_DECODE_MAX_ELEMENTS / in_flight)
            tile = int(math.sqrt(area)) // f * f
            geometry = tiles.video_tile_geometry(w, f, tile) if tile >= f else None
            if geometry is None or max(geometry[0][0], geometry[1][0]) * f < smallest_acceptable:
                continue
            candidate = replace(candidate, decode_tile=tile)
            if not _decode_fits(candidate):
                continue
        cost = decode_cost(candidate)
        if cost < best_cost - 1e-9:
            best, best_cost = candidate, cost
    return best


def decode_cost(plan: "MemoryPlan") -> float:
    """Latents a clip plan's decode goes through over the clip's latents (1.0: no overlap decoded twice)."""
    s, w = plan.sizes, plan.work
    geometry = tiles.video_tile_geometry(w, s.vae_scale_factor, plan.decode_tile)
    return tiles.decode_overhead(w, s.vae_scale_factor, geometry, clip_shape(s, w).latent_frames,
                                 s.vae_temporal_scale, plan.decode_frames)


def _decode_fits(plan: "MemoryPlan") -> bool:
    elements = est.clip_decode_elements(plan.sizes, plan.work, plan.decode_tile, plan.decode_frames)
    return (plan.peak("decode") <= plan.budget and plan.peak("condition") <= plan.budget
            and elements <= est.VIDEO_DECODE_MAX_ELEMENTS)


def smallest_decode(plan: "MemoryPlan") -> "MemoryPlan":
    """`plan` with the smallest tiles (and, for LTX-2, the shortest pieces) the ladders hold."""
    if not plan.sizes.is_clip:
        return replace(plan, decode_tile=tiles.MIN_TILE_PX)
    piece = tiles.FRAME_LADDER[-1] if plan.sizes.vae_kind == "ltx2" else None
    if piece is not None and piece + 1 >= clip_shape(plan.sizes, plan.work).frames:
        piece = None
    return replace(plan, decode_tile=tiles.VIDEO_MIN_TILE_PX, decode_frames=piece)

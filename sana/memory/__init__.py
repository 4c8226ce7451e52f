"""The memory planner: where each component lives, in which dtype, and how the VAE decodes, from the device's
memory and the components' sizes, before anything loads.

`plan_memory` is a pure function of a `DeviceInfo` (sana.device), `ComponentSizes` and a `Workload`; it returns
a `MemoryPlan` that `sana.placement` carries out and that `MemoryPlan.lower` steps down after an out-of-memory
error. It knows every family: image DiTs with the DC-AE, SANA-Video with Wan 2.1 or LTX-2, and SANA-WM.

    sizes       ComponentSizes, Workload; sizes from weights, presets or modules
    families    video / world-model parameter counts and VAE geometry, from configs
    clips       latent frames, latent grid and tokens of a clip
    estimates   activation estimates per phase (calibration notes beside each constant)
    tiles       DC-AE tiles, video tiles and temporal pieces, and their ladders
    fitting     the largest decode (tiles, pieces) that fits what a plan leaves
    options     --memory tiers and --max-vram sizes
    plan        MemoryPlan and plan_memory
"""

from .clips import ClipShape, clip_shape, decoded_frames, describe_clip, latent_frames
from .estimates import (
    DECODE_OUTPUT_BYTES_PER_PIXEL, DECODE_WIDTHS_KERNELS, DECODE_WIDTHS_REFERENCE, DIT_WIDTHS_KERNELS,
    DIT_WIDTHS_REFERENCE, DTYPE_BYTES, TEXT_TOKENS, TEXT_WIDTHS_PER_TOKEN, VIDEO_DECODE_WIDTHS, VIDEO_DIT_WIDTHS,
    WORLD_DIT_WIDTHS, clip_decode_activations, condition_activations, decode_activations, decode_pixel_bytes,
    dit_activations, dit_tokens, text_activations,
)
from .plan import (
    COMPONENTS, GOOD_PIECE_FRAMES, GRAPH_MAX_TOKENS, HEADROOM_BYTES, HEADROOM_FRACTION, LADDER, MODES, PHASES,
    PIN_RAM_FRACTION, TIER_SUMMARY, TIERS, MemoryPlan, PlanRow, check_mode, parse_memory_size, plan_memory,
    resident_plan, usable_memory,
)
from .sizes import (
    DIT_KINDS, VAE_KINDS, ComponentSizes, Workload, clip_sizes, sizes_from_directory, sizes_from_spec,
    sizes_of_clip_modules, sizes_of_modules, transformer_sizes, vae_decoder_sizes, with_fp8_blocks,
)
from .tiles import (
    FRAME_LADDER, GOOD_TILE_PX, MIN_TILE_PX, TILE_LADDER_PX, TILE_OVERLAP_PX, VIDEO_GOOD_TILE_PX,
    VIDEO_MIN_TILE_PX, VIDEO_TILE_LADDER_PX, VIDEO_TILE_OVERLAP_PX, tile_geometry, video_tile_geometry,
)

__all__ = [
    "COMPONENTS", "DECODE_OUTPUT_BYTES_PER_PIXEL", "DECODE_WIDTHS_KERNELS", "DECODE_WIDTHS_REFERENCE", "DIT_KINDS",
    "DIT_WIDTHS_KERNELS", "DIT_WIDTHS_REFERENCE", "DTYPE_BYTES", "FRAME_LADDER", "GOOD_PIECE_FRAMES", "GOOD_TILE_PX",
    "GRAPH_MAX_TOKENS", "HEADROOM_BYTES", "HEADROOM_FRACTION", "LADDER", "MIN_TILE_PX", "MODES", "PHASES",
    "PIN_RAM_FRACTION", "TEXT_TOKENS", "TEXT_WIDTHS_PER_TOKEN", "TIERS", "TIER_SUMMARY", "TILE_LADDER_PX",
    "TILE_OVERLAP_PX", "VAE_KINDS", "VIDEO_DECODE_WIDTHS", "VIDEO_DIT_WIDTHS", "VIDEO_GOOD_TILE_PX",
    "VIDEO_MIN_TILE_PX", "VIDEO_TILE_LADDER_PX", "VIDEO_TILE_OVERLAP_PX", "WORLD_DIT_WIDTHS", "ClipShape",
    "ComponentSizes", "MemoryPlan", "PlanRow", "Workload", "check_mode", "clip_decode_activations", "clip_shape",
    "clip_sizes", "condition_activations", "decode_activations", "decode_pixel_bytes", "decoded_frames",
    "describe_clip", "dit_activations", "dit_tokens", "latent_frames", "parse_memory_size", "plan_memory",
    "resident_plan", "sizes_from_directory", "sizes_from_spec", "sizes_of_clip_modules", "sizes_of_modules",
    "text_activations", "tile_geometry", "transformer_sizes", "usable_memory", "vae_decoder_sizes",
    "video_tile_geometry", "with_fp8_blocks",
]

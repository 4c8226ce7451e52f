"""Activation estimates: device memory a phase needs beyond the weights, from the sizes and the workload.

Image figures were measured on an H100 (torch 2.11, bf16, real 1.6B / Gemma-2-2B / DC-AE configs, 2026-11-27).
Video and world-model figures are calibrated on diffusers' modules at the released configs (H200, torch 2.11,
diffusers 0.42.1, bf16, random weights): see each constant for what was measured and what is assumed. Constants
marked RE-MEASURE hold until our own modules are measured on the GPU (`scripts/bench_memory.py` style).
"""

from __future__ import annotations

from .clips import clip_shape
from .sizes import ComponentSizes, Workload
from .tiles import frames_in_flight, tile_area_px, tile_geometry, video_tile_geometry

DTYPE_BYTES = {"bf16": 2, "fp16": 2, "fp32": 4}

# -- image DiT, text encoder, DC-AE (H100, 2026-11-27) ----------------------------------------------------

# Peak live activations of one DiT forward, in [rows, tokens, inner_dim] tensors of the compute dtype.
# Measured 10.5-10.8 with the Triton kernels and 18.0-23.0 with the PyTorch references (the reference Mix-FFN
# middle and linear attention run in fp32); linear attention keeps this linear in the token count.
DIT_WIDTHS_KERNELS = 12
DIT_WIDTHS_REFERENCE = 24
# Gemma-2 encoding one prompt: bytes per token in units of hidden-size vectors (measured 40-45: 117 MiB at 600
# tokens). Prompts are encoded one at a time, 300 tokens after an instruction prefix of up to ~300.
TEXT_WIDTHS_PER_TOKEN = 48
TEXT_TOKENS = 600
PROMPT_TOKENS = 300  # what the DiT sees of a prompt at most: the instruction is cut off after encoding
# DC-AE decode (`sana.models.dcae`): activation elements per output pixel, per channel of the decoder's
# full-resolution stage. With the Triton kernels (fused norm + residual, phase-assembled up blocks) measured
# 1168-1280 B/px in bf16 for f32c32's 128 channels (18.3 GiB untiled at 4096 px), i.e. 4.6-5.0; the PyTorch
# references take fp32 squares for the norms, as diffusers' decoder does (1666 B/px, 6.5).
DECODE_WIDTHS_KERNELS = 5.2
DECODE_WIDTHS_REFERENCE = 6.6
# Around the tiles: decoded tiles kept for blending (3 channels, VAE dtype) and the fp32 post-processing.
DECODE_OUTPUT_BYTES_PER_PIXEL = 3 * (2 * 2 + 4)

# -- video and world-model DiTs ------------------------------------------------------------------------------

# Measured with diffusers' forwards at the released configs, random weights, batch 2, bf16, no autograd (H200,
# torch 2.11, 2026-12-03), peak above the weights and inputs:
# SANA-Video 2B (linear attention with RoPE, Mix-FFN of 3.0 x 2240 with the temporal (3, 1) conv): 2.30 GiB at
# 11 latent frames and 4.39 GiB at 21 (480x832: 17,160 and 32,760 tokens), 1.30 and 2.48 GiB at 704x1280 (LTX-2
# patches: 9,680 and 18,480 tokens): linear in the tokens through zero, 16.0 widths whatever the patch. The
# anchor (diffusers' whole forward at 480x832, 81 frames: peak 8.6 GiB with 4.1 GB of weights) gives 17.4.
# RE-MEASURE with our video DiT: with the Triton kernels it should need fewer, as the image DiT does (12 for 24).
VIDEO_DIT_WIDTHS = 17
# SANA-WM 2.6B at 704x1280: 3.77, 7.18, 14.0 and 20.8 GiB at 11, 21, 41 and 61 latent frames (9,680 to 53,680
# tokens): linear through zero, 46.5 widths. The Gated-DeltaNet blocks keep their recurrence inputs (q, k, v, both
# branches and scan directions) in fp32; the softmax blocks (one in four) attend over all tokens through flash
# SDPA, linear in memory; the GDN state is (heads, 112, 112) per frame and direction, a few hundred MB at 121
# latent frames. Taken as linear up to 121 latent frames (961 frames; not measured above 61). The anchor table's
# 16.5 GiB at 21 latent frames is 4.2 GiB above this run's 12.3 (weights, inputs and activations); this run is
# the one repeated at four lengths. RE-MEASURE with our module.
WORLD_DIT_WIDTHS = 48

# -- video VAEs ------------------------------------------------------------------------------------------------

# Activation bytes per output pixel of each frame in flight, per channel of the decoder's finest stage and per
# byte of the VAE dtype. Measured with diffusers' `decode` at the released configs (H200, 2026-12-03):
# Wan 2.1 decodes one latent frame at a time with a causal cache: 11.3 KB per output pixel in bf16 at 480x832
# and at 704x1280 (22.6 KB in fp32), the same for 9, 21 and 81 frames; 256 px tiles 773 MB, 512 px 2.78 GB. With
# WAN_FRAMES_IN_FLIGHT frames (a step's 4 and the 2 its causal convs cache) over 96 channels: 9.8.
# LTX-2 decodes every latent frame at once (non-causal; diffusers' framewise decoding splits the clip into
# pieces): 117 B per output pixel and frame in bf16 (249 in fp32), linear from 9 to 33 frames at 704x1280 and
# the same at 480x832; over its finest stage's 256 channels at a quarter of the side (16 per pixel): 3.66.
VIDEO_DECODE_WIDTHS = {"wan": 10.0, "ltx2": 3.8}
WAN_FRAMES_IN_FLIGHT = 6
# The finest stage's tensor (frames in flight x tile pixels x channels per pixel) must keep to PyTorch's 32-bit
# index math in convolutions and padding (diffusers' world-model DiT splits its convs for the same reason).
# Assumed for both VAEs; 161 LTX-2 frames at 704x1280 in one piece would hold 2.3e9 elements. RE-MEASURE.
VIDEO_DECODE_MAX_ELEMENTS = (1 << 31) - 1


# The decoded clip around the pieces: diffusers keeps the decoded tiles and pieces until it blends them into
# the clip (measured 1 to 2.5 clip copies in the VAE dtype), and post-processing to [0, 1] runs in fp32 (assumed
# on the device for the whole clip; a pipeline that converts it in pieces needs less).
def clip_output_bytes_per_pixel(vae_bytes: int) -> int:
    return 3 * (2 * vae_bytes + 4)


def dit_tokens(sizes: ComponentSizes, work: Workload) -> int:
    """Tokens of one DiT row: latent pixels for images, latent frames x grid / patch for clips."""
    if not sizes.is_clip:
        f = sizes.vae_scale_factor
        return (work.height // f) * (work.width // f)
    return clip_shape(sizes, work).tokens


def dit_widths(sizes: ComponentSizes, *, kernels: bool) -> float:
    if sizes.dit_kind == "video":
        return VIDEO_DIT_WIDTHS
    if sizes.dit_kind == "world":
        return WORLD_DIT_WIDTHS
    return DIT_WIDTHS_KERNELS if kernels else DIT_WIDTHS_REFERENCE


def dit_activations(sizes: ComponentSizes, work: Workload, dtype_bytes: int, *, kernels: bool) -> int:
    """Peak activations of one DiT forward: linear in the tokens (linear attention, flash SDPA) and the rows."""
    return int(work.rows * dit_tokens(sizes, work) * sizes.inner_dim * dit_widths(sizes, kernels=kernels)
               * dtype_bytes)


def text_context_bytes(sizes: ComponentSizes, work: Workload, dtype_bytes: int, *, cuda_graphs: bool) -> int:
    """The text context held over a denoising loop (`sana.models.text_context`): the projected text and every
    block's cross-attention keys and values, [rows, 300, inner_dim] each; a captured graph holds a second copy."""
    elements = work.rows * PROMPT_TOKENS * sizes.inner_dim * (1 + 2 * sizes.blocks)
    return elements * dtype_bytes * (2 if cuda_graphs else 1)


def text_activations(sizes: ComponentSizes, dtype_bytes: int) -> int:
    """Gemma-2 encoding one prompt."""
    return TEXT_TOKENS * sizes.text_hidden * TEXT_WIDTHS_PER_TOKEN * dtype_bytes


def decode_pixel_bytes(sizes: ComponentSizes, dtype_bytes: int, *, kernels: bool) -> float:
    """Decode activations per pixel of the image (or tile) in flight; clips: per pixel of each frame in flight."""
    if sizes.is_clip:
        return VIDEO_DECODE_WIDTHS[sizes.vae_kind] * sizes.vae_decoder_width * dtype_bytes
    widths = DECODE_WIDTHS_KERNELS if kernels else DECODE_WIDTHS_REFERENCE
    return widths * sizes.vae_decoder_width * dtype_bytes


def decode_activations(sizes: ComponentSizes, work: Workload, dtype_bytes: int, tile: int | None, *,
                       kernels: bool) -> int:
    """Peak of one image's decode: the largest tile's activations (the whole image untiled) plus the output."""
    per_pixel = decode_pixel_bytes(sizes, dtype_bytes, kernels=kernels)
    area = tile_area_px(work, sizes.vae_scale_factor, tile_geometry(work, sizes.vae_scale_factor, tile))
    return int(area * per_pixel) + work.width * work.height * DECODE_OUTPUT_BYTES_PER_PIXEL


def clip_frames_in_flight(sizes: ComponentSizes, work: Workload, frames: int | None) -> int:
    """Pixel frames the video VAE holds at once: Wan's causal step, or LTX-2's temporal piece (the clip)."""
    decoded = clip_shape(sizes, work).frames
    if sizes.vae_kind == "wan":
        return min(decoded, WAN_FRAMES_IN_FLIGHT)
    return frames_in_flight(decoded, frames)


def clip_decode_elements(sizes: ComponentSizes, work: Workload, tile: int | None, frames: int | None) -> int:
    """Elements of the decoder's largest tensor for a tile of each frame in flight (see VIDEO_DECODE_MAX_ELEMENTS)."""
    area = tile_area_px(work, sizes.vae_scale_factor, video_tile_geometry(work, sizes.vae_scale_factor, tile))
    return area * clip_frames_in_flight(sizes, work, frames) * sizes.vae_decoder_width


def clip_output_bytes(sizes: ComponentSizes, work: Workload, vae_bytes: int) -> int:
    return clip_shape(sizes, work).frames * work.width * work.height * clip_output_bytes_per_pixel(vae_bytes)


def clip_decode_activations(sizes: ComponentSizes, work: Workload, vae_bytes: int, tile: int | None,
                            frames: int | None) -> int:
    """Peak of one clip's decode: a spatial tile (the whole frame when None) of each frame in flight, plus the
    decoded clip."""
    area = tile_area_px(work, sizes.vae_scale_factor, video_tile_geometry(work, sizes.vae_scale_factor, tile))
    in_flight = clip_frames_in_flight(sizes, work, frames)
    per_pixel = decode_pixel_bytes(sizes, vae_bytes, kernels=False)
    return int(area * in_flight * per_pixel) + clip_output_bytes(sizes, work, vae_bytes)


def condition_activations(sizes: ComponentSizes, work: Workload, vae_bytes: int, tile: int | None) -> int:
    """The VAE encoding the first frame (image-to-video, world model), in the decode's spatial tiles (diffusers'
    tiling covers both ways). Assumed like decoding one frame. RE-MEASURE."""
    if not (sizes.is_clip and work.conditioned):
        return 0
    area = tile_area_px(work, sizes.vae_scale_factor, video_tile_geometry(work, sizes.vae_scale_factor, tile))
    return int(area * decode_pixel_bytes(sizes, vae_bytes, kernels=False))

"""A clip's shape as the DiT and the VAE see it: latent frames, the latent grid and the DiT's tokens.

Causal video VAEs keep the first frame alone and fold each further `temporal` frames into one latent frame, so
`frames` pixel frames are `(frames - 1) // temporal + 1` latent frames (diffusers floors frame counts that are not
`temporal * k + 1`; 81 frames are 21 Wan latent frames, 161 and 961 frames 21 and 121 LTX-2 latent frames).
"""

from __future__ import annotations

from dataclasses import dataclass

from .sizes import ComponentSizes, Workload


@dataclass(frozen=True)
class ClipShape:
    """One generation's latent geometry (images: one latent frame)."""

    frames: int  # pixel frames decoded
    latent_frames: int
    latent_height: int
    latent_width: int
    tokens: int  # DiT tokens of one row: latent frames x latent grid / patch

    def seconds(self, fps: float) -> float:
        return self.frames / fps


def latent_frames(sizes: ComponentSizes, frames: int) -> int:
    """Latent frames of `frames` pixel frames (1 for an image)."""
    if not sizes.is_clip or frames <= 1:
        return 1
    return (frames - 1) // sizes.vae_temporal_scale + 1


def decoded_frames(sizes: ComponentSizes, frames: int) -> int:
    """Pixel frames the VAE gives back for a request of `frames` (the count floored to temporal * k + 1)."""
    return (latent_frames(sizes, frames) - 1) * sizes.vae_temporal_scale + 1 if sizes.is_clip else 1


def clip_shape(sizes: ComponentSizes, work: Workload) -> ClipShape:
    f = sizes.vae_scale_factor
    t, h, w = latent_frames(sizes, work.frames), work.height // f, work.width // f
    pt, ph, pw = sizes.patch
    return ClipShape(decoded_frames(sizes, work.frames), t, h, w, (t // pt) * (h // ph) * (w // pw))


def describe_clip(sizes: ComponentSizes, work: Workload, fps: float | None = None) -> str:
    """One line for a dry run, e.g. "81 frames (5.1 s at 16 fps), latent 21x60x104, 32,760 tokens"."""
    shape = clip_shape(sizes, work)
    if not sizes.is_clip:
        return f"{work.width}x{work.height} px, latent {shape.latent_height}x{shape.latent_width}, " \
               f"{shape.tokens:,} tokens"
    duration = f" ({shape.seconds(fps):.2f} s at {fps:g} fps)" if fps else ""
    return (f"{shape.frames} frame{'s' if shape.frames != 1 else ''}{duration} at {work.width}x{work.height}, latent "
            f"{shape.latent_frames}x{shape.latent_height}x{shape.latent_width}, {shape.tokens:,} tokens")

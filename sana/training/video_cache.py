"""Pre-encoded clip features: video-VAE latents and caption embeddings, in the image cache's files and keys.

A latent is keyed by the clip's content (the file's sha256, or a frames folder's names and files), the planned
frames (bucket and source frame indices) and the VAE files; a caption by its text as the model reads it (the
video instruction prefix, and the motion score `sana video` appends) and the text encoder files. Latents are
`VideoVAE.encode_clip`'s normalised latents [C, F', h, w], so the DiT learns exactly what the pipeline decodes.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from ..outputs import file_sha256
from .cache import CacheSource, Encoders, _sha
from .video_data import ClipPlan, ClipSample, read_clip_frames


def clip_fingerprint(path: Path) -> str:
    """sha256 of a clip file, or of a frames folder's file names and contents."""
    if not path.is_dir():
        return file_sha256(path)
    digest = hashlib.sha256()
    for frame in sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith(".")):
        digest.update(frame.name.encode() + b"\0" + file_sha256(frame).encode() + b"\0")
    return digest.hexdigest()


def clip_source(samples: list[ClipSample], plans: list[ClipPlan], captions: list[str]) -> CacheSource:
    """Clips (`captions[i]`: sample i's caption as the model reads it): the planned frames, each scaled to cover the
    bucket and centre-cropped, encoded by the video VAE in fp32; a key hashes the clip, the bucket and the frames."""

    def latent_key(vae_fingerprint: str, i: int) -> str:
        plan = plans[i]
        return _sha("latent-clip-v1", vae_fingerprint, clip_fingerprint(samples[i].path), f"{plan.width}x{plan.height}",
                    ",".join(map(str, plan.indices)))

    return CacheSource(paths=[s.path for s in samples], captions=list(captions), buckets=[p.bucket for p in plans],
                       latent_key=latent_key, read=lambda i: read_clip_frames(samples[i], plans[i]),
                       load_vae=_clip_vae, unreadable="unreadable or truncated video")


def _clip_vae(encoders: Encoders):
    from ..pipelines.video_vae import load_video_vae

    # fp32 whatever the training precision: diffusers' examples run Wan's VAE in fp32, and the cache outlives the run.
    vae = load_video_vae(encoders.model_dir, dtype=torch.float32, device=encoders.device)
    return lambda pixels: vae.encode_clip(pixels).float()  # [b, 3, T, H, W] -> [b, C, F', h, w]

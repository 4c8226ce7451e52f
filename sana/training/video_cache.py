"""Pre-encoded clip features: video-VAE latents and caption embeddings, in the image cache's files and keys.

A latent is keyed by the clip's content (the file's sha256, or a frames folder's names and files), the planned
frames (bucket and source frame indices) and the VAE files; a caption by its text as the model reads it (the
video instruction prefix, and the motion score `sana video` appends) and the text encoder files. Latents are
`VideoVAE.encode_clip`'s normalised latents [C, F', h, w], so the DiT learns exactly what the pipeline decodes.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..errors import SanaError
from ..outputs import file_sha256
from .cache import NULL_CAPTION, CachePlan, Encoders, FeatureCache, Item, _encode_texts, _free, _sha, _write_atomic, text_key
from .data import DataReport
from .video_data import ClipPlan, ClipSample, read_clip_frames


def clip_fingerprint(path: Path) -> str:
    """sha256 of a clip file, or of a frames folder's file names and contents."""
    if not path.is_dir():
        return file_sha256(path)
    digest = hashlib.sha256()
    for frame in sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith(".")):
        digest.update(frame.name.encode() + b"\0" + file_sha256(frame).encode() + b"\0")
    return digest.hexdigest()


def plan_clip_cache(samples: list[ClipSample], plans: list[ClipPlan], captions: list[str], encoders: Encoders,
                    extra_captions: list[str] = ()) -> CachePlan:
    """Keys for every clip (`captions[i]`: sample i's caption as the model reads it) and the extra captions."""
    vae_fp, text_fp = encoders.vae_fingerprint, encoders.text_fingerprint
    latent_keys = [_sha("latent-clip-v1", vae_fp, clip_fingerprint(s.path), f"{p.width}x{p.height}",
                        ",".join(map(str, p.indices))) for s, p in zip(samples, plans)]
    text_keys = [text_key(c, text_fp, True) for c in captions]
    extras = {c: text_key(c, text_fp, c != NULL_CAPTION) for c in [NULL_CAPTION, *extra_captions]}
    return CachePlan(latent_keys, text_keys, extras)


def fill_clip_cache(plan: CachePlan, samples: list[ClipSample], plans: list[ClipPlan], captions: list[str],
                    cache: FeatureCache, encoders: Encoders, *, rank: int = 0, world: int = 1,
                    on_progress: Callable[[str, int, int], None] | None = None) -> None:
    """Encode what is missing (this rank's share, by position in the whole list); a clip that fails to decode
    gets no latent, and `cached_clip_items` reports it."""
    missing = [i for i, k in enumerate(plan.latent_keys) if i % world == rank and not cache.latent_path(k).is_file()]
    texts = dict(zip(captions, plan.text_keys)) | plan.extras
    missing_text = [(c, k) for n, (c, k) in enumerate(texts.items())
                    if n % world == rank and not cache.text_path(k).is_file()]
    if missing:
        _encode_clips(samples, plans, missing, plan.latent_keys, cache, encoders, on_progress)
    if missing_text:
        _encode_texts(missing_text, cache, encoders, on_progress, 8)


def cached_clip_items(plan: CachePlan, samples: list[ClipSample], plans: list[ClipPlan], cache: FeatureCache,
                      report: DataReport) -> list[Item]:
    """The clips whose features are all in the cache, in sample order (bucket: width, height, frames); the rest
    are reported as unreadable."""
    items = []
    for i, sample in enumerate(samples):
        if cache.latent_path(plan.latent_keys[i]).is_file():
            items.append(Item(latent=plan.latent_keys[i], text=plan.text_keys[i], bucket=plans[i].bucket))
        else:
            report.skip("unreadable or truncated video", sample.path)
    missing = [k for k in [*plan.text_keys, *plan.extras.values()] if not cache.text_path(k).is_file()]
    if missing:
        raise SanaError(f"caption embedding {cache.text_path(missing[0])} is missing", "run again to encode it")
    report.used = len(items)
    return items


def _encode_clips(samples, plans, indices, keys, cache, encoders: Encoders, on_progress, batch_size: int = 8) -> None:
    """Clips of one bucket encoded `batch_size` at a time, the next chunk decoded in a thread meanwhile."""
    from concurrent.futures import ThreadPoolExecutor

    from ..pipelines.video_vae import load_video_vae

    def pixels_of(i: int) -> torch.Tensor | None:
        try:
            frames = read_clip_frames(samples[i], plans[i])  # [T, H, W, 3] uint8
        except (OSError, ValueError, SyntaxError):
            return None  # no latent: cached_clip_items reports it
        clip = torch.from_numpy(frames.astype(np.float32)).permute(3, 0, 1, 2)  # [3, T, H, W]
        return clip / 127.5 - 1.0

    by_bucket: dict[tuple[int, int, int], list[int]] = {}
    for i in indices:
        by_bucket.setdefault(plans[i].bucket, []).append(i)
    chunks = [members[start:start + batch_size] for _, members in sorted(by_bucket.items())
              for start in range(0, len(members), batch_size)]
    # fp32 whatever the training precision: diffusers' examples run Wan's VAE in fp32, and the cache outlives the run.
    vae = load_video_vae(encoders.model_dir, dtype=torch.float32, device=encoders.device)
    pool = ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1))
    done = 0
    try:
        pending = [pool.submit(pixels_of, i) for i in chunks[0]]
        for n, chunk in enumerate(chunks):
            decoded = [f.result() for f in pending]
            pending = [pool.submit(pixels_of, i) for i in chunks[n + 1]] if n + 1 < len(chunks) else []
            usable = [(i, p) for i, p in zip(chunk, decoded) if p is not None]
            if usable:
                latents = vae.encode_clip(torch.stack([p for _, p in usable])).float()  # [b, C, F', h, w]
                for (i, _), latent in zip(usable, latents):
                    _write_atomic(cache.latent_path(keys[i]), {"latent": latent})
            done += len(chunk)
            if on_progress:
                on_progress("latents", done, len(indices))
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        del vae
        _free(encoders.device)

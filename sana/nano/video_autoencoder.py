"""The nano video model's autoencoder: diffusers' `AutoencoderKLWan` (the Wan 2.1 layout the 480p SANA-Video models
use) at a tiny config, and its training loop on the moving-shapes grammar.

128 x 128 x 17 frames <-> 16 x 5 x 16 x 16 latents: 8x spatial and 4x temporal compression (first frame alone, then
one latent frame per four), the real Wan geometry and latent width, so diffusers' `SanaVideoPipeline`, our
`VideoPipeline` and `sana finetune` treat the nano model exactly like the 2B one. Widths 16-64 (base 16, Wan's
multipliers 1, 2, 4, 4), one residual block a stage: ~1.9 M parameters, ~3.8 MB in fp16.

Why not the nano image autoencoder applied per frame: diffusers' SanaVideoPipeline names AutoencoderDC but reads
`scale_factor_temporal` from a config DC-AE does not have and hands it 5D latents its 2D decoder cannot take, and
our pipeline's VAE wrapper knows Wan and LTX-2 only; a per-frame AE also leaves 17 latent frames where Wan leaves 5
(3.4x the DiT's tokens). The price: Wan's causal 3D decoder is slower on a CPU than DC-AE's per frame (its
convolutions run there as 2D ones over stacked frames, `sana.pipelines.video_vae.conv3d_as_conv2d`).

Training follows the image autoencoder (`autoencoder.py`): clips drawn fresh from the grammar and rendered on the
device, L1 on pixels plus L1 on spatial finite differences, the decoder fed slightly noised latents (the latent
distribution's mode: no KL term, as the DiT trains on the mode). At the end the per-channel mean and standard
deviation of the latents go into the config's `latents_mean` / `latents_std`, which the pipelines normalise with.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .autoencoder import VaeTrainConfig, fit_autoencoder, save_vae
from .moving_shapes import FRAMES, SIDE, MotionScene, check_crop, sample_motion_scenes
from .shapes import BACKGROUNDS, COLORS, SHAPES

Z_DIM = 16  # Wan 2.1's latent width, the SANA-Video DiT's in_channels


def video_vae_config() -> dict:
    """`AutoencoderKLWan` kwargs of the nano video autoencoder (latent statistics filled in after training)."""
    return dict(base_dim=16, z_dim=Z_DIM, dim_mult=[1, 2, 4, 4], num_res_blocks=1, attn_scales=[],
                temperal_downsample=[False, True, True], dropout=0.0, latents_mean=[0.0] * Z_DIM,
                latents_std=[1.0] * Z_DIM, scale_factor_spatial=8, scale_factor_temporal=4)


def build_video_vae(seed: int = 0):
    """The nano video autoencoder with diffusers' initialisation (seeded)."""
    from diffusers import AutoencoderKLWan

    torch.manual_seed(seed)
    return AutoencoderKLWan(**video_vae_config())


# -- rendering batches on the device ---------------------------------------------------------------------------

def render_clip_batch(scenes: Sequence[MotionScene], frames: int = FRAMES, side: int = SIDE,
                      device: torch.device | str = "cpu") -> torch.Tensor:
    """Clips as [B, 3, frames, side, side] in [-1, 1], pixel for pixel what `moving_shapes.render_clip` draws,
    computed on `device`."""
    count, slots = len(scenes), max(len(s.objects) for s in scenes)
    times = np.arange(frames) / max(1, frames - 1)
    # Per scene, object slot and frame: centre, half-extent, shape id; empty slots get r = -1 (cover nothing).
    params = np.full((count, slots, frames, 4), -1.0)
    colors = np.zeros((count, slots, 3), dtype=np.float32)
    for i, scene in enumerate(scenes):
        for j, obj in enumerate(scene.objects):
            (x0, y0), (x1, y1) = obj.start, obj.end
            params[i, j, :, 0], params[i, j, :, 1] = x0 + (x1 - x0) * times, y0 + (y1 - y0) * times
            params[i, j, :, 2], params[i, j, :, 3] = obj.half_extent, SHAPES.index(obj.shape)
            colors[i, j] = COLORS[obj.color]
    params = torch.from_numpy(params).to(device)
    colors = torch.from_numpy(colors).to(device)
    backgrounds = torch.tensor([BACKGROUNDS[s.background] for s in scenes], dtype=torch.float32, device=device)
    coords = (torch.arange(side, device=device, dtype=torch.float64) + 0.5) / side
    x, y = coords.view(1, 1, 1, 1, side), coords.view(1, 1, 1, side, 1)
    cx, cy, r, kind = (params[..., k, None, None] for k in range(4))  # [B, S, F, 1, 1]
    dx, dy = x - cx, y - cy
    circle = dx**2 + dy**2 <= r**2
    square = (dx.abs() <= r) & (dy.abs() <= r)
    triangle = (dy >= -r) & (dy <= r) & (dx.abs() <= (dy + r) / 2)
    masks = torch.where(kind == 0, circle, torch.where(kind == 1, square, triangle)) & (r > 0)  # [B, S, F, H, W]
    clip = backgrounds.view(count, 3, 1, 1, 1).expand(count, 3, frames, side, side).clone()
    for j in range(slots):
        clip = torch.where(masks[:, j, None], colors[:, j, :, None, None, None], clip)
    return clip / 127.5 - 1.0


# -- training ------------------------------------------------------------------------------------------------

def random_crops(clips: torch.Tensor, frames: int | None, side: int | None, seed: int) -> torch.Tensor:
    """Each clip of `clips` [B, 3, F, H, W] cut to `frames` consecutive frames and a `side` x `side` window, at
    offsets drawn from `seed` (None keeps that axis whole)."""
    check_crop(frames, side)
    count, _, total, height, width = clips.shape
    frames, side_h, side_w = frames or total, min(side or height, height), min(side or width, width)
    if (frames, side_h, side_w) == (total, height, width):
        return clips
    rng = np.random.default_rng(seed)
    starts = zip(rng.integers(0, total - frames + 1, count), rng.integers(0, height - side_h + 1, count),
                 rng.integers(0, width - side_w + 1, count))
    return torch.stack([clip[:, t:t + frames, y:y + side_h, x:x + side_w]
                        for clip, (t, y, x) in zip(clips, starts)])


def decode_unclamped(vae, latents: torch.Tensor) -> torch.Tensor:
    """diffusers' Wan decode without its final clamp to [-1, 1]: the decoder's output frame by frame, caught by a
    hook. Training needs it: a clamp passes no gradient, so pixels the decoder overshoots past -1 (or 1) stay there
    for good, and on a near-black background (-0.88) most of a clip did (the loss stalled at L1 0.12 = 1 - 0.88)."""
    if vae.config.get("patch_size") is not None:
        raise ValueError("decode_unclamped expects a Wan 2.1 layout (no patch_size)")
    pieces: list[torch.Tensor] = []
    handle = vae.decoder.register_forward_hook(lambda module, args, out: pieces.append(out))
    try:
        vae.decode(latents)
    finally:
        handle.remove()
    return torch.cat(pieces, dim=2)


@dataclass
class VideoVaeReport:
    config: dict
    latents_mean: list[float]
    latents_std: list[float]
    psnr: float  # dB, on the evaluation clips
    adherence: float  # % of evaluation reconstructions the clip checker scores fully correct
    seconds: float
    device: str
    steps_done: int
    losses: list[dict] = field(default_factory=list)  # {step, loss, l1, edge, lr}


@torch.no_grad()
def latent_statistics(vae, seed: int, device: torch.device, count: int = 64) -> tuple[list[float], list[float]]:
    """Per-channel mean and standard deviation of the latents of `count` fresh clips."""
    scenes = sample_motion_scenes(count, seed, stream="video-vae-scale")
    latents = torch.cat([vae.encode(render_clip_batch(scenes[i:i + 8], device=device)).latent_dist.mode().float()
                         for i in range(0, count, 8)])  # [N, C, F', h, w]
    flat = latents.transpose(0, 1).reshape(latents.shape[1], -1)
    return flat.mean(dim=1).tolist(), flat.std(dim=1).clamp_min(1e-6).tolist()


@torch.no_grad()
def evaluate_video_vae(vae, seed: int, device: torch.device, count: int = 32) -> tuple[float, float]:
    """(PSNR in dB, % fully correct by the clip checker) of reconstructions of `count` fresh clips."""
    from .motion_adherence import check_clip

    scenes = sample_motion_scenes(count, seed, stream="video-vae-eval")
    squared_error, correct, values = 0.0, 0, 0
    for i in range(0, count, 8):
        chunk = scenes[i:i + 8]
        target = render_clip_batch(chunk, device=device)
        recon = vae.decode(vae.encode(target).latent_dist.mode()).sample.float().clamp(-1, 1)
        squared_error += F.mse_loss(recon, target, reduction="sum").item()
        values += target.numel()
        clips = ((recon + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 4, 1).cpu().numpy()  # [b, F, H, W, 3]
        correct += sum(check_clip(c, s).fully_correct for c, s in zip(clips, chunk))
    mse = squared_error / values
    return (10 * math.log10(4.0 / mse) if mse > 0 else float("inf")), 100.0 * correct / count


def train_video_vae(cfg: VaeTrainConfig, *, device: torch.device | str | None = None, vae=None,
                    on_log: Callable[[dict], None] | None = None) -> tuple[object, VideoVaeReport]:
    """Train the nano video autoencoder from scratch (or continue `vae`); returns (vae in eval mode with its latent
    statistics set, report). `cfg.batch` is clips a step, `cfg.eval_images` the clips the statistics and scores
    use; `cfg.holdout` is unused (the clips' grammar holds no pairs out)."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    vae = (vae or build_video_vae(cfg.seed)).to(device).train()
    start = time.perf_counter()

    def batch_at(step: int) -> torch.Tensor:
        # A fresh batch of clips from the grammar (a stream of its own: the data depends on (seed, step) only).
        scenes = sample_motion_scenes(cfg.batch, cfg.seed * 1_000_003 + step, stream="video-vae")
        clips = render_clip_batch(scenes, device=device)  # [B, 3, F, H, W]
        return random_crops(clips, cfg.crop_frames, cfg.crop_side, cfg.seed * 1_000_003 + step)

    # Encode to the mode of the latent distribution; decode without the output clamp (`decode_unclamped`).
    losses, done = fit_autoencoder(vae, cfg, device, start, batch_at,
                                   encode=lambda target: vae.encode(target).latent_dist.mode(), on_log=on_log,
                                   decode=lambda latents: decode_unclamped(vae, latents))
    # Unit-variance latents per channel for the DiT; score the round trip.
    vae.eval()
    mean, std = latent_statistics(vae, cfg.seed, device, cfg.eval_images)
    vae.register_to_config(latents_mean=mean, latents_std=std)
    psnr, adherence = evaluate_video_vae(vae, cfg.seed, device, cfg.eval_images)
    report = VideoVaeReport(config={**asdict(cfg), "holdout": []}, latents_mean=mean, latents_std=std, psnr=psnr,
                            adherence=adherence, seconds=time.perf_counter() - start, device=str(device),
                            steps_done=done, losses=losses)
    return vae, report


def save_video_vae(vae, report: VideoVaeReport, out_dir: Path) -> Path:
    """`out_dir/vae/` (diffusers format, fp32) and `out_dir/vae-train.json` (settings, metrics, loss curve)."""
    return save_vae(vae, report, out_dir)

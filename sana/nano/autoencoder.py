"""The nano model's autoencoder: diffusers' `AutoencoderDC` at a tiny config, and its training loop.

256 x 256 RGB <-> 8 x 16 x 16 latents (16x compression, five stages of widths 16-128). The 16 x 16 grid is
SANA-512's token count; an 8 x 8 grid would leave a small shape about one latent cell, too coarse for the DiT
to place and shape it. Residual blocks do the high-resolution stages and one EfficientViT (linear attention)
block the 16 x 16 stage, as in DC-AE; RMSNorm throughout, since batch statistics are a liability at tiny
batch sizes. About 1.24 M parameters (2.5 MB in fp16); a decode takes ~70 ms on two CPU cores.

Training draws scenes from the shapes grammar on the fly and renders them on the device. The loss is L1 on
pixels plus L1 on finite differences (edges stay sharp, so the adherence checker's colour masks and box
fills survive the round trip). The decoder is trained on slightly noised latents, so the imperfect latents a
DiT produces still decode to clean colours. The saved config carries `scaling_factor` = 1 / std of the
latents, so the DiT sees unit-variance latents.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from .shapes import (BACKGROUNDS, COLORS, DEFAULT_HOLDOUT, SHAPES, SIDE, Pair, Scene, sample_scenes)

_STAGES = 5  # 2 ** (5 - 1) = 16x compression


def vae_config(scaling_factor: float = 1.0) -> dict:
    """`AutoencoderDC` kwargs of the nano autoencoder."""
    block_types = ("ResBlock",) * (_STAGES - 1) + ("EfficientViTBlock",)
    multiscales = ((),) * (_STAGES - 1) + ((5,),)
    return dict(
        in_channels=3, latent_channels=8, attention_head_dim=16,
        encoder_block_types=block_types, decoder_block_types=block_types,
        encoder_block_out_channels=(16, 32, 64, 64, 128), decoder_block_out_channels=(16, 32, 64, 64, 128),
        encoder_layers_per_block=(1,) * _STAGES, decoder_layers_per_block=(1,) * _STAGES,
        encoder_qkv_multiscales=multiscales, decoder_qkv_multiscales=multiscales,
        upsample_block_type="interpolate", downsample_block_type="Conv",
        decoder_norm_types="rms_norm", decoder_act_fns="silu", scaling_factor=scaling_factor,
    )


def build_vae(seed: int = 0):
    """The nano autoencoder with diffusers' initialisation (seeded)."""
    from diffusers import AutoencoderDC

    torch.manual_seed(seed)
    return AutoencoderDC(**vae_config())


# -- rendering batches on the device ---------------------------------------------------------------------------

def render_batch(scenes: Sequence[Scene], side: int = SIDE, device: torch.device | str = "cpu") -> torch.Tensor:
    """Scenes as [B, 3, side, side] in [-1, 1], pixel for pixel what `shapes.render` draws, computed on `device`."""
    count = len(scenes)
    slots = max(len(s.objects) for s in scenes)
    # Per scene and object slot: centre, half-extent, shape id, colour; empty slots get r = -1 (cover nothing).
    params = torch.full((count, slots, 4), -1.0, dtype=torch.float64)
    colors = torch.zeros(count, slots, 3)
    backgrounds = torch.tensor([BACKGROUNDS[s.background] for s in scenes], dtype=torch.float32)
    for i, scene in enumerate(scenes):
        for j, obj in enumerate(scene.objects):
            params[i, j] = torch.tensor([*obj.center, obj.half_extent, SHAPES.index(obj.shape)], dtype=torch.float64)
            colors[i, j] = torch.tensor(COLORS[obj.color], dtype=torch.float32)
    params, colors, backgrounds = params.to(device), colors.to(device), backgrounds.to(device)
    coords = (torch.arange(side, device=device, dtype=torch.float64) + 0.5) / side
    x, y = coords.view(1, 1, 1, side), coords.view(1, 1, side, 1)
    cx, cy, r, kind = (params[..., k, None, None] for k in range(4))  # [B, S, 1, 1]
    dx, dy = x - cx, y - cy
    circle = dx**2 + dy**2 <= r**2
    square = (dx.abs() <= r) & (dy.abs() <= r)
    triangle = (dy >= -r) & (dy <= r) & (dx.abs() <= (dy + r) / 2)
    masks = torch.where(kind == 0, circle, torch.where(kind == 1, square, triangle)) & (r > 0)  # [B, S, H, W]
    image = backgrounds.view(count, 3, 1, 1).expand(count, 3, side, side).clone()
    for j in range(slots):  # later objects paint over earlier ones, as in `render` (they never overlap anyway)
        image = torch.where(masks[:, j, None], colors[:, j, :, None, None], image)
    return image / 127.5 - 1.0


def batch_scenes(step: int, batch: int, seed: int, holdout: Sequence[Pair]) -> list[Scene]:
    """The scenes of training step `step`: a stream of its own, so a run's data depends on (seed, step) only."""
    return sample_scenes(batch, seed * 1_000_003 + step, holdout=holdout, stream="vae")


# -- training ------------------------------------------------------------------------------------------------

@dataclass
class VaeTrainConfig:
    steps: int = 20_000
    batch: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup: int = 200
    edge_weight: float = 1.0  # L1 on finite differences, relative to the pixel L1
    latent_noise: float = 0.1  # decoder sees z + latent_noise * std(z) * noise
    seed: int = 0
    holdout: tuple[Pair, ...] = DEFAULT_HOLDOUT  # the AE never sees held-out pairs either
    eval_images: int = 128  # for the latent scale and the final PSNR / adherence
    max_seconds: float | None = None  # stop early (after a whole step) once training has taken this long
    # With max_seconds: the cosine decays over whichever budget ends first, steps or time, so a run stopped by the
    # clock still ends annealed (the learning rate then depends on the machine's speed, the data does not).
    anneal_by_time: bool = False
    bf16: bool = True  # on a CUDA device, the forward under bf16 autocast (fp32 otherwise, and always on a CPU)
    log_every: int = 50
    # Clips only: train on random crops of this many frames (1 + 4k, the Wan rule) and pixels a side (a multiple of
    # 8); None = whole clips. The autoencoder is convolutional, so crops teach it the same maps at a fraction of
    # the cost; the scores and latent statistics always use whole clips.
    crop_frames: int | None = None
    crop_side: int | None = None
    cuda_graph: bool = True  # on a CUDA device, capture the training step once and replay it (see fit_autoencoder)


@dataclass
class VaeReport:
    config: dict
    scaling_factor: float
    psnr: float  # dB, on the evaluation batch
    adherence: float  # % of evaluation reconstructions the adherence checker scores fully correct
    seconds: float
    device: str
    steps_done: int
    losses: list[dict] = field(default_factory=list)  # {step, loss, l1, edge, lr}


def edge_l1(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """L1 between horizontal and vertical finite differences: penalises blurred or shifted edges."""
    def diffs(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x[..., :, 1:] - x[..., :, :-1], x[..., 1:, :] - x[..., :-1, :]

    (px, py), (tx, ty) = diffs(pred), diffs(target)
    return (px - tx).abs().mean() + (py - ty).abs().mean()


def _lr_at(step: int, cfg: VaeTrainConfig, elapsed: float = 0.0) -> float:
    """Linear warm-up, then cosine decay to a tenth (over the time budget too when `cfg.anneal_by_time`;
    `elapsed` is the training's seconds so far)."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    if cfg.anneal_by_time and cfg.max_seconds:
        progress = max(progress, min(1.0, elapsed / cfg.max_seconds))
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


@torch.no_grad()
def latent_std(vae, seed: int, device: torch.device, count: int = 128) -> float:
    """Standard deviation of the latents of `count` fresh grammar scenes (all pairs: the DiT meets them all)."""
    scenes = sample_scenes(count, seed, holdout=(), stream="vae-scale")
    latents = [vae.encode(render_batch(scenes[i : i + 32], device=device)).latent.float() for i in range(0, count, 32)]
    return float(torch.cat(latents).std())


@torch.no_grad()
def evaluate(vae, seed: int, device: torch.device, count: int = 128) -> tuple[float, float]:
    """(PSNR in dB, % fully correct by the adherence checker) of reconstructions of `count` scenes of all pairs,
    drawn apart from the training stream."""
    from .adherence import check_image

    scenes = sample_scenes(count, seed, holdout=(), stream="vae-eval")
    squared_error, correct = 0.0, 0
    for i in range(0, count, 32):
        chunk = scenes[i : i + 32]
        target = render_batch(chunk, device=device)
        recon = vae.decode(vae.encode(target).latent).sample.float().clamp(-1, 1)
        squared_error += F.mse_loss(recon, target, reduction="sum").item()
        pixels = ((recon + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
        correct += sum(check_image(p, s).fully_correct for p, s in zip(pixels, chunk))
    mse = squared_error / (count * 3 * SIDE * SIDE)
    psnr = 10 * math.log10(4.0 / mse) if mse > 0 else float("inf")  # peak-to-peak 2 in [-1, 1]
    return psnr, 100.0 * correct / count


def fit_autoencoder(vae, cfg: VaeTrainConfig, device: torch.device, start: float,
                    batch_at: Callable[[int], torch.Tensor], encode: Callable[[torch.Tensor], torch.Tensor],
                    on_log: Callable[[dict], None] | None = None,
                    decode: Callable[[torch.Tensor], torch.Tensor] | None = None) -> tuple[list[dict], int]:
    """The reconstruction loop both autoencoders share (images [B, 3, H, W] or clips [B, 3, F, H, W]): per step
    `batch_at(step)` is the target, `encode(target)` its latents; the latents are jittered by noise of their own
    scale, decoded (by `decode`, default `vae.decode(...).sample`), and pixel L1 + edge L1 is minimised. Stops
    early past `cfg.max_seconds` from `start`. On a CUDA device with `cfg.cuda_graph` the whole step (forward,
    backward, clipping, AdamW) is captured once and replayed: these small autoencoders are launch-bound, Wan's
    chunked causal passes most of all. Returns (the logged loss rows, steps done)."""
    graphed = cfg.cuda_graph and device.type == "cuda"
    optimizer = _autoencoder_optimizer(vae, cfg, device, capturable=graphed)
    noise = torch.Generator(device=device).manual_seed(cfg.seed)
    if graphed:
        torch.cuda.manual_seed(cfg.seed)  # a captured step draws its jitter from the default generator
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=not graphed)
                if device.type == "cuda" and cfg.bf16 else torch.autocast(device.type, enabled=False))

    def train_step(target: torch.Tensor) -> torch.Tensor:
        """One optimizer step on `target`; returns [loss, l1, edge] (on the device, unread)."""
        with autocast:
            latents = encode(target)
            scale = latents.detach().float().std()
            jitter = torch.randn(latents.shape, generator=None if graphed else noise, device=device,
                                 dtype=latents.dtype)
            noisy = latents + cfg.latent_noise * scale * jitter
            recon = (decode(noisy) if decode is not None else vae.decode(noisy).sample).float()
        l1 = (recon - target).abs().mean()
        edge = edge_l1(recon, target)
        loss = l1 + cfg.edge_weight * edge
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        optimizer.step()
        return torch.stack([loss, l1, edge]).detach()

    step_fn = _CapturedStep(train_step, optimizer) if graphed else None
    losses: list[dict] = []
    done = 0
    for step in range(cfg.steps):
        elapsed = time.perf_counter() - start
        if cfg.max_seconds is not None and elapsed > cfg.max_seconds:
            break
        target = batch_at(step)
        lr = _lr_at(step, cfg, elapsed)
        if step_fn is not None:
            values = step_fn(target, lr)
        else:
            for group in optimizer.param_groups:
                group["lr"] = lr
            optimizer.zero_grad(set_to_none=True)
            values = train_step(target)
        done = step + 1
        if step % cfg.log_every == 0 or step == cfg.steps - 1:
            loss, l1, edge = values.tolist()
            row = {"step": step, "loss": round(loss, 5), "l1": round(l1, 5), "edge": round(edge, 5), "lr": round(lr, 7)}
            losses.append(row)
            if on_log:
                on_log(row)
    return losses, done


def _autoencoder_optimizer(vae, cfg: VaeTrainConfig, device: torch.device, capturable: bool):
    """AdamW as the autoencoders train; `capturable` keeps its state and learning rate on the device, so a CUDA
    graph can hold its step."""
    lr = torch.tensor(cfg.lr, device=device) if capturable else cfg.lr
    return torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.99),
                             capturable=capturable)


class _CapturedStep:
    """A training step captured as one CUDA graph after a few eager steps on a side stream (as PyTorch's
    whole-network capture asks), then replayed with each new batch copied into the captured input. If the capture
    fails, the steps go on eagerly (the optimizer's state was not touched by the capture: it records, it does not
    run)."""

    WARMUP_STEPS = 3

    def __init__(self, train_step: Callable[[torch.Tensor], torch.Tensor], optimizer: torch.optim.Optimizer):
        self.train_step, self.optimizer = train_step, optimizer
        self.eager_steps = 0
        self.graph: torch.cuda.CUDAGraph | None = None
        self.static_target: torch.Tensor | None = None
        self.static_values: torch.Tensor | None = None
        self.failed = False

    def _set_lr(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"].fill_(lr)

    def __call__(self, target: torch.Tensor, lr: float) -> torch.Tensor:
        self._set_lr(lr)
        if self.graph is None and not self.failed and self.eager_steps >= self.WARMUP_STEPS:
            self._capture(target)
        if self.graph is not None:
            self.static_target.copy_(target)
            self.graph.replay()
            return self.static_values.clone()
        self.eager_steps += 1
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            self.optimizer.zero_grad(set_to_none=True)
            values = self.train_step(target)
        torch.cuda.current_stream().wait_stream(side)
        return values

    def _capture(self, target: torch.Tensor) -> None:
        import warnings

        self.static_target = target.clone()
        self.optimizer.zero_grad(set_to_none=True)
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph):
                self.static_values = self.train_step(self.static_target)
        except RuntimeError as error:  # an op that cannot be captured: train eagerly
            self.failed, self.static_values = True, None
            self.optimizer.zero_grad(set_to_none=True)
            torch.cuda.synchronize()
            warnings.warn(f"the autoencoder's training step could not be captured as a CUDA graph ({error}); "
                          "training eagerly", stacklevel=3)
            return
        self.graph = graph


def train_vae(cfg: VaeTrainConfig, *, device: torch.device | str | None = None, vae=None,
              on_log: Callable[[dict], None] | None = None) -> tuple[object, VaeReport]:
    """Train the nano autoencoder from scratch (or continue `vae`); returns (vae in eval mode with its
    scaling_factor set, report). `on_log` gets each logged loss row."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    vae = (vae or build_vae(cfg.seed)).to(device).train()
    start = time.perf_counter()
    losses, done = fit_autoencoder(
        vae, cfg, device, start,  # a fresh batch from the grammar each step, rendered on the device
        batch_at=lambda step: render_batch(batch_scenes(step, cfg.batch, cfg.seed, cfg.holdout), device=device),
        encode=lambda target: vae.encode(target).latent, on_log=on_log)
    # Unit-variance latents for the DiT; score the round trip.
    vae.eval()
    scaling = 1.0 / latent_std(vae, cfg.seed, device, cfg.eval_images)
    vae.register_to_config(scaling_factor=scaling)
    psnr, adherence = evaluate(vae, cfg.seed, device, cfg.eval_images)
    report = VaeReport(config={**asdict(cfg), "holdout": [list(p) for p in cfg.holdout]}, scaling_factor=scaling,
                       psnr=psnr, adherence=adherence, seconds=time.perf_counter() - start, device=str(device),
                       steps_done=done, losses=losses)
    return vae, report


def save_vae(vae, report: VaeReport, out_dir: Path) -> Path:
    """`out_dir/vae/` (diffusers format, fp32) and `out_dir/vae-train.json` (settings, metrics, loss curve)."""
    out_dir = Path(out_dir)
    vae.save_pretrained(out_dir / "vae", safe_serialization=True)
    (out_dir / "vae-train.json").write_text(json.dumps(asdict(report), indent=1) + "\n", encoding="utf-8")
    return out_dir / "vae"

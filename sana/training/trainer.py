"""The training loop: flow matching on cached latents and caption embeddings, LoRA or full, one GPU or many.

Steps of `train`: scan the data, fill the feature cache (encoders loaded only for what is missing), build the
DiT (pretrained or freshly initialised; LoRA adapters or all weights trainable), restore a checkpoint if
resuming, then loop: each optimizer step is `grad_accum` micro-batches; checkpoints, validation images and
the loss log follow the step count. The random draws of a micro-batch come from a generator seeded by
(seed, micro-batch) and the data order from (seed, epoch), so a resumed run repeats exactly what an
uninterrupted one would have done.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from ..errors import SanaError, UsageError
from . import checkpoint as ckpt
from . import distributed
from .cache import NULL_CAPTION, Encoders, FeatureCache, FeatureTable, cached_items, fill_cache, plan_cache
from .config import TrainConfig
from .data import DataReport, aspect_buckets, epoch_batches, nearest_bucket, scan_folder
from .plot import append_log, plot_loss, truncate_log
from .runtime import StopFlag as _StopFlag, memory_gb as _memory_gb
from .schedule import apply_schedule, lr_lambda

LOG_NAME = "loss.csv"
PLOT_NAME = "loss.png"
MAX_TEXT_TOKENS = 300  # the text encoder's padded length
PRELOAD_BYTES = 4 * 2**30  # caches up to this size are held in host memory while training


@dataclass
class StepInfo:
    step: int
    total: int
    loss: float
    lr: float
    grad_norm: float
    samples_per_s: float
    memory_gb: float


@dataclass
class TrainEvents:
    """Callbacks to whoever drives training; the engine never prints."""

    on_phase: Callable[[str], None] | None = None  # "data" | "cache" | "model" | "train" | "export"
    on_progress: Callable[[str, int, int], None] | None = None  # caching: (what, done, total)
    on_step: Callable[[StepInfo], None] | None = None
    on_notice: Callable[[str], None] | None = None
    on_saved: Callable[[str, Path], None] | None = None  # ("checkpoint" | "sample" | "lora" | "model", path)
    on_data: Callable[[DataReport], None] | None = None  # what was found and skipped, before training starts

    def notice(self, text: str) -> None:
        if self.on_notice:
            self.on_notice(text)

    def saved(self, kind: str, path: Path) -> None:
        if self.on_saved:
            self.on_saved(kind, path)


@dataclass
class TrainResult:
    out: Path
    step: int
    interrupted: bool
    report: DataReport
    output: Path | None = None  # the LoRA file or the model folder
    last_loss: float | None = None
    checkpoint: Path | None = None
    out_of_time: bool = False  # stopped by --max-minutes before --steps


# -- set-up helpers -------------------------------------------------------------------------------------------

def compute_dtype(precision: str, device: torch.device) -> torch.dtype:
    named = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
    if precision in named:
        return named[precision]
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.get_device_capability(device)[0] >= 8 else torch.float16
    return torch.float32


def shifted_sigmas(u: torch.Tensor, shift: float) -> torch.Tensor:
    """The flow-matching time after the resolution shift: s' = shift s / (1 + (shift - 1) s)."""
    return shift * u / (1.0 + (shift - 1.0) * u)


def _pad_rows(rows: list[torch.Tensor], device: torch.device, at_least: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Caption embeddings of different lengths [L_i, C] -> [B, L, C] padded at the end, and the mask [B, L]."""
    length = max(at_least, *(r.shape[0] for r in rows))
    embeds = torch.zeros(len(rows), length, rows[0].shape[-1])
    mask = torch.zeros(len(rows), length, dtype=torch.long)
    for i, row in enumerate(rows):
        embeds[i, : row.shape[0]], mask[i, : row.shape[0]] = row.float(), 1
    return embeds.to(device, non_blocking=True), mask.to(device, non_blocking=True)


def build_transformer(cfg: TrainConfig, device: torch.device, weight_dtype: torch.dtype):
    from ..loading import load_transformer
    from ..models.transformer import SanaTransformer, TransformerConfig
    from ..components import read_json

    model_dir = Path(cfg.model_dir)
    if cfg.init == "random":
        raw = cfg.transformer_config or read_json(model_dir / "transformer" / "config.json")
        try:
            tconfig = TransformerConfig.from_dict(raw)
        except (TypeError, ValueError) as exc:
            raise SanaError(f"unsupported transformer config: {exc}") from None
        model = SanaTransformer(tconfig)
        model.initialize_weights(torch.Generator().manual_seed(cfg.seed))
        model = model.to(device=device, dtype=weight_dtype)
    else:
        model = load_transformer(model_dir, dtype=weight_dtype, device=device)
    if model.config.guidance_embeds:
        raise UsageError("SANA-Sprint models are distilled with consistency training, not flow matching",
                         "fine-tune a SANA / SANA-1.5 model instead")
    return model


# -- the run ------------------------------------------------------------------------------------------------

class Trainer:
    def __init__(self, cfg: TrainConfig, events: TrainEvents | None = None):
        cfg.validate()
        self.cfg = cfg
        self.events = events or TrainEvents()
        self.out = Path(cfg.out)
        from ..device import pick_device

        device = pick_device(cfg.device)
        self.world = distributed.setup(device.type)
        if device.type == "cuda" and self.world.distributed:
            device = torch.device("cuda", self.world.local_rank)
        self.device = device
        self.dtype = compute_dtype(cfg.precision, device)
        self._memory: FeatureTable | None = None  # the whole feature cache, when it is small enough to hold

    # 1. Data and cache ------------------------------------------------------------------------------------
    def prepare_data(self) -> None:
        cfg, events = self.cfg, self.events
        from ..components import read_json, scheduler_config

        model_dir = Path(cfg.model_dir)
        if events.on_phase:
            events.on_phase("data")
        samples, report = scan_folder(Path(cfg.data), caption=cfg.caption, trigger=cfg.trigger)
        if not samples:
            reasons = "; ".join(report.lines()[1:]) or "the folder has no images"
            raise UsageError(f"no usable training images in {cfg.data}: {reasons}",
                             "put images with same-name .txt captions (or a metadata.jsonl) there, or pass --caption")
        vae_config = read_json(model_dir / "vae" / "config.json")
        vae_factor = 2 ** (len(vae_config.get("encoder_block_out_channels", [0] * 6)) - 1)
        tconf = cfg.transformer_config or read_json(model_dir / "transformer" / "config.json")
        multiple = vae_factor * int(tconf.get("patch_size", 1))
        choices = aspect_buckets(cfg.resolution, multiple)
        buckets = {i: nearest_bucket(s.width, s.height, choices) for i, s in enumerate(samples)}
        self.flow_shift = cfg.flow_shift or float(scheduler_config(model_dir).get("flow_shift", 3.0))
        self.scheduler_config = scheduler_config(model_dir)

        if events.on_phase:
            events.on_phase("cache")
        cache_root = Path(cfg.cache_dir) if cfg.cache_dir else self.out / "cache"
        self.cache = FeatureCache(cache_root)
        encoders = Encoders(model_dir=model_dir, device=self.device, dtype=self.dtype)
        plan = plan_cache(samples, buckets, encoders, cfg.val_prompts)
        fill_cache(plan, samples, buckets, self.cache, encoders, rank=self.world.rank, world=self.world.size,
                   on_progress=events.on_progress)
        distributed.barrier(self.world)  # every rank encoded its share; all of it is on disk now
        items, extras = cached_items(plan, samples, buckets, self.cache, report), plan.extras
        if not items:
            raise UsageError(f"no usable training images in {cfg.data}: " + "; ".join(report.lines()[1:]))
        self.items, self.text_keys, self.report = items, extras, report
        if events.on_data and self.world.is_main:
            events.on_data(report)
        self._preload()
        self.groups: dict[tuple[int, int], list[int]] = {}
        for index, item in enumerate(items):
            self.groups.setdefault(item.bucket, []).append(index)

    def use_features(self, latents: list[torch.Tensor], texts: list[torch.Tensor], flow_shift: float = 3.0) -> None:
        """Train on features already in memory (latents [C, h, w], caption embeddings [L, C_text]) instead of a
        data folder: for benchmarks and experiments that have no images."""
        from .cache import Item

        store = {f"l{i}": t for i, t in enumerate(latents)} | {f"t{i}": t for i, t in enumerate(texts)}
        store["null"] = torch.zeros(1, texts[0].shape[-1])
        self.cache = _MemoryFeatures(store)
        self.items = [Item(latent=f"l{i}", text=f"t{i % len(texts)}", bucket=(l.shape[-1], l.shape[-2]))
                      for i, l in enumerate(latents)]
        self.text_keys = {NULL_CAPTION: "null"}
        self.report = DataReport(root=Path("."), used=len(latents))
        self.flow_shift, self.scheduler_config = flow_shift, {}
        self.groups = {}
        for index, item in enumerate(self.items):
            self.groups.setdefault(item.bucket, []).append(index)

    # 2. Model, optimizer, schedule --------------------------------------------------------------------------
    def build(self, model: torch.nn.Module | None = None) -> None:
        """`model`: a DiT already built (e.g. random weights at a real config for benchmarks); else from cfg."""
        cfg = self.cfg
        if self.events.on_phase:
            self.events.on_phase("model")
        lora = cfg.mode == "lora"
        torch.manual_seed(cfg.seed)  # the LoRA initialisation draws from the global generator
        # LoRA: the frozen base in the compute dtype, adapters in fp32. Full: fp32 master weights.
        weight_dtype = self.dtype if lora else torch.float32
        model = build_transformer(cfg, self.device, weight_dtype) if model is None else model.to(self.device, weight_dtype)
        self.lora_config = None
        if lora:
            from .adapters import add_lora

            self.lora_config = add_lora(model, rank=cfg.lora_rank, alpha=cfg.alpha, targets=cfg.lora_targets,
                                        dropout=cfg.lora_dropout)
            for param in model.parameters():
                if param.requires_grad:
                    param.data = param.data.float()
        else:
            model.requires_grad_(True)
        model.gradient_checkpointing = cfg.gradient_checkpointing
        model.train()
        self.model = model  # the plain module (shared with the wrappers)
        if self.world.distributed and not lora:
            distributed.shard_fsdp(model, self.dtype)
            self.runner = model
        elif self.world.distributed:
            self.runner = distributed.wrap_ddp(model, self.world, self.device)
        else:
            self.runner = model
        if cfg.compile:
            # Fused elementwise work pays on small models (nano DiT on an H100: 25 steps/s against 17 eager).
            # Fixed shapes (captions padded to one length, see `_features`): one graph a bucket, no symbolic sizes.
            self.runner = torch.compile(self.runner, dynamic=False)
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = self._optimizer(self.params)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_lambda(cfg))
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.dtype == torch.float16)
        self.ema = {n: p.detach().clone().float() for n, p in model.named_parameters() if p.requires_grad} \
            if cfg.ema > 0 else None
        if self.ema is not None:  # one multi-tensor update a step, not one per weight
            params = dict(model.named_parameters())
            self._ema_pairs = (list(self.ema.values()), [params[n] for n in self.ema])
        self.micro = 0

    def _optimizer(self, params):
        cfg = self.cfg
        if cfg.optimizer == "adamw8bit":
            try:
                import bitsandbytes as bnb
            except ImportError:
                raise UsageError("--optimizer adamw8bit needs bitsandbytes", "pip install bitsandbytes") from None
            return bnb.optim.AdamW8bit(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        # The fused CUDA update is one kernel for all weights; FSDP2's sharded weights take the default path.
        fused = self.device.type == "cuda" and not (self.world.distributed and cfg.mode == "full")
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.999), eps=1e-8,
                                 fused=fused or None)

    # 3. Batches and the loss ----------------------------------------------------------------------------------
    @lru_cache(maxsize=4)
    def _epoch(self, epoch: int) -> list[list[int]]:
        return epoch_batches(self.groups, self.cfg.batch_size * self.world.size, self.cfg.seed, epoch)

    def _batch_for(self, micro: int) -> list[int]:
        per_epoch = len(self._epoch(0))
        batch = self._epoch(micro // per_epoch)[micro % per_epoch]
        size = self.cfg.batch_size
        return batch[self.world.rank * size:(self.world.rank + 1) * size]

    def _preload(self, budget: int = PRELOAD_BYTES) -> None:
        """Hold the whole cache as a `FeatureTable` when it is small (nano models, most LoRA sets): on the GPU
        when it also fits in a quarter of its free memory, else in host memory. A step then opens no file and
        stacks no per-item tensors. Larger caches are read a file at a time, with the most recent kept."""
        keys = {it.latent for it in self.items}, {it.text for it in self.items} | set(self.text_keys.values())
        paths = [self.cache.latent_path(k) for k in keys[0]] + [self.cache.text_path(k) for k in keys[1]]
        if sum(p.stat().st_size for p in paths) > budget:
            return
        latents = {k: self.cache.read_latent(k) for k in sorted(keys[0])}
        texts = {k: self.cache.read_text(k) for k in sorted(keys[1])}
        size, place = FeatureTable.nbytes(latents, texts), torch.device("cpu")
        if size > budget:
            return
        if self.device.type == "cuda" and size <= torch.cuda.mem_get_info(self.device)[0] // 4:
            place = self.device
        self._memory = FeatureTable(latents, texts, place)

    def _latent(self, key: str) -> torch.Tensor:
        return self._memory.latent(key) if self._memory is not None else self._read_latent(key)

    def _text(self, key: str) -> torch.Tensor:
        return self._memory.text(key) if self._memory is not None else self._read_text(key)

    def _features(self, items: list) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Latents [B, C, h, w] (fp32) and caption embeddings [B + 1, L, C] (fp32) with their mask [B + 1, L]
        for `items`, on the training device; the last caption row is the empty caption (for dropout)."""
        device, null = self.device, self.text_keys[NULL_CAPTION]
        fixed = self.cfg.compile  # a compiled step wants one caption length, not the batch's longest
        if self._memory is not None:
            latents = self._memory.latent_batch([it.latent for it in items])
            embeds, mask = self._memory.text_batch([it.text for it in items] + [null], full_length=fixed)
            return (latents.to(device, torch.float32, non_blocking=True), embeds.to(device, torch.float32, non_blocking=True),
                    mask.to(device, non_blocking=True))
        latents = torch.stack([self._latent(it.latent) for it in items]).to(device, torch.float32, non_blocking=True)
        embeds, mask = _pad_rows([self._text(it.text) for it in items] + [self._text(null)], device,
                                 MAX_TEXT_TOKENS if fixed else 0)
        return latents, embeds, mask

    @lru_cache(maxsize=2048)
    def _read_latent(self, key: str) -> torch.Tensor:
        return self.cache.read_latent(key)

    @lru_cache(maxsize=2048)
    def _read_text(self, key: str) -> torch.Tensor:
        return self.cache.read_text(key)

    def loss(self, micro: int) -> torch.Tensor:
        cfg, device, dtype = self.cfg, self.device, self.dtype
        items = [self.items[i] for i in self._batch_for(micro)]
        latents, embeds, mask = self._features(items)  # [B, C, h, w], [B+1, L, C], [B+1, L]

        # Random draws for the whole global batch, on the device, from a generator seeded by (seed, micro-batch);
        # each rank keeps its slice, so N GPUs x batch B draw exactly what one GPU x batch N*B draws.
        total, mine = cfg.batch_size * self.world.size, slice(self.world.rank * len(items), (self.world.rank + 1) * len(items))
        gen = torch.Generator(device=device).manual_seed(((cfg.seed * 1_000_003 + micro) * 65_537) % 2**63)
        drop = (torch.rand(total, generator=gen, device=device) < cfg.caption_dropout)[mine]  # [B]
        u = torch.randn(total, generator=gen, device=device)[mine] * cfg.logit_std + cfg.logit_mean
        noise = torch.randn((total, *latents.shape[1:]), generator=gen, device=device)[mine]  # [B, C, h, w]

        # Caption dropout without a host sync: dropped rows take the empty caption's embedding and mask.
        embeds = torch.where(drop[:, None, None], embeds[-1:], embeds[:-1])
        mask = torch.where(drop[:, None], mask[-1:], mask[:-1])
        sigma = shifted_sigmas(torch.sigmoid(u), self.flow_shift)  # [B]
        s = sigma[:, None, None, None]
        noisy = (1.0 - s) * latents + s * noise
        target = noise - latents  # the velocity the model predicts
        timestep = sigma * 1000.0 * self.model.config.timestep_scale
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            pred = self.runner(noisy.to(dtype), embeds.to(dtype), timestep, text_mask=mask)
        return F.mse_loss(pred.float(), target)

    # 4. The loop ---------------------------------------------------------------------------------------------
    def train(self, resume: bool | Path = False) -> TrainResult:
        cfg, events, world = self.cfg, self.events, self.world
        log_path = self.out / LOG_NAME
        if resume:
            self._restore(resume)
            if world.is_main:
                truncate_log(log_path, self.micro // cfg.grad_accum)
        if events.on_phase:
            events.on_phase("train")
        step = self.micro // cfg.grad_accum
        result = TrainResult(out=self.out, step=step, interrupted=False, report=self.report)
        started, samples_seen = time.perf_counter(), 0
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        with _StopFlag() as stop:
            pending, pending_steps = torch.zeros((), device=self.device), 0  # loss summed since the last log line
            while step < cfg.steps:
                pending += self._optimizer_step()
                pending_steps += 1
                step += 1
                samples_seen += cfg.batch_size * cfg.grad_accum * world.size
                out_of_time = bool(cfg.max_minutes) and time.perf_counter() - started >= cfg.max_minutes * 60
                stopping = distributed.any_rank(stop.requested, world, self.device)
                # The time limit ends the run like its last step (checkpoint, then export); a signal only pauses it.
                finishing = distributed.any_rank(out_of_time, world, self.device) and not stopping
                checkpoint_now = stopping or finishing or step % cfg.checkpoint_every == 0 or step == cfg.steps
                # Reading the loss waits for the GPU: only at log lines, so small models are not host-bound.
                if step % cfg.log_every == 0 or checkpoint_now:
                    loss_value = distributed.mean(pending / pending_steps, world).item()
                    pending, pending_steps = torch.zeros((), device=self.device), 0
                    if not math.isfinite(loss_value):
                        raise SanaError(f"the loss became {loss_value} at step {step}",
                                        "lower --lr, or use --precision fp32 / bf16 instead of fp16")
                    result.last_loss = loss_value
                    elapsed = time.perf_counter() - started
                    info = StepInfo(step=step, total=cfg.steps, loss=loss_value, lr=self.scheduler.get_last_lr()[0],
                                    grad_norm=float(self._last_grad_norm), samples_per_s=samples_seen / max(elapsed, 1e-9),
                                    memory_gb=_memory_gb(self.device))
                    if world.is_main:
                        append_log(log_path, {"step": step, "loss": f"{loss_value:.6g}", "lr": f"{info.lr:.6g}",
                                              "grad_norm": f"{info.grad_norm:.4g}",
                                              "samples_per_s": f"{info.samples_per_s:.4g}", "elapsed_s": f"{elapsed:.1f}"})
                    if events.on_step:
                        events.on_step(info)
                if checkpoint_now:
                    result.checkpoint = self.save_checkpoint(step)
                if cfg.val_prompts and cfg.val_every and (step % cfg.val_every == 0 or step == cfg.steps) and not stopping:
                    self.validate(step)
                if stopping:
                    result.interrupted = True
                    break
                if finishing:
                    result.out_of_time = True
                    events.notice(f"--max-minutes {cfg.max_minutes:g} reached at step {step}: exporting it "
                                  f"(--resume continues to step {cfg.steps})")
                    break
        result.step = step
        if not result.interrupted:
            result.output = self.export()
        return result

    def _optimizer_step(self) -> torch.Tensor:
        cfg = self.cfg
        total = torch.zeros((), device=self.device)
        for index in range(cfg.grad_accum):
            last = index == cfg.grad_accum - 1
            with self._grad_sync(last):
                loss = self.loss(self.micro) / cfg.grad_accum
                self.scaler.scale(loss).backward()
            total += loss.detach()
            self.micro += 1
        self.scaler.unscale_(self.optimizer)
        norm = torch.nn.utils.clip_grad_norm_(self.params, cfg.max_grad_norm if cfg.max_grad_norm > 0 else float("inf"))
        self._last_grad_norm = (norm.full_tensor() if hasattr(norm, "full_tensor") else norm).detach()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema is not None:
            with torch.no_grad():
                averages, params = self._ema_pairs
                torch._foreach_lerp_(averages, [p.detach() for p in params], 1.0 - cfg.ema)
        return total

    def _grad_sync(self, sync: bool):
        if not self.world.distributed or sync:
            if self.world.distributed and self.cfg.mode == "full":
                self.model.set_requires_gradient_sync(True)
            return contextlib.nullcontext()
        if self.cfg.mode == "full":  # FSDP2
            self.model.set_requires_gradient_sync(False)
            return contextlib.nullcontext()
        return self.runner.no_sync()  # DDP

    # 5. Checkpoints ---------------------------------------------------------------------------------------------
    def _state_options(self, **kw):
        from torch.distributed.checkpoint.state_dict import StateDictOptions

        return StateDictOptions(full_state_dict=True, cpu_offload=True, ignore_frozen_params=True, **kw)

    def _gather(self) -> tuple[dict, dict]:
        """Trainable weights and optimizer state as full (unsharded) CPU dicts keyed by parameter name."""
        from torch.distributed.checkpoint.state_dict import get_state_dict

        if not self.world.distributed:
            weights = {n: p.detach().cpu() for n, p in self.model.named_parameters() if p.requires_grad}
            optim = self.optimizer.state_dict()
            return weights, optim
        return get_state_dict(self.model, self.optimizer, options=self._state_options())

    def save_checkpoint(self, step: int) -> Path | None:
        cfg, world = self.cfg, self.world
        weights, optim = self._gather()
        ema = {n: (t.full_tensor() if hasattr(t, "full_tensor") else t) for n, t in self.ema.items()} if self.ema else None
        staged = ckpt.staging_dir(self.out, step)
        if world.is_main:
            ckpt.begin(self.out, step)
        distributed.barrier(world)
        torch.save(ckpt.rng_state(), staged / f"rng-rank{world.rank}.pt")
        self.save_extras(staged)
        final = None
        if world.is_main:
            ckpt.save_tensors(staged / "weights.safetensors", weights)
            if ema is not None:
                ckpt.save_tensors(staged / "ema.safetensors", ema)
            torch.save({"optimizer": optim, "scheduler": self.scheduler.state_dict(),
                        "scaler": self.scaler.state_dict()}, staged / "state.pt")
        distributed.barrier(world)
        if world.is_main:
            ckpt.write_json(staged / "state.json", {"step": step, "micro": self.micro, "world_size": world.size,
                                                    "data": self._data_fingerprint()})
            final = ckpt.commit(self.out, step, cfg.keep_checkpoints)
            if (self.out / LOG_NAME).exists():
                plot_loss(self.out / LOG_NAME, self.out / PLOT_NAME)
            self.events.saved("checkpoint", final)
        distributed.barrier(world)
        return final if world.is_main else ckpt.checkpoint_root(self.out) / f"step-{step:06d}"

    def save_extras(self, staged: Path) -> None:
        """More state for a trainer built on this one (every rank calls it; the main rank writes)."""

    def restore_extras(self, folder: Path) -> None:
        """Read back what `save_extras` wrote."""

    def _data_fingerprint(self) -> str:
        import hashlib

        return hashlib.sha256("|".join(f"{it.latent}:{it.text}" for it in self.items).encode()).hexdigest()[:16]

    def _restore(self, resume: bool | Path) -> None:
        from torch.distributed.checkpoint.state_dict import set_state_dict

        if resume is True:
            found = ckpt.list_checkpoints(self.out)
            if not found:
                raise UsageError(f"no checkpoint to resume in {self.out / 'checkpoints'}", "start without --resume")
            folder = found[-1][1]
        else:
            folder = Path(resume)
            if not (folder / "state.json").is_file():
                raise UsageError(f"{folder} is not a complete checkpoint (no state.json)")
        state = ckpt.read_json(folder / "state.json")
        if state.get("world_size", 1) != self.world.size:
            self.events.notice(f"the checkpoint was written by {state.get('world_size')} process(es), this run has "
                               f"{self.world.size}: the data order changes from here")
        if state.get("data") != self._data_fingerprint():
            self.events.notice("the training data changed since the checkpoint: the data order changes from here")
        weights = ckpt.load_tensors(folder / "weights.safetensors")
        trainable = {n for n, p in self.model.named_parameters() if p.requires_grad}
        missing = sorted(trainable - set(weights))
        if missing:
            raise SanaError(f"the checkpoint {folder.name} lacks {len(missing)} trained weight(s), e.g. {missing[0]}",
                            "it belongs to another run configuration")
        saved = ckpt.load_state(folder / "state.pt")
        if self.world.distributed:
            set_state_dict(self.model, self.optimizer, model_state_dict=weights, optim_state_dict=saved["optimizer"],
                           options=self._state_options(strict=False))
        else:
            params = dict(self.model.named_parameters())
            with torch.no_grad():
                for name in trainable:
                    params[name].copy_(weights[name])
            self.optimizer.load_state_dict(saved["optimizer"])
        self.scheduler.load_state_dict(saved["scheduler"])
        apply_schedule(self.optimizer, self.scheduler, self.cfg)
        self.scaler.load_state_dict(saved["scaler"])
        if self.ema is not None:
            ema = ckpt.load_tensors(folder / "ema.safetensors")
            for name, tensor in self.ema.items():
                full = ema[name]
                if hasattr(tensor, "device_mesh"):  # FSDP2: keep only this rank's shard
                    from torch.distributed.tensor import distribute_tensor

                    full = distribute_tensor(full.to(tensor.device), tensor.device_mesh, tensor.placements)
                tensor.copy_(full)
        self.restore_extras(folder)
        rng = folder / f"rng-rank{self.world.rank}.pt"
        if rng.is_file():
            ckpt.set_rng_state(ckpt.load_state(rng))
        self.micro = int(state["micro"])
        self.events.notice(f"resumed from {folder.name} (step {state['step']})")

    # 6. Validation images -----------------------------------------------------------------------------------------
    @torch.no_grad()
    def validate(self, step: int) -> None:
        from ..components import load_vae
        from ..outputs import GenerationRecord, save_image
        from ..pipelines.image import ImagePipeline, ImageRequest
        from .. import ops

        cfg = self.cfg
        vae = load_vae(Path(cfg.model_dir), dtype=self.dtype if self.dtype != torch.float16 else torch.float32,
                       device=self.device)
        prompts = _CachedPrompts(self, self.text_keys)
        pipe = ImagePipeline(transformer=self.model, text_encoder=prompts, vae=vae, family="sana",
                             scheduler_config=self.scheduler_config, device=self.device, dtype=self.dtype,
                             cuda_graphs=False)
        was_enabled = ops.kernels_enabled()
        ops.set_kernels_enabled(False)  # mixed fp32 / bf16 weights under autocast: the reference ops take any dtype
        self.model.eval()
        folder = self.out / "samples"
        folder.mkdir(parents=True, exist_ok=True)
        try:
            size = cfg.resolution
            for index, prompt in enumerate(cfg.val_prompts):
                request = ImageRequest(prompt=prompt, seeds=[cfg.val_seed], width=size, height=size,
                                       steps=cfg.val_steps, guidance=cfg.val_guidance, sampler="flow-dpm",
                                       flow_shift=self.flow_shift)
                with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype != torch.float32):
                    image = pipe.generate(request).images[0]
                if self.world.is_main:
                    record = GenerationRecord(prompt=prompt, model=str(self.out), seed=cfg.val_seed,
                                              steps=cfg.val_steps, guidance=cfg.val_guidance, sampler="flow-dpm",
                                              flow_shift=self.flow_shift, width=size, height=size,
                                              extra={"training_step": step})
                    path = save_image(image, folder / f"step-{step:06d}-{index}.png", record, force=True)
                    self.events.saved("sample", path)
        finally:
            ops.set_kernels_enabled(was_enabled)
            self.model.train()
            del pipe, vae
            if self.device.type == "cuda":
                torch.cuda.empty_cache()

    # 7. Export ------------------------------------------------------------------------------------------------
    def export(self) -> Path | None:
        """The LoRA file (diffusers format) or the full model (diffusers-format folder), from EMA weights if on."""
        if self.events.on_phase:
            self.events.on_phase("export")
        weights, _ = self._gather()
        if self.ema is not None:
            weights = {n: (t.full_tensor() if hasattr(t, "full_tensor") else t).cpu() for n, t in self.ema.items()}
        if not self.world.is_main:
            distributed.barrier(self.world)
            return None
        if self.cfg.mode == "lora":
            from .adapters import save_lora

            params = dict(self.model.named_parameters())
            backup = {n: params[n].detach().clone() for n in weights}
            with torch.no_grad():
                for name, tensor in weights.items():
                    params[name].copy_(tensor)
            path = save_lora(self.model, self.lora_config, self.out)
            with torch.no_grad():
                for name, tensor in backup.items():
                    params[name].copy_(tensor)
            self.events.saved("lora", path)
        else:
            from .export import save_model_folder

            dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[self.cfg.save_dtype]
            path = save_model_folder(weights, self.model.config, Path(self.cfg.model_dir), self.out / "model", dtype)
            self.events.saved("model", path)
        if (self.out / LOG_NAME).exists():
            plot_loss(self.out / LOG_NAME, self.out / PLOT_NAME)
        distributed.barrier(self.world)
        return path


class _MemoryFeatures:
    def __init__(self, store: dict[str, torch.Tensor]):
        self.store = store

    def read_latent(self, key: str) -> torch.Tensor:
        return self.store[key]

    def read_text(self, key: str) -> torch.Tensor:
        return self.store[key]


class _CachedPrompts:
    """The text-encoder interface the image pipeline calls, answered from the feature cache."""

    def __init__(self, trainer: Trainer, keys: dict[str, str]):
        self.trainer, self.keys = trainer, keys

    def encode(self, prompts: list[str], *, with_instruction: bool = True):
        return self.encode_many([(p, with_instruction) for p in prompts])

    def encode_many(self, items: list[tuple[str, bool]]):
        """(prompt, with_instruction) items -> rows in order; the negative (no instruction) is the empty caption."""
        from ..text import PromptEmbeddings

        rows = []
        for prompt, with_instruction in items:
            key = self.keys[prompt if with_instruction and prompt != NULL_CAPTION else NULL_CAPTION]
            rows.append(self.trainer._text(key).float())
        length = max(MAX_TEXT_TOKENS, *(r.shape[0] for r in rows))  # one width, as the text encoder gives
        embeds = torch.zeros(len(rows), length, rows[0].shape[-1])
        mask = torch.zeros(len(rows), length, dtype=torch.long)
        for i, row in enumerate(rows):
            embeds[i, : row.shape[0]], mask[i, : row.shape[0]] = row, 1
        device = self.trainer.device
        return PromptEmbeddings(embeds.to(device, self.trainer.dtype), mask.to(device))


def run(cfg: TrainConfig, *, resume: bool | Path = False, events: TrainEvents | None = None) -> TrainResult:
    """Train as `cfg` says; the whole life of a run (process group included)."""
    trainer = Trainer(cfg, events)
    try:
        trainer.prepare_data()
        trainer.build()
        return trainer.train(resume)
    finally:
        distributed.teardown()

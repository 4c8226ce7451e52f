"""The optimisation step of `Trainer`: the DiT (pretrained or freshly initialised; LoRA adapters or all weights
trainable) with its optimizer, schedule, scaler and EMA; the flow-matching loss of a micro-batch; one optimizer
step of `grad_accum` micro-batches, gradients synchronised across processes on the last one only.

The random draws of micro-batch m come from a generator seeded by (seed, m), drawn for the whole global batch
with each rank keeping its slice: a resumed run draws what an uninterrupted one would, and N processes x batch B
draw what one process x batch N*B draws.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch
import torch.nn.functional as F

from ..errors import SanaError, UsageError
from . import distributed
from .config import TrainConfig
from .schedule import lr_lambda


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


def load_or_initialise(cfg: TrainConfig, device: torch.device, weight_dtype: torch.dtype, model_class, config_class,
                       label: str = "transformer"):
    """The DiT to train: with `--init random` a `model_class` freshly initialised (seeded by cfg.seed) from
    `cfg.transformer_config` or the base model's config, else the base model's pretrained weights."""
    from ..components import read_json
    from ..loading import load_transformer

    model_dir = Path(cfg.model_dir)
    if cfg.init == "random":
        raw = cfg.transformer_config or read_json(model_dir / "transformer" / "config.json")
        try:
            config = config_class.from_dict(raw)
        except (TypeError, ValueError) as exc:
            raise SanaError(f"unsupported {label} config: {exc}") from None
        model = model_class(config)
        model.initialize_weights(torch.Generator().manual_seed(cfg.seed))
        return model.to(device=device, dtype=weight_dtype)
    return load_transformer(model_dir, dtype=weight_dtype, device=device)


def build_transformer(cfg: TrainConfig, device: torch.device, weight_dtype: torch.dtype):
    """The image DiT (`load_or_initialise`); a step-distilled model is refused."""
    from ..models.transformer import SanaTransformer, TransformerConfig

    model = load_or_initialise(cfg, device, weight_dtype, SanaTransformer, TransformerConfig)
    if model.config.guidance_embeds:
        raise UsageError("SANA-Sprint models are distilled with consistency training, not flow matching",
                         "fine-tune a SANA / SANA-1.5 model instead")
    return model


class OptimizationStep:
    """`Trainer`'s model and optimisation step (see trainer.py); batches come from `TrainingData`."""

    LABEL = "transformer"  # what the DiT is called in errors

    def model_classes(self):
        """(DiT class, config class) of the model trained."""
        from ..models.transformer import SanaTransformer, TransformerConfig

        return SanaTransformer, TransformerConfig

    def check_lora_targets(self) -> None:
        """--lora-targets against the DiT's layout, built on the meta device (no weights, no time), so a name that
        matches no layer is said before the data is encoded rather than after."""
        cfg = self.cfg
        if cfg.mode != "lora":
            return
        from ..components import read_json
        from .adapters import resolve_targets, split_fused_projections

        model_class, config_class = self.model_classes()
        config_path = Path(cfg.model_dir) / "transformer" / "config.json"
        if not cfg.transformer_config and not config_path.is_file():
            return  # an original checkpoint: its layout is known once loaded (build checks the targets there)
        try:
            config = config_class.from_dict(cfg.transformer_config or read_json(config_path))
        except (TypeError, ValueError) as exc:
            raise SanaError(f"unsupported {self.LABEL} config: {exc}") from None
        with torch.device("meta"):
            layout = model_class(config)
        resolve_targets(split_fused_projections(layout), cfg.lora_targets)

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

    # 3. The loss ----------------------------------------------------------------------------------------------
    def loss(self, micro: int) -> torch.Tensor:
        """Flow matching on micro-batch `micro`: one timestep a sample (an image, or a whole clip)."""
        cfg, device, dtype = self.cfg, self.device, self.dtype
        items = [self.items[i] for i in self._batch_for(micro)]
        latents, embeds, mask = self._features(items)  # [B, C, h, w] (clips [B, C, F', h, w]), [B+1, L, C], [B+1, L]

        # Random draws for the whole global batch, on the device, from a generator seeded by (seed, micro-batch);
        # each rank keeps its slice, so N GPUs x batch B draw exactly what one GPU x batch N*B draws.
        total, mine = cfg.batch_size * self.world.size, slice(self.world.rank * len(items), (self.world.rank + 1) * len(items))
        gen = torch.Generator(device=device).manual_seed(((cfg.seed * 1_000_003 + micro) * 65_537) % 2**63)
        drop = (torch.rand(total, generator=gen, device=device) < cfg.caption_dropout)[mine]  # [B]
        u = torch.randn(total, generator=gen, device=device)[mine] * cfg.logit_std + cfg.logit_mean
        noise = torch.randn((total, *latents.shape[1:]), generator=gen, device=device)[mine]  # like latents

        # Caption dropout without a host sync: dropped rows take the empty caption's embedding and mask.
        embeds = torch.where(drop[:, None, None], embeds[-1:], embeds[:-1])
        mask = torch.where(drop[:, None], mask[-1:], mask[:-1])
        sigma = shifted_sigmas(torch.sigmoid(u), self.flow_shift)  # [B]
        s = sigma.view(-1, *(1,) * (latents.dim() - 1))
        noisy = (1.0 - s) * latents + s * noise
        target = noise - latents  # the velocity the model predicts
        timestep = self.model_timesteps(sigma)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            pred = self.runner(noisy.to(dtype), embeds.to(dtype), timestep, text_mask=mask)
        return F.mse_loss(pred.float(), target)

    def model_timesteps(self, sigma: torch.Tensor) -> torch.Tensor:
        """The DiT's timestep input [B] at noise levels `sigma` [B], as the image pipelines pass it."""
        return sigma * 1000.0 * self.model.config.timestep_scale

    # 4. One optimizer step ---------------------------------------------------------------------------------------
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

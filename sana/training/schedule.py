"""The learning-rate schedule of fine-tuning: warm-up, then constant, cosine or linear decay; and re-applying a
resumed run's settings to a restored optimizer."""

from __future__ import annotations

import math
from typing import Callable

import torch

from .config import TrainConfig


def lr_lambda(cfg: TrainConfig) -> Callable[[int], float]:
    """Linear warm-up to the base rate, then constant, cosine or linear decay to zero at the last step."""

    def factor(step: int) -> float:
        if cfg.warmup and step < cfg.warmup:
            return (step + 1) / cfg.warmup
        if cfg.lr_schedule == "constant":
            return 1.0
        progress = min(1.0, (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup))
        return 0.5 * (1.0 + math.cos(math.pi * progress)) if cfg.lr_schedule == "cosine" else 1.0 - progress

    return factor


def apply_schedule(optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LambdaLR,
                   cfg: TrainConfig) -> None:
    """After a restore, the rate `cfg` gives at the restored step: a resumed run may change --lr, --steps,
    --lr-schedule, --warmup or --weight-decay (the record says so), and the checkpoint's optimizer and scheduler
    carry the old values. The schedule's function is this run's already (it is not part of the saved state)."""
    step = scheduler.last_epoch
    scheduler.base_lrs = [cfg.lr for _ in optimizer.param_groups]
    for group, factor in zip(optimizer.param_groups, scheduler.lr_lambdas):
        group["initial_lr"] = cfg.lr
        group["lr"] = cfg.lr * factor(step)
        group["weight_decay"] = cfg.weight_decay
    scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]

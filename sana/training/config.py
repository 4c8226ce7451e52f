"""The settings of a training run, saved beside its checkpoints so `--resume` continues the same run."""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field, fields
from pathlib import Path

from ..errors import UsageError

CONFIG_NAME = "train_config.json"

# Settings a resumed run must share with the run it continues (the rest, e.g. --steps, may change).
RESUME_INVARIANTS = ("mode", "init", "model_dir", "transformer_config", "resolution", "batch_size", "grad_accum",
                     "optimizer", "precision",
                     "lora_rank", "lora_alpha", "lora_targets", "seed", "ema", "frames", "fps")


@dataclass
class TrainConfig:
    data: str  # the data folder (an RL run's prompt source) as given
    out: str
    model_dir: str  # the base model (diffusers-format folder): DiT weights unless init is "random", encoders
    # The base model as a name that outlives this install: its registry name (the built-in models' too), else the
    # folder's absolute path. A resume finds a registry model's folder again from it (another install's path).
    model: str | None = None
    mode: str = "lora"  # "lora" | "full"
    init: str = "pretrained"  # "pretrained" | "random"
    transformer_config: dict | None = None  # the DiT config for init "random" (default: the base model's)
    resolution: int = 1024
    batch_size: int = 1
    grad_accum: int = 1
    steps: int = 1000
    lr: float = 1e-4
    lr_schedule: str = "constant"  # "constant" | "cosine" | "linear"
    warmup: int = 0
    weight_decay: float = 1e-4
    optimizer: str = "adamw"  # "adamw" | "adamw8bit"
    max_grad_norm: float = 1.0
    ema: float = 0.0  # EMA decay of the trained weights; 0 = off
    lora_rank: int = 16
    lora_alpha: float | None = None  # default: the rank
    lora_targets: list[str] = field(default_factory=lambda: ["to_q", "to_k", "to_v"])
    lora_dropout: float = 0.0
    seed: int = 0
    flow_shift: float | None = None  # default: the base model's scheduler, else 3.0
    logit_mean: float = 0.0
    logit_std: float = 1.0
    caption_dropout: float = 0.0
    caption: str | None = None
    trigger: str | None = None
    gradient_checkpointing: bool = True
    compile: bool = False  # torch.compile the DiT's training step
    max_minutes: float = 0.0  # stop (checkpoint and export) after this long in the training loop; 0 = no limit
    precision: str = "auto"  # "auto" | "bf16" | "fp16" | "fp32"
    checkpoint_every: int = 500
    keep_checkpoints: int = 3
    val_prompts: list[str] = field(default_factory=list)
    val_every: int = 0
    val_steps: int = 20
    val_guidance: float | None = None  # None: the base model's default guidance (`validation_guidance`)
    val_seed: int = 0
    log_every: int = 1
    save_dtype: str = "bf16"  # the exported full model's dtype
    cache_dir: str | None = None
    device: str = "auto"
    # Video models only (frames 0: an image model): the clip length and rate trained on, and the motion score
    # appended to captions as `sana video` appends it to prompts (None: nothing appended).
    frames: int = 0
    fps: float = 0.0
    motion_score: int | None = None
    # The base model's sampling defaults (its preset's, or those its folder carries), written into an exported
    # model folder so it samples as its base did (`sampling_defaults_for_export`).
    sampling_defaults: dict = field(default_factory=dict)
    # `data`'s files when the run (or its latest resume) started: their count and a hash of names, sizes and
    # times (`data.data_fingerprint`), so a resume on changed data records it; None for a prompt grammar.
    data_fingerprint: str | None = None
    # What each --resume of the run changed, oldest first: {"step", "checkpoint", "time", "changed": {setting:
    # [before, after]}} (and "set_aside" where it branched from an older checkpoint), so the record shows what ran.
    resumes: list[dict] = field(default_factory=list)

    def validation_guidance(self) -> float:
        """Validation samples' guidance: --val-guidance, else the base model's default (validation at a scale the
        model is not sampled at misleads: the nano video model's clips were much worse at 4.5 than at its 2), else
        4.5, SANA's."""
        if self.val_guidance is not None:
            return float(self.val_guidance)
        return float(self.sampling_defaults.get("guidance", 4.5))

    @property
    def sampler_flow_shift(self) -> float | None:
        """The flow shift the exported model samples with, written into its scheduler config (None: its base's).
        None here: a supervised run's --flow-shift shapes its training noise, not a sampler."""
        return None

    def sampling_defaults_for_export(self) -> dict:
        return dict(self.sampling_defaults)

    def lora_sampling_defaults(self) -> dict:
        """What an exported LoRA carries: the export's settings that differ from its base's (a LoRA is applied to
        the base, which brings its own)."""
        return {key: value for key, value in self.sampling_defaults_for_export().items()
                if self.sampling_defaults.get(key) != value}

    def validate(self) -> None:
        checks = [
            (self.mode in ("lora", "full"), "mode must be lora or full"),
            (self.init in ("pretrained", "random"), "init must be pretrained or random"),
            (not (self.init == "random" and self.mode == "lora"), "a LoRA needs pretrained weights: use --full with --init random"),
            (self.steps >= 1, "--steps must be at least 1"),
            (self.val_guidance is None or self.val_guidance >= 0, "--val-guidance must be 0 or more"),
            (self.batch_size >= 1 and self.grad_accum >= 1, "--batch-size and --grad-accum must be at least 1"),
            (self.lr > 0, "--lr must be positive"),
            (self.warmup >= 0, "--warmup must be 0 or more"),
            (self.weight_decay >= 0, "--weight-decay must be 0 or more"),
            (self.max_grad_norm >= 0, "--max-grad-norm must be 0 or more (0 = off)"),
            (self.flow_shift is None or self.flow_shift > 0, "--flow-shift must be positive"),
            (self.lr_schedule in ("constant", "cosine", "linear"), "--lr-schedule must be constant, cosine or linear"),
            (0.0 <= self.ema < 1.0, "--ema is a decay in [0, 1)"),
            (0.0 <= self.caption_dropout < 1.0, "--caption-dropout must be in [0, 1)"),
            (self.lora_rank >= 1, "--lora-rank must be at least 1"),
            (self.lora_alpha is None or self.lora_alpha > 0, "--lora-alpha must be positive"),
            (0.0 <= self.lora_dropout < 1.0, "--lora-dropout must be in [0, 1)"),
            (bool(self.lora_targets), "--lora-targets names no module (e.g. to_q,to_k,to_v)"),
            (self.val_steps >= 1, "--val-steps must be at least 1"),
            (self.val_every >= 0, "--val-every must be 0 or more"),
            (self.checkpoint_every >= 1 and self.keep_checkpoints >= 1, "--checkpoint-every and --keep-checkpoints must be at least 1"),
            (self.optimizer in ("adamw", "adamw8bit"), "--optimizer must be adamw or adamw8bit"),
            (self.precision in ("auto", "bf16", "fp16", "fp32"), "--precision must be auto, bf16, fp16 or fp32"),
            (self.save_dtype in ("bf16", "fp16", "fp32"), "--save-dtype must be bf16, fp16 or fp32"),
            (self.resolution >= 32, "--res must be at least 32"),
            (self.log_every >= 1, "--log-every must be at least 1"),
            (self.max_minutes >= 0, "--max-minutes must be positive (0 = no limit)"),
            (self.frames >= 0 and (self.frames == 0 or self.fps > 0), "--frames must be positive"),
        ]
        for ok, message in checks:
            if not ok:
                raise UsageError(message)

    @property
    def video(self) -> bool:
        """A video model's run (the settings say how many frames a clip trains on)."""
        return self.frames > 0

    @property
    def alpha(self) -> float:
        return float(self.lora_alpha if self.lora_alpha is not None else self.lora_rank)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2)

    def save(self, folder: Path) -> None:
        path = folder / CONFIG_NAME
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(self.to_json(), encoding="utf-8")
        os.replace(tmp, path)

    @classmethod
    def load(cls, folder: Path) -> "TrainConfig":
        path = folder / CONFIG_NAME
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise UsageError(f"cannot read {path} ({exc})", "is this a `sana finetune` output folder?") from None
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    def differences(self, other: "TrainConfig") -> list[str]:
        return [name for name in RESUME_INVARIANTS if getattr(self, name) != getattr(other, name)]

    def changes(self, other: "TrainConfig", every: bool = False) -> list[tuple[str, object, object]]:
        """(setting, this value, other's value) for every setting a resumed run may change (`every`: any setting)
        and `other` does.

        Other data (another folder, or files added, removed or edited) is applied and recorded like --lr, not
        refused: the trainer goes on from the checkpoint over the items there now (its data order changes, which it
        notes), and the `resumes` entry says from which step, so the record still matches what ran."""
        fixed = {"out", "resumes", "model"} | (set() if every else set(RESUME_INVARIANTS))
        if self.data_fingerprint is None:  # recorded before fingerprints were kept: nothing to compare
            fixed.add("data_fingerprint")
        return [(f.name, getattr(self, f.name), getattr(other, f.name)) for f in fields(self)
                if f.name not in fixed and getattr(self, f.name) != getattr(other, f.name)]

"""The settings of an RL run: the supervised run's (model, LoRA, optimizer, checkpoints) plus the recipe's knobs.

Saved as the same `train_config.json`, with `"rl": true`, so `sana finetune --resume` knows which trainer
continues it. `steps` counts rounds: one round is a rollout (explore, select, regenerate, score) and one
optimizer step over everything it produced, as in the recipe (`grad_steps_per_epoch = 1`). No torch here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from ...errors import UsageError
from ..config import CONFIG_NAME, RESUME_INVARIANTS, TrainConfig

PROMPTS_PER_GPU = 6
EXPLORE_PRECISIONS = ("auto", "fp8", "bf16")

RL_RESUME_INVARIANTS = RESUME_INVARIANTS + ("reward", "candidates", "keep_seeds", "explore_steps", "rollout_steps",
                                            "prompts_per_round", "prompt_pool", "guidance", "policy_guidance",
                                            "mix_guidance", "nft_beta", "kl_beta", "adv_clip", "timestep_fraction",
                                            "train_grid_steps", "decay_type")


@dataclass
class RLConfig(TrainConfig):
    """`data` is the prompt source (a text / JSONL file, or `shapes`); the rest as in `TrainConfig`, with the
    recipe's defaults (configs/sol_rl/base.py and sana.py): LoRA r32 / alpha 64 on both attentions' q, k, v and
    output projections, AdamW at 3e-4, EMA 0.9, 6 prompts a GPU, 96 candidates of which 24 are kept."""

    lr: float = 3e-4
    lora_rank: int = 32
    lora_alpha: float | None = 64.0
    lora_targets: list[str] = field(default_factory=lambda: ["to_q", "to_k", "to_v", "to_out.0"])
    ema: float = 0.9
    batch_size: int = 16  # samples a training forward
    checkpoint_every: int = 20
    val_guidance: float | None = None  # None: validation samples as the trained policy does (`trained_guidance`)
    rl: bool = True
    reward: str = "shapes"  # NAME[=DIR][:WEIGHT],... or path/file.py:function[:WEIGHT]
    candidates: int = 96  # seeds explored per prompt
    keep_seeds: int = 24  # of those, the best half and the worst half regenerated at full quality (`--keep`)
    explore_steps: int = 6
    rollout_steps: int = 10
    prompts_per_round: int = PROMPTS_PER_GPU  # over all processes
    # Explore this many times the round's prompts and train on the most contested (1: the recipe, every prompt).
    prompt_pool: int = 1
    rollout_batch: int = 24  # images a sampling forward
    guidance: float = 1.0  # rollout CFG; the recipe samples CFG-free
    # The CFG scale of the sampler being trained (None: `guidance`). Below the rollouts' scale, guided samples teach
    # a sampler with less guidance (1: the conditional velocity alone, the model then sampled CFG-free).
    policy_guidance: float | None = None
    # Every other candidate seed samples with this CFG scale instead, by the starting model (None: all with
    # `guidance`, by the policy): see `RolloutSettings.mix_guidance` and `rollout(mix_model=)`.
    mix_guidance: float | None = None
    explore_precision: str = "auto"  # auto: fp8 block linears where the GPU has fp8 GEMMs, else the compute dtype
    nft_beta: float = 1.0  # DiffusionNFT's mixing coefficient (config.beta)
    kl_beta: float = 1e-4  # weight of the KL term to the base model (train.beta)
    adv_clip: float = 5.0
    timestep_fraction: float = 0.6  # share of the training grid's timesteps each sample is trained on
    # The sampler whose noise levels the loss trains at: its steps' sigmas (None: the rollouts', as the recipe does).
    # The loss needs only clean latents, so cheap few-step rollouts can train the noise levels of a longer sampler.
    train_grid_steps: int | None = None
    decay_type: int = 1  # the old policy's decay schedule (0: on-policy, 1 and 2: the recipe's)
    val_count: int = 8  # fixed validation prompts (with seeds 0..n-1) when no --val-prompt is given

    @property
    def trained_guidance(self) -> float:
        """The CFG scale of the sampler the loss trains: --policy-guidance, else the rollouts' --guidance."""
        return float(self.policy_guidance) if self.policy_guidance is not None else float(self.guidance)

    def validation_guidance(self) -> float:
        """--val-guidance, else the trained sampler's guidance: the best round is the one whose samples, taken as
        the aligned model is meant to be sampled, score best."""
        return float(self.val_guidance) if self.val_guidance is not None else self.trained_guidance

    @property
    def sampler_flow_shift(self) -> float | None:
        """--flow-shift names the shift of the sampler the rollouts, the loss and the validation use (None: the
        base's scheduler's): the export samples with it too."""
        return None if self.flow_shift is None else float(self.flow_shift)

    def sampling_defaults_for_export(self) -> dict:
        """The base's, at the trained sampler's guidance and flow shift: the model was aligned for that sampler
        (the recipe's rollouts are CFG-free, so its result is sampled without CFG)."""
        shift = {} if self.sampler_flow_shift is None else {"flow_shift": self.sampler_flow_shift}
        return {**self.sampling_defaults, "guidance": self.trained_guidance, **shift}

    def validate(self) -> None:
        super().validate()
        train_steps = self.train_timesteps
        checks = [
            (self.init == "pretrained", "RL fine-tunes a pretrained model: --init random is not for --rl"),
            (self.candidates >= 2, "--candidates must be at least 2"),
            (self.keep_seeds >= 2, "--keep must be at least 2 (advantages compare seeds of one prompt)"),
            (self.keep_seeds <= self.candidates,
             f"--keep {self.keep_seeds} is larger than --candidates {self.candidates}"),
            (self.explore_steps >= 1 and self.rollout_steps >= 1, "--explore-steps and --rollout-steps must be at least 1"),
            (0.0 < self.timestep_fraction <= 1.0, "--timestep-fraction must be in (0, 1]"),
            (self.train_grid_steps is None or self.train_grid_steps >= 1, "--train-grid-steps must be at least 1"),
            (train_steps >= 1, f"--timestep-fraction {self.timestep_fraction:g} of {self.grid_steps} steps "
                               "leaves no timestep to train on"),
            (self.prompts_per_round >= 1 and self.rollout_batch >= 1, "--prompts-per-round and --rollout-batch must be at least 1"),
            (self.prompt_pool >= 1, "--prompt-pool must be at least 1"),
            (self.prompt_pool == 1 or self.candidates > self.keep_seeds,
             "--prompt-pool chooses prompts by their explored seeds: give --candidates larger than --keep"),
            (self.guidance >= 1.0, "--guidance must be at least 1 (1 = CFG-free, the recipe's)"),
            (self.policy_guidance is None or self.policy_guidance >= 1.0,
             "--policy-guidance must be at least 1 (1 = the model sampled CFG-free)"),
            (self.mix_guidance is None or self.mix_guidance >= 1.0, "--mix-guidance must be at least 1"),
            (self.explore_precision in EXPLORE_PRECISIONS, "--explore-precision must be auto, fp8 or bf16"),
            (self.nft_beta > 0 and self.adv_clip > 0, "--nft-beta and --adv-clip must be positive"),
            (self.kl_beta >= 0, "--kl must be 0 or more"),
            (self.decay_type in (0, 1, 2), "--decay-type must be 0, 1 or 2"),
            (self.val_count >= 0, "--val-count must be 0 or more"),
        ]
        for ok, message in checks:
            if not ok:
                raise UsageError(message)

    @property
    def grid_steps(self) -> int:
        """Steps of the sampler whose sigmas the loss trains at: --train-grid-steps, else the rollouts'."""
        return self.train_grid_steps or self.rollout_steps

    @property
    def train_timesteps(self) -> int:
        """Timesteps each sample is trained on (6 of 10 in the recipe)."""
        return int(self.grid_steps * self.timestep_fraction)

    @property
    def explores(self) -> bool:
        """False when every candidate is kept (the recipe's plain `diffusionnft` family): no cheap pass."""
        return self.candidates > self.keep_seeds

    def differences(self, other: "TrainConfig") -> list[str]:
        return [name for name in RL_RESUME_INVARIANTS if getattr(self, name, None) != getattr(other, name, None)]


def is_rl_run(folder: Path) -> bool:
    """True when `folder` holds the settings of an RL run (so `--resume` needs no `--rl`)."""
    try:
        return bool(json.loads((folder / CONFIG_NAME).read_text(encoding="utf-8")).get("rl"))
    except (OSError, ValueError, AttributeError):
        return False

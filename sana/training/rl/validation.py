"""An RL run's validation: a fixed grid of prompts and seeds sampled with the current weights and scored, its
mean in rewards.csv, and the weights of every validation that beats all before it kept as the run's best (`best/`,
`best.json`), since an RL run can get worse after it peaks. Across a resume: the best as of the checkpoint, and a
validation the checkpoint's round was due and never got (the reward failed there) made up first.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from .. import checkpoint as ckpt
from .. import distributed
from . import log as rl_log
from .prompts import Prompt
from ...rewards.plugins import RewardError, to_uint8_arrays
from .rollout import plain_transformer, policy_state, sample

BEST_NAME = "best"  # the weights of the best validation so far: a LoRA file or a model folder
BEST_RECORD = "best.json"  # its round and validation reward, in the run folder
BEST_IN_CHECKPOINT = "rl_best.json"  # the best validation reward as of a checkpoint (the base model's counts)
VALIDATION_IN_CHECKPOINT = "rl_validation.json"  # whether the checkpoint's round is due a validation
# A new best must beat the bar by this share of it (absolute for rewards within [-1, 1]): validations of nearly the
# same weights differ in the 6th digit by rounding alone, and best/ was being rewritten for 0.961218 over 0.961215.
BEST_MARGIN = 1e-4


class Validation:
    """Mixed into `RLTrainer`, whose model, components, rewards log and events it uses."""

    def _unvalidated(self, step: int) -> bool:
        """The checkpoint resumed from (round `step`) was due a validation that rewards.csv does not hold: the
        reward failed there, or a Ctrl-C skipped it. Every process agrees."""
        missing = False
        if self.world.is_main and self._resumed_due and step > 0 and self._validation_prompts():
            rows = rl_log.read_rows(self.out / rl_log.REWARDS_NAME)
            missing = not any(r.get("round") == str(step) and r.get("val_reward") for r in rows)
        return distributed.any_rank(missing, self.world, self.device)

    def _best_when_resumed(self, folder: Path) -> float | None:
        """The best validation reward as of the checkpoint, or of `best.json` where that records the validation
        run right after it (a checkpoint is written before its round's validation)."""
        best = None
        if (folder / BEST_IN_CHECKPOINT).is_file():
            best = float(ckpt.read_json(folder / BEST_IN_CHECKPOINT)["val_reward"])
        record = self.out / BEST_RECORD
        if record.is_file():
            saved = ckpt.read_json(record)
            if int(saved["round"]) <= self.resumed_round:
                best = max(float(saved["val_reward"]), best if best is not None else -math.inf)
        return best

    def _validation_prompts(self) -> list[Prompt]:
        cfg = self.cfg
        return [Prompt(p) for p in cfg.val_prompts] or self.source.validation(cfg.seed, cfg.val_count)

    @torch.no_grad()
    def validate(self, step: int) -> None:
        prompts = self._validation_prompts()
        state = policy_state(self.model)  # every process (FSDP gathers); the main one samples
        failure, mean, improved = None, None, False
        if self.world.is_main:
            try:
                mean = self._validation_grid(step, prompts, state)
            except RewardError as exc:
                failure = exc
            else:
                if step == 0:  # the base model sets the bar; nothing of it is saved
                    self.best_val = mean
                else:
                    bar = self.best_val
                    improved = bar is None or mean > bar + BEST_MARGIN * max(1.0, abs(bar))
        if distributed.any_rank(failure is not None, self.world, self.device):
            raise failure or RewardError("a reward failed in the main process (see its output)")
        del state
        if distributed.any_rank(improved, self.world, self.device):
            self._save_best(step, mean)

    def _save_best(self, step: int, mean: float | None) -> None:
        """The weights just validated, kept as the run's best (`best/`, and `best.json` saying which round): an RL
        run can get worse after it peaks, and its last round is what `model` / the LoRA file holds."""
        weights = self._gather_weights()
        if self.world.is_main:
            path = self.write_weights(weights, self.out / BEST_NAME, self.out / BEST_NAME)
            ckpt.write_json(self.out / BEST_RECORD, {"round": step, "val_reward": mean, "path": BEST_NAME})
            self.best_val = mean
            self.events.saved(f"best so far (round {step}, validation reward {mean:.4g})", path)
        distributed.barrier(self.world)

    def _validation_grid(self, step: int, prompts: list[Prompt], state: dict) -> float:
        """Sample the prompts (seed = position) with the current weights, score them, save the grid and the mean;
        returns the mean."""
        from PIL import Image

        cfg, c = self.cfg, self.components
        current = plain_transformer(self.model.config, state, self.device, self.dtype)
        text, null = c.encode([p.text for p in prompts])
        images, scores = [], []
        for start in range(0, len(prompts), cfg.rollout_batch):
            rows = list(range(start, min(start + cfg.rollout_batch, len(prompts))))
            latents = sample(current, text.index(rows), rows, steps=cfg.val_steps, latent_shape=c.latent_shape,
                             flow_shift=c.flow_shift, scheduler_config=c.scheduler_config,
                             guidance=cfg.validation_guidance(), null=null, dtype=self.dtype)
            pixels = c.decode(latents)
            total, _ = c.reward(pixels, [prompts[i].text for i in rows], [prompts[i].fields for i in rows])
            images += to_uint8_arrays(pixels)
            scores += total.tolist()
        folder = self.out / "samples"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"round-{step:06d}.png"
        rl_log.reward_grid([Image.fromarray(a) for a in images], scores).save(path)
        mean = sum(scores) / len(scores)
        fields = rl_log.fields_for(c.labels)
        rl_log.set_value(self.out / rl_log.REWARDS_NAME, step, "val_reward", f"{mean:.6g}", fields)
        self._plot(force=True)
        self.events.saved("sample", path)
        if self.events.on_validation:
            self.events.on_validation(step, mean)
        return mean

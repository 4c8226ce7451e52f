"""The RL loop: `RLTrainer`, the supervised `Trainer` with rollouts where the data folder was.

The model, LoRA (or full weights), optimizer, gradient accumulation and clipping, EMA, DDP / FSDP2, checkpoints,
`--resume`, `--max-minutes` and the export are the Trainer's. Steps of a round (`train`):
1. the round's prompts (from (seed, round) alone), this process's share of them, encoded;
2. the rollout on the old policy's inference copies (explore, keep the best and worst seeds, regenerate, score);
3. the rewards of every process gathered; per-prompt advantages with one global standard deviation, clipped;
4. one optimizer step over every kept sample at `train_timesteps` of its sampler's noise levels (a seeded
   permutation per sample, fresh noise per timestep): DiffusionNFT's loss plus the KL term to the base model;
5. the old policy decays toward the new one, its inference copies are synced;
6. rewards.csv / loss.csv rows, checkpoint, validation grid, the time limit.
The checkpoint adds the old policy's weights (`old.safetensors`); every random draw of round r comes from
(seed, r, position), so a resumed run repeats an uninterrupted one. A checkpoint is written before its round's
validation; a resumed run first validates that round when it was due and never was (the reward failed there).
Validation and the best weights are `validation.py`'s.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist

from ...errors import SanaError, UsageError
from ...text import PromptEmbeddings
from .. import checkpoint as ckpt
from .. import distributed
from ..data import DataReport
from ..plot import append_log, last_elapsed, truncate_log
from ..runtime import memory_gb
from ..trainer import LOG_NAME, AnnouncedStop, TrainEvents, Trainer, TrainResult, run_trainer
from . import log as rl_log
from .config import RLConfig
from .objective import (advantages, guided, kl_loss, nft_policy_loss, old_policy_decay, optimality,
                        update_old_policy)
from .prompts import Prompt, read_prompts
from ...rewards.plugins import RewardError, RewardSet, parse_rewards
from .rollout import (RolloutSettings, decode_batch, explorer_copy, mixed_seed, plain_transformer, policy_state,
                      rollout, sampler_sigmas)
from .validation import BEST_IN_CHECKPOINT, VALIDATION_IN_CHECKPOINT, Validation

OLD_NAME = "old.safetensors"
PLOT_SECONDS = 30.0  # reward.png is redrawn at most this often while training (~80 ms at 400 rounds), and at the end


@dataclass
class RoundInfo:
    round: int
    total: int
    reward_mean: float
    reward_best: float
    reward_worst: float
    explore_mean: float | None
    policy_loss: float
    kl: float
    lr: float
    images_per_s: float
    memory_gb: float


@dataclass
class RLEvents(TrainEvents):
    on_round: Callable[[RoundInfo], None] | None = None
    on_validation: Callable[[int, float], None] | None = None  # (round, mean validation reward)


@dataclass
class Components:
    """What a round needs besides the DiT. Benchmarks and tests pass their own (random text, no VAE)."""

    encode: Callable[[list[str]], tuple[PromptEmbeddings, PromptEmbeddings]]  # prompts -> (rows [P], null [1])
    decode: Callable[[torch.Tensor], torch.Tensor]  # latents [B, C, h, w] -> images [B, 3, H, W] in [0, 1]
    reward: Callable  # (images, prompts, metadata) -> (weighted [B], {label: [B]}); a `submit` of the same
    # arguments, if it has one, starts scoring and returns what waits for that pair (`RewardSet`)
    labels: list[str]
    latent_shape: tuple[int, ...]
    flow_shift: float
    scheduler_config: dict


@dataclass
class RoundData:
    """This process's training material for one round."""

    latents: torch.Tensor  # [N, C, h, w] clean, fp32
    text: PromptEmbeddings  # [P] the local prompts
    prompt_index: list[int]  # [N] -> row of `text`
    r: torch.Tensor  # [N] optimality probabilities
    sigmas: torch.Tensor  # [N, T] each sample's training noise levels
    noise: torch.Tensor  # [N, T, C, h, w]
    null: PromptEmbeddings | None = None  # [1] the empty prompt, for the guided velocity (a trained sampler with CFG)


def gather(tensor: torch.Tensor, world) -> torch.Tensor:
    """Every process's equally sized tensor, concatenated in rank order."""
    if not world.distributed:
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(world.size)]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts)


class RLTrainer(Validation, Trainer):
    def __init__(self, cfg: RLConfig, events: RLEvents | None = None):
        super().__init__(cfg, events or RLEvents())
        if cfg.prompts_per_round % self.world.size:
            raise UsageError(f"--prompts-per-round {cfg.prompts_per_round} does not split over {self.world.size} "
                             "processes", "use a multiple of --gpus")
        self.local_prompts = cfg.prompts_per_round // self.world.size
        self.local_samples = self.local_prompts * cfg.keep_seeds
        self.micro_batches = math.ceil(self.local_samples / cfg.batch_size)
        cfg.grad_accum = self.micro_batches * cfg.train_timesteps  # one optimizer step a round
        self.report = DataReport(root=Path(cfg.data))
        self.resumed_round = 0
        self.best_val: float | None = None  # main process: the best validation reward so far, the base's included
        self._due = False  # the last finished round is due a validation (its checkpoint records it)
        self._resumed_due = False  # the same, for the checkpoint resumed from
        self._checkpointed: tuple[int, Path | None] | None = None  # (round, folder) of this run's last checkpoint
        self.components: Components | None = None
        self._plotted = -math.inf

    # 1. Prompts, encoders, rewards ------------------------------------------------------------------------------
    def prepare_data(self) -> None:
        from ...components import load_vae, read_json, scheduler_config
        from ...text import TextEncoder

        cfg, device = self.cfg, self.device
        if self.events.on_phase:
            self.events.on_phase("data")
        self.source = read_prompts(cfg.data)
        model_dir = Path(cfg.model_dir)
        schedule = scheduler_config(model_dir)
        text_encoder = TextEncoder.from_pretrained(model_dir, dtype=self.dtype, device=device)
        vae = load_vae(model_dir, dtype=torch.float32 if self.dtype == torch.float16 else self.dtype, device=device)
        factor = vae.spatial_compression_ratio
        channels = int(read_json(model_dir / "transformer" / "config.json").get("in_channels", 32))
        rewards = RewardSet(parse_rewards(cfg.reward), device)

        def encode(prompts: list[str]) -> tuple[PromptEmbeddings, PromptEmbeddings]:
            rows = text_encoder.encode_many([(p, True) for p in prompts] + [("", False)]).trimmed().to(device)
            return rows.index(list(range(len(prompts)))), rows.index([len(prompts)])

        def decode(latents: torch.Tensor) -> torch.Tensor:
            pixels = vae.decode(latents.to(vae.dtype) / vae.config.scaling_factor)  # [B, 3, H, W] in [-1, 1]
            return ((pixels.float() + 1.0) / 2.0).clamp(0.0, 1.0)

        self.use_components(Components(encode=encode, decode=decode, reward=rewards, labels=rewards.labels,
                                       latent_shape=(channels, cfg.resolution // factor, cfg.resolution // factor),
                                       flow_shift=cfg.flow_shift or float(schedule.get("flow_shift", 3.0)),
                                       scheduler_config=schedule))

    def use_components(self, components: Components, source=None) -> None:
        """Set what rounds need besides the DiT (and, optionally, the prompt source): `prepare_data` or a caller."""
        self.components = components
        if source is not None:
            self.source = source

    # 2. The policy and its inference copies ---------------------------------------------------------------------
    def build(self, model: torch.nn.Module | None = None) -> None:
        super().build(model)
        cfg = self.cfg
        self.trained = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]
        self.old = {n: p.detach().clone().float() for n, p in self.trained}  # the old policy's trained weights
        config = self.model.config
        base = policy_state(self.model, with_lora=False) if cfg.mode == "lora" else policy_state(self.model)
        needs_base = cfg.kl_beta > 0 or cfg.mix_guidance is not None
        self.ref_model = plain_transformer(config, base, self.device, self.dtype) if needs_base else None
        self.old_model = plain_transformer(config, base, self.device, self.dtype)
        from ... import ops

        auto_fp8 = ops.fp8_supported(self.device) and self.dtype == torch.bfloat16
        self.fp8_explore = cfg.explore_precision == "fp8" or (cfg.explore_precision == "auto" and auto_fp8)
        self.explorer = self.old_model

    def _sync_old(self) -> None:
        """The old policy's inference copy (and its explorer) from `self.old`."""
        state = policy_state(self.model, self.old)
        with torch.no_grad():
            for name, tensor in self.old_model.state_dict().items():
                tensor.copy_(state[name])
        self.explorer = explorer_copy(self.old_model, self.fp8_explore) if self.cfg.explores else self.old_model

    # 3. A round's data ----------------------------------------------------------------------------------------------
    def _settings(self) -> RolloutSettings:
        cfg, c = self.cfg, self.components
        return RolloutSettings(candidates=cfg.candidates, keep=cfg.keep_seeds, explore_steps=cfg.explore_steps,
                               rollout_steps=cfg.rollout_steps, batch=cfg.rollout_batch, latent_shape=c.latent_shape,
                               flow_shift=c.flow_shift, scheduler_config=c.scheduler_config, guidance=cfg.guidance,
                               mix_guidance=cfg.mix_guidance,
                               dtype=self.dtype, decode_batch=decode_batch(cfg.resolution, self.device))

    def _scorer(self, prompts: list[Prompt]):
        c = self.components
        submit = getattr(c.reward, "submit", None)

        def score(latents: torch.Tensor, index: list[int]):
            args = (c.decode(latents), [prompts[i].text for i in index], [prompts[i].fields for i in index])
            if submit is not None:
                return submit(*args)
            scores = c.reward(*args)
            return lambda: scores

        return score

    def collect(self, round_index: int) -> tuple[RoundData, dict]:
        """Roll out this process's prompts of the round; advantages from everyone's rewards; the training draws."""
        cfg, world, c = self.cfg, self.world, self.components
        # With --prompt-pool K each process explores K times its prompts and trains on the most contested.
        pool = self.local_prompts * cfg.prompt_pool
        prompts = self.source.round_prompts(cfg.seed, round_index, cfg.prompts_per_round * cfg.prompt_pool)
        first = world.rank * self.local_prompts
        mine = prompts[world.rank * pool : (world.rank + 1) * pool]
        text, null = c.encode([p.text for p in mine])
        seeds = [[mixed_seed(cfg.seed, "candidate", round_index, world.rank * pool + i, k)
                  for k in range(cfg.candidates)] for i in range(len(mine))]
        failure = None
        try:
            out = rollout(explorer=self.explorer, model=self.old_model, text=text, null=null, seeds=seeds,
                          score=self._scorer(mine), settings=self._settings(),
                          prompts=self.local_prompts if cfg.prompt_pool > 1 else None,
                          mix_model=self.ref_model if cfg.mix_guidance is not None else None)
        except RewardError as exc:
            failure = exc
        if distributed.any_rank(failure is not None, world, self.device):  # every process stops together
            raise failure or RewardError("a reward failed in another process (see its output)")

        keep, steps = cfg.keep_seeds, cfg.train_timesteps
        rewards = gather(out.rewards.to(self.device), world).float().cpu()  # [P x keep], prompt by prompt
        groups = torch.arange(cfg.prompts_per_round).repeat_interleave(keep)
        adv = advantages(rewards, groups, cfg.adv_clip)[first * keep : (first + self.local_prompts) * keep]
        sigmas = sampler_sigmas(cfg.grid_steps, c.flow_shift, c.scheduler_config)  # [S]
        draws_sigma, draws_noise = [], []
        for i in range(self.local_samples):
            gen = torch.Generator().manual_seed(mixed_seed(cfg.seed, "train", round_index, first * keep + i))
            draws_sigma.append(sigmas[torch.randperm(len(sigmas), generator=gen)[:steps]])
            draws_noise.append(torch.randn((steps, *c.latent_shape), generator=gen))
        # The draws go to the device once a round, not a micro-batch at a time.
        data = RoundData(latents=out.latents.to(self.device), text=text, prompt_index=out.prompt_index.tolist(),
                         r=optimality(adv, cfg.adv_clip).to(self.device),
                         sigmas=torch.stack(draws_sigma).to(self.device), noise=torch.stack(draws_noise).to(self.device),
                         null=null if cfg.trained_guidance > 1.0 else None)

        per_prompt = rewards.view(cfg.prompts_per_round, keep)
        stats = {"reward_mean": rewards.mean().item(), "reward_best": per_prompt.max(1).values.mean().item(),
                 "reward_worst": per_prompt.min(1).values.mean().item(), "adv_std": rewards.std(correction=0).item(),
                 "images": world.size * out.images}
        if out.explore_rewards is not None:
            explored = gather(out.explore_rewards.to(self.device), world)  # [pool prompts, candidates]
            stats["explore_mean"] = explored.mean().item()
            # the share of explored prompts whose candidates all scored alike: no signal in them
            stats["explore_uniform"] = (explored.max(1).values == explored.min(1).values).float().mean().item()
        if len(out.parts) > 1:
            for label, values in out.parts.items():
                stats[f"reward_{label}"] = gather(values.to(self.device), world).mean().item()
        return data, stats

    # 4. The loss of one micro-step (the Trainer's `_optimizer_step` accumulates `grad_accum` of them) -------------
    def loss(self, micro: int) -> torch.Tensor:
        cfg, data, device, dtype = self.cfg, self.round_data, self.device, self.dtype
        batch, j = divmod(micro - self._round_start, cfg.train_timesteps)
        rows = slice(batch * cfg.batch_size, min((batch + 1) * cfg.batch_size, self.local_samples))
        x0 = data.latents[rows]  # [B, C, h, w]
        t = data.sigmas[rows, j]  # [B]
        s = t.view(-1, 1, 1, 1)
        x_t = (1.0 - s) * x0 + s * data.noise[rows, j]
        text = data.text.index(data.prompt_index[rows])
        timestep = t * 1000.0 * self.model.config.timestep_scale
        x_in = x_t.to(dtype)
        if data.null is not None:  # a trained sampler with CFG: each model's two passes in one batch
            text = PromptEmbeddings.cat([text, data.null.index([0] * len(text))])
            x_in, timestep = torch.cat([x_in, x_in]), torch.cat([timestep, timestep])
        embeds, mask = text.embeds.to(dtype), text.mask

        def velocity(model) -> torch.Tensor:
            """The velocity of the sampler being trained (`objective.guided` when it uses CFG)."""
            out = model(x_in, embeds, timestep, text_mask=mask).float()
            return guided(*out.chunk(2), cfg.trained_guidance) if data.null is not None else out

        with torch.no_grad():
            v_old = velocity(self.old_model)
            v_ref = velocity(self.ref_model) if self.ref_model is not None and cfg.kl_beta > 0 else None
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            v = velocity(self.runner)
        policy = nft_policy_loss(v, v_old, x0, x_t, t, data.r[rows], beta=cfg.nft_beta, clip=cfg.adv_clip)  # [B]
        kl = kl_loss(v, v_ref) if v_ref is not None else torch.zeros_like(policy)
        self._sums += torch.stack([policy.detach().sum(), kl.detach().sum()])
        # Micro-batches may differ in size: weigh each by its share, so every sample counts the same.
        share = (rows.stop - rows.start) * self.micro_batches / self.local_samples
        return (policy + cfg.kl_beta * kl).mean() * share

    # 5. The loop --------------------------------------------------------------------------------------------------
    def train(self, resume: bool | Path = False) -> TrainResult:
        events, world = self.events, self.world
        fields = rl_log.fields_for(self.components.labels)
        rewards_log, loss_log = self.out / rl_log.REWARDS_NAME, self.out / LOG_NAME
        step = 0
        if resume:
            self._restore(resume)
            step = self.resumed_round
        if world.is_main:  # a resumed run repeats the rounds after its checkpoint; a new one all (a restart's rows)
            last = step if resume else -1
            if rewards_log.exists():
                rl_log.truncate_rows(rewards_log, last, fields)
            if loss_log.exists():
                truncate_log(loss_log, last)
            self._elapsed_before = last_elapsed(rewards_log) if resume else 0.0
        self._sync_old()
        if events.on_phase:
            events.on_phase("train")
        result = TrainResult(out=self.out, step=step, interrupted=False, report=self.report)
        started = time.perf_counter()
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        try:
            with AnnouncedStop(events, "round") as stop:
                try:
                    if step == 0 and self._validation_prompts():
                        self.validate(0)
                    elif resume and self._unvalidated(step):
                        try:
                            self.validate(step)
                        except RewardError as exc:
                            raise self._failed(step, exc, f"validation of round {step}") from None
                    step = self._rounds(stop, result, step, started, fields)
                    self._plot(force=True)
                    return self._finish(result, step)
                except KeyboardInterrupt:  # a second Ctrl-C: stop inside the round
                    raise self.stopped_now(result.step, "round") from None
        finally:
            if hasattr(self.components.reward, "close"):
                self.components.reward.close()

    def _rounds(self, stop: AnnouncedStop, result: TrainResult, step: int, started: float, fields: list[str]) -> int:
        """Rounds until the last, a stop or the time limit; returns the last round done."""
        cfg = self.cfg
        while step < cfg.steps:
            round_started = time.perf_counter()
            try:
                stats, eta = self.train_round(step)
            except RewardError as exc:
                raise self._failed(step, exc, f"round {step + 1}") from None
            step += 1
            result.step = step  # what a second Ctrl-C reports
            self._log_round(step, stats, eta, time.perf_counter() - round_started, started, fields)
            stopping, finishing = self._stop_checks(stop, started)
            # A stop (Ctrl-C) skips the validation, not its being due: a resume makes it up.
            self._due = bool(self._validation_prompts()) and (step == cfg.steps or finishing or bool(
                cfg.val_every and step % cfg.val_every == 0))
            if stopping or finishing or step % cfg.checkpoint_every == 0 or step == cfg.steps:
                result.checkpoint = self.save_checkpoint(step)
            if self._due and not stopping:
                try:
                    self.validate(step)
                except RewardError as exc:
                    raise self._failed(step, exc, f"validation after round {step}") from None
            if self._loop_ends(result, step, stopping, finishing, unit="round"):
                break
        return step

    def train_round(self, step: int) -> tuple[dict, float]:
        """Round `step + 1`: the rollout, one optimizer step, the old policy's decay. Returns (stats, decay)."""
        self.round_data, stats = self.collect(step)
        self._round_start, self._sums = self.micro, torch.zeros(2, device=self.device)
        self._optimizer_step()
        eta = old_policy_decay(step + 1, self.cfg.decay_type)
        update_old_policy(list(self.old.values()), [p for _, p in self.trained], eta)
        self._sync_old()
        self.round_data = None
        return stats, eta

    def _failed(self, step: int, exc: RewardError, where: str) -> SanaError:
        """A reward failed mid-run: keep what is trained (a checkpoint at the last finished round), say why."""
        if step <= self.resumed_round:  # nothing trained since the start (or the checkpoint resumed from)
            return RewardError(f"{exc.message} ({where})", exc.hint)
        # The round's checkpoint may be written already (the validation after it failed): named once, not rewritten.
        done, folder = self._checkpointed or (None, None)
        if done != step:
            folder = self.save_checkpoint(step)
        return SanaError(f"{exc.message} ({where}); the {step} round(s) trained are saved in {folder}",
                         "fix the reward, then continue with --resume")

    def _log_round(self, step: int, stats: dict, eta: float, seconds: float, started: float, fields: list[str]) -> None:
        cfg, world = self.cfg, self.world
        sums = distributed.mean(self._sums, world) * world.size / (cfg.prompts_per_round * cfg.keep_seeds * cfg.train_timesteps)
        policy, kl = sums.tolist()
        lr = self.scheduler.get_last_lr()[0]
        if not math.isfinite(policy):
            raise SanaError(f"the loss became {policy} in round {step}", "lower --lr, or use --precision fp32 / bf16")
        elapsed = self._elapsed_before + time.perf_counter() - started  # the run's clock, across resumes
        info = RoundInfo(round=step, total=cfg.steps, reward_mean=stats["reward_mean"], reward_best=stats["reward_best"],
                         reward_worst=stats["reward_worst"], explore_mean=stats.get("explore_mean"), policy_loss=policy,
                         kl=kl, lr=lr, images_per_s=stats["images"] / max(seconds, 1e-9), memory_gb=memory_gb(self.device))
        if world.is_main:
            row = {k: f"{v:.6g}" for k, v in stats.items() if k != "images"}
            row.update({"round": step, "policy_loss": f"{policy:.6g}", "kl": f"{kl:.6g}", "lr": f"{lr:.6g}",
                        "grad_norm": f"{float(self._last_grad_norm):.4g}", "old_decay": f"{eta:.4g}",
                        "images_per_s": f"{info.images_per_s:.4g}", "elapsed_s": f"{elapsed:.1f}"})
            rl_log.append_row(self.out / rl_log.REWARDS_NAME, row, fields)
            self._plot(force=False)
            append_log(self.out / LOG_NAME, {"step": step, "loss": f"{policy + cfg.kl_beta * kl:.6g}", "lr": f"{lr:.6g}",
                                             "grad_norm": row["grad_norm"], "elapsed_s": f"{elapsed:.1f}"})
        if self.events.on_round:
            self.events.on_round(info)

    def _plot(self, force: bool) -> None:
        if self.world.is_main and (force or time.perf_counter() - self._plotted >= PLOT_SECONDS):
            rl_log.plot_rewards(self.out / rl_log.REWARDS_NAME, self.out / rl_log.REWARD_PLOT)
            self._plotted = time.perf_counter()

    # 6. Checkpoints: the old policy besides the Trainer's state --------------------------------------------------
    def save_checkpoint(self, step: int) -> Path | None:
        folder = super().save_checkpoint(step)
        self._checkpointed = (step, folder)
        return folder

    def save_extras(self, staged: Path) -> None:
        old = {n: (t.full_tensor() if hasattr(t, "full_tensor") else t) for n, t in self.old.items()}
        if self.world.is_main:
            ckpt.save_tensors(staged / OLD_NAME, old)
            if self.best_val is not None:
                ckpt.write_json(staged / BEST_IN_CHECKPOINT, {"val_reward": self.best_val})
            ckpt.write_json(staged / VALIDATION_IN_CHECKPOINT, {"due": self._due})

    def restore_extras(self, folder: Path) -> None:
        if not (folder / OLD_NAME).is_file():
            raise SanaError(f"the checkpoint {folder.name} has no {OLD_NAME}", "it was not written by an RL run")
        saved = ckpt.load_tensors(folder / OLD_NAME)
        with torch.no_grad():
            for name, tensor in self.old.items():
                full = saved[name]
                if hasattr(tensor, "device_mesh"):  # FSDP2: this rank's shard
                    from torch.distributed.tensor import distribute_tensor

                    full = distribute_tensor(full.to(tensor.device), tensor.device_mesh, tensor.placements)
                tensor.copy_(full)
        self.resumed_round = int(ckpt.read_json(folder / "state.json")["step"])
        self.best_val = self._best_when_resumed(folder)
        if (folder / VALIDATION_IN_CHECKPOINT).is_file():
            self._resumed_due = bool(ckpt.read_json(folder / VALIDATION_IN_CHECKPOINT)["due"])
        else:  # a checkpoint from before the record: what --val-every and --steps say
            cfg, done = self.cfg, self.resumed_round
            self._resumed_due = done == cfg.steps or bool(cfg.val_every and done % cfg.val_every == 0)

    def _data_fingerprint(self) -> str:
        return f"{self.source.fingerprint()}|{self.cfg.reward}"


def run(cfg: RLConfig, *, resume: bool | Path = False, events: RLEvents | None = None) -> TrainResult:
    """Train as `cfg` says; the whole life of an RL run (process group included)."""
    return run_trainer(RLTrainer, cfg, resume=resume, events=events)

"""Rollouts as the Sol-RL recipe makes them, and the plain inference copies of the policy they run on.

Per prompt: `candidates` seeds sampled cheaply (`explore_steps`; fp8 block linears where the GPU has fp8 GEMMs),
decoded and scored; the `keep // 2` best and `keep - keep // 2` worst seeds regenerated at full quality
(`rollout_steps`, the compute dtype) and scored again (when the explorer is the old policy itself at
`rollout_steps`, the explored images are those: they are taken, not sampled again). Sampling is the deterministic
flow DPM-Solver++ of `sana gen` (DiffusionNFT is solver-agnostic), CFG-free unless asked. Each candidate's noise
comes from its own integer seed, which is what lets a seed explored cheaply be replayed in full. Each sampled
batch is decoded and handed to the reward before the next is sampled, so a reward scoring in other processes
(the shapes checker) overlaps the sampler. Only the clean latents of the kept seeds and their rewards leave a
rollout: the objective needs no per-step log-probabilities.

The copies are plain `SanaTransformer`s (fused projections, LoRA merged as W + scale B A), the way the recipe
syncs its LoRA into compiled inference models: the old policy (rollouts and v_old), its fp8 explorer, and the
frozen base (v_ref for the KL term).
"""

from __future__ import annotations

import copy
import hashlib
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from ... import sampling
from ...text import PromptEmbeddings
from .objective import most_contested, select_best_worst

DECODE_BATCH = 8  # images a VAE decode at 1024 px: a DC-AE decode holds ~1.2 GB of activations an image


def decode_batch(resolution: int, device: torch.device) -> int:
    """Images a VAE decode at `resolution`: DECODE_BATCH at 1024 px. On a GPU, more for smaller images (their
    activations shrink with the pixel count, and a small decode is launch-bound); a CPU decodes an image no faster
    in a larger batch (measured: slower, 40 -> 60 ms a 256 px nano image from 8 to 32), so it keeps DECODE_BATCH."""
    if device.type == "cpu":
        return DECODE_BATCH
    return max(1, DECODE_BATCH * 1024 * 1024 // (resolution * resolution))


def mixed_seed(*parts: int | str) -> int:
    """A 63-bit integer from the parts (stable across runs and Python versions): candidate seeds and the
    training draws of round r depend on (run seed, r, position) alone, so a resumed run draws the same."""
    digest = hashlib.sha256(":".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


# -- inference copies -----------------------------------------------------------------------------------------

def _full(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor  # FSDP2 shards


def policy_state(model: nn.Module, trained: dict[str, torch.Tensor] | None = None, *,
                 with_lora: bool = True) -> dict[str, torch.Tensor]:
    """The state dict of a plain DiT equal to `model` (engine names, fused projections) with `trained` as the
    values of its trained parameters (default: their own). LoRA layers are merged (W + scaling B A, in fp32, then
    the base's dtype) or, with `with_lora=False`, dropped: the base model."""
    from ..adapters import SplitProjection

    raw = {k: _full(v) for k, v in model.state_dict().items()}
    if trained:
        raw.update({k: _full(v) for k, v in trained.items()})
    merged = {k.replace(".base_layer.", "."): v for k, v in raw.items() if ".lora_" not in k}
    for name, module in model.named_modules():
        if with_lora and hasattr(module, "lora_A") and hasattr(module, "base_layer"):
            for adapter in module.lora_A:
                a, b = raw[f"{name}.lora_A.{adapter}.weight"], raw[f"{name}.lora_B.{adapter}.weight"]
                base = merged[f"{name}.weight"]
                delta = module.scaling[adapter] * (b.float() @ a.float())  # [out, r] @ [r, in]
                merged[f"{name}.weight"] = (base.float() + delta.to(base.device)).to(base.dtype)
    for name, module in model.named_modules():
        if isinstance(module, SplitProjection):  # to_q / to_k / to_v back into the fused projection
            for kind in ("weight", "bias"):
                parts = [merged.pop(f"{name}.{part}.{kind}", None) for part in module.names]
                if parts[0] is not None:
                    merged[f"{name}.{kind}"] = torch.cat(parts)
    return merged


def plain_transformer(config, state: dict[str, torch.Tensor], device: torch.device, dtype: torch.dtype) -> nn.Module:
    """A frozen `SanaTransformer` holding copies of `state`'s tensors (never sharing the policy's storage)."""
    from ...models.transformer import SanaTransformer

    with torch.device("meta"):
        model = SanaTransformer(config)
    model.load_state_dict({k: v.detach().to(device=device, dtype=dtype, copy=True) for k, v in state.items()}, assign=True)
    return model.eval().requires_grad_(False)


def explorer_copy(old_model: nn.Module, fp8: bool) -> nn.Module:
    """The cheap explorer: the old policy with fp8 block linears (`models.fp8`), or the old policy itself."""
    if not fp8:
        return old_model
    from ...models.fp8 import quantize_blocks_fp8

    explorer = copy.deepcopy(old_model)
    quantize_blocks_fp8(explorer)
    return explorer


# -- sampling -------------------------------------------------------------------------------------------------

def make_scheduler(steps: int, flow_shift: float, scheduler_config: dict, device: torch.device):
    scheduler = sampling.make_scheduler("flow-dpm", flow_shift=flow_shift, base_config=scheduler_config)
    scheduler.set_timesteps(steps, device=device)
    return scheduler


def sampler_sigmas(steps: int, flow_shift: float, scheduler_config: dict) -> torch.Tensor:
    """The noise levels [steps] the rollout sampler visits (its final 0 left out): the training timesteps."""
    return make_scheduler(steps, flow_shift, scheduler_config, torch.device("cpu")).sigmas[:steps].float().cpu()


@torch.no_grad()
def sample(model: nn.Module, text: PromptEmbeddings, seeds: list[int], *, steps: int, latent_shape: tuple[int, ...],
           flow_shift: float, scheduler_config: dict, guidance: float = 1.0, null: PromptEmbeddings | None = None,
           dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Clean latents [B, C, h, w] (fp32) for text rows [B] and one seed a row; `null` (one row, the text's width)
    is the unconditional text when guidance > 1."""
    device = model.device
    latents = sampling.initial_noise([sampling.cpu_generator(s) for s in seeds], latent_shape).to(device)
    scheduler = make_scheduler(steps, flow_shift, scheduler_config, device)
    batch = len(seeds)
    embeds, mask = text.embeds.to(device, dtype), text.mask.to(device)
    if guidance > 1.0:
        embeds = torch.cat([null.embeds.to(device, dtype).expand(batch, -1, -1), embeds])
        mask = torch.cat([null.mask.to(device).expand(batch, -1), mask])

    context = model.text_context(embeds, mask)  # the text's keys and values once for every step

    def predict(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        x = torch.cat([x, x]) if guidance > 1.0 else x
        timestep = t.expand(x.shape[0]).to(device) * model.config.timestep_scale
        out = model(x.to(dtype), context, timestep).float()
        return sampling.guided(out, batch=batch, guidance=guidance, pag=0.0)

    return sampling.denoise(predict, latents, scheduler)


# -- one rollout ----------------------------------------------------------------------------------------------

@dataclass
class RolloutSettings:
    candidates: int
    keep: int
    explore_steps: int
    rollout_steps: int
    batch: int  # images a sampling forward
    latent_shape: tuple[int, ...]
    flow_shift: float
    scheduler_config: dict = field(default_factory=dict)
    guidance: float = 1.0
    # Every other candidate seed of a prompt (the odd ones) samples with this CFG scale instead of `guidance`, so a
    # prompt's group holds both kinds of sample: what a model draws only with CFG is contrasted with what it draws
    # without it (the trainer has the starting model draw these: `rollout(mix_model=)`).
    mix_guidance: float | None = None
    dtype: torch.dtype = torch.float32
    decode_batch: int = DECODE_BATCH  # images a decode-and-score call

    def candidate_guidance(self, k: int) -> float:
        """The CFG scale of a prompt's candidate seed number k."""
        return self.mix_guidance if self.mix_guidance is not None and k % 2 == 1 else self.guidance


@dataclass
class Rollout:
    """The kept seeds of this process's prompts, prompt by prompt (best first, then the worst)."""

    latents: torch.Tensor  # [N, C, h, w] clean latents at full quality, fp32
    prompt_index: torch.Tensor  # [N] the local prompt each sample belongs to
    seeds: list[int]
    guidance: list[float]  # [N] the CFG scale each was sampled with
    rewards: torch.Tensor  # [N] the weighted reward of the full-quality images
    parts: dict[str, torch.Tensor]  # [N] per reward term
    explore_rewards: torch.Tensor | None  # [P, candidates] of the cheap pass (None without one), the whole pool
    images: int = 0  # images sampled (and scored) in all


Scores = tuple[torch.Tensor, dict[str, torch.Tensor]]  # (weighted rewards [B], {label: [B]})
Score = Callable[[torch.Tensor, list[int]], Callable[[], Scores]]


Item = tuple[int, int, float]  # (local prompt, seed, CFG scale)


def _sample_and_score(model: nn.Module, items: list[Item], text: PromptEmbeddings, null: PromptEmbeddings | None,
                      steps: int, s: RolloutSettings, score: Score,
                      mix_model: nn.Module | None = None) -> tuple[torch.Tensor, Scores]:
    """Latents [len(items), C, h, w] for the items, `s.batch` images a forward (each forward at one CFG scale), and
    their scores, in the items' order; items at the mix scale are sampled by `mix_model` when one is given. Each
    sampled batch is handed to `score` (decoded `s.decode_batch` images at a time) before the next one is sampled,
    so a reward that scores off the main thread (the shapes checker's workers) runs beside the sampler."""
    scales = sorted({g for _, _, g in items})
    order = [i for g in scales for i, item in enumerate(items) if item[2] == g]  # grouped by scale
    latents, pending = [], []
    for g in scales:
        group = [items[i] for i in order if items[i][2] == g]
        for start in range(0, len(group), s.batch):
            chunk = group[start : start + s.batch]
            rows = text.index([p for p, _, _ in chunk])
            sampler = mix_model if mix_model is not None and g == s.mix_guidance and g != s.guidance else model
            out = sample(sampler, rows, [seed for _, seed, _ in chunk], steps=steps, latent_shape=s.latent_shape,
                         flow_shift=s.flow_shift, scheduler_config=s.scheduler_config, guidance=g, null=null,
                         dtype=s.dtype)
            latents.append(out)
            for first in range(0, len(chunk), s.decode_batch):
                part = slice(first, first + s.decode_batch)
                pending.append(score(out[part], [p for p, _, _ in chunk[part]]))
    totals, parts = [], {}
    for wait in pending:
        total, part = wait()
        totals.append(total)
        for label, value in part.items():
            parts.setdefault(label, []).append(value)
    back = torch.empty(len(order), dtype=torch.long)
    back[torch.tensor(order)] = torch.arange(len(order))  # sampled position of each item
    latent = torch.cat(latents)
    total = torch.cat(totals)
    return latent[back.to(latent.device)], (total[back.to(total.device)],
                                            {label: torch.cat(values)[back.to(values[0].device)]
                                             for label, values in parts.items()})


def rollout(*, explorer: nn.Module, model: nn.Module, text: PromptEmbeddings, null: PromptEmbeddings | None,
            seeds: list[list[int]], score: Score, settings: RolloutSettings, prompts: int | None = None,
            mix_model: nn.Module | None = None) -> Rollout:
    """Explore every prompt's candidate seeds, keep the best and worst, regenerate them in full and score them.

    text: [P] rows (this process's prompts); seeds: P lists of `candidates` seeds; score(latents, local prompt
    indices) decodes clean latents and starts scoring them, returning what waits for (weighted rewards [B],
    {label: [B]}). `prompts` < P: only that many of the explored prompts go on, those whose candidates disagree
    most (`most_contested`); sample indices stay those of the P rows. When the explorer is the model itself at the
    full step count, the explored images are the full-quality ones (same seeds, deterministic sampler): the kept
    ones are taken, not sampled again. `mix_model` samples the candidates at the mix scale (`settings.
    mix_guidance`), in both passes: the trainer gives the starting model there, whose guided samples do not drift
    as the policy trains."""
    s = settings
    explore_rewards = None
    kept: list[Item] = []
    if prompts is not None and prompts < len(seeds) and s.candidates <= s.keep:
        raise ValueError("choosing prompts needs an exploration pass (candidates > keep)")
    if s.candidates > s.keep:
        # 1. The cheap pass over every candidate; 2. the most contrastive seeds of each (chosen) prompt.
        items = [(p, seed, s.candidate_guidance(k)) for p, row in enumerate(seeds) for k, seed in enumerate(row)]
        latents, (rewards, parts) = _sample_and_score(explorer, items, text, null, s.explore_steps, s, score,
                                                      mix_model)
        explore_rewards = rewards.view(len(seeds), s.candidates)
        chosen = (most_contested(explore_rewards, prompts) if prompts is not None and prompts < len(seeds)
                  else torch.arange(len(seeds)))
        picks = [int(p) * s.candidates + int(i) for p in chosen
                 for i in select_best_worst(explore_rewards[int(p)], s.keep)]
        kept = [items[i] for i in picks]
        if explorer is model and s.explore_steps == s.rollout_steps:
            index = torch.tensor(picks)
            return Rollout(latents=latents[index.to(latents.device)],
                           prompt_index=torch.tensor([p for p, _, _ in kept]), seeds=[seed for _, seed, _ in kept],
                           guidance=[g for _, _, g in kept], rewards=rewards[index.to(rewards.device)],
                           parts={k: v[index.to(v.device)] for k, v in parts.items()}, explore_rewards=explore_rewards,
                           images=len(items))
    else:
        kept = [(p, seed, s.candidate_guidance(k)) for p, row in enumerate(seeds) for k, seed in enumerate(row)]
    # 3. The kept seeds at full quality, scored again: the rewards the advantages come from.
    latents, (rewards, parts) = _sample_and_score(model, kept, text, null, s.rollout_steps, s, score, mix_model)
    explored = explore_rewards.numel() if explore_rewards is not None else 0
    return Rollout(latents=latents, prompt_index=torch.tensor([p for p, _, _ in kept]),
                   seeds=[seed for _, seed, _ in kept], guidance=[g for _, _, g in kept], rewards=rewards, parts=parts,
                   explore_rewards=explore_rewards, images=explored + len(kept))

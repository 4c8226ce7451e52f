"""DiffusionNFT's objective as small pure functions (arXiv 2509.16117; the official code's arithmetic).

Conventions: x_t = (1 - t) x0 + t eps with t in (0, 1] (t = the sampler's sigma), velocity target v = eps - x0.

- advantages: A = (R - mean over the prompt's samples) / (std over the whole gathered batch + 1e-4), in +-clip;
- optimality probability: r = clamp(A / clip / 2 + 1/2, 0, 1);
- implicit policies from the current velocity v_theta and the old (rollout) policy's v_old:
  v+ = (1 - beta) v_old + beta v_theta,  v- = (1 + beta) v_old - beta v_theta;
- loss in x0 space with a detached adaptive weight, per sample:
  x0+ = x_t - t v+, w+ = stopgrad(mean |x0+ - x0|) >= 1e-5, l+ = mean((x0+ - x0)^2) / w+ (same for -),
  policy = clip * (r l+ + (1 - r) l-) / beta;
- guidance: a sampler with classifier-free guidance g > 1 follows the guided velocity v_u + g (v_c - v_u)
  (conditional and unconditional passes of one network), so when that sampler is the one trained, every velocity
  above is that guided one, the current policy's from both of its passes (the unconditional branch trains with
  the conditional one); at g = 1, the conditional velocity alone. The trained sampler's g is the rollouts' unless
  told otherwise: rollouts with more guidance than it (guided samples teaching a CFG-free model) are off-policy
  data, which the objective takes, since it only compares the current and old policies on given samples; with
  a guidance mix (`RolloutSettings.mix_guidance`) a prompt's group holds samples of both scales, so the advantage
  contrasts what the model draws with CFG against what it draws without;
- KL to the base model (adapter off): mean((v_theta - v_ref)^2), weighted by `kl_beta`;
- the old policy's decay: theta_old <- eta theta_old + (1 - eta) theta, eta from the optimizer step.
"""

from __future__ import annotations

import torch

ADVANTAGE_EPS = 1e-4
WEIGHT_FLOOR = 1e-5


def advantages(rewards: torch.Tensor, groups: torch.Tensor, clip: float) -> torch.Tensor:
    """rewards [N], groups [N] (the prompt each sample belongs to) -> advantages [N], clipped to +-clip.

    Per-prompt mean, one standard deviation over all N (population, as numpy's default)."""
    rewards = rewards.double()
    means = torch.zeros_like(rewards)
    for group in groups.unique():
        members = groups == group
        means[members] = rewards[members].mean()
    std = rewards.std(correction=0) if rewards.numel() > 1 else rewards.new_zeros(())
    return ((rewards - means) / (std + ADVANTAGE_EPS)).clamp(-clip, clip).float()


def optimality(advantage: torch.Tensor, clip: float) -> torch.Tensor:
    """The "optimality probability" r in [0, 1] from a clipped advantage."""
    return (advantage.clamp(-clip, clip) / clip / 2.0 + 0.5).clamp(0.0, 1.0)


def guided(v_cond: torch.Tensor, v_uncond: torch.Tensor, scale: float) -> torch.Tensor:
    """The velocity classifier-free guidance samples with: v_u + scale (v_c - v_u)."""
    return v_uncond + scale * (v_cond - v_uncond)


def implicit_policies(v_theta: torch.Tensor, v_old: torch.Tensor, beta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(v+, v-): the positive and the implicit negative policy's velocities; v_old carries no gradient."""
    v_old = v_old.detach()
    return (1.0 - beta) * v_old + beta * v_theta, (1.0 + beta) * v_old - beta * v_theta


def _x0_loss(x0_hat: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
    """mean((x0_hat - x0)^2) / stopgrad(mean |x0_hat - x0|) per sample: [B, ...] -> [B]."""
    dims = tuple(range(1, x0.dim()))
    with torch.no_grad():
        weight = (x0_hat.double() - x0.double()).abs().mean(dim=dims, keepdim=True).clamp(min=WEIGHT_FLOOR)
    return ((x0_hat - x0) ** 2 / weight).mean(dim=dims)


def nft_policy_loss(v_theta: torch.Tensor, v_old: torch.Tensor, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor,
                    r: torch.Tensor, *, beta: float, clip: float) -> torch.Tensor:
    """The per-sample policy loss [B] (mean it for the batch).

    v_theta, v_old, x0, x_t: [B, C, h, w] (fp32); t [B] the noise level of x_t; r [B] the optimality probability.
    """
    t = t.view(-1, *([1] * (x0.dim() - 1))).to(x0.dtype)
    v_pos, v_neg = implicit_policies(v_theta, v_old, beta)
    loss_pos = _x0_loss(x_t - t * v_pos, x0)
    loss_neg = _x0_loss(x_t - t * v_neg, x0)
    return clip * (r * loss_pos + (1.0 - r) * loss_neg) / beta


def kl_loss(v_theta: torch.Tensor, v_ref: torch.Tensor) -> torch.Tensor:
    """Per-sample mean squared distance to the reference (base) model's velocity: [B, ...] -> [B]."""
    return ((v_theta - v_ref.detach()) ** 2).mean(dim=tuple(range(1, v_theta.dim())))


def old_policy_decay(step: int, decay_type: int) -> float:
    """eta after optimizer step `step`: 0 follows the current policy; 1: min(0.001 step, 0.5); 2: 0 for 75 steps,
    then min(0.0075 (step - 75), 0.999)."""
    if decay_type == 0:
        return 0.0
    if decay_type == 1:
        return min(0.001 * step, 0.5)
    if decay_type == 2:
        return 0.0 if step < 75 else min(0.0075 * (step - 75), 0.999)
    raise ValueError(f"unknown decay type {decay_type}")


@torch.no_grad()
def update_old_policy(old: list[torch.Tensor], current: list[torch.Tensor], eta: float) -> None:
    """theta_old <- eta theta_old + (1 - eta) theta, in place (one multi-tensor op)."""
    torch._foreach_lerp_(old, [c.detach().to(o.dtype) for o, c in zip(old, current)], 1.0 - eta)


def select_best_worst(rewards: torch.Tensor, keep: int) -> torch.Tensor:
    """Indices of the `keep // 2` highest and the `keep - keep // 2` lowest rewards, best first: the recipe's
    "best_worst" selection of the most contrastive seeds. Both come from one stable ordering (ties: the earlier
    seed ranks higher), so they never overlap."""
    n = rewards.numel()
    if keep > n:
        raise ValueError(f"cannot keep {keep} of {n}")
    order = torch.sort(rewards.float().cpu(), descending=True, stable=True).indices
    return torch.cat([order[: keep // 2], order[n - (keep - keep // 2):]])


def most_contested(rewards: torch.Tensor, count: int) -> torch.Tensor:
    """rewards [P, candidates] of a pool of prompts -> the `count` prompts whose candidates' rewards spread the
    most (max - min), in pool order (ties: the earlier prompt). Prompts whose seeds all score alike give every
    sample a zero advantage: training on the contested ones spends the round on prompts with a signal (DAPO's
    dynamic sampling, arXiv 2503.14476, in its exploration-time form)."""
    if count > rewards.shape[0]:
        raise ValueError(f"cannot choose {count} of {rewards.shape[0]} prompts")
    spread = (rewards.max(dim=1).values - rewards.min(dim=1).values).float().cpu()
    order = torch.sort(spread, descending=True, stable=True).indices
    return torch.sort(order[:count]).values

"""The DiffusionNFT formulas (sana.training.rl.objective) against plain references written from the formulas,
sample by sample in float64; the seed selection; the LoRA merge of the inference copies."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from sana.training.rl import objective as nft


def test_advantages_are_per_prompt_centred_with_one_global_std():
    gen = torch.Generator().manual_seed(0)
    rewards = torch.rand(12, generator=gen) * 3
    groups = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3])
    r = rewards.double().numpy()
    std = math.sqrt(sum((x - r.mean()) ** 2 for x in r) / len(r))  # population std over the whole batch
    expected = []
    for i, g in enumerate(groups.tolist()):
        members = [r[j] for j in range(len(r)) if groups[j] == g]
        a = (r[i] - sum(members) / len(members)) / (std + 1e-4)
        expected.append(min(5.0, max(-5.0, a)))
    np.testing.assert_allclose(nft.advantages(rewards, groups, 5.0).numpy(), expected, rtol=1e-6, atol=1e-6)
    clipped = nft.advantages(torch.tensor([0.0, 0.0, 0.0, 100.0]), torch.zeros(4, dtype=torch.long), 0.5)
    assert clipped.tolist() == [-0.5, -0.5, -0.5, 0.5]  # -0.577 and 1.732 before the clip


def test_optimality_probability():
    adv = torch.tensor([-7.0, -5.0, -2.5, 0.0, 2.5, 5.0, 9.0])
    expected = [min(1.0, max(0.0, min(5.0, max(-5.0, a)) / 5.0 / 2 + 0.5)) for a in adv.tolist()]
    np.testing.assert_allclose(nft.optimality(adv, 5.0).numpy(), expected, rtol=0, atol=1e-7)


def _reference_loss(v, v_old, x0, xt, t, r, beta, clip):
    """The formulas of the reference notes, one sample at a time, float64, weights as constants."""
    out = []
    for i in range(v.shape[0]):
        pos = (1 - beta) * v_old[i] + beta * v[i]
        neg = (1 + beta) * v_old[i] - beta * v[i]
        terms = []
        for policy in (pos, neg):
            x0_hat = xt[i] - t[i] * policy
            weight = max(float((x0_hat - x0[i]).detach().abs().mean()), 1e-5)  # stop-gradient: a plain number
            terms.append(((x0_hat - x0[i]) ** 2).mean() / weight)
        out.append(clip * (r[i] * terms[0] + (1 - r[i]) * terms[1]) / beta)
    return torch.stack(out)


@pytest.mark.parametrize("beta", [1.0, 0.1], ids=["beta1", "beta0.1"])
def test_nft_policy_loss_and_its_gradient_match_the_formulas(beta):
    gen = torch.Generator().manual_seed(1)
    shape = (3, 4, 5, 5)
    x0, eps, v_old = (torch.randn(shape, generator=gen, dtype=torch.float64) for _ in range(3))
    t = torch.tensor([0.9, 0.5, 0.2], dtype=torch.float64)
    xt = (1 - t.view(-1, 1, 1, 1)) * x0 + t.view(-1, 1, 1, 1) * eps
    r = torch.tensor([0.0, 0.3, 1.0], dtype=torch.float64)
    v = torch.randn(shape, generator=gen, dtype=torch.float64, requires_grad=True)
    v_ref = v.detach().clone().requires_grad_(True)

    ours = nft.nft_policy_loss(v, v_old, x0, xt, t, r, beta=beta, clip=5.0)
    reference = _reference_loss(v_ref, v_old, x0, xt, t, r, beta, 5.0)
    torch.testing.assert_close(ours, reference, rtol=1e-10, atol=1e-12)
    ours.sum().backward()
    reference.sum().backward()
    torch.testing.assert_close(v.grad, v_ref.grad, rtol=1e-10, atol=1e-12)


def test_implicit_policies_and_kl():
    v, v_old = torch.tensor([2.0, -1.0]), torch.tensor([1.0, 1.0])
    pos, neg = nft.implicit_policies(v, v_old, 0.5)
    torch.testing.assert_close(pos, 0.5 * v_old + 0.5 * v)
    torch.testing.assert_close(neg, 1.5 * v_old - 0.5 * v)
    a, b = torch.randn(2, 3, 4, 4, dtype=torch.float64), torch.randn(2, 3, 4, 4, dtype=torch.float64)
    expected = [float(((a[i] - b[i]) ** 2).sum()) / a[i].numel() for i in range(2)]
    np.testing.assert_allclose(nft.kl_loss(a, b).numpy(), expected, rtol=1e-12)


def test_old_policy_decay_schedules_and_update():
    assert [nft.old_policy_decay(s, 1) for s in (0, 1, 250, 500, 900)] == [0.0, 0.001, 0.25, 0.5, 0.5]
    assert [nft.old_policy_decay(s, 2) for s in (1, 74, 75, 76, 175)] == [0.0, 0.0, 0.0, 0.0075, pytest.approx(0.75)]
    assert nft.old_policy_decay(10_000, 2) == 0.999 and nft.old_policy_decay(7, 0) == 0.0
    old, current = [torch.tensor([1.0, 2.0])], [torch.tensor([3.0, -2.0])]
    nft.update_old_policy(old, current, 0.25)
    torch.testing.assert_close(old[0], 0.25 * torch.tensor([1.0, 2.0]) + 0.75 * torch.tensor([3.0, -2.0]))


def test_best_worst_selection():
    rewards = torch.tensor([0.5, 0.9, 0.1, 0.7, 0.3, 0.2])
    assert nft.select_best_worst(rewards, 4).tolist() == [1, 3, 5, 2]  # two best (best first), two worst
    assert nft.select_best_worst(rewards, 3).tolist() == [1, 5, 2]  # keep // 2 best, the rest worst
    ties = nft.select_best_worst(torch.zeros(4), 4).tolist()
    assert sorted(ties) == [0, 1, 2, 3]  # ties never put one seed in both halves
    with pytest.raises(ValueError):
        nft.select_best_worst(rewards, 7)


def test_mixed_seed_is_stable_and_spread():
    from sana.training.rl.rollout import mixed_seed

    assert mixed_seed(0, "candidate", 3, 1, 2) == mixed_seed(0, "candidate", 3, 1, 2)
    seeds = {mixed_seed(0, "candidate", r, p, k) for r in range(3) for p in range(3) for k in range(8)}
    assert len(seeds) == 72 and all(0 <= s < 2**63 for s in seeds)


def test_lora_merged_inference_copy_equals_the_adapted_model():
    """`policy_state` (LoRA merged, projections fused) gives a plain DiT whose output is the peft model's."""
    from sana.models.transformer import SanaTransformer, TransformerConfig
    from sana.training.adapters import add_lora
    from sana.training.rl.rollout import plain_transformer, policy_state
    from tests.tiny_transformer import noise_all_parameters, transformer_config

    torch.manual_seed(0)
    model = SanaTransformer(TransformerConfig.from_dict(transformer_config("sana")))
    noise_all_parameters(model, 3)
    gen = torch.Generator().manual_seed(4)
    x, text, t = torch.randn(2, 8, 8, 8, generator=gen), torch.randn(2, 5, 40, generator=gen), torch.tensor([300.0, 800.0])
    base_out = model(x, text, t)
    add_lora(model, rank=4, alpha=8, targets=["to_q", "to_k", "to_v", "to_out.0"])
    for name, param in model.named_parameters():
        if "lora_B" in name:  # peft starts B at zero: give the adapter an effect
            param.data.normal_(0, 0.1, generator=gen)
    with torch.no_grad():
        adapted = model(x, text, t)
        merged = plain_transformer(model.config, policy_state(model), torch.device("cpu"), torch.float32)
        base = plain_transformer(model.config, policy_state(model, with_lora=False), torch.device("cpu"), torch.float32)
        torch.testing.assert_close(merged(x, text, t), adapted, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(base(x, text, t), base_out, rtol=1e-5, atol=1e-6)
        assert (adapted - base_out).abs().max() > 1e-3
        # The copies own their tensors: writing into one never reaches the policy.
        trained = {n: p.detach() * 0 for n, p in model.named_parameters() if p.requires_grad}
        again = plain_transformer(model.config, policy_state(model, trained), torch.device("cpu"), torch.float32)
        torch.testing.assert_close(again(x, text, t), base_out, rtol=1e-5, atol=1e-6)
        next(again.parameters()).add_(1.0)
        torch.testing.assert_close(model(x, text, t), adapted)


def test_training_timesteps_are_the_sampler_noise_levels():
    from sana import sampling
    from sana.training.rl.rollout import sampler_sigmas

    scheduler = sampling.make_scheduler("flow-dpm", flow_shift=3.0)
    scheduler.set_timesteps(10)
    sigmas = sampler_sigmas(10, 3.0, {})
    torch.testing.assert_close(sigmas, scheduler.sigmas[:10].float())
    assert ((sigmas * 1000 - scheduler.timesteps.float()).abs() < 1).all()  # the scheduler truncates to integers

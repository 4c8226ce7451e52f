"""One rollout on a stand-in DiT (CPU): each sampled batch is scored before the next is sampled, and an explorer
that is the model at the full step count has its kept images taken instead of sampled again."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from sana.text import PromptEmbeddings


class StandIn(nn.Module):
    """A velocity from the latents and the text (so prompts and seeds give different images); counts images."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(0.3))
        self.config = SimpleNamespace(timestep_scale=1.0)
        self.images = 0

    @property
    def device(self) -> torch.device:
        return self.scale.device

    def text_context(self, embeds, text_mask=None):
        return embeds  # what the DiTs build once per loop; here the text itself

    def forward(self, x, embeds, timestep, text_mask=None):
        self.images += x.shape[0]
        return self.scale * x + embeds.mean(dim=(1, 2)).view(-1, 1, 1, 1)


def _text(prompts: int) -> tuple[PromptEmbeddings, PromptEmbeddings]:
    g = torch.Generator().manual_seed(0)
    return (PromptEmbeddings(torch.randn(prompts, 3, 4, generator=g), torch.ones(prompts, 3)),
            PromptEmbeddings(torch.randn(1, 3, 4, generator=g), torch.ones(1, 3)))


def _run(explorer, model, steps: tuple[int, int], events: list, prompts: int = 2, chosen: int | None = None,
         score_of=None, mix_model=None, **settings):
    from sana.training.rl.rollout import RolloutSettings, rollout

    text, null = _text(prompts)
    settings = RolloutSettings(**{**dict(candidates=6, keep=2, explore_steps=steps[0], rollout_steps=steps[1], batch=4,
                                         latent_shape=(2, 4, 4), flow_shift=3.0, decode_batch=3), **settings})

    def score(latents, index):
        events.append(("submit", latents.shape[0]))
        total = latents.mean(dim=(1, 2, 3)) + torch.tensor(index, dtype=torch.float32)
        if score_of is not None:
            total = score_of(latents, index)

        def wait():
            events.append(("wait", latents.shape[0]))
            return total, {"mean": total}

        return wait

    seeds = [[10 * p + k for k in range(6)] for p in range(prompts)]
    return rollout(explorer=explorer, model=model, text=text, null=null, seeds=seeds, score=score, settings=settings,
                   prompts=chosen, mix_model=mix_model)


def test_batches_are_scored_as_sampled_and_waited_for_at_the_end():
    events = []
    model = StandIn()
    out = _run(copy.deepcopy(model), model, (2, 3), events)
    # Explore: 12 images in batches of 4, each submitted in decode batches of 3 (3 + 1); regenerate: 4 kept.
    assert [n for kind, n in events if kind == "submit"] == [3, 1] * 3 + [3, 1]
    assert [kind for kind, _ in events[:7]] == ["submit"] * 6 + ["wait"]  # every wait after the pass's last submit
    assert out.latents.shape == (4, 2, 4, 4) and out.explore_rewards.shape == (2, 6) and out.images == 12 + 4


@pytest.mark.parametrize("same_object", [True, False], ids=["explorer-is-model", "separate-explorer"])
def test_an_explorer_at_full_steps_that_is_the_model_is_not_sampled_twice(same_object):
    model = StandIn()
    explorer = model if same_object else copy.deepcopy(model)
    out = _run(explorer, model, (3, 3), [])
    sampled = model.images + (0 if same_object else explorer.images)
    assert sampled == 3 * 12 + (0 if same_object else 3 * 4)  # explored, and the kept 4 again unless taken
    assert out.images == sampled // 3
    reference = _run(copy.deepcopy(model), StandIn(), (3, 3), [])  # always regenerates
    torch.testing.assert_close(out.latents, reference.latents)
    torch.testing.assert_close(out.rewards, reference.rewards)
    torch.testing.assert_close(out.parts["mean"], reference.parts["mean"])
    assert out.seeds == reference.seeds and out.prompt_index.tolist() == [0, 0, 1, 1]
    explored = [out.explore_rewards[p, seed - 10 * p] for p, seed in zip(out.prompt_index.tolist(), out.seeds)]
    torch.testing.assert_close(out.rewards, torch.stack(explored))  # a deterministic sampler: the same images


def test_decode_batches_grow_for_small_images_on_a_gpu_only():
    from sana.training.rl.rollout import DECODE_BATCH, decode_batch

    gpu, cpu = torch.device("cuda"), torch.device("cpu")
    assert decode_batch(1024, gpu) == DECODE_BATCH and decode_batch(2048, gpu) == 2
    assert decode_batch(256, gpu) == 16 * DECODE_BATCH and decode_batch(4096, gpu) == 1
    assert decode_batch(256, cpu) == DECODE_BATCH


def test_a_prompt_pool_goes_on_with_the_prompts_whose_seeds_disagree_most():
    """Of four explored prompts two go on: those whose candidates' rewards spread the most, in pool order; a
    prompt whose seeds all score alike (no advantage to learn from) is left."""
    from sana.training.rl.objective import most_contested

    rewards = torch.tensor([[1.0, 1.0, 1.0], [0.2, 0.9, 0.5], [1.0, 0.0, 1.0], [0.5, 0.6, 0.55]])
    assert most_contested(rewards, 2).tolist() == [1, 2]
    assert most_contested(rewards, 3).tolist() == [1, 2, 3]
    assert most_contested(torch.ones(3, 4), 2).tolist() == [0, 1]  # ties: the earlier prompts
    with pytest.raises(ValueError):
        most_contested(rewards, 5)

    def by_prompt(latents, index):  # prompts 1 and 3 split their seeds, 0 and 2 score 1 whatever the seed
        spread = torch.tensor([0.0, 1.0, 0.0, 0.5])[index]
        return 1.0 - spread * (latents.mean(dim=(1, 2, 3)) > latents.mean()).float()

    model = StandIn()
    out = _run(copy.deepcopy(model), model, (2, 3), [], prompts=4, chosen=2, score_of=by_prompt)
    assert out.prompt_index.tolist() == [1, 1, 3, 3] and out.explore_rewards.shape == (4, 6)
    assert out.images == 4 * 6 + 4 and out.latents.shape[0] == 4
    assert all(seed // 10 == p for p, seed in zip(out.prompt_index.tolist(), out.seeds))
    every = _run(copy.deepcopy(model), StandIn(), (2, 3), [], prompts=4, score_of=by_prompt)
    assert every.prompt_index.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]  # no pool: every prompt goes on
    kept = [i for i, p in enumerate(every.prompt_index.tolist()) if p in (1, 3)]
    torch.testing.assert_close(out.latents, every.latents[kept])  # the same seeds, as without the pool


@pytest.mark.parametrize("keep", [2, 6], ids=["explored", "every-candidate-kept"])
def test_a_guidance_mix_samples_every_other_seed_with_it_and_keeps_each_image_with_its_score(keep):
    """With --mix-guidance each prompt's odd candidates sample at that CFG scale (each forward at one scale); the
    kept images, their seeds, scales and rewards stay together, each the image its seed gives at its scale."""
    from sana.training.rl.rollout import sample

    model = StandIn()
    out = _run(copy.deepcopy(model), model, (2, 3), [], guidance=1.0, mix_guidance=3.0, keep=keep,
               score_of=lambda latents, index: latents.mean(dim=(1, 2, 3)) * 10 + torch.tensor(index).float())
    text, null = _text(2)
    assert sorted(set(out.guidance)) == [1.0, 3.0] if keep == 6 else set(out.guidance) <= {1.0, 3.0}
    for i, (p, seed, g) in enumerate(zip(out.prompt_index.tolist(), out.seeds, out.guidance)):
        assert g == (3.0 if (seed - 10 * p) % 2 == 1 else 1.0)
        alone = sample(model, text.index([p]), [seed], steps=3, latent_shape=(2, 4, 4), flow_shift=3.0,
                       scheduler_config={}, guidance=g, null=null)
        torch.testing.assert_close(out.latents[i : i + 1], alone, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(out.rewards[i], alone.mean() * 10 + p, rtol=1e-5, atol=1e-5)
    if keep == 2:  # the explored rewards are in candidate order, whatever order the scales were sampled in
        for p in range(2):
            for k in range(6):
                g = 3.0 if k % 2 else 1.0
                alone = sample(model, text.index([p]), [10 * p + k], steps=2, latent_shape=(2, 4, 4),
                               flow_shift=3.0, scheduler_config={}, guidance=g, null=null)
                torch.testing.assert_close(out.explore_rewards[p, k], alone.mean() * 10 + p, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("keep", [2, 6], ids=["explored", "every-candidate-kept"])
def test_a_mix_model_samples_the_guided_candidates_and_the_policy_the_others(keep):
    """The trainer's mix comes from the starting model (frozen): candidates at the mix scale are that model's
    images in both passes, the others the policy's (explorer, then the full-quality model)."""
    from sana.training.rl.rollout import sample

    model, base = StandIn(), StandIn()
    with torch.no_grad():
        base.scale.fill_(-0.5)  # another model: other images from the same seeds
    out = _run(copy.deepcopy(model), model, (2, 3), [], guidance=1.0, mix_guidance=3.0, keep=keep, mix_model=base,
               score_of=lambda latents, index: latents.mean(dim=(1, 2, 3)) * 10 + torch.tensor(index).float())
    text, null = _text(2)
    assert base.images > 0
    for i, (p, seed, g) in enumerate(zip(out.prompt_index.tolist(), out.seeds, out.guidance)):
        alone = sample(base if g == 3.0 else model, text.index([p]), [seed], steps=3, latent_shape=(2, 4, 4),
                       flow_shift=3.0, scheduler_config={}, guidance=g, null=null)
        torch.testing.assert_close(out.latents[i : i + 1], alone, rtol=1e-5, atol=1e-6)
    if keep == 2:
        for p in range(2):
            for k in range(6):
                g = 3.0 if k % 2 else 1.0
                alone = sample(base if g == 3.0 else model, text.index([p]), [10 * p + k], steps=2,
                               latent_shape=(2, 4, 4), flow_shift=3.0, scheduler_config={}, guidance=g, null=null)
                torch.testing.assert_close(out.explore_rewards[p, k], alone.mean() * 10 + p, rtol=1e-5, atol=1e-5)

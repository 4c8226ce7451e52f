"""RL on the nano model with the `shapes` reward, on the CPU: a short fixed-seed run raises the mean reward.

Two prompts (a small blue square on black: a colour-shape pair its pre-training never showed) sampled CFG-free in
two steps, far fewer than the nano model was made for (its defaults are 20, and RL tuned it for 4 too), so it starts
well short of every point; six rounds of LoRA training on those rollouts. The validation grid (fixed prompts and
seeds, 2 steps, CFG-free) and the rollouts' mean reward both rise. No timing is asserted.
"""

from __future__ import annotations

import pytest

from tests.rl_helpers import read_csv

PROMPTS = ["a small blue square in the center on a black background",
           "a small blue square on the right on a black background"]


@pytest.mark.slow
def test_shapes_reward_rises_over_a_short_run(tmp_path):
    from sana.embedded import embedded_model_dir
    from sana.training.rl.config import RLConfig
    from sana.training.rl.loop import run

    nano = embedded_model_dir("nano")
    if nano is None:
        pytest.skip("this installation has no nano model")
    (tmp_path / "prompts.txt").write_text("\n".join(PROMPTS) + "\n")
    out = tmp_path / "run"
    out.mkdir()
    cfg = RLConfig(data=str(tmp_path / "prompts.txt"), out=str(out), model_dir=str(nano), resolution=256, device="cpu",
                   reward="shapes", candidates=8, keep_seeds=4, explore_steps=2, rollout_steps=2, timestep_fraction=0.5,
                   prompts_per_round=2, batch_size=8, rollout_batch=16, steps=6, lora_rank=8, lora_alpha=8, lr=1e-3,
                   ema=0.0, gradient_checkpointing=False, checkpoint_every=100, val_every=6,
                   val_prompts=[PROMPTS[0]] * 4 + [PROMPTS[1]] * 4, val_steps=2, seed=0)
    cfg.save(out)
    result = run(cfg)
    assert result.step == 6
    rows = read_csv(out / "rewards.csv")
    val = {int(r["round"]): float(r["val_reward"]) for r in rows if r["val_reward"]}
    train = [float(r["reward_mean"]) for r in rows if r["reward_mean"]]
    assert val[6] > val[0] + 0.05, val
    assert sum(train[-2:]) / 2 > sum(train[:2]) / 2 + 0.05, train

"""The RL trainer in-process on a tiny random SANA pipeline (CPU): exact resume after the time limit, EMA and the
old policy's formulas, full fine-tuning, a reward failing mid-run."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from sana.errors import SanaError
from tests.rl_helpers import base_model, checkpoint_state, files, read_csv  # noqa: F401 (fixtures)


def _config(out: Path, model: Path, prompts: Path, plugin: Path, **kw):
    from sana.training.rl.config import RLConfig

    settings = dict(data=str(prompts), out=str(out), model_dir=str(model), resolution=32, device="cpu",
                    reward=f"{plugin}:brightness", candidates=4, keep_seeds=2, explore_steps=2, rollout_steps=4,
                    prompts_per_round=2, batch_size=2, lora_rank=4, lora_alpha=8, lr=1e-3, rollout_batch=8,
                    val_count=2, val_steps=2, val_every=2, checkpoint_every=10, ema=0.5)
    settings.update(kw)
    cfg = RLConfig(**settings)
    out.mkdir(parents=True, exist_ok=True)
    cfg.save(out)
    return cfg


def test_time_limit_then_resume_repeats_an_uninterrupted_run(files, base_model, monkeypatch):
    from sana.training.rl.loop import run

    # Each run picks its CPU threads from the machine's load when it starts; another count sums in another order.
    monkeypatch.setenv("SANA_THREADS", "1")

    prompts, plugin = files / "prompts.txt", files / "plug.py"
    straight = run(_config(files / "straight", base_model, prompts, plugin, steps=3))
    assert straight.step == 3 and straight.output.exists()
    first = run(_config(files / "split", base_model, prompts, plugin, steps=3, max_minutes=1e-6))
    assert first.out_of_time and first.step == 1 and first.output.exists()  # the time limit exports what is trained
    second = run(_config(files / "split", base_model, prompts, plugin, steps=3), resume=True)
    assert second.step == 3
    a, b = checkpoint_state(files / "straight"), checkpoint_state(files / "split")
    for name in a:
        assert a[name].keys() == b[name].keys()
        for key in a[name]:
            torch.testing.assert_close(a[name][key], b[name][key], rtol=0, atol=0, msg=f"{name} {key}")
    keys = ("round", "reward_mean", "reward_best", "reward_worst", "explore_mean", "policy_loss", "kl")
    logs = [read_csv(files / run_dir / "rewards.csv") for run_dir in ("straight", "split")]
    assert [{k: r[k] for k in keys} for r in logs[0]] == [{k: r[k] for k in keys} for r in logs[1]]
    assert [r["round"] for r in logs[0]] == ["0", "1", "2", "3"]
    clock = [float(r["elapsed_s"]) for r in logs[1] if r["elapsed_s"]]  # the run's clock goes on after a resume
    assert len(clock) == 3 and clock == sorted(clock)
    # Validation at rounds 0, 2 (every 2) and 3 (the last) in both; the time limit also validated round 1.
    assert [bool(r["val_reward"]) for r in logs[0]] == [True, False, True, True]
    assert [r["val_reward"] for r in logs[0]] == [r["val_reward"] if r["round"] != "1" else "" for r in logs[1]]
    assert (files / "straight" / "samples" / "round-000000.png").exists()


def test_one_round_moves_ema_and_old_policy_by_their_formulas(files, base_model):
    from sana.training.rl.loop import RLTrainer

    cfg = _config(files / "one", base_model, files / "prompts.txt", files / "plug.py", steps=1, val_count=0, ema=0.75)
    trainer = RLTrainer(cfg)
    trainer.prepare_data()
    trainer.build()
    before = {n: p.detach().clone() for n, p in trainer.trained}
    trainer.train()
    state = checkpoint_state(files / "one")
    weights, ema, old = state["weights.safetensors"], state["ema.safetensors"], state["old.safetensors"]
    assert any(not torch.equal(weights[n], before[n]) for n in before)
    for name, start in before.items():
        torch.testing.assert_close(ema[name], 0.75 * start + 0.25 * weights[name], rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(old[name], 0.001 * start + 0.999 * weights[name], rtol=1e-6, atol=1e-7)


def test_the_reward_curve_is_redrawn_at_most_every_plot_seconds_and_at_the_end(files, base_model, monkeypatch):
    from sana.training.rl import log as rl_log
    from sana.training.rl import loop

    drawn = []
    real = rl_log.plot_rewards
    monkeypatch.setattr(rl_log, "plot_rewards", lambda log, out: drawn.append(len(read_csv(log))) or real(log, out))
    loop.run(_config(files / "plots", base_model, files / "prompts.txt", files / "plug.py", steps=4, val_count=0))
    assert drawn == [1, 4]  # the first round, then the end (four rounds take less than PLOT_SECONDS)
    assert (files / "plots" / "reward.png").exists()


def test_full_fine_tuning_round_exports_a_model_folder(files, base_model):
    from sana.training.rl.loop import run

    cfg = _config(files / "full", base_model, files / "prompts.txt", files / "plug.py", steps=1, val_count=0,
                  mode="full", lr=1e-4, ema=0.0)
    result = run(cfg)
    assert (result.output / "transformer" / "config.json").exists() and (result.output / "vae").is_dir()




def _scripted_validation(monkeypatch, rewards: dict[int, float | None]) -> None:
    """Validation that returns `rewards[round]` (recorded in rewards.csv, as a grid's mean is) instead of sampling
    and scoring a grid; None is a reward that fails."""
    from sana.rewards.plugins import RewardError
    from sana.training.rl import log as rl_log
    from sana.training.rl.loop import RLTrainer

    def grid(self, step, prompts, state):
        if rewards[step] is None:
            raise RewardError("reward 'brightness' raised ValueError: the judge is asleep")
        fields = rl_log.fields_for(self.components.labels)
        rl_log.set_value(self.out / rl_log.REWARDS_NAME, step, "val_reward", f"{rewards[step]:.6g}", fields)
        return rewards[step]

    monkeypatch.setattr(RLTrainer, "_validation_grid", grid)


def _best_saves(saved: list[tuple[str, Path]]) -> list[str]:
    return [kind for kind, _ in saved if kind.startswith("best")]


def test_the_best_validated_weights_are_kept_beside_the_last(files, base_model, monkeypatch):
    """A run that peaks and falls back: best/ holds the LoRA of the best validated round (the base model's
    validation only sets the bar), best.json says which, and a worse validation never replaces it."""
    from safetensors.torch import load_file

    from sana.training.rl.loop import RLEvents, run

    _scripted_validation(monkeypatch, {0: 0.5, 2: 0.7, 4: 0.6, 6: 0.65})
    saved = []
    cfg = _config(files / "peak", base_model, files / "prompts.txt", files / "plug.py", steps=6, val_every=2,
                  checkpoint_every=2, keep_checkpoints=10)
    result = run(cfg, events=RLEvents(on_saved=lambda kind, path: saved.append((kind, path))))
    assert _best_saves(saved) == ["best so far (round 2, validation reward 0.7)"]
    record = (files / "peak" / "best.json").read_text()
    assert '"round": 2' in record and '"val_reward": 0.7' in record
    best = load_file(str(files / "peak" / "best" / "pytorch_lora_weights.safetensors"))
    last = load_file(str(result.output))
    at_round_2 = load_file(str(files / "peak" / "checkpoints" / "step-000002" / "weights.safetensors"))
    assert best.keys() == last.keys() and any(not torch.equal(best[k], last[k]) for k in best)
    # The checkpoint holds the same LoRA under the model's parameter names (and alpha / r folded into B there).
    assert sum(t.numel() for t in best.values()) == sum(t.numel() for t in at_round_2.values())


def test_the_best_so_far_survives_a_resume(files, base_model, monkeypatch):
    """The time limit stops a run after round 1 (validated and best, after its checkpoint was written); resumed,
    a worse round 2 does not replace it and a better round 4 does."""
    from sana.training.rl.loop import RLEvents, run

    _scripted_validation(monkeypatch, {0: 0.5, 1: 0.9, 2: 0.6, 4: 0.95})
    saved = []
    events = RLEvents(on_saved=lambda kind, path: saved.append((kind, path)))
    run(_config(files / "split", base_model, files / "prompts.txt", files / "plug.py", steps=4, val_every=2,
                max_minutes=1e-6), events=events)
    assert _best_saves(saved) == ["best so far (round 1, validation reward 0.9)"]
    saved.clear()
    run(_config(files / "split", base_model, files / "prompts.txt", files / "plug.py", steps=4, val_every=2),
        resume=True, events=events)
    assert _best_saves(saved) == ["best so far (round 4, validation reward 0.95)"]
    assert '"round": 4' in (files / "split" / "best.json").read_text()


def test_a_new_best_must_beat_the_bar_by_more_than_noise(files, base_model, monkeypatch):
    """0.961218 over 0.961215 is the same images rounded differently, not a better round: best/ stays round 2's."""
    from sana.training.rl.loop import RLEvents, run
    from sana.training.rl.validation import BEST_MARGIN

    _scripted_validation(monkeypatch, {0: 0.5, 2: 0.961215, 4: 0.961218, 6: 0.961215 + 2 * BEST_MARGIN})
    saved = []
    run(_config(files / "noise", base_model, files / "prompts.txt", files / "plug.py", steps=6, val_every=2),
        events=RLEvents(on_saved=lambda kind, path: saved.append((kind, path))))
    assert _best_saves(saved) == ["best so far (round 2, validation reward 0.9612)",
                                  "best so far (round 6, validation reward 0.9614)"]


def test_a_validation_made_up_on_resume_can_be_the_best(files, base_model, monkeypatch):
    """The time limit stops after round 1 and the reward fails at its validation: resumed, round 1 (due because
    the run stopped there, though --val-every is 2) is validated first and beats the bar, then round 4 beats it."""
    from sana.training.rl.loop import RLEvents, run

    _scripted_validation(monkeypatch, {0: 0.5, 1: None})
    saved = []
    events = RLEvents(on_saved=lambda kind, path: saved.append((kind, path)))
    with pytest.raises(SanaError, match=r"\(validation after round 1\); the 1 round\(s\) trained are saved"):
        run(_config(files / "split", base_model, files / "prompts.txt", files / "plug.py", steps=4, val_every=2,
                    max_minutes=1e-6), events=events)
    _scripted_validation(monkeypatch, {1: 0.9, 2: 0.6, 4: 0.95})
    saved.clear()
    run(_config(files / "split", base_model, files / "prompts.txt", files / "plug.py", steps=4, val_every=2),
        resume=True, events=events)
    assert _best_saves(saved) == ["best so far (round 1, validation reward 0.9)",
                                  "best so far (round 4, validation reward 0.95)"]
    assert [r["val_reward"] for r in read_csv(files / "split" / "rewards.csv")] == ["0.5", "0.9", "0.6", "", "0.95"]


def test_full_fine_tuning_keeps_its_best_as_a_model_folder(files, base_model, monkeypatch):
    from sana.training.rl.loop import run

    _scripted_validation(monkeypatch, {0: 0.1, 1: 0.2})
    run(_config(files / "full", base_model, files / "prompts.txt", files / "plug.py", steps=1, mode="full",
                lr=1e-4, ema=0.0))
    best = files / "full" / "best"
    assert (best / "transformer" / "config.json").exists() and (best / "vae").is_dir()


def test_a_reward_failing_mid_run_keeps_a_checkpoint_and_resume_finishes(files, base_model, monkeypatch):
    """Round 2's exploration fails (the reward's third call: a round calls it twice, validation is off): round 1's
    checkpoint is kept and the error says so; once the reward works again, --resume finishes the run."""
    from sana.training.rl.loop import run

    settings = dict(steps=3, val_count=0, reward=f"{files / 'plug.py'}:flaky")
    monkeypatch.setenv("FAIL_AFTER", "2")
    with pytest.raises(SanaError) as info:
        run(_config(files / "run", base_model, files / "prompts.txt", files / "plug.py", **settings))
    assert str(info.value).startswith("reward 'flaky' raised ValueError: the judge is asleep (round 2); the 1 "
                                      "round(s) trained are saved in") and "\n" not in str(info.value)
    assert (files / "run" / "checkpoints" / "step-000001" / "old.safetensors").exists()
    monkeypatch.delenv("FAIL_AFTER")
    result = run(_config(files / "run", base_model, files / "prompts.txt", files / "plug.py", **settings), resume=True)
    assert result.step == 3 and [r["round"] for r in read_csv(files / "run" / "rewards.csv")] == ["1", "2", "3"]


@pytest.mark.parametrize("presses", [1, 2])
def test_ctrl_c_says_at_once_it_stops_after_the_round_and_twice_stops_now(files, base_model, monkeypatch, presses):
    """One Ctrl-C in round 2: a notice at once, then round 2 ends with its checkpoint. Two: out at once, round 1's
    checkpoint kept."""
    import os
    import signal

    from sana.errors import Interrupted
    from sana.training.rl.loop import RLEvents, RLTrainer, run

    real = RLTrainer.train_round

    def train_round(self, step):
        if step == 1:
            for _ in range(presses):
                os.kill(os.getpid(), signal.SIGINT)  # the handler runs before the next line
        return real(self, step)

    monkeypatch.setattr(RLTrainer, "train_round", train_round)
    notes = []
    cfg = _config(files / "run", base_model, files / "prompts.txt", files / "plug.py", steps=4, val_count=0,
                  checkpoint_every=1)
    if presses == 1:
        result = run(cfg, events=RLEvents(on_notice=notes.append))
        assert result.interrupted and result.step == 2 and result.output is None
        assert result.checkpoint == files / "run" / "checkpoints" / "step-000002"
    else:
        with pytest.raises(Interrupted, match=r"stopped at once after round 1; the last checkpoint is kept in .*"
                                              r"step-000001 \(continue with: sana finetune .* --resume\)"):
            run(cfg, events=RLEvents(on_notice=notes.append))
        assert not (files / "run" / "checkpoints" / "step-000002").exists()
    assert notes == ["stopping after this round, with a checkpoint (Ctrl-C again to stop now, keeping the last "
                     "checkpoint)"]


def test_a_reward_failing_at_a_checkpoints_validation_is_validated_on_resume(files, base_model, monkeypatch):
    """The reward fails at the validation after round 5, whose checkpoint was just written: the checkpoint is named
    once, and --resume validates round 5 (its grid and val_reward) before training round 6."""
    from sana.training.rl.loop import RLEvents, run

    # Validation of round 0 is the reward's first call, each round two more: the 12th is round 5's validation.
    settings = dict(steps=6, val_every=5, checkpoint_every=5, reward=f"{files / 'plug.py'}:flaky")
    monkeypatch.setenv("FAIL_AFTER", "11")
    saved, validated = [], []
    events = RLEvents(on_saved=lambda kind, path: saved.append((kind, path.name)),
                      on_validation=lambda step, mean: validated.append(step))
    with pytest.raises(SanaError, match=r"\(validation after round 5\); the 5 round\(s\) trained are saved in"):
        run(_config(files / "run", base_model, files / "prompts.txt", files / "plug.py", **settings), events=events)
    assert [name for kind, name in saved if kind == "checkpoint"] == ["step-000005"]
    assert validated == [0] and not (files / "run" / "samples" / "round-000005.png").exists()
    monkeypatch.delenv("FAIL_AFTER")
    validated.clear()
    run(_config(files / "run", base_model, files / "prompts.txt", files / "plug.py", **settings), resume=True,
        events=events)
    assert validated == [5, 6] and (files / "run" / "samples" / "round-000005.png").exists()
    rows = {r["round"]: r["val_reward"] for r in read_csv(files / "run" / "rewards.csv")}
    assert rows["5"] and rows["6"] and not rows["4"]


def test_an_older_runs_reward_std_is_read_as_adv_std(tmp_path):
    """reward_std was renamed adv_std (it is the advantages' divisor, across prompts, not the spread between
    reward_best and reward_worst): a resumed older run keeps its values; a reward term called std keeps its own."""
    from sana.training.rl import log as rl_log

    path = tmp_path / "rewards.csv"
    path.write_text("round,reward_mean,reward_best,reward_worst,reward_std\n1,0.73,0.7316,0.7315,0.2296\n2,0.8,,,0.2\n")
    fields = rl_log.fields_for(["brightness"])
    rl_log.truncate_rows(path, 1, fields)
    rl_log.append_row(path, {"round": 2, "adv_std": "0.1"}, fields)
    rows = read_csv(path)
    assert [(r["round"], r["adv_std"]) for r in rows] == [("1", "0.2296"), ("2", "0.1")] and "reward_std" not in rows[0]
    fields = rl_log.fields_for(["brightness", "std"])
    rl_log.write_rows(path, [{"round": "1", "adv_std": "0.3", "reward_std": "0.5"}], fields)
    assert rl_log.read_rows(path)[0]["adv_std"] == "0.3" and rl_log.read_rows(path)[0]["reward_std"] == "0.5"


@pytest.mark.parametrize("policy_guidance,g", [(None, 3.0), (2.0, 2.0), (1.0, 1.0)])
def test_with_cfg_rollouts_the_loss_trains_the_guided_velocity(files, base_model, policy_guidance, g, monkeypatch):
    """Rollouts sampled with guidance 3 train the velocity of the sampler being trained, v_u + g (v_c - v_u) with
    g = --policy-guidance (the rollouts' 3 when not given; at 1 the conditional velocity alone), for the current
    policy (both passes: the unconditional branch trains with the conditional one) and the old one; the loss of a
    micro-step against the formulas written out plainly. The export and validation sample at g."""
    from sana.training.rl.loop import RLTrainer

    cfg = _config(files / f"guided-{g}", base_model, files / "prompts.txt", files / "plug.py", steps=1, val_count=0,
                  guidance=3.0, policy_guidance=policy_guidance, mix_guidance=1.5, kl_beta=0.0)
    assert cfg.validation_guidance() == g and cfg.sampling_defaults_for_export()["guidance"] == g
    trainer = RLTrainer(cfg)
    trainer.prepare_data()
    trainer.build()
    settings = trainer._settings()  # the rollouts sample at the rollouts' scales whatever is trained
    assert (settings.guidance, settings.mix_guidance) == (3.0, 1.5)
    # the mix's samples come from the starting model, kept even without a KL term (which then is not computed)
    assert trainer.ref_model is not None and trainer.ref_model is not trainer.old_model
    from sana.training.rl import loop as rl_loop

    mixers = []
    real_rollout = rl_loop.rollout
    monkeypatch.setattr(rl_loop, "rollout", lambda **kw: mixers.append(kw["mix_model"]) or real_rollout(**kw))
    trainer.round_data, _ = trainer.collect(0)
    assert mixers == [trainer.ref_model]
    assert (trainer.round_data.null is None) == (g == 1.0)
    trainer._round_start, trainer._sums = trainer.micro, torch.zeros(2)
    for param in trainer.model.parameters():  # an adapter that does something (peft starts B at zero)
        if param.requires_grad:
            param.data.normal_(0, 0.05, generator=torch.Generator().manual_seed(1))
    loss = trainer.loss(trainer.micro)

    data, beta, clip = trainer.round_data, cfg.nft_beta, cfg.adv_clip
    rows = slice(0, cfg.batch_size)
    x0, t = data.latents[rows], data.sigmas[rows, 0]
    s = t.view(-1, 1, 1, 1)
    x_t = (1 - s) * x0 + s * data.noise[rows, 0]
    text = data.text.index(data.prompt_index[rows])
    timestep = t * 1000.0 * trainer.model.config.timestep_scale

    def sampled(model):
        cond = model(x_t, text.embeds, timestep, text_mask=text.mask).float()
        if g == 1.0:
            return cond
        null = data.null.index([0] * len(text))
        uncond = model(x_t, null.embeds, timestep, text_mask=null.mask).float()
        return uncond + g * (cond - uncond)

    with torch.no_grad():
        v_old, v = sampled(trainer.old_model), sampled(trainer.model)

    def x0_loss(velocity):
        x0_hat = x_t - s * velocity
        weight = (x0_hat - x0).abs().mean(dim=(1, 2, 3), keepdim=True).clamp(min=1e-5)
        return ((x0_hat - x0) ** 2 / weight).mean(dim=(1, 2, 3))

    r = data.r[rows]
    policy = clip * (r * x0_loss((1 - beta) * v_old + beta * v) + (1 - r) * x0_loss((1 + beta) * v_old - beta * v)) / beta
    torch.testing.assert_close(loss.detach().double(), policy.mean().double(), rtol=1e-5, atol=1e-6)
    loss.backward()  # with CFG the empty prompt's pass trains too: its gradient reaches the adapter
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in trainer.model.parameters() if p.requires_grad)


def test_the_loss_trains_at_the_noise_levels_of_the_grid_it_is_given(files, base_model):
    """4-step rollouts with `--train-grid-steps 20`: each sample's training sigmas are distinct sigmas of the 20-step
    sampler (half of them at --timestep-fraction 0.5), not the rollouts' 4; without it, the rollouts' grid."""
    from sana.training.rl.loop import RLTrainer
    from sana.training.rl.rollout import sampler_sigmas

    for grid, expected in [(20, 10), (None, 2)]:
        cfg = _config(files / f"grid-{grid}", base_model, files / "prompts.txt", files / "plug.py", steps=1,
                      val_count=0, timestep_fraction=0.5, train_grid_steps=grid)
        assert cfg.grid_steps == (grid or 4) and cfg.train_timesteps == expected
        trainer = RLTrainer(cfg)
        trainer.prepare_data()
        trainer.build()
        data, _ = trainer.collect(0)
        c = trainer.components
        allowed = sampler_sigmas(grid or 4, c.flow_shift, c.scheduler_config)
        assert data.sigmas.shape == (cfg.prompts_per_round * cfg.keep_seeds, expected)
        for row in data.sigmas.cpu():
            assert len(set(row.tolist())) == expected and all(bool((allowed == s).any()) for s in row)

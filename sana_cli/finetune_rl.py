"""`sana finetune PROMPTS --rl`: reward fine-tuning in the Sol-RL recipe (DiffusionNFT), from `sana finetune`.

The command's options are `sana finetune`'s (one command, one set of flags); this module checks the RL ones,
builds the run's settings and drives `sana.training.rl.loop`. Everything checkable without torch is checked
before it loads: the prompts file, the rewards (names, plugin files, packages, downloaded weights), the model,
`--keep` against `--candidates`, a step-distilled model.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from sana.errors import UsageError

from . import console
from .finetune import StartupInterrupt, TrainingProgress, check_flags, exit_if_interrupted, resume_command
from .finetune_settings import apply_flags

# Flags that only mean something with --rl (without it they are refused, not ignored).
RL_ONLY = ("reward", "candidates", "explore_steps", "rollout_steps", "prompts_per_round", "prompt_pool", "rollout_batch",
           "guidance", "policy_guidance", "mix_guidance", "explore_precision", "nft_beta", "kl", "adv_clip",
           "timestep_fraction", "train_grid_steps", "decay_type", "val_count")
# Flags of supervised fine-tuning that --rl has no use for (RL trains image models only: no --frames).
SUPERVISED_ONLY = ("init", "config", "caption", "trigger", "caption_dropout", "cache", "frames")
RENAMES = {"keep": "keep_seeds", "res": "resolution", "val_prompt": "val_prompts", "compile_model": "compile",
           "kl": "kl_beta", "full": None, "model": None, "resume": None, "resume_from": None, "gpus": None,
           "data": None, "out": None, "rl": None}


def default_out(data) -> Path:
    return Path(f"finetune-{Path(str(data)).expanduser().resolve().name}")


def wants_rl(flags: dict) -> bool:
    """--rl, or --resume of a run folder that holds an RL run."""
    from sana.training.rl.config import is_rl_run

    if flags.get("rl"):
        return True
    continuing = flags.get("resume") or flags.get("resume_from") is not None
    return bool(continuing) and is_rl_run((flags.get("out") or default_out(flags["data"])).expanduser())


def refuse_rl_flags(flags: dict) -> None:
    given = [name for name in RL_ONLY if name in flags]
    if given:
        raise UsageError(f"--{given[0].replace('_', '-')} is an option of reward fine-tuning", "add --rl")


def finetune_rl(flags: dict) -> None:
    """The steps of `sana finetune PROMPTS --rl`."""
    from sana.training.rl.config import RLConfig, is_rl_run

    from .finetune_resume import begin_resume, check_out_folder, listed, refuse_occupied, settings_to_resume

    data, gpus = str(flags["data"]), int(flags.get("gpus", 1))
    if "LOCAL_RANK" in os.environ and "WORLD_SIZE" in os.environ:  # one of torchrun's processes (no --gpus here)
        gpus = int(os.environ["WORLD_SIZE"])
    main_process = int(os.environ.get("RANK", "0")) == 0

    # 1. Settings (a resumed run's own, overridden by the flags given now), all checked before torch loads.
    extra = [name for name in SUPERVISED_ONLY if name in flags]
    if extra:
        raise UsageError(f"--{extra[0].replace('_', '-')} is for supervised fine-tuning on images or clips, not --rl")
    out_dir = (flags.get("out") or default_out(data)).expanduser()
    check_out_folder(out_dir)
    continuing = bool(flags.get("resume")) or flags.get("resume_from") is not None
    if continuing and not (out_dir / "train_config.json").is_file():
        raise UsageError(f"--resume: {out_dir} holds no sana finetune run", "pass the run's folder with --out")
    if continuing and not is_rl_run(out_dir):  # before anything is written: its settings would become an RL run's
        raise UsageError(f"--rl --resume: {out_dir} holds a supervised fine-tuning run, not an RL one",
                         "resume it without --rl, or give an RL run another --out")
    restart = _nothing_trained(out_dir) and flags.get("resume_from") is None
    saved = settings_to_resume(RLConfig, out_dir, flags.get("resume_from")) if continuing else None
    source = _prompt_source(data)
    settings = _settings(flags, data, out_dir, saved, gpus)
    start = None  # (round, folder) of the checkpoint resumed
    if restart:
        # Stopped before its first checkpoint (a reward failing in round 1, Ctrl-C while loading): nothing trained to
        # keep, so it starts over; a --resume from the settings it recorded (never the defaults), the flags given now
        # on top.
        if main_process and saved is not None:
            given = saved.changes(settings, every=True)
            console.notice(f"{out_dir} holds the settings of an RL run that saved no checkpoint; starting it over "
                           "with them (nothing to resume)" + (", changed: " + listed(given) if given else ""))
        elif main_process:
            console.notice(f"{out_dir} holds the settings of an RL run that saved no checkpoint; starting it again, "
                           "replacing its settings and logs")
        continuing = False
    elif saved is not None:
        start = begin_resume(saved, settings, out_dir, flags.get("resume_from"), main_process, "round",
                             "model, rewards and rollout settings")
    elif main_process:
        refuse_occupied(out_dir)
    check_flags(flags, settings, main_process, rl=True)
    settings.validate()
    _refuse_other_families(flags.get("model"), Path(settings.model_dir))
    _check_rewards(settings.reward, source)
    _refuse_distilled(Path(settings.model_dir))
    if settings.prompts_per_round % gpus:
        raise UsageError(f"--prompts-per-round {settings.prompts_per_round} does not split over {gpus} GPUs",
                         "use a multiple of --gpus")
    if gpus > 1 and "LOCAL_RANK" not in os.environ:  # the command itself asked for N processes
        from .launch import check_gpu_count

        check_gpu_count(gpus, str(settings.device or "auto"))
    if settings.optimizer == "adamw8bit":
        import importlib.util

        if importlib.util.find_spec("bitsandbytes") is None:
            raise UsageError("--optimizer adamw8bit needs bitsandbytes", "pip install bitsandbytes, or use --optimizer adamw")

    with StartupInterrupt() as guard:
        try:
            result = _train(flags, settings, out_dir, start, continuing, gpus, main_process, guard)
        except KeyboardInterrupt:  # before the loop took over Ctrl-C (imports, loading), a second Ctrl-C, the export
            raise _interrupted(data, out_dir, guard.phase) from None
    if not main_process:
        return

    # 4. Report.
    exit_if_interrupted(result, data, out_dir, "round")
    console.info(f"trained {result.step} rounds; rewards {out_dir / 'rewards.csv'}, curve {out_dir / 'reward.png'}")
    console.result(str(result.output))


def _train(flags: dict, settings, out_dir: Path, start, continuing: bool, gpus: int, main_process: bool, guard):
    """Steps 2 and 3 of `finetune_rl`: the launch on many GPUs, then the run with its progress line."""
    from .finetune_resume import resume_folder_on_other_ranks, set_aside_later
    from .launch import exec_torchrun, launched_by_torchrun

    # 2. Many GPUs: the standard launcher runs this same command once per GPU (rollouts split by prompt).
    if gpus > 1:
        if not launched_by_torchrun():
            exec_torchrun(gpus)
    from sana.training.rl.loop import run

    from .generation import quiet_libraries

    guard.check()
    quiet_libraries()
    out_dir.mkdir(parents=True, exist_ok=True)

    # 3. Train, with a progress line on the main process only.
    if main_process:
        if flags.get("resume_from") is not None and start is not None:
            flags["resume_from"] = set_aside_later(out_dir, start, settings, rl=True)
        settings.save(out_dir)
    elif flags.get("resume_from") is not None:
        flags["resume_from"] = resume_folder_on_other_ranks(out_dir, flags["resume_from"])
    with _RoundProgress(enabled=main_process and not console.settings.quiet, total=settings.steps) as progress:
        return run(settings, resume=flags.get("resume_from") or continuing,
                   events=guard.guarded(progress.events()))


def _interrupted(data: str, out_dir: Path, phase: str):
    """The error of a Ctrl-C the loop did not turn into a checkpoint: what is kept and how to go on."""
    from sana.errors import Interrupted

    when = {"train": "during training", "export": "while exporting"}.get(phase, "before training started")
    if any((out_dir / "checkpoints").glob("step-*/state.json")):
        return Interrupted(f"interrupted {when}; the last checkpoint is kept",
                           f"continue with: {resume_command(data, out_dir)}")
    if (out_dir / "train_config.json").is_file():  # a --resume starts it over with the settings it recorded
        return Interrupted(f"interrupted {when}; nothing was kept yet (no round was checkpointed)",
                           f"start it again with: {resume_command(data, out_dir)}")
    return Interrupted(f"interrupted {when}; nothing was kept yet", "run the same command to start again")


def _nothing_trained(out_dir: Path) -> bool:
    """The folder holds an RL run's settings but no checkpoint, best weights or export: starting again loses nothing."""
    from sana.training.rl.config import is_rl_run

    if not is_rl_run(out_dir) or any((out_dir / "checkpoints").glob("step-*/state.json")):
        return False
    return not any((out_dir / name).exists() for name in ("pytorch_lora_weights.safetensors", "model", "best"))


def _prompt_source(data: str):
    from sana.training.rl.prompts import read_prompts

    return read_prompts(data)


def _check_rewards(spec: str, source) -> None:
    from sana.rewards.plugins import check_rewards, parse_rewards

    terms = parse_rewards(spec)
    check_rewards(terms)
    if any(t.name == "shapes" and t.path is None for t in terms):
        bad = source.first_non_grammar()
        if bad is not None:
            raise UsageError(f"the shapes reward checks captions of the shapes grammar, and '{bad[:60]}' is not one",
                             "use PROMPTS shapes, or grammar captions such as 'a small red circle on the left on a white background'")


def _refuse_other_families(model_arg: str | None, model_dir: Path) -> None:
    """RL rolls out images: a video or world model is refused before anything loads (its VAE is no DC-AE)."""
    from sana.components import family_from_index, model_index, read_json

    from .generation import FAMILY_NAMES

    family = family_from_index(model_index(model_dir))
    if family is None:  # a folder without model_index.json: its DiT's class says
        name = read_json(model_dir / "transformer" / "config.json").get("_class_name", "")
        family = "video" if "Video" in name else "wm" if "WM" in name or "World" in name else None
    if family in ("video", "wm"):
        raise UsageError(f"--rl fine-tunes image models (SANA / SANA-1.5), and {model_arg or model_dir} is "
                         f"{FAMILY_NAMES[family]}", "use an image model, e.g. --model nano or sana-1.6b")


def _refuse_distilled(model_dir: Path) -> None:
    from sana.components import read_json

    if read_json(model_dir / "transformer" / "config.json").get("guidance_embeds"):
        raise UsageError("RL does not apply to SANA-Sprint: it is step-distilled, and DiffusionNFT's objective is the "
                         "flow-matching loss a distilled model no longer follows", "use a SANA or SANA-1.5 model")


def _settings(flags: dict, data: str, out_dir: Path, saved, gpus: int):
    """RLConfig from the flags given, on top of a resumed run's settings or the recipe's defaults."""
    from sana.training.data import data_fingerprint
    from sana.training.rl.config import PROMPTS_PER_GPU, RLConfig
    from sana.training.rl.prompts import SHAPES_SOURCES

    from .finetune_settings import base_model, base_sampling_defaults, model_name, recorded_data

    if saved is not None:
        base = dataclasses.asdict(saved)
    else:
        model_dir, native = base_model(flags.get("model"))
        base = dataclasses.asdict(RLConfig(data=data, out=str(out_dir), model_dir=str(model_dir), resolution=native,
                                           model=model_name(flags.get("model")),
                                           prompts_per_round=PROMPTS_PER_GPU * gpus,
                                           sampling_defaults=base_sampling_defaults(flags.get("model"))))
        if flags.get("full"):
            base.update(mode="full", lr=2e-5)
    # A grammar's name is compared as a name: a file called `shapes` is not the grammar
    if data in SHAPES_SOURCES:
        recorded = data
    else:
        recorded = recorded_data(data, None if saved is None or saved.data in SHAPES_SOURCES else saved)
    base.update(data=recorded, out=str(out_dir.expanduser().resolve()),
                data_fingerprint=None if data in SHAPES_SOURCES else data_fingerprint(data))
    apply_flags(base, flags, RENAMES, saved)
    base["reward"] = _recorded_reward(base["reward"], saved)
    if not base["val_every"]:
        base["val_every"] = base["checkpoint_every"]
    return RLConfig(**base)


def _recorded_reward(spec: str, saved) -> str:
    """--reward as a run records it: a resumed run's own spelling while it names the same rewards and files (so
    only other rewards show as a change), else with absolute plugin paths and folders (it resumes from anywhere)."""
    from sana.rewards.plugins import same_rewards, with_absolute_paths

    if saved is not None and same_rewards(saved.reward, spec):
        return saved.reward
    return with_absolute_paths(spec)


class _RoundProgress(TrainingProgress):
    """The progress line of an RL run: round, rewards, loss, images/s, memory."""

    def __enter__(self):
        super().__enter__()
        self.task = self.bar.add_task("rounds", total=self.total, status="")
        return self

    def events(self):
        from sana.training.rl.loop import RLEvents

        def on_round(info) -> None:
            explore = f" (explored {info.explore_mean:.4g})" if info.explore_mean is not None else ""
            status = (f"reward {info.reward_mean:.4g}{explore} best {info.reward_best:.4g} worst {info.reward_worst:.4g}"
                      f" | loss {info.policy_loss:.4g} | {info.images_per_s:.1f} img/s | mem {info.memory_gb:.1f} GB")
            self.bar.update(self.task, completed=info.round, status=status)

        return RLEvents(on_round=on_round, **self.notices(),
                        on_validation=lambda step, mean: self.say(f"validation reward at round {step}: {mean:.4g}"))

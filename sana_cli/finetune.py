"""`sana finetune DATA`: LoRA or full fine-tuning (or training from scratch) on a folder of captioned images."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Annotated, List, Optional

import typer

from sana.errors import UsageError
from sana.training.config import TrainConfig

from . import console
from .finetune_resume import (begin_resume, check_out_folder, listed, never_checkpointed, refuse_occupied,
                              resume_folder_on_other_ranks, set_aside_later, settings_to_resume)
from .finetune_settings import check_config_fits, settings_from_flags

Opt = typer.Option


def finetune(
    data: Annotated[Path, typer.Argument(help="Folder of images with same-name .txt captions or a metadata.jsonl; with --rl a prompts file (text, or JSONL with a prompt key) or `shapes`.")],
    model: Annotated[Optional[str], Opt("--model", "-m", help="Base model: registry name, org/repo or local folder.")] = None,
    out: Annotated[Optional[Path], Opt("--out", "-o", help="Run folder (checkpoints, logs, samples, result). Default: finetune-<data>.")] = None,
    full: Annotated[Optional[bool], Opt("--full/--lora", help="Train all DiT weights instead of a LoRA.")] = None,
    init: Annotated[Optional[str], Opt("--init", help="pretrained (default) or random (train from scratch; implies --full).")] = None,
    config: Annotated[Optional[str], Opt("--config", help="DiT config for --init random: a registry model name or a config.json.")] = None,
    res: Annotated[Optional[int], Opt("--res", "-r", help="Training resolution (default: the model's).")] = None,
    frames: Annotated[Optional[int], Opt("--frames", min=1, help="Video models: frames a clip trains on, at the model's frame rate (default: the model's clip length; snapped to its VAE's rule).")] = None,
    steps: Annotated[Optional[int], Opt("--steps", help="Optimizer steps in all (default 1000); with --rl: rounds, one optimizer step each.")] = None,
    batch_size: Annotated[Optional[int], Opt("--batch-size", "-b", help="Images per step and GPU (default 1); with --rl: samples a training forward (default 16).")] = None,
    grad_accum: Annotated[Optional[int], Opt("--grad-accum", help="Micro-batches per optimizer step (default 1).")] = None,
    lr: Annotated[Optional[float], Opt("--lr", help="Learning rate (default 1e-4 LoRA, 2e-5 full, 2e-4 from scratch; with --rl 3e-4 LoRA, 2e-5 full).")] = None,
    lr_schedule: Annotated[Optional[str], Opt("--lr-schedule", help="constant, cosine or linear (after warm-up).")] = None,
    warmup: Annotated[Optional[int], Opt("--warmup", help="Linear warm-up steps.")] = None,
    weight_decay: Annotated[Optional[float], Opt("--weight-decay", help="AdamW weight decay (default 1e-4).")] = None,
    optimizer: Annotated[Optional[str], Opt("--optimizer", help="adamw or adamw8bit (needs bitsandbytes).")] = None,
    max_grad_norm: Annotated[Optional[float], Opt("--max-grad-norm", help="Gradient clipping norm (0 = off; default 1).")] = None,
    ema: Annotated[Optional[float], Opt("--ema", help="EMA decay of the trained weights, e.g. 0.999 (0 = off, the default; with --rl 0.9).")] = None,
    lora_rank: Annotated[Optional[int], Opt("--lora-rank", help="LoRA rank (default 16; with --rl 32).")] = None,
    lora_alpha: Annotated[Optional[float], Opt("--lora-alpha", help="LoRA alpha (default: the rank; with --rl 64).")] = None,
    lora_targets: Annotated[Optional[str], Opt("--lora-targets", help="Comma-separated diffusers module names (default to_q,to_k,to_v; with --rl to_q,to_k,to_v,to_out.0).")] = None,
    lora_dropout: Annotated[Optional[float], Opt("--lora-dropout", help="Dropout on the LoRA input.")] = None,
    seed: Annotated[Optional[int], Opt("--seed", "-s", help="Seed of the data order, noise and initialisation (default 0).")] = None,
    flow_shift: Annotated[Optional[float], Opt("--flow-shift", help="Training flow shift; with --rl the shift of its samplers (rollouts, loss, validation), which the export samples with (default: the model's, else 3).")] = None,
    caption_dropout: Annotated[Optional[float], Opt("--caption-dropout", help="Share of captions replaced by the empty one (for CFG).")] = None,
    caption: Annotated[Optional[str], Opt("--caption", help="One fixed caption for every image (caption files not needed).")] = None,
    trigger: Annotated[Optional[str], Opt("--trigger", help="Word put in front of every caption, e.g. 'sks'.")] = None,
    gradient_checkpointing: Annotated[Optional[bool], Opt("--gradient-checkpointing/--no-gradient-checkpointing", help="Recompute activations in the backward pass (default on).")] = None,
    compile_model: Annotated[Optional[bool], Opt("--compile/--no-compile", help="torch.compile the training step: pays for its start-up on small models and long runs.")] = None,
    precision: Annotated[Optional[str], Opt("--precision", help="auto, bf16, fp16 or fp32.")] = None,
    max_minutes: Annotated[Optional[float], Opt("--max-minutes", help="Stop after this many minutes of training: checkpoint and export what is trained (--resume continues).")] = None,
    checkpoint_every: Annotated[Optional[int], Opt("--checkpoint-every", help="Steps between checkpoints (default 500; with --rl 20 rounds).")] = None,
    keep: Annotated[Optional[int], Opt("--keep", help="Checkpoints kept (default 3). With --rl it counts seeds instead: of the --candidates explored a prompt, the best and worst half kept and trained on (default 24); --keep-checkpoints then counts checkpoints.")] = None,
    keep_checkpoints: Annotated[Optional[int], Opt("--keep-checkpoints", help="Checkpoints kept (default 3), with or without --rl.")] = None,
    val_prompt: Annotated[Optional[List[str]], Opt("--val-prompt", help="Prompt for validation images; repeatable.")] = None,
    val_every: Annotated[Optional[int], Opt("--val-every", help="Steps between validation images (default: at checkpoints).")] = None,
    val_steps: Annotated[Optional[int], Opt("--val-steps", help="Sampling steps of validation images (default 20).")] = None,
    val_guidance: Annotated[Optional[float], Opt("--val-guidance", help="Guidance of validation images (default: the base model's default; with --rl the trained sampler's, --policy-guidance).")] = None,
    log_every: Annotated[Optional[int], Opt("--log-every", help="Steps a line of loss.csv and a progress update covers (default 1).")] = None,
    save_dtype: Annotated[Optional[str], Opt("--save-dtype", help="dtype of an exported full model (default bf16).")] = None,
    cache: Annotated[Optional[Path], Opt("--cache", help="Feature cache folder (default: OUT/cache); share it between runs.")] = None,
    resume: Annotated[bool, Opt("--resume", help="Continue the run in --out from its latest checkpoint.")] = False,
    resume_from: Annotated[Optional[Path], Opt("--resume-from", help=(
        "Continue from this checkpoint folder of the run in --out; what came after it is set aside in "
        "checkpoints/abandoned-*, never deleted."))] = None,
    gpus: Annotated[int, Opt("--gpus", min=1, help="GPUs on this machine: runs itself under torchrun with N processes.")] = 1,
    # None when not given, so that --resume keeps the device the run recorded
    device: Annotated[Optional[str], Opt("--device", help="auto, cuda, cuda:N or cpu (default auto).")] = None,
    rl: Annotated[bool, Opt("--rl", help="Reward fine-tuning in the Sol-RL recipe (DiffusionNFT) on prompts instead of images.")] = False,
    reward: Annotated[Optional[str], Opt("--reward", help="--rl: NAME[:WEIGHT],... of shapes, clip, pickscore, hpsv2, imagereward, or path/file.py:function (default shapes).")] = None,
    candidates: Annotated[Optional[int], Opt("--candidates", help="--rl: seeds explored cheaply a prompt (default 96).")] = None,
    explore_steps: Annotated[Optional[int], Opt("--explore-steps", help="--rl: sampling steps of the cheap exploration (default 6).")] = None,
    rollout_steps: Annotated[Optional[int], Opt("--rollout-steps", help="--rl: sampling steps of the full-quality rollouts (default 10).")] = None,
    train_grid_steps: Annotated[Optional[int], Opt("--train-grid-steps", help="--rl: train at the noise levels of this many sampler steps (default: --rollout-steps; e.g. 20 with 4-step rollouts, for the 20-step sampler).")] = None,
    prompts_per_round: Annotated[Optional[int], Opt("--prompts-per-round", help="--rl: prompts a round over all GPUs (default 6 a GPU).")] = None,
    prompt_pool: Annotated[Optional[int], Opt("--prompt-pool", help="--rl: explore K times the round's prompts and train on those whose seeds disagree most (default 1: every prompt, as the recipe).")] = None,
    rollout_batch: Annotated[Optional[int], Opt("--rollout-batch", help="--rl: images a sampling forward (default 24).")] = None,
    guidance: Annotated[Optional[float], Opt("--guidance", help="--rl: CFG scale of the rollouts (default 1: CFG-free, as the recipe).")] = None,
    mix_guidance: Annotated[Optional[float], Opt("--mix-guidance", help="--rl: every other candidate seed of a prompt is sampled by the starting model (frozen) with this CFG scale instead of --guidance, so each prompt's group holds both kinds (none by default).")] = None,
    policy_guidance: Annotated[Optional[float], Opt("--policy-guidance", help="--rl: CFG scale of the sampler being trained, and the exported model's default (default: --guidance).")] = None,
    explore_precision: Annotated[Optional[str], Opt("--explore-precision", help="--rl: auto (fp8 block linears where the GPU has fp8 GEMMs, else bf16), fp8 or bf16.")] = None,
    nft_beta: Annotated[Optional[float], Opt("--nft-beta", help="--rl: DiffusionNFT's mixing coefficient beta (default 1).")] = None,
    kl: Annotated[Optional[float], Opt("--kl", help="--rl: weight of the KL term to the base model (default 1e-4).")] = None,
    adv_clip: Annotated[Optional[float], Opt("--adv-clip", help="--rl: advantage clip (default 5).")] = None,
    timestep_fraction: Annotated[Optional[float], Opt("--timestep-fraction", help="--rl: share of the training grid's timesteps (--train-grid-steps, else the rollout's) each sample trains on (default 0.6).")] = None,
    decay_type: Annotated[Optional[int], Opt("--decay-type", help="--rl: the old policy's decay: 0 on-policy, 1 or 2 (the recipe's schedules; default 1).")] = None,
    val_count: Annotated[Optional[int], Opt("--val-count", help="--rl: fixed validation prompts when no --val-prompt is given (default 8).")] = None,
) -> None:
    """Fine-tune a SANA model (LoRA by default, or --full), train one from scratch with --init random, or steer one
    toward a reward with --rl."""
    flags = {k: v for k, v in dict(locals()).items() if v is not None}
    main_process = int(os.environ.get("RANK", "0")) == 0  # under torchrun only rank 0 checks and writes
    from .finetune_rl import finetune_rl, refuse_rl_flags, wants_rl

    if wants_rl(flags):
        finetune_rl(flags)
        return
    refuse_rl_flags(flags)

    with StartupInterrupt() as guard:
        _finetune(flags, data, out, resume, resume_from, gpus, main_process, guard)


def _finetune(flags: dict, data: Path, out: Path | None, resume: bool, resume_from: Path | None, gpus: int,
              main_process: bool, guard: "StartupInterrupt") -> None:
    # 1. Settings: a resumed run's own settings, overridden by the flags given now; all checked before torch loads.
    from sana.training.data import check_data_folder

    check_data_folder(data)
    out_dir = (out or Path(f"finetune-{Path(data).resolve().name}")).expanduser()
    check_out_folder(out_dir)
    continuing = resume or resume_from is not None
    if continuing and not (out_dir / "train_config.json").is_file():
        raise UsageError(f"--resume: {out_dir} holds no sana finetune run", "pass the run's folder with --out")
    restart = never_checkpointed(out_dir) and resume_from is None
    cfg = settings_to_resume(TrainConfig, out_dir, resume_from) if continuing else None
    settings = settings_from_flags(flags, data, out_dir, cfg)
    _snap_frames(settings, flags, main_process)
    check_flags(flags, settings, main_process)
    settings.validate()
    if settings.cache_dir and Path(settings.cache_dir).expanduser().exists() and \
            not Path(settings.cache_dir).expanduser().is_dir():
        raise UsageError(f"--cache {settings.cache_dir} is a file, not a folder", "give a folder for the cache")
    start = None  # (step, folder) of the checkpoint resumed
    if cfg is not None and restart:
        # Stopped during start-up (or its data was unusable): nothing trained to keep, so it starts over, from the
        # settings it recorded (a bare --resume must not fall back to the defaults) with the flags given now on top.
        if main_process:
            given = cfg.changes(settings, every=True)
            console.notice(f"{out_dir} holds the settings of a run that saved no checkpoint; starting it over with "
                           "them (nothing to resume)" + (", changed: " + listed(given) if given else ""))
        continuing = False
    elif cfg is not None:
        start = begin_resume(cfg, settings, out_dir, resume_from, main_process, "step",
                             "model, LoRA, optimizer, precision, batch and seed")
    elif restart:
        if main_process:
            console.notice(f"{out_dir} holds the settings of a run that saved no checkpoint; starting it again, "
                           "replacing its settings and logs")
    elif main_process:
        refuse_occupied(out_dir)
    from .finetune_video import check_data_kind

    check_data_kind(Path(data), settings.video)
    if settings.init == "random" and settings.transformer_config:
        check_config_fits(settings.transformer_config, Path(settings.model_dir), str(flags.get("model") or "the model"))
    if settings.compile and main_process and _no_gpu(settings.device):
        console.notice("--compile on a CPU: torch.compile's start-up takes minutes there and rarely pays; it is "
                       "meant for GPUs")
    if settings.optimizer == "adamw8bit" and importlib.util.find_spec("bitsandbytes") is None:
        raise UsageError("--optimizer adamw8bit needs bitsandbytes",
                         "pip install bitsandbytes, or use --optimizer adamw")
    if gpus > 1:
        from .launch import check_gpu_count, launched_by_torchrun

        if not launched_by_torchrun():
            check_gpu_count(gpus, str(settings.device or "auto"))
    _check_usable(settings)  # after the flags: a bad flag is said first, the data's contents last

    # 2. Many GPUs: hand over to the standard launcher, which runs this same command once per GPU.
    if gpus > 1:
        from .launch import exec_torchrun, launched_by_torchrun

        if not launched_by_torchrun():
            exec_torchrun(gpus)
    guard.check()
    from .generation import quiet_libraries

    quiet_libraries()
    if settings.video:
        from sana.training.video_trainer import run
    else:
        from sana.training.trainer import run
    out_dir.mkdir(parents=True, exist_ok=True)

    # 3. Train, with a progress line on the main process only.
    if main_process:
        if resume_from is not None and start is not None:
            resume_from = set_aside_later(out_dir, start, settings)
        settings.save(out_dir)
    elif resume_from is not None:
        resume_from = resume_folder_on_other_ranks(out_dir, resume_from)
    try:
        with _Progress(enabled=main_process and not console.settings.quiet, total=settings.steps,
                       unit="clips" if settings.video else "img") as progress:
            result = run(settings, resume=resume_from or continuing, events=guard.guarded(progress.events()))
    except KeyboardInterrupt:  # before the loop took over Ctrl-C (loading, caching), a second Ctrl-C, the export
        from sana.errors import Interrupted

        saved = never_checkpointed(out_dir) is False
        when = {"train": "during training", "export": "while exporting"}.get(guard.phase, "before training started")
        raise Interrupted(f"interrupted {when}" + (
            "; the last checkpoint is kept" if saved else "; nothing was trained"),
            f"continue with: {resume_command(data, out_dir)}" if saved else
            "run the same command to start again") from None
    if not main_process:
        return

    # 4. Report.
    exit_if_interrupted(result, data, out_dir, "step")
    loss = f"; final loss {result.last_loss:.4g}" if result.last_loss is not None else ""
    console.info(f"trained {result.step} steps{loss}; loss curve {out_dir / 'loss.png'}")
    console.result(str(result.output))


class StartupInterrupt:
    """Ctrl-C until the training loop takes it over (its `StopFlag`) and again once it has let go: raised at once
    as Python does, and remembered, because a KeyboardInterrupt raised inside a `__del__` is printed and lost and
    the run then went on to train. The next start-up event raises it again; one lost after training started is
    handed to the loop's handler (it checkpoints and stops)."""

    def __init__(self):
        self.requested = False
        self.phase = ""  # the run's latest phase: data, cache, model, train, export
        self._previous = None

    def __enter__(self):
        import signal
        import threading

        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc):
        import signal

        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)

    def _handle(self, signum, frame):
        self.requested = True
        raise KeyboardInterrupt

    def check(self) -> None:
        """Raise a Ctrl-C that was lost; once training started, hand it to the loop's own SIGINT handler."""
        if not self.requested:
            return
        if self.phase in ("", "data", "cache", "model"):
            raise KeyboardInterrupt
        import signal

        self.requested = False
        os.kill(os.getpid(), signal.SIGINT)

    def guarded(self, events):
        """`events` with the check before each callback (the engine calls them between its start-up steps)."""
        def wrap(callback):
            def call(*args):
                self.check()
                return callback(*args)
            return call if callback else None

        def phase(name: str) -> None:
            self.check()
            self.phase = name
            if on_phase:
                on_phase(name)

        on_phase = events.on_phase
        for name in ("on_progress", "on_step", "on_notice", "on_saved", "on_data"):
            setattr(events, name, wrap(getattr(events, name)))
        events.on_phase = phase
        return events


def _check_usable(settings) -> None:
    """The data folder holds something to train on (a captioned image, or clip for a video model), found without
    decoding: an empty folder or one without captions fails here, before torch loads and before the run folder
    is written."""
    if settings.video:
        from sana.training.video_data import check_clips as check
    else:
        from sana.training.data import check_images as check
    check(settings.data, caption=settings.caption, trigger=settings.trigger)


def exit_if_interrupted(result, data, out_dir: Path, unit: str) -> None:
    """A run stopped by a signal (`unit`: step or round): where its checkpoint is, how to go on; exit status 130."""
    if result.interrupted:  # one error line (a bare exit 130 had the entry point add a second, "interrupted")
        from sana.errors import Interrupted

        raise Interrupted(f"stopped at {unit} {result.step}; checkpoint saved in {result.checkpoint}",
                          f"continue with: {resume_command(data, out_dir)}")


def resume_command(data, out_dir: Path) -> str:
    """`sana finetune DATA --out OUT --resume` with absolute paths (a prompt grammar by its name), so it works
    from any folder."""
    import shlex

    from sana.training.rl.prompts import SHAPES_SOURCES

    where = str(data) if str(data) in SHAPES_SOURCES else str(Path(data).expanduser().resolve())
    return f"sana finetune {shlex.quote(where)} --out {shlex.quote(str(out_dir.expanduser().resolve()))} --resume"


def _snap_frames(settings, flags: dict, main_process: bool) -> None:
    """--frames snapped down to the video VAE's rule here, so the record says what trains (and a resume given the
    same --frames again matches its record)."""
    if not settings.video or "frames" not in flags:
        return
    from sana.pipelines.sizes import read_video_vae_geometry
    from sana.training.video_data import snap_down

    geometry = read_video_vae_geometry(Path(settings.model_dir))
    frames = snap_down(settings.frames, geometry.temporal)
    if frames != settings.frames:
        if main_process:
            console.notice(f"--frames {settings.frames} snapped to {frames} (the {geometry.label} VAE takes "
                           f"{geometry.temporal}k+1 frames)")
        settings.frames = frames


def check_flags(flags: dict, settings, main_process: bool, rl: bool = False) -> None:
    """Flags that mean nothing with the others given: refused or noted before anything runs (`rl`: a reward
    fine-tuning run, where --keep counts seeds and fixed prompts validate without --val-prompt)."""
    lora_only = [name for name in ("lora_rank", "lora_alpha", "lora_targets", "lora_dropout") if name in flags]
    if settings.mode == "full" and lora_only and main_process:  # noted, not refused: one command line for both modes
        console.notice(f"{', '.join('--' + n.replace('_', '-') for n in lora_only)} ignored: this run trains all "
                       f"weights ({'--init random' if settings.init == 'random' else '--full'}), not a LoRA")
    if "config" in flags and settings.init != "random":
        raise UsageError("--config is the DiT config of a model trained from scratch", "add --init random")
    if not rl and "keep" in flags and "keep_checkpoints" in flags and flags["keep"] != flags["keep_checkpoints"]:
        raise UsageError(f"--keep {flags['keep']} and --keep-checkpoints {flags['keep_checkpoints']} both set how "
                         "many checkpoints are kept", "give one of them")
    validates = bool(settings.val_prompts) or (rl and bool(getattr(settings, "val_count", 0)))
    if "val_every" in flags and not validates and main_process:
        console.notice("--val-every without --val-prompt" + (" and with --val-count 0" if rl else "")
                       + ": no validation images are made")


def _no_gpu(device: str) -> bool:
    """The run will be on the CPU: asked for, or no CUDA device visible (checked without importing torch)."""
    import os
    import shutil

    if device == "cpu":
        return True
    if device.startswith("cuda"):
        return False
    return shutil.which("nvidia-smi") is None and os.environ.get("CUDA_VISIBLE_DEVICES", "") in ("", "-1")


class TrainingProgress:
    """A rich progress bar for a training run on stderr, with notices and saved files printed above it; the
    events that drive it are the subclass's."""

    def __init__(self, enabled: bool, total: int):
        self.enabled, self.total = enabled, total

    def __enter__(self):
        from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        # A bar on a terminal; plain lines every 10 s in a log (`console.progress`).
        self.bar = console.progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                    TextColumn("{task.fields[status]}"), TimeElapsedColumn(), TextColumn("eta"),
                                    TimeRemainingColumn(), enabled=self.enabled)
        self.bar.__enter__()
        self.task = None
        return self

    def __exit__(self, *exc):
        self.bar.__exit__(*exc)

    def say(self, text: str) -> None:
        if self.enabled:
            self.bar.console.print(text, highlight=False)

    def notices(self) -> dict:
        """The `on_notice` and `on_saved` events every run has."""
        from rich.markup import escape

        return {"on_notice": lambda text: self.say(f"[yellow]note:[/yellow] {escape(text)}"),
                "on_saved": lambda kind, path: self.say(escape(f"{kind}: {path}"))}


class _Progress(TrainingProgress):
    """The progress line of supervised training: step, loss, samples/s (`unit`: img or clips), ETA, memory; plus
    caching bars."""

    def __init__(self, enabled: bool, total: int, unit: str = "img"):
        super().__init__(enabled, total)
        self.unit = unit

    def __enter__(self):
        super().__enter__()
        self.cache_task = None
        return self

    def events(self):
        from sana.training.trainer import TrainEvents

        def phase(name: str) -> None:
            if name == "train" and self.task is None:
                self.task = self.bar.add_task("train", total=self.total, status="")

        def progress(what: str, done: int, total: int) -> None:
            if self.cache_task is None:
                self.cache_task = self.bar.add_task(f"encode {what}", total=total, status="")
            self.bar.update(self.cache_task, description=f"encode {what}", completed=done, total=total)

        def step(info) -> None:
            if self.task is None:
                phase("train")
            status = f"loss {info.loss:.4f} | {info.samples_per_s:.2f} {self.unit}/s | lr {info.lr:.2e} | mem {info.memory_gb:.1f} GB"
            self.bar.update(self.task, completed=info.step, status=status)

        def data(report) -> None:
            from rich.markup import escape

            for line in report.lines():  # file names, which may hold [brackets]
                self.say(escape(line))

        return TrainEvents(on_phase=phase, on_progress=progress, on_step=step, on_data=data, **self.notices())

"""The training loop: flow matching on cached latents and caption embeddings, LoRA or full, one GPU or many.

Steps of `train`: scan the data, fill the feature cache (encoders loaded only for what is missing), build the
DiT (pretrained or freshly initialised; LoRA adapters or all weights trainable), restore a checkpoint if
resuming, then loop: each optimizer step is `grad_accum` micro-batches; checkpoints, validation images and
the loss log follow the step count. The random draws of a micro-batch come from a generator seeded by
(seed, micro-batch) and the data order from (seed, epoch), so a resumed run repeats exactly what an
uninterrupted one would have done.

`Trainer` is put together from its parts by role: `features.TrainingData` (data, cache, batches),
`step.OptimizationStep` (model, optimizer, loss, one step) and `saving.CheckpointsAndExport`; this module
holds the loop, validation and `run`.
"""

from __future__ import annotations

import gc
import math
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from ..errors import Interrupted, SanaError
from . import checkpoint as ckpt
from . import distributed
from .config import TrainConfig
from .data import DataReport
from .features import CachedPrompts, TrainingData
from .plot import append_log, last_elapsed, truncate_log
from .runtime import StopFlag as _StopFlag, memory_gb as _memory_gb
from .saving import LOG_NAME, PLOT_NAME, CheckpointsAndExport
from .step import OptimizationStep, build_transformer, compute_dtype, shifted_sigmas

__all__ = ["LOG_NAME", "PLOT_NAME", "StepInfo", "TrainEvents", "TrainResult", "Trainer", "build_transformer",
           "compute_dtype", "run", "run_trainer", "shifted_sigmas"]


@dataclass
class StepInfo:
    step: int
    total: int
    loss: float
    lr: float
    grad_norm: float
    samples_per_s: float
    memory_gb: float


@dataclass
class TrainEvents:
    """Callbacks to whoever drives training; the engine never prints."""

    on_phase: Callable[[str], None] | None = None  # "data" | "cache" | "model" | "train" | "export"
    on_progress: Callable[[str, int, int], None] | None = None  # caching: (what, done, total)
    on_step: Callable[[StepInfo], None] | None = None
    on_notice: Callable[[str], None] | None = None
    on_saved: Callable[[str, Path], None] | None = None  # ("checkpoint" | "sample" | "lora" | "model", path)
    on_data: Callable[[DataReport], None] | None = None  # what was found and skipped, before training starts

    def notice(self, text: str) -> None:
        if self.on_notice:
            self.on_notice(text)

    def saved(self, kind: str, path: Path) -> None:
        if self.on_saved:
            self.on_saved(kind, path)


@dataclass
class TrainResult:
    out: Path
    step: int
    interrupted: bool
    report: DataReport
    output: Path | None = None  # the LoRA file or the model folder
    last_loss: float | None = None
    checkpoint: Path | None = None
    out_of_time: bool = False  # stopped by --max-minutes before --steps


class AnnouncedStop(_StopFlag):
    """The stop flag that says at once what a signal does: a step or an RL round can take minutes on a CPU, and a
    silent first Ctrl-C looked like a hang."""

    def __init__(self, events: TrainEvents, unit: str = "step"):
        super().__init__()
        self.events, self.unit = events, unit

    def _handle(self, signum, frame):
        first = not self.requested
        super()._handle(signum, frame)  # a second Ctrl-C raises KeyboardInterrupt here
        if first:
            again = " (Ctrl-C again to stop now, keeping the last checkpoint)" if signum == signal.SIGINT else ""
            self.events.notice(f"stopping after this {self.unit}, with a checkpoint{again}")


# -- the run ------------------------------------------------------------------------------------------------

class Trainer(TrainingData, OptimizationStep, CheckpointsAndExport):
    def __init__(self, cfg: TrainConfig, events: TrainEvents | None = None):
        cfg.validate()
        self.cfg = cfg
        self.events = events or TrainEvents()
        self.out = Path(cfg.out)
        from ..device import pick_device

        device = pick_device(cfg.device)
        self.world = distributed.setup(device.type)
        if device.type == "cuda" and self.world.distributed:
            device = torch.device("cuda", self.world.local_rank)
        self.device = device
        self.dtype = compute_dtype(cfg.precision, device)
        self._memory = None  # a FeatureTable: the whole feature cache, when it is small enough to hold
        self._elapsed_before = 0.0  # training seconds of the kept history, when resumed (loss.csv's clock)

    # 4. The loop ---------------------------------------------------------------------------------------------
    def train(self, resume: bool | Path = False) -> TrainResult:
        cfg, events, world = self.cfg, self.events, self.world
        log_path = self.out / LOG_NAME
        if resume:
            self._restore(resume)
            if world.is_main:
                truncate_log(log_path, self.micro // cfg.grad_accum)
                self._elapsed_before = last_elapsed(log_path)
        if events.on_phase:
            events.on_phase("train")
        step = self.micro // cfg.grad_accum
        result = TrainResult(out=self.out, step=step, interrupted=False, report=self.report)
        started = time.perf_counter()
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        with AnnouncedStop(events) as stop:
            try:
                return self._loop(stop, result, step, started)
            except KeyboardInterrupt:  # a second Ctrl-C: stop inside the step
                raise self.stopped_now(result.step) from None

    def _loop(self, stop: _StopFlag, result: TrainResult, step: int, started: float) -> TrainResult:
        cfg, events, world = self.cfg, self.events, self.world
        log_path = self.out / LOG_NAME
        samples_seen = 0
        pending, pending_steps = torch.zeros((), device=self.device), 0  # loss summed since the last log line
        while step < cfg.steps:
            pending += self._optimizer_step()
            pending_steps += 1
            step += 1
            result.step = step  # what a second Ctrl-C reports
            samples_seen += cfg.batch_size * cfg.grad_accum * world.size
            stopping, finishing = self._stop_checks(stop, started)
            checkpoint_now = stopping or finishing or step % cfg.checkpoint_every == 0 or step == cfg.steps
            # Reading the loss waits for the GPU: only at log lines, so small models are not host-bound.
            if step % cfg.log_every == 0 or checkpoint_now:
                loss_value = distributed.mean(pending / pending_steps, world).item()
                pending, pending_steps = torch.zeros((), device=self.device), 0
                if not math.isfinite(loss_value):
                    raise SanaError(f"the loss became {loss_value} at step {step}",
                                    "lower --lr, or use --precision fp32 / bf16 instead of fp16")
                result.last_loss = loss_value
                elapsed = time.perf_counter() - started
                info = StepInfo(step=step, total=cfg.steps, loss=loss_value, lr=self.scheduler.get_last_lr()[0],
                                grad_norm=float(self._last_grad_norm), samples_per_s=samples_seen / max(elapsed, 1e-9),
                                memory_gb=_memory_gb(self.device))
                if world.is_main:
                    append_log(log_path, {"step": step, "loss": f"{loss_value:.6g}", "lr": f"{info.lr:.6g}",
                                          "grad_norm": f"{info.grad_norm:.4g}",
                                          "samples_per_s": f"{info.samples_per_s:.4g}",
                                          "elapsed_s": f"{self._elapsed_before + elapsed:.1f}"})  # the run's clock
                if events.on_step:
                    events.on_step(info)
            if checkpoint_now:
                result.checkpoint = self.save_checkpoint(step)
            if cfg.val_prompts and cfg.val_every and (step % cfg.val_every == 0 or step == cfg.steps) and not stopping:
                self.validate(step)
            if self._loop_ends(result, step, stopping, finishing):
                break
        return self._finish(result, step)

    def stopped_now(self, done: int, unit: str = "step") -> Interrupted:
        """The error of a second Ctrl-C, after `done` finished steps (`unit`: step or round): what is kept."""
        saved = ckpt.list_checkpoints(self.out)
        if not saved:
            return Interrupted(f"stopped at once after {unit} {done}; no checkpoint was saved yet",
                               "run the same command to start again")
        return Interrupted(f"stopped at once after {unit} {done}; the last checkpoint is kept in {saved[-1][1]}",
                           f"continue with: sana finetune {self.cfg.data} --out {self.out} --resume")

    def _stop_checks(self, stop: _StopFlag, started: float) -> tuple[bool, bool]:
        """(stopping, finishing) as every process agrees: a signal only pauses the run (checkpoint, no export);
        the time limit ends it like its last step (checkpoint, then export)."""
        cfg, world = self.cfg, self.world
        out_of_time = bool(cfg.max_minutes) and time.perf_counter() - started >= cfg.max_minutes * 60
        stopping = distributed.any_rank(stop.requested, world, self.device)
        finishing = distributed.any_rank(out_of_time, world, self.device) and not stopping
        return stopping, finishing

    def _loop_ends(self, result: TrainResult, step: int, stopping: bool, finishing: bool, unit: str = "step") -> bool:
        """Whether the loop stops after `step` (`unit`: step or round), noted in `result`."""
        if stopping:
            result.interrupted = True
            return True
        if finishing:
            result.out_of_time = True
            self.events.notice(f"--max-minutes {self.cfg.max_minutes:g} reached at {unit} {step}: exporting it "
                               f"(--resume continues to {unit} {self.cfg.steps})")
            return True
        return False

    def _finish(self, result: TrainResult, step: int) -> TrainResult:
        """The result after the loop: exported unless a signal stopped it."""
        result.step = step
        if not result.interrupted:
            result.output = self.export()
        return result

    # 6. Validation images -----------------------------------------------------------------------------------------
    @torch.no_grad()
    def validate(self, step: int) -> None:
        from ..components import load_vae
        from ..outputs import GenerationRecord, save_image
        from ..pipelines.image import ImagePipeline, ImageRequest

        cfg, size = self.cfg, self.cfg.resolution

        def pipeline(prompts: CachedPrompts) -> ImagePipeline:
            vae = load_vae(Path(cfg.model_dir), dtype=self.dtype if self.dtype != torch.float16 else torch.float32,
                           device=self.device)
            return ImagePipeline(transformer=self.model, text_encoder=prompts, vae=vae, family="sana",
                                 scheduler_config=self.scheduler_config, device=self.device, dtype=self.dtype,
                                 cuda_graphs=False)

        def generate(pipe: ImagePipeline, folder: Path) -> None:
            for index, prompt in enumerate(cfg.val_prompts):
                request = ImageRequest(prompt=prompt, seeds=[cfg.val_seed], width=size, height=size,
                                       steps=cfg.val_steps, guidance=cfg.validation_guidance(), sampler="flow-dpm",
                                       flow_shift=self.flow_shift)
                with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype != torch.float32):
                    image = pipe.generate(request).images[0]
                if self.world.is_main:
                    record = GenerationRecord(prompt=prompt, seed=cfg.val_seed, steps=cfg.val_steps,
                                              guidance=cfg.validation_guidance(), sampler="flow-dpm",
                                              flow_shift=self.flow_shift, width=size, height=size,
                                              **self.sample_source(step))
                    path = save_image(image, folder / f"step-{step:06d}-{index}.png", record, force=True)
                    self.events.saved("sample", path)

        self.sample_validation(pipeline, generate)

    def sample_source(self, step: int, extra: dict | None = None) -> dict:
        """A validation sample's record fields for where it came from: the base model as `model` (what `--from` can
        load), the run and step in `extra` with a note, since the weights of that step are only in a checkpoint,
        which `--lora` / `--model` do not read."""
        cfg, run = self.cfg, self.out.resolve()
        result = f"--lora {run / 'pytorch_lora_weights.safetensors'}" if cfg.mode == "lora" else f"--model {run / 'model'}"
        what = "the DiT this run trains from scratch" if cfg.init == "random" else f"step {step}'s weights"
        note = (f"--from replays the base model alone, not {what} (only in a checkpoint at step {step}); the run's "
                f"result loads with {result} once the run ends")
        return {"model": cfg.model or cfg.model_dir, "extra": {"training_step": step, "run": str(run), "replay": note, **(extra or {})}}

    def sample_validation(self, pipeline: Callable, generate: Callable) -> None:
        """`generate(pipe, folder)` on the pipeline `pipeline(prompts)` builds around the DiT (prompts answered from
        the feature cache): the DiT in eval mode on the reference ops meanwhile, put back and the pipeline freed after."""
        from .. import ops

        pipe = pipeline(CachedPrompts(self, self.text_keys))
        was_enabled = ops.kernels_enabled()
        ops.set_kernels_enabled(False)  # mixed fp32 / bf16 weights under autocast: the reference ops take any dtype
        self.model.eval()
        folder = self.out / "samples"
        folder.mkdir(parents=True, exist_ok=True)
        try:
            generate(pipe, folder)
        finally:
            ops.set_kernels_enabled(was_enabled)
            self.model.train()
            del pipe  # the VAE with it
            if self.device.type == "cuda":
                torch.cuda.empty_cache()


def run_trainer(trainer_class: type[Trainer], cfg: TrainConfig, *, resume: bool | Path = False,
                events: TrainEvents | None = None) -> TrainResult:
    """The whole life of a run of `trainer_class` (a `Trainer` or one built on it), process group included."""
    trainer = trainer_class(cfg, events)
    try:
        trainer.check_lora_targets()
        trainer.prepare_data()
        trainer.build()
        result = trainer.train(resume)
        # Every rank done (the main one writes the export alone) before the group goes: a gloo rank that destroyed
        # it while a peer still held a connection once aborted at exit ("terminate called without an active
        # exception").
        distributed.barrier(trainer.world)
        return result
    finally:
        # The model, optimizer and FSDP state go while the group and the interpreter are alive: work handles they
        # still hold, freed during the interpreter's finalization after the group is gone, abort a gloo rank at
        # exit with the same message (seen again under load after the barrier above).
        world, trainer = trainer.world, None
        if world.distributed:
            gc.collect()
        distributed.teardown()


def run(cfg: TrainConfig, *, resume: bool | Path = False, events: TrainEvents | None = None) -> TrainResult:
    """Train as `cfg` says; the whole life of a run (process group included)."""
    return run_trainer(Trainer, cfg, resume=resume, events=events)

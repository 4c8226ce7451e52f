"""Checkpoints and the export of `Trainer`: a checkpoint holds the trained weights, EMA, optimizer, schedule and
scaler state, each rank's random state and the step, written to a staging folder and committed whole; `--resume`
reads one back. The export is a diffusers LoRA file or a diffusers-format model folder, from EMA weights if on.
Under FSDP2 every rank gathers (or shards back) the full tensors; the main rank writes.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import SanaError, UsageError
from . import checkpoint as ckpt
from . import distributed
from .plot import plot_loss
from .schedule import apply_schedule

LOG_NAME = "loss.csv"
PLOT_NAME = "loss.png"


class CheckpointsAndExport:
    """`Trainer`'s checkpoints and export (see trainer.py)."""

    # 5. Checkpoints ---------------------------------------------------------------------------------------------
    def _state_options(self, **kw):
        from torch.distributed.checkpoint.state_dict import StateDictOptions

        return StateDictOptions(full_state_dict=True, cpu_offload=True, ignore_frozen_params=True, **kw)

    def _gather(self) -> tuple[dict, dict]:
        """Trainable weights and optimizer state as full (unsharded) CPU dicts keyed by parameter name."""
        from torch.distributed.checkpoint.state_dict import get_state_dict

        if not self.world.distributed:
            weights = {n: p.detach().cpu() for n, p in self.model.named_parameters() if p.requires_grad}
            optim = self.optimizer.state_dict()
            return weights, optim
        return get_state_dict(self.model, self.optimizer, options=self._state_options())

    def _gather_weights(self) -> dict:
        """Trainable weights alone as a full (unsharded) CPU dict (every process takes part under FSDP)."""
        if not self.world.distributed:
            return {n: p.detach().cpu() for n, p in self.model.named_parameters() if p.requires_grad}
        from torch.distributed.checkpoint.state_dict import get_model_state_dict

        return get_model_state_dict(self.model, options=self._state_options())

    def save_checkpoint(self, step: int) -> Path | None:
        cfg, world = self.cfg, self.world
        weights, optim = self._gather()
        ema = {n: (t.full_tensor() if hasattr(t, "full_tensor") else t) for n, t in self.ema.items()} if self.ema else None
        staged = ckpt.staging_dir(self.out, step)
        if world.is_main:
            ckpt.begin(self.out, step)
        distributed.barrier(world)
        with ckpt.writing(self.out):
            torch.save(ckpt.rng_state(), staged / f"rng-rank{world.rank}.pt")
            self.save_extras(staged)
        final = None
        if world.is_main:
            with ckpt.writing(self.out):
                ckpt.save_tensors(staged / "weights.safetensors", weights)
                if ema is not None:
                    ckpt.save_tensors(staged / "ema.safetensors", ema)
                torch.save({"optimizer": optim, "scheduler": self.scheduler.state_dict(),
                            "scaler": self.scaler.state_dict()}, staged / "state.pt")
        distributed.barrier(world)
        if world.is_main:
            with ckpt.writing(self.out):
                ckpt.write_json(staged / "state.json", {"step": step, "micro": self.micro,
                                                        "world_size": world.size, "data": self._data_fingerprint()})
                final = ckpt.commit(self.out, step, cfg.keep_checkpoints)
            if (self.out / LOG_NAME).exists():
                plot_loss(self.out / LOG_NAME, self.out / PLOT_NAME)
            self.events.saved("checkpoint", final)
        distributed.barrier(world)
        return final if world.is_main else ckpt.checkpoint_root(self.out) / f"step-{step:06d}"

    def save_extras(self, staged: Path) -> None:
        """More state for a trainer built on this one (every rank calls it; the main rank writes)."""

    def restore_extras(self, folder: Path) -> None:
        """Read back what `save_extras` wrote."""

    def _data_fingerprint(self) -> str:
        import hashlib

        return hashlib.sha256("|".join(f"{it.latent}:{it.text}" for it in self.items).encode()).hexdigest()[:16]

    def _restore(self, resume: bool | Path) -> None:
        from torch.distributed.checkpoint.state_dict import set_state_dict

        if resume is True:
            found = ckpt.list_checkpoints(self.out)
            if not found:
                raise UsageError(f"no checkpoint to resume in {self.out / 'checkpoints'}", "start without --resume")
            folder = found[-1][1]
        else:
            folder = Path(resume)
            if not (folder / "state.json").is_file():
                raise UsageError(f"{folder} is not a complete checkpoint (no state.json)")
        state = ckpt.read_json(folder / "state.json")
        if int(state["step"]) > self.cfg.steps:  # it would export the later weights as if they were step `steps`
            raise UsageError(f"the checkpoint {folder.name} is at step {state['step']}, past --steps {self.cfg.steps}",
                             f"give --steps {state['step']} or more, or resume from an earlier checkpoint")
        if state.get("world_size", 1) != self.world.size:
            self.events.notice(f"the checkpoint was written by {state.get('world_size')} process(es), this run has "
                               f"{self.world.size}: the data order changes from here")
        if state.get("data") != self._data_fingerprint():
            self.events.notice("the training data changed since the checkpoint: the data order changes from here")
        weights = ckpt.load_tensors(folder / "weights.safetensors")
        trainable = {n for n, p in self.model.named_parameters() if p.requires_grad}
        missing = sorted(trainable - set(weights))
        if missing:
            raise SanaError(f"the checkpoint {folder.name} lacks {len(missing)} trained weight(s), e.g. {missing[0]}",
                            "it belongs to another run configuration")
        saved = ckpt.load_state(folder / "state.pt")
        if self.world.distributed:
            set_state_dict(self.model, self.optimizer, model_state_dict=weights, optim_state_dict=saved["optimizer"],
                           options=self._state_options(strict=False))
        else:
            params = dict(self.model.named_parameters())
            with torch.no_grad():
                for name in trainable:
                    params[name].copy_(weights[name])
            self.optimizer.load_state_dict(saved["optimizer"])
        self.scheduler.load_state_dict(saved["scheduler"])
        apply_schedule(self.optimizer, self.scheduler, self.cfg)
        self.scaler.load_state_dict(saved["scaler"])
        if self.ema is not None:
            ema = ckpt.load_tensors(folder / "ema.safetensors")
            for name, tensor in self.ema.items():
                full = ema[name]
                if hasattr(tensor, "device_mesh"):  # FSDP2: keep only this rank's shard
                    from torch.distributed.tensor import distribute_tensor

                    full = distribute_tensor(full.to(tensor.device), tensor.device_mesh, tensor.placements)
                tensor.copy_(full)
        self.restore_extras(folder)
        rng = folder / f"rng-rank{self.world.rank}.pt"
        if rng.is_file():
            ckpt.set_rng_state(ckpt.load_state(rng))
        self.micro = int(state["micro"])
        self.events.notice(f"resumed from {folder.name} (step {state['step']})")

    # 7. Export ------------------------------------------------------------------------------------------------
    def export(self) -> Path | None:
        """The LoRA file (diffusers format) or the full model (diffusers-format folder), from EMA weights if on."""
        if self.events.on_phase:
            self.events.on_phase("export")
        weights, _ = self._gather()
        if self.ema is not None:
            weights = {n: (t.full_tensor() if hasattr(t, "full_tensor") else t).cpu() for n, t in self.ema.items()}
        if not self.world.is_main:
            distributed.barrier(self.world)
            return None
        path = self.write_weights(weights, self.out, self.out / "model")
        self.events.saved("lora" if self.cfg.mode == "lora" else "model", path)
        if (self.out / LOG_NAME).exists():
            plot_loss(self.out / LOG_NAME, self.out / PLOT_NAME)
        distributed.barrier(self.world)
        return path

    def write_weights(self, weights: dict[str, torch.Tensor], lora_folder: Path, model_folder: Path) -> Path:
        """Trained weights (full, CPU, by parameter name) as what this run exports: a LoRA file in `lora_folder`,
        or a full model folder at `model_folder`. Main process only."""
        if self.cfg.mode == "lora":
            from .adapters import save_lora

            params = dict(self.model.named_parameters())
            backup = {n: params[n].detach().clone() for n in weights}
            with torch.no_grad():
                for name, tensor in weights.items():
                    params[name].copy_(tensor)
            try:
                return save_lora(self.model, self.lora_config, lora_folder,
                                 sampling_defaults=self.cfg.lora_sampling_defaults())
            finally:
                with torch.no_grad():
                    for name, tensor in backup.items():
                        params[name].copy_(tensor)
        from .export import save_model_folder

        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[self.cfg.save_dtype]
        return save_model_folder(weights, self.model.config, Path(self.cfg.model_dir), model_folder, dtype,
                                 self.cfg.sampling_defaults_for_export(), flow_shift=self.cfg.sampler_flow_shift)

"""What our samplers share: the config (diffusers' `scheduler_config.json` fields), the step counter, the timestep
lookup, the choice between ours and diffusers' class, and diffusers' way of drawing noise from CPU generators."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch


class SchedulerConfig(dict):
    """A scheduler's settings: every field of diffusers' class (its defaults where the model's file has none),
    readable as attributes (`scheduler.config.flow_shift`) as diffusers' `FrozenDict` is."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


@dataclass
class SchedulerOutput:
    prev_sample: torch.Tensor
    pred_original_sample: torch.Tensor | None = None


class Scheduler:
    """The interface the pipelines use, as diffusers' schedulers have it: `set_timesteps`, `timesteps`, `step(...)`
    (`.prev_sample`, or a tuple with `return_dict=False`), `step_index` / `begin_index` / `set_begin_index`,
    `scale_model_input`, `config`, `order`, `init_noise_sigma`.

    Subclasses name diffusers' class (`DIFFUSERS_CLASS`), its fields with their defaults (`DEFAULTS`) and the values
    of each field our arithmetic implements (`SUPPORTED`; a field not listed there does not change the arithmetic).
    """

    DIFFUSERS_CLASS = ""
    DEFAULTS: dict[str, Any] = {}
    SUPPORTED: dict[str, tuple] = {}
    order = 1
    init_noise_sigma = 1.0

    def __init__(self, **config: Any):
        unknown = set(config) - set(self.DEFAULTS)
        if unknown:
            raise TypeError(f"{type(self).__name__} has no field(s) {', '.join(sorted(unknown))}")
        self.config = SchedulerConfig({**self.DEFAULTS, **config})
        if self.unsupported(self.config):
            raise ValueError(f"{type(self).__name__} does not implement {', '.join(self.unsupported(self.config))}; "
                             f"use diffusers' {self.DIFFUSERS_CLASS} (`build`)")
        self.num_inference_steps: int | None = None
        self._step_index: int | None = None
        self._begin_index: int | None = None

    @classmethod
    def unsupported(cls, config: dict) -> list[str]:
        """`field=value` for each field of `config` whose value our arithmetic does not implement."""
        return [f"{name}={config[name]!r}" for name, allowed in cls.SUPPORTED.items()
                if name in config and not any(config[name] == v and type(config[name]) is type(v) for v in allowed)]

    @property
    def step_index(self) -> int | None:
        return self._step_index

    @property
    def begin_index(self) -> int | None:
        return self._begin_index

    def set_begin_index(self, begin_index: int = 0) -> None:
        self._begin_index = begin_index

    def scale_model_input(self, sample: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        return sample

    def index_for_timestep(self, timestep: float | torch.Tensor, schedule_timesteps: torch.Tensor | None = None) -> int:
        """The schedule index of `timestep`: the second match where it occurs twice (so a schedule entered in the
        middle does not skip a sigma), as diffusers' flow schedulers look it up."""
        schedule = self.timesteps if schedule_timesteps is None else schedule_timesteps
        indices = (schedule == timestep).nonzero()
        return indices[1 if len(indices) > 1 else 0].item()

    def _init_step_index(self, timestep: float | torch.Tensor) -> None:
        if self._begin_index is not None:
            self._step_index = self._begin_index
            return
        if isinstance(timestep, torch.Tensor):
            timestep = timestep.to(self.timesteps.device)
        self._step_index = self.index_for_timestep(timestep)

    def __len__(self) -> int:
        return self.config.num_train_timesteps


def build(cls: type[Scheduler], config: dict, *, reference: bool = False):
    """`cls` configured by `config` (a scheduler_config.json dict; fields `cls` does not know, such as
    `_class_name`, are ignored), or diffusers' class where `config` asks for what ours does not implement, or
    where `reference` is set (diffusers' own pipelines take only diffusers' schedulers). diffusers is imported
    only then."""
    known = {k: v for k, v in config.items() if k in cls.DEFAULTS}
    if not reference and not cls.unsupported({**cls.DEFAULTS, **known}):
        return cls(**known)
    import diffusers

    return getattr(diffusers, cls.DIFFUSERS_CLASS).from_config({k: v for k, v in config.items()
                                                                 if not k.startswith("_")})


def randn_like_diffusers(shape: tuple[int, ...], generator: torch.Generator | list[torch.Generator] | None,
                         device: torch.device, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Standard normal noise [B, ...] as diffusers' `randn_tensor` draws it: a row from each generator of a list
    (one generator when the list has one), drawn on the CPU when the generators are CPU ones, then moved."""
    device = torch.device(device)
    draw_on = device
    if isinstance(generator, list) and len(generator) == 1:
        generator = generator[0]
    if generator is not None:
        generator_type = (generator[0] if isinstance(generator, list) else generator).device.type
        if generator_type == "cpu" and device.type != "cpu":
            draw_on = torch.device("cpu")
        elif generator_type != device.type:
            raise ValueError(f"cannot draw a {device} tensor from a {generator_type} generator")
    if isinstance(generator, list):
        rows = [torch.randn((1, *shape[1:]), generator=generator[i], device=draw_on, dtype=dtype)
                for i in range(shape[0])]
        return torch.cat(rows).to(device)
    return torch.randn(shape, generator=generator, device=draw_on, dtype=dtype).to(device)

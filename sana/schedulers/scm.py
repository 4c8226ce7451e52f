"""SCM (continuous-time consistency) sampling in TrigFlow time, SANA-Sprint's sampler: the arithmetic of diffusers'
`SCMScheduler`.

TrigFlow: x_theta = cos(theta) x0 + sin(theta) noise, theta in [0, pi/2]; the model predicts F with
x0 = cos(s) x - sin(s) F. Each step denoises to x0 and, as a multistep consistency sampler does, re-noises it to
the next theta with fresh noise (times `sigma_data`) drawn from the generators in diffusers' order.

Implemented: `prediction_type` "trigflow", any `sigma_data` and `num_train_timesteps`; timesteps from
`max_timesteps` (evenly spaced to 0), from `max_timesteps` and `intermediate_timesteps` (2 steps), or given.
"""

from __future__ import annotations

import numpy as np
import torch

from .base import Scheduler, SchedulerOutput, randn_like_diffusers


class SCMSampler(Scheduler):
    """timesteps [n + 1] fp32 thetas, largest first, ending at 0 (the last is a target, not a step)."""

    DIFFUSERS_CLASS = "SCMScheduler"
    DEFAULTS = {"num_train_timesteps": 1000, "prediction_type": "trigflow", "sigma_data": 0.5}
    SUPPORTED = {"prediction_type": ("trigflow",)}

    def __init__(self, **config):
        super().__init__(**config)
        self.timesteps = torch.from_numpy(np.arange(0, self.config.num_train_timesteps)[::-1].copy().astype(np.int64))

    def set_timesteps(self, num_inference_steps: int, timesteps: list[float] | torch.Tensor | None = None,
                      device: str | torch.device | None = None, max_timesteps: float | None = 1.57080,
                      intermediate_timesteps: float | None = 1.3) -> None:
        """diffusers' rules: `timesteps` (n + 1 of them) excludes `max_timesteps`; `intermediate_timesteps` only with
        2 steps (pass None otherwise)."""
        if num_inference_steps > self.config.num_train_timesteps:
            raise ValueError(f"num_inference_steps {num_inference_steps} exceeds num_train_timesteps "
                             f"{self.config.num_train_timesteps}")
        if timesteps is not None and len(timesteps) != num_inference_steps + 1:
            raise ValueError("custom timesteps must number num_inference_steps + 1")
        if timesteps is not None and max_timesteps is not None:
            raise ValueError("give custom timesteps or max_timesteps, not both")
        if timesteps is None and max_timesteps is None:
            raise ValueError("give custom timesteps or max_timesteps")
        if intermediate_timesteps is not None and num_inference_steps != 2:
            raise ValueError("intermediate_timesteps applies to 2 steps only")
        self.num_inference_steps = num_inference_steps
        if timesteps is not None:
            if isinstance(timesteps, list):
                self.timesteps = torch.tensor(timesteps, device=device).float()
            elif isinstance(timesteps, torch.Tensor):
                self.timesteps = timesteps.to(device).float()
            else:
                raise ValueError(f"unsupported timesteps type {type(timesteps).__name__}")
        elif intermediate_timesteps is not None:
            self.timesteps = torch.tensor([max_timesteps, intermediate_timesteps, 0], device=device).float()
        else:
            self.timesteps = torch.linspace(max_timesteps, 0, num_inference_steps + 1, device=device).float()
        self._step_index = None
        self._begin_index = None

    def step(self, model_output: torch.Tensor, timestep: float | torch.Tensor, sample: torch.Tensor,
             generator: torch.Generator | list[torch.Generator] | None = None, return_dict: bool = True):
        """The TrigFlow prediction `model_output` at theta s for `sample` [B, ...] -> (the sample re-noised to the
        next theta t, the denoised estimate x0). Noise [B, ...] fp32 is drawn at every step, a row per generator,
        even where t is 0 (then it is multiplied by sin(0) = 0)."""
        if self.num_inference_steps is None:
            raise ValueError("call set_timesteps before step")
        if self._step_index is None:
            self._init_step_index(timestep)
        t, s = self.timesteps[self._step_index + 1], self.timesteps[self._step_index]
        pred_x0 = torch.cos(s) * sample - torch.sin(s) * model_output
        if len(self.timesteps) > 1:
            noise = randn_like_diffusers(model_output.shape, generator, model_output.device) * self.config.sigma_data
            prev_sample = torch.cos(t) * pred_x0 + torch.sin(t) * noise
        else:
            prev_sample = pred_x0
        self._step_index += 1
        if not return_dict:
            return prev_sample, pred_x0
        return SchedulerOutput(prev_sample, pred_x0)

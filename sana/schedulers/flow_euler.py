"""Flow-matching Euler with a shift: the arithmetic of diffusers' `FlowMatchEulerDiscreteScheduler`, including its
per-token step (`per_token_timesteps`, SANA-WM's timestep per token).

Implemented: `shift` (any), `num_train_timesteps`, and the fields that do not change the schedule without dynamic
shifting (`base_shift`, `max_shift`, `base_image_seq_len`, `max_image_seq_len`, `time_shift_type`). Dynamic
shifting, `invert_sigmas`, `shift_terminal`, Karras / exponential / beta sigmas and stochastic sampling are
diffusers' class (`sana.schedulers.build` picks it).

Note the shift is applied twice, as diffusers does: once to the training sigmas whose ends bound the schedule, and
again to the sigmas spaced evenly between those ends.
"""

from __future__ import annotations

import numpy as np
import torch

from .base import Scheduler, SchedulerOutput


class FlowEuler(Scheduler):
    """x_next = x + (sigma_next - sigma) v. timesteps [n] fp32 (sigma x 1000), sigmas [n + 1] fp32 ending at 0,
    both on the device given to `set_timesteps`."""

    DIFFUSERS_CLASS = "FlowMatchEulerDiscreteScheduler"
    DEFAULTS = {
        "num_train_timesteps": 1000, "shift": 1.0, "use_dynamic_shifting": False, "base_shift": 0.5,
        "max_shift": 1.15, "base_image_seq_len": 256, "max_image_seq_len": 4096, "invert_sigmas": False,
        "shift_terminal": None, "use_karras_sigmas": False, "use_exponential_sigmas": False,
        "use_beta_sigmas": False, "time_shift_type": "exponential", "stochastic_sampling": False,
    }
    SUPPORTED = {
        "use_dynamic_shifting": (False,), "invert_sigmas": (False,), "shift_terminal": (None,),
        "use_karras_sigmas": (False,), "use_exponential_sigmas": (False,), "use_beta_sigmas": (False,),
        "time_shift_type": ("exponential", "linear"), "stochastic_sampling": (False,),
    }

    def __init__(self, **config):
        super().__init__(**config)
        n, shift = self.config.num_train_timesteps, self.config.shift
        training = torch.from_numpy(np.linspace(1, n, n, dtype=np.float32)[::-1].copy()) / n  # [n] fp32, 1 first
        training = shift * training / (1 + (shift - 1) * training)
        self.timesteps = training * n
        self.sigmas = training
        self.sigma_min, self.sigma_max = training[-1].item(), training[0].item()

    @property
    def shift(self) -> float:
        return self.config.shift

    def set_timesteps(self, num_inference_steps: int, device: str | torch.device | None = None) -> None:
        """`num_inference_steps` timesteps evenly spaced between the shifted training ends, shifted again."""
        n, shift = self.config.num_train_timesteps, self.config.shift
        self.num_inference_steps = num_inference_steps
        timesteps = np.linspace(self.sigma_max * n, self.sigma_min * n, num_inference_steps)  # fp64
        sigmas = timesteps / n
        sigmas = shift * sigmas / (1 + (shift - 1) * sigmas)
        sigmas = torch.from_numpy(sigmas).to(dtype=torch.float32, device=device)  # [n]
        self.timesteps = sigmas * n
        self.sigmas = torch.cat([sigmas, torch.zeros(1, device=sigmas.device)])  # [n + 1]
        self._step_index = None
        self._begin_index = None

    def step(self, model_output: torch.Tensor, timestep: float | torch.Tensor, sample: torch.Tensor,
             *, generator=None, per_token_timesteps: torch.Tensor | None = None, return_dict: bool = True):
        """One Euler step of velocity `model_output` for `sample`, in fp32; the result in the model output's dtype
        (kept fp32 with `per_token_timesteps`).

        per_token_timesteps [B, N] (sample and model output [B, N, C]): each token steps from its own sigma
        (timestep / 1000) to the largest schedule sigma below it by `sigma_token - sigma_next`, diffusers'
        sign for that branch (the opposite of the plain step's)."""
        if isinstance(timestep, int) or (isinstance(timestep, torch.Tensor) and not timestep.is_floating_point()):
            raise ValueError("pass one of `scheduler.timesteps` (a float), not an integer index")
        if self._step_index is None:
            self._init_step_index(timestep)
        sample = sample.to(torch.float32)
        if per_token_timesteps is not None:
            token_sigmas = per_token_timesteps / self.config.num_train_timesteps  # [B, N]
            schedule = self.sigmas[:, None, None]  # [S + 1, 1, 1]
            below = schedule < token_sigmas[None] - 1e-6
            next_sigma, _ = (below * schedule).max(dim=0)  # [B, N]: the largest schedule sigma below each token's
            dt = token_sigmas[..., None] - next_sigma[..., None]  # [B, N, 1]
        else:
            dt = self.sigmas[self._step_index + 1] - self.sigmas[self._step_index]
        prev_sample = sample + dt * model_output
        self._step_index += 1
        if per_token_timesteps is None:
            prev_sample = prev_sample.to(model_output.dtype)
        return SchedulerOutput(prev_sample) if return_dict else (prev_sample,)

"""Flow DPM-Solver++ (multistep): SANA's default sampler, with the arithmetic of diffusers'
`DPMSolverMultistepScheduler(use_flow_sigmas=True, prediction_type="flow_prediction")`.

Implemented (the configs SANA's image and video models ship): `algorithm_type` "dpmsolver++", `solver_order` 1 or
2, `solver_type` "midpoint" or "heun", `use_flow_sigmas` with any `flow_shift`, `final_sigmas_type` "zero" or
"sigma_min" (the DDPM sigma of the first training step, from a "linear" or "scaled_linear" beta schedule),
`lower_order_final`, `euler_at_final`. Fields that only shape the DDPM (non-flow) schedule are accepted and have
no effect here, as in diffusers. Anything else (SDE variants, third order, thresholding, Karras / exponential /
beta / Lu sigmas, other predictions) is diffusers' class: `sana.schedulers.build` picks it.

The sample follows x_t = (1 - sigma) x0 + sigma noise; the model predicts the velocity v = noise - x0, so
x0 = x - sigma v, and the solver steps in lambda = log((1 - sigma) / sigma).
"""

from __future__ import annotations

import numpy as np
import torch

from .base import Scheduler, SchedulerOutput


class FlowDPMSolver(Scheduler):
    """Multistep DPM-Solver++ on flow sigmas. timesteps [n] int64 (sigma x 1000, truncated), sigmas [n + 1] fp32
    on the CPU (the last the final sigma), as diffusers keeps them."""

    DIFFUSERS_CLASS = "DPMSolverMultistepScheduler"
    DEFAULTS = {
        "num_train_timesteps": 1000, "beta_start": 0.0001, "beta_end": 0.02, "beta_schedule": "linear",
        "trained_betas": None, "solver_order": 2, "prediction_type": "epsilon", "thresholding": False,
        "dynamic_thresholding_ratio": 0.995, "sample_max_value": 1.0, "algorithm_type": "dpmsolver++",
        "solver_type": "midpoint", "lower_order_final": True, "euler_at_final": False, "use_karras_sigmas": False,
        "use_exponential_sigmas": False, "use_beta_sigmas": False, "use_lu_lambdas": False, "use_flow_sigmas": False,
        "flow_shift": 1.0, "final_sigmas_type": "zero", "lambda_min_clipped": -float("inf"), "variance_type": None,
        "timestep_spacing": "linspace", "steps_offset": 0, "rescale_betas_zero_snr": False,
        "use_dynamic_shifting": False, "time_shift_type": "exponential",
    }
    SUPPORTED = {
        "algorithm_type": ("dpmsolver++",), "solver_order": (1, 2), "solver_type": ("midpoint", "heun"),
        "prediction_type": ("flow_prediction",), "use_flow_sigmas": (True,), "thresholding": (False,),
        "use_karras_sigmas": (False,), "use_exponential_sigmas": (False,), "use_beta_sigmas": (False,),
        "use_lu_lambdas": (False,), "final_sigmas_type": ("zero", "sigma_min"),
        "beta_schedule": ("linear", "scaled_linear"), "trained_betas": (None,), "rescale_betas_zero_snr": (False,),
        "timestep_spacing": ("linspace", "leading", "trailing"), "use_dynamic_shifting": (False,),
    }

    def __init__(self, **config):
        super().__init__(**config)
        n = self.config.num_train_timesteps
        self.timesteps = torch.from_numpy(np.linspace(0, n - 1, n, dtype=np.float32)[::-1].copy())
        self.sigmas = torch.zeros(0)
        self.model_outputs: list[torch.Tensor | None] = [None] * self.config.solver_order
        self.lower_order_nums = 0

    def _first_training_sigma(self) -> torch.Tensor:
        """The DDPM sigma sqrt((1 - alpha_bar_0) / alpha_bar_0) of the beta schedule's first step, in fp32."""
        c = self.config
        if c.beta_schedule == "linear":
            betas = torch.linspace(c.beta_start, c.beta_end, c.num_train_timesteps, dtype=torch.float32)
        else:  # scaled_linear
            betas = torch.linspace(c.beta_start**0.5, c.beta_end**0.5, c.num_train_timesteps, dtype=torch.float32) ** 2
        alpha_bar = torch.cumprod(1.0 - betas, dim=0)
        return ((1 - alpha_bar[0]) / alpha_bar[0]) ** 0.5

    def set_timesteps(self, num_inference_steps: int, device: str | torch.device | None = None) -> None:
        """The schedule for `num_inference_steps` steps: sigmas evenly spaced in 1 - alpha over (0, 1 - 1/1000],
        shifted by `flow_shift`, largest first; timesteps are sigma x 1000 truncated to integers."""
        c = self.config
        alphas = np.linspace(1, 1 / c.num_train_timesteps, num_inference_steps + 1)
        sigmas = 1.0 - alphas
        sigmas = np.flip(c.flow_shift * sigmas / (1 + (c.flow_shift - 1) * sigmas))[:-1].copy()  # [n], no 0
        timesteps = (sigmas * c.num_train_timesteps).copy()
        last = 0 if c.final_sigmas_type == "zero" else self._first_training_sigma()
        self.sigmas = torch.from_numpy(np.concatenate([sigmas, [last]]).astype(np.float32))  # [n + 1], CPU
        self.timesteps = torch.from_numpy(timesteps).to(device=device, dtype=torch.int64)
        self.num_inference_steps = len(timesteps)
        self.model_outputs = [None] * c.solver_order
        self.lower_order_nums = 0
        self._step_index = None
        self._begin_index = None

    def index_for_timestep(self, timestep: int | torch.Tensor, schedule_timesteps: torch.Tensor | None = None) -> int:
        """As the base lookup, but a timestep not in the schedule means the last step (diffusers' DPM rule)."""
        schedule = self.timesteps if schedule_timesteps is None else schedule_timesteps
        indices = (schedule == timestep).nonzero()
        if len(indices) == 0:
            return len(self.timesteps) - 1
        return indices[1 if len(indices) > 1 else 0].item()

    @staticmethod
    def _alpha_lambda(sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(alpha, lambda) of a flow sigma: alpha = 1 - sigma, lambda = log(alpha) - log(sigma) (inf at sigma 0)."""
        alpha = 1 - sigma
        return alpha, torch.log(alpha) - torch.log(sigma)

    def _first_order(self, x0: torch.Tensor, sample: torch.Tensor) -> torch.Tensor:
        """DPM-Solver++(1), i.e. DDIM, from sigma_s to sigma_t."""
        sigma_t, sigma_s = self.sigmas[self._step_index + 1], self.sigmas[self._step_index]
        alpha_t, lambda_t = self._alpha_lambda(sigma_t)
        _, lambda_s = self._alpha_lambda(sigma_s)
        h = lambda_t - lambda_s
        return (sigma_t / sigma_s) * sample - (alpha_t * (torch.exp(-h) - 1.0)) * x0

    def _second_order(self, sample: torch.Tensor) -> torch.Tensor:
        """DPM-Solver++(2M) from the last two data predictions (midpoint or Heun form of the correction D1)."""
        i = self._step_index
        sigma_t, sigma_s0, sigma_s1 = self.sigmas[i + 1], self.sigmas[i], self.sigmas[i - 1]
        alpha_t, lambda_t = self._alpha_lambda(sigma_t)
        _, lambda_s0 = self._alpha_lambda(sigma_s0)
        _, lambda_s1 = self._alpha_lambda(sigma_s1)
        m0, m1 = self.model_outputs[-1], self.model_outputs[-2]
        h, h_0 = lambda_t - lambda_s0, lambda_s0 - lambda_s1
        r0 = h_0 / h
        d0, d1 = m0, (1.0 / r0) * (m0 - m1)
        if self.config.solver_type == "midpoint":
            return ((sigma_t / sigma_s0) * sample - (alpha_t * (torch.exp(-h) - 1.0)) * d0
                    - 0.5 * (alpha_t * (torch.exp(-h) - 1.0)) * d1)
        return ((sigma_t / sigma_s0) * sample - (alpha_t * (torch.exp(-h) - 1.0)) * d0
                + (alpha_t * ((torch.exp(-h) - 1.0) / h + 1.0)) * d1)

    def step(self, model_output: torch.Tensor, timestep: int | torch.Tensor, sample: torch.Tensor,
             generator=None, variance_noise=None, return_dict: bool = True):
        """One solver step: velocity `model_output` at `timestep` for `sample` (any shape) -> the sample at the next
        sigma, in the model output's dtype (the update itself in fp32)."""
        if self.num_inference_steps is None:
            raise ValueError("call set_timesteps before step")
        if self._step_index is None:
            self._init_step_index(timestep)
        n = len(self.timesteps)
        last = self._step_index == n - 1
        lower_order_final = last and (self.config.euler_at_final or (self.config.lower_order_final and n < 15)
                                      or self.config.final_sigmas_type == "zero")
        x0 = sample - self.sigmas[self._step_index] * model_output  # in the inputs' dtype, as diffusers
        self.model_outputs = [*self.model_outputs[1:], x0]
        sample = sample.to(torch.float32)
        if self.config.solver_order == 1 or self.lower_order_nums < 1 or lower_order_final:
            prev_sample = self._first_order(x0, sample)
        else:  # order 2 (a second-to-last lower-order step is order 2 too)
            prev_sample = self._second_order(sample)
        self.lower_order_nums = min(self.lower_order_nums + 1, self.config.solver_order)
        prev_sample = prev_sample.to(x0.dtype)
        self._step_index += 1
        return SchedulerOutput(prev_sample) if return_dict else (prev_sample,)

"""Samplers and the denoise loop: small pure helpers around diffusers' schedulers.

Flow matching: `x_t = (1 - s) x0 + s noise`, the model predicts the velocity `noise - x0`. SANA-Sprint
works in TrigFlow time theta in [0, pi/2]; `trigflow_velocity` wraps the flow model for it.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from .errors import UsageError

SAMPLERS = ("flow-dpm", "flow-euler", "scm")
DEFAULT_STEPS = {"flow-dpm": 20, "flow-euler": 28, "scm": 2}

# diffusers' scheduler config for SANA (scheduler/scheduler_config.json of the released repos).
SANA_DPM_CONFIG = {
    "algorithm_type": "dpmsolver++", "solver_order": 2, "solver_type": "midpoint", "prediction_type": "flow_prediction",
    "use_flow_sigmas": True, "flow_shift": 3.0, "final_sigmas_type": "zero", "lower_order_final": True,
    "num_train_timesteps": 1000, "beta_schedule": "linear", "beta_start": 0.0001, "beta_end": 0.02,
    "timestep_spacing": "linspace", "steps_offset": 0, "euler_at_final": False, "thresholding": False,
}


def make_scheduler(sampler: str, *, flow_shift: float, base_config: dict | None = None):
    """A diffusers scheduler for `sampler`, configured like the model's own scheduler_config.json."""
    from diffusers import DPMSolverMultistepScheduler, FlowMatchEulerDiscreteScheduler, SCMScheduler

    if sampler == "flow-dpm":
        config = dict(SANA_DPM_CONFIG)
        if base_config and base_config.get("_class_name") == "DPMSolverMultistepScheduler":
            config.update({k: v for k, v in base_config.items() if not k.startswith("_")})
        config["flow_shift"] = flow_shift
        return DPMSolverMultistepScheduler.from_config(config)
    if sampler == "flow-euler":
        return FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=flow_shift)
    if sampler == "scm":
        sigma_data = (base_config or {}).get("sigma_data", 0.5)
        return SCMScheduler(num_train_timesteps=1000, prediction_type="trigflow", sigma_data=sigma_data)
    raise UsageError(f"unknown sampler '{sampler}'", f"choose one of {', '.join(SAMPLERS)}")


def set_scm_timesteps(scheduler, steps: int, *, max_timesteps: float, intermediate_timesteps: float | None) -> None:
    """SCM timesteps as SanaSprintPipeline sets them: the intermediate value applies to 2 steps only."""
    if not 1 <= steps <= 4:
        raise UsageError(f"--steps {steps} is out of range for Sprint", "use 1 to 4 steps")
    scheduler.set_timesteps(
        steps, max_timesteps=max_timesteps, intermediate_timesteps=intermediate_timesteps if steps == 2 else None
    )
    scheduler.set_begin_index(0)


def initial_noise(generators: list[torch.Generator], shape: tuple[int, int, int]) -> torch.Tensor:
    """Noise [B, C, h, w] in fp32, a row from each CPU generator: what diffusers draws for
    `generator=torch.Generator("cpu").manual_seed(seed)`, whatever the device."""
    return torch.cat([torch.randn((1, *shape), generator=g, dtype=torch.float32) for g in generators])


def cpu_generator(seed: int) -> torch.Generator:
    return torch.Generator("cpu").manual_seed(seed)


def guided(prediction: torch.Tensor, *, batch: int, guidance: float, pag: float) -> torch.Tensor:
    """Combine the rows of one batched forward into the guided prediction.

    Rows are [uncond (if CFG), cond, perturbed (if PAG)], each `batch` long:
    `uncond + cfg (cond - uncond) + pag (cond - perturbed)`.
    """
    chunks = prediction.split(batch)
    use_cfg, use_pag = guidance > 1.0, pag > 0.0
    if use_cfg:
        uncond, cond = chunks[0], chunks[1]
        out = uncond + guidance * (cond - uncond)
    else:
        cond = chunks[0]
        out = cond
    if use_pag:
        out = out + pag * (cond - chunks[-1])
    return out


def trigflow_velocity(flow_model: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], x: torch.Tensor,
                      theta: torch.Tensor, sigma_data: float) -> torch.Tensor:
    """Run a flow-matching model at TrigFlow time `theta` [B] and return its TrigFlow prediction (x sigma_data).

    The model sees flow time t = sin / (sin + cos) and its input rescaled to unit variance at that time.
    """
    t = torch.sin(theta) / (torch.cos(theta) + torch.sin(theta))  # [B]
    t4 = t.view(-1, 1, 1, 1)
    norm = torch.sqrt(t4**2 + (1 - t4) ** 2)
    x_model = (x / sigma_data) * norm
    v = flow_model(x_model, t)
    pred = ((1 - 2 * t4) * x_model + (1 - 2 * t4 + 2 * t4**2) * v) / norm
    return pred.float() * sigma_data


def denoise(step_prediction: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], latents: torch.Tensor, scheduler,
            *, generators: list[torch.Generator] | None = None, on_step: Callable[[int, int], None] | None = None,
            ) -> torch.Tensor:
    """The loop: predict at each timestep, let the scheduler step. Returns the final latents (or, for SCM,
    the last denoised estimate)."""
    timesteps = scheduler.timesteps
    is_scm = type(scheduler).__name__ == "SCMScheduler"
    if is_scm:
        timesteps = timesteps[:-1]  # the last SCM timestep (0) is a target, not a step
    denoised = latents
    for i, t in enumerate(timesteps):
        prediction = step_prediction(latents, t)
        if is_scm:
            latents, denoised = scheduler.step(prediction, t.expand(latents.shape[0]), latents, generator=generators,
                                               return_dict=False)
        else:
            latents = scheduler.step(prediction, t, latents, return_dict=False)[0]
        if on_step is not None:
            on_step(i + 1, len(timesteps))
    return denoised if is_scm else latents


def snap_to_multiple(value: int, multiple: int = 32) -> int:
    return max(multiple, int(math.floor(value / multiple + 0.5)) * multiple)

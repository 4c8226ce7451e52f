"""Samplers and the denoise loop: small pure helpers around our schedulers (`sana.schedulers`, diffusers'
arithmetic; diffusers' own classes only for configs ours does not implement).

Flow matching: `x_t = (1 - s) x0 + s noise`, the model predicts the velocity `noise - x0`. SANA-Sprint
works in TrigFlow time theta in [0, pi/2]; `trigflow_velocity` wraps the flow model for it.

Latents are images [B, C, h, w] or clips [B, C, F, h, w]; the loop is the same. Image-to-video keeps the first
latent frame fixed (`denoise(..., frozen_frames=1)`); the per-token timesteps that go with it are the prediction
function's business.
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


def make_scheduler(sampler: str, *, flow_shift: float, base_config: dict | None = None, reference: bool = False):
    """Our scheduler for `sampler` (`sana.schedulers`), configured like the model's own scheduler_config.json.

    diffusers' class instead where that config asks for something ours does not implement, or with `reference`
    (diffusers' pipelines, in benchmarks and parity tests, take only diffusers' schedulers).
    """
    from . import schedulers

    if sampler == "flow-dpm":
        config = dict(SANA_DPM_CONFIG)
        if base_config and base_config.get("_class_name") == "DPMSolverMultistepScheduler":
            config.update({k: v for k, v in base_config.items() if not k.startswith("_")})
        config["flow_shift"] = flow_shift
        return schedulers.build(schedulers.FlowDPMSolver, config, reference=reference)
    if sampler == "flow-euler":
        config = {"num_train_timesteps": 1000}
        if base_config and base_config.get("_class_name") == "FlowMatchEulerDiscreteScheduler":
            config.update({k: v for k, v in base_config.items() if not k.startswith("_")})
        # `shift` is this scheduler's name for it (a `flow_shift` key would be ignored, leaving shift 1).
        config["shift"] = flow_shift
        return schedulers.build(schedulers.FlowEuler, config, reference=reference)
    if sampler == "scm":
        sigma_data = (base_config or {}).get("sigma_data", 0.5)
        config = {"num_train_timesteps": 1000, "prediction_type": "trigflow", "sigma_data": sigma_data}
        return schedulers.build(schedulers.SCMSampler, config, reference=reference)
    raise UsageError(f"unknown sampler '{sampler}'", f"choose one of {', '.join(SAMPLERS)}")


def set_scm_timesteps(scheduler, steps: int, *, max_timesteps: float, intermediate_timesteps: float | None) -> None:
    """SCM timesteps as SanaSprintPipeline sets them: the intermediate value applies to 2 steps only."""
    if not 1 <= steps <= 4:
        raise UsageError(f"--steps {steps} is out of range for Sprint", "use 1 to 4 steps")
    scheduler.set_timesteps(
        steps, max_timesteps=max_timesteps, intermediate_timesteps=intermediate_timesteps if steps == 2 else None
    )
    scheduler.set_begin_index(0)


def initial_noise(generators: list[torch.Generator], shape: tuple[int, ...],
                  dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Noise [B, *shape] in fp32 ([B, C, h, w] for images, [B, C, F, h, w] for clips), a row from each CPU
    generator: what diffusers draws for `generator=torch.Generator("cpu").manual_seed(seed)`, whatever the device.
    `dtype`: drawn in that dtype instead (SANA-WM draws in the transformer's)."""
    return torch.cat([torch.randn((1, *shape), generator=g, dtype=dtype) for g in generators])


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
            frozen_frames: int = 0,
            step: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
    """The loop: predict at each timestep, let the scheduler step. Returns the final latents (or, for SCM,
    the last denoised estimate).

    `frozen_frames` > 0 (clips [B, C, F, h, w]): the first frames are clean conditioning latents; the scheduler
    steps only the frames after them (the prediction for the frozen ones is dropped), as diffusers' image-to-video
    pipeline does.

    `step(prediction, t, latents) -> latents`, when given, replaces the scheduler's step (SANA-WM's per-token
    step, `per_token_euler`, with its own handling of the clean first frame).
    """
    timesteps = scheduler.timesteps
    is_scm = scheduler.config.get("prediction_type") == "trigflow"  # ours or diffusers' SCM scheduler
    if is_scm:
        timesteps = timesteps[:-1]  # the last SCM timestep (0) is a target, not a step
    denoised = latents
    for i, t in enumerate(timesteps):
        prediction = step_prediction(latents, t)
        if step is not None:
            latents = step(prediction, t, latents)
        elif is_scm:
            latents, denoised = scheduler.step(prediction, t.expand(latents.shape[0]), latents, generator=generators,
                                               return_dict=False)
        elif frozen_frames:
            moving = scheduler.step(prediction[:, :, frozen_frames:], t, latents[:, :, frozen_frames:],
                                    return_dict=False)[0]
            latents = torch.cat([latents[:, :, :frozen_frames], moving], dim=2)
        else:
            latents = scheduler.step(prediction, t, latents, return_dict=False)[0]
        if on_step is not None:
            on_step(i + 1, len(timesteps))
    return denoised if is_scm else latents


def per_token_euler(scheduler, velocity: torch.Tensor, t: torch.Tensor, latents: torch.Tensor,
                    token_timesteps: torch.Tensor) -> torch.Tensor:
    """One flow-Euler step with a timestep per token, as SANA-WM's pipeline takes it from the flow-Euler
    scheduler's `step(..., per_token_timesteps=...)` (`sana.schedulers.FlowEuler`, diffusers' arithmetic).

    velocity, latents [B, C, F, h, w]; token_timesteps [B, F*h*w] fp32 (the model's timestep of each token).
    That branch steps by `sigma_token - sigma_next` (sigma_token = timestep / 1000, sigma_next the largest schedule
    sigma below it), the opposite sign of the plain step, so the velocity goes in negated: net `x + (sigma_next -
    sigma) v`, and no change where a token's timestep is 0. Returns fp32 latents (the scheduler upcasts them).
    """
    b, c = latents.shape[:2]

    def tokens(x: torch.Tensor) -> torch.Tensor:  # [B, C, F, h, w] -> [B, N, C], the layout the scheduler takes
        return x.reshape(b, c, -1).transpose(1, 2)

    stepped = scheduler.step(-tokens(velocity), t, tokens(latents), per_token_timesteps=token_timesteps,
                             return_dict=False)[0]  # [B, N, C]
    return stepped.transpose(1, 2).reshape(latents.shape)


def snap_to_multiple(value: int, multiple: int = 32) -> int:
    return max(multiple, int(math.floor(value / multiple + 0.5)) * multiple)

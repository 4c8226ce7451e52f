"""Our samplers (`sana.schedulers`) against diffusers' schedulers: the same timesteps and sigmas, and the same final
sample, bit for bit, from a sampling loop around a fixed random "model"; and the fallback to diffusers' classes."""

import inspect
import types

import pytest
import torch

from sana import sampling, schedulers

STEPS = [1, 2, 3, 4, 20, 50]


def _diffusers(name: str):
    import diffusers

    return getattr(diffusers, name)


def _model(shape: tuple[int, ...], seed: int = 0):
    """A fixed random "model": velocity = a * x + b * t / 1000 + c, elementwise ([B, ...] like x)."""
    gen = torch.Generator().manual_seed(seed)
    a, b, c = (torch.randn(shape, generator=gen) * 0.5 for _ in range(3))

    def predict(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return (a * x.float() + b * (t.float() / 1000.0) + c).to(x.dtype)

    return predict


def _noise(shape: tuple[int, ...], seed: int = 1, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed)).to(dtype)


def _pair(sampler: str, shift: float, config: dict | None = None):
    """Ours and diffusers' scheduler for the same settings."""
    ours = sampling.make_scheduler(sampler, flow_shift=shift, base_config=config)
    theirs = sampling.make_scheduler(sampler, flow_shift=shift, base_config=config, reference=True)
    assert type(ours).__module__.startswith("sana.schedulers"), type(ours)
    assert type(theirs).__module__.startswith("diffusers"), type(theirs)
    return ours, theirs


def _same(a: torch.Tensor, b: torch.Tensor) -> None:
    assert a.dtype == b.dtype and a.device == b.device and a.shape == b.shape, (a.dtype, b.dtype, a.shape, b.shape)
    assert torch.equal(a, b), (a - b).abs().max()


@pytest.mark.parametrize(("ours", "theirs"), [(schedulers.FlowDPMSolver, "DPMSolverMultistepScheduler"),
                                              (schedulers.FlowEuler, "FlowMatchEulerDiscreteScheduler"),
                                              (schedulers.SCMSampler, "SCMScheduler")])
def test_fields_and_defaults_are_diffusers(ours, theirs):
    signature = inspect.signature(_diffusers(theirs).__init__).parameters
    assert ours.DEFAULTS == {k: p.default for k, p in signature.items() if k != "self"}
    assert set(ours.SUPPORTED) <= set(ours.DEFAULTS)


# -- flow DPM-Solver++ -----------------------------------------------------------------------------------------

DPM_VARIANTS = {
    "sana": {},
    "heun": {"solver_type": "heun"},
    "order1": {"solver_order": 1},
    "sigma_min": {"final_sigmas_type": "sigma_min"},
    "sigma_min_scaled": {"final_sigmas_type": "sigma_min", "beta_schedule": "scaled_linear"},
    "no_lower_final": {"final_sigmas_type": "sigma_min", "lower_order_final": False},
    "euler_final": {"final_sigmas_type": "sigma_min", "lower_order_final": False, "euler_at_final": True},
}


def _same_schedule_and_samples(ours, theirs, steps: int) -> torch.Tensor:
    """Both set to `steps`: equal timesteps and sigmas, and equal final samples of one denoise loop on a fixed
    model from the same noise (returned)."""
    for s in (ours, theirs):
        s.set_timesteps(steps)
    _same(ours.timesteps, theirs.timesteps)
    _same(ours.sigmas, theirs.sigmas)
    shape = (2, 4, 6, 5)
    predict, start = _model(shape), _noise(shape)
    _same(sampling.denoise(predict, start, ours), sampling.denoise(predict, start, theirs))
    return start


@pytest.mark.parametrize("variant", list(DPM_VARIANTS))
@pytest.mark.parametrize("shift", [1.0, 3.0, 8.0])
@pytest.mark.parametrize("steps", STEPS)
def test_flow_dpm_equals_diffusers(variant, shift, steps):
    config = {"_class_name": "DPMSolverMultistepScheduler", **DPM_VARIANTS[variant]}
    ours, theirs = _pair("flow-dpm", shift, config)
    _same_schedule_and_samples(ours, theirs, steps)


@pytest.mark.parametrize("steps", [2, 20])
def test_flow_dpm_bf16_model_output_equals_diffusers(steps):
    """bf16 latents and prediction: the data prediction in bf16, the update in fp32, the result back in bf16."""
    ours, theirs = _pair("flow-dpm", 3.0)
    shape = (1, 4, 6, 5)
    predict = _model(shape)
    results = []
    for scheduler in (ours, theirs):
        scheduler.set_timesteps(steps)
        x = _noise(shape, dtype=torch.bfloat16)
        for t in scheduler.timesteps:
            x = scheduler.step(predict(x, t), t, x).prev_sample
        results.append(x)
    assert results[0].dtype == torch.bfloat16
    _same(*results)


def test_flow_dpm_step_index_and_begin_index():
    ours, theirs = _pair("flow-dpm", 3.0)
    for s in (ours, theirs):
        s.set_timesteps(5)
        s.set_begin_index(2)
    assert ours.begin_index == theirs.begin_index == 2 and ours.step_index is None
    x, v = _noise((1, 2, 3)), _noise((1, 2, 3), seed=2)
    _same(ours.step(v, ours.timesteps[2], x).prev_sample, theirs.step(v, theirs.timesteps[2], x).prev_sample)
    assert ours.step_index == theirs.step_index == 3
    assert ours.index_for_timestep(12345) == theirs.index_for_timestep(12345) == 4  # not in the schedule: the last
    assert ours.order == theirs.order and ours.init_noise_sigma == theirs.init_noise_sigma
    assert ours.scale_model_input(x, ours.timesteps[0]) is x


# -- flow-matching Euler ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("shift", [1.0, 3.0, 8.0, 9.8])
@pytest.mark.parametrize("steps", STEPS)
def test_flow_euler_equals_diffusers(shift, steps):
    ours, theirs = _pair("flow-euler", shift, {"_class_name": "FlowMatchEulerDiscreteScheduler", "shift": 1.0})
    assert ours.config.shift == theirs.config.shift == shift
    start = _same_schedule_and_samples(ours, theirs, steps)
    with pytest.raises(ValueError, match="integer"):
        ours.step(start, 0, start)


@pytest.mark.parametrize("sampler", ["flow-euler", "flow-dpm"])
@pytest.mark.parametrize("steps", [1, 4, 20])
def test_image_to_video_loop_equals_diffusers(sampler, steps):
    """Image to video: the first latent frame held clean, the scheduler stepping frames 1: only."""
    ours, theirs = _pair(sampler, 8.0)
    shape = (1, 4, 3, 4, 5)  # [B, C, F, h, w]
    predict, start = _model(shape), _noise(shape)
    out = []
    for scheduler in (ours, theirs):
        scheduler.set_timesteps(steps)
        out.append(sampling.denoise(predict, start, scheduler, frozen_frames=1))
    _same(*out)
    _same(out[0][:, :, :1], start[:, :, :1])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("steps", [1, 4, 20, 60])
def test_world_per_frame_loop_equals_diffusers(dtype, steps):
    """SANA-WM's loop: per-token timesteps (0 on the clean first frame), the per-token Euler step, frame 0 kept."""
    from sana.pipelines.world import WorldPipeline

    ours, theirs = _pair("flow-euler", 9.8)
    shape = (1, 4, 3, 2, 3)
    predict = _model(shape)
    out = []
    for scheduler in (ours, theirs):
        scheduler.set_timesteps(steps)
        latents = _noise(shape, dtype=dtype)
        step = WorldPipeline._step(types.SimpleNamespace(dtype=dtype), scheduler, latents)
        out.append(sampling.denoise(predict, latents, scheduler, step=step))
    _same(*out)


def test_per_token_step_equals_diffusers_at_every_timestep():
    ours, theirs = _pair("flow-euler", 3.0)
    gen = torch.Generator().manual_seed(3)
    latents, velocity = torch.randn(2, 4, 3, 2, 3, generator=gen), torch.randn(2, 4, 3, 2, 3, generator=gen)
    for s in (ours, theirs):
        s.set_timesteps(7)
    for i, t in enumerate(ours.timesteps):
        per_token = torch.rand(2, 18, generator=gen) * 1000  # arbitrary token timesteps, between schedule entries
        per_token[:, :6] = 0.0
        a = sampling.per_token_euler(ours, velocity, t, latents, per_token)
        b = sampling.per_token_euler(theirs, velocity, theirs.timesteps[i], latents, per_token)
        _same(a, b)


# -- SCM (SANA-Sprint) -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("steps", [1, 2, 3, 4])
@pytest.mark.parametrize("intermediate", [None, 1.3])
def test_scm_equals_diffusers(steps, intermediate):
    ours, theirs = _pair("scm", 3.0, {"_class_name": "SCMScheduler", "sigma_data": 0.5})
    for s in (ours, theirs):
        sampling.set_scm_timesteps(s, steps, max_timesteps=1.5708, intermediate_timesteps=intermediate)
    _same(ours.timesteps, theirs.timesteps)
    shape = (2, 4, 6, 5)
    predict = _model(shape)
    out = []
    for scheduler in (ours, theirs):
        generators = [sampling.cpu_generator(7), sampling.cpu_generator(8)]
        out.append(sampling.denoise(predict, _noise(shape) * 0.5, scheduler, generators=generators))
    _same(*out)


@pytest.mark.parametrize("generator", ["one", "list", "none"])
def test_scm_step_draws_noise_as_diffusers(generator):
    ours, theirs = _pair("scm", 3.0)
    x, f = _noise((2, 3, 4)), _noise((2, 3, 4), seed=2)
    out = []
    for s in (ours, theirs):
        s.set_timesteps(3, max_timesteps=1.5708, intermediate_timesteps=None)
        gens = {"one": torch.Generator().manual_seed(4), "none": None,
                "list": [torch.Generator().manual_seed(4), torch.Generator().manual_seed(5)]}[generator]
        torch.manual_seed(9)  # the global generator, where none is given
        out.append(s.step(f, s.timesteps[0], x, generator=gens, return_dict=False))
    _same(out[0][0], out[1][0])
    _same(out[0][1], out[1][1])
    custom = [1.5, 0.7, 0.2, 0.0]
    for s in (ours, theirs):
        s.set_timesteps(3, timesteps=custom, max_timesteps=None, intermediate_timesteps=None)
    _same(ours.timesteps, theirs.timesteps)
    with pytest.raises(ValueError):
        ours.set_timesteps(3, max_timesteps=1.5708, intermediate_timesteps=1.3)


# -- the fallback ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("sampler", "config", "diffusers_class"), [
    ("flow-dpm", {"_class_name": "DPMSolverMultistepScheduler", "solver_order": 3}, "DPMSolverMultistepScheduler"),
    ("flow-dpm", {"_class_name": "DPMSolverMultistepScheduler", "algorithm_type": "sde-dpmsolver++"},
     "DPMSolverMultistepScheduler"),
    ("flow-dpm", {"_class_name": "DPMSolverMultistepScheduler", "thresholding": True},
     "DPMSolverMultistepScheduler"),
    ("flow-euler", {"_class_name": "FlowMatchEulerDiscreteScheduler", "stochastic_sampling": True},
     "FlowMatchEulerDiscreteScheduler"),
    ("flow-euler", {"_class_name": "FlowMatchEulerDiscreteScheduler", "shift_terminal": 0.1},
     "FlowMatchEulerDiscreteScheduler"),
], ids=["order3", "sde", "thresholding", "stochastic", "shift_terminal"])
def test_configs_ours_does_not_implement_fall_back_to_diffusers(sampler, config, diffusers_class):
    scheduler = sampling.make_scheduler(sampler, flow_shift=3.0, base_config=config)
    assert type(scheduler) is _diffusers(diffusers_class)
    key = next(k for k in config if not k.startswith("_"))
    assert scheduler.config[key] == config[key] and (scheduler.config.get("flow_shift", 3.0) == 3.0)
    scheduler.set_timesteps(4)
    shape = (1, 4, 6, 5)
    out = sampling.denoise(_model(shape), _noise(shape), scheduler)  # the loop runs on diffusers' class
    assert torch.isfinite(out).all()


def test_released_configs_use_ours_and_ours_refuses_what_it_does_not_implement():
    released = {"_class_name": "DPMSolverMultistepScheduler", "algorithm_type": "dpmsolver++", "beta_end": 0.02,
                "beta_schedule": "linear", "beta_start": 0.0001, "dynamic_thresholding_ratio": 0.995,
                "euler_at_final": False, "final_sigmas_type": "zero", "flow_shift": 3.0,
                "lambda_min_clipped": -float("inf"), "lower_order_final": True, "num_train_timesteps": 1000,
                "prediction_type": "flow_prediction", "rescale_betas_zero_snr": False, "sample_max_value": 1.0,
                "solver_order": 2, "solver_type": "midpoint", "steps_offset": 0, "thresholding": False,
                "timestep_spacing": "linspace", "trained_betas": None, "use_beta_sigmas": False,
                "use_exponential_sigmas": False, "use_flow_sigmas": True, "use_karras_sigmas": False,
                "use_lu_lambdas": False, "variance_type": None, "_diffusers_version": "0.32.0"}
    assert isinstance(sampling.make_scheduler("flow-dpm", flow_shift=8.0, base_config=released),
                      schedulers.FlowDPMSolver)
    assert isinstance(sampling.make_scheduler("flow-euler", flow_shift=9.8, base_config={
        "_class_name": "FlowMatchEulerDiscreteScheduler", "shift": 9.8, "num_train_timesteps": 1000}),
        schedulers.FlowEuler)
    assert isinstance(sampling.make_scheduler("scm", flow_shift=3.0, base_config={
        "_class_name": "SCMScheduler", "prediction_type": "trigflow", "sigma_data": 0.5}), schedulers.SCMSampler)
    with pytest.raises(ValueError, match="solver_order=3"):
        schedulers.FlowDPMSolver(solver_order=3)
    with pytest.raises(TypeError, match="no field"):
        schedulers.FlowEuler(flow_shift=3.0)

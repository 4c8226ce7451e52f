"""The SANA-WM pipeline (stage 1) on our own DiT: a first frame, a prompt and a camera path to a clip; stage 2
(`world_refiner`) between the denoise and the decode when asked for.

Steps of `generate`: the first frame resized and centre-cropped to the generated size with the intrinsics following
it, and the camera tensors (`sana.camera.conditioning`); the prompts; the first frame's latent; then per seed the
noise, the denoising loop, the decode and 8-bit frames. The arithmetic is diffusers' `SanaWMPipeline`:

* the image-style instruction prefix, prompts neither lower-cased nor stripped;
* the first frame encoded with the VAE's mode, normalised `(z - mean) * scaling_factor / std`;
* noise for every latent frame drawn from the seed's CPU generator in the transformer dtype, frame 0 replaced by the
  first frame's latent; latents stay in the transformer dtype between steps;
* each step: timestep t on frames 1:, 0 on frame 0 (the model truncates it to an integer), CFG rows [negative,
  positive] in one forward, the guided velocity in the transformer dtype, the scheduler's per-token Euler step
  (`sampling.per_token_euler`), and frame 0 kept by diffusers' comparison `t / 1000 - 1e-6 < 1 - mask` made in
  the transformer dtype. In bf16 that comparison rounds 1 - 1e-6 (and any t / 1000 above 1 - 2^-9) to 1 and so
  keeps the old latents of every frame: the first two steps of the default 60 at shift 9.8 change nothing, as in
  diffusers;
* the decode `z / scaling_factor * std + mean` through the LTX-2 VAE, no clamp before the 8-bit conversion.

Weights move as the memory plan says and an out-of-memory phase steps the plan down (`common.PlacedPipeline`);
nothing here prints.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import sampling
from ..camera.conditioning import TARGET_HEIGHT, TARGET_WIDTH, WorldInputs, camera_model_kwargs, world_inputs
from ..camera.path import CameraPath
from ..components import family_from_index, model_index, require_component, scheduler_config
from ..errors import SanaError, UsageError
from ..text import WORLD_COMPLEX_HUMAN_INSTRUCTION, PromptEmbeddings, TextEncoder
from .common import Events, PlacedPipeline, check_finite, load_together, to_uint8
from .sizes import latent_frames
from .video_vae import VideoVAE, load_video_vae
from .world_refiner import SINK_FRAMES

WORLD_CLASS_NAME = "SanaWMTransformer3DModel"
RELEASED_FRAMES = 161  # the default clip the resident plan sizes for


@dataclass
class WorldRequest:
    """One prompt, one first frame, one camera path, one or more seeds: everything that decides the frames."""

    prompt: str
    image: Any  # the first frame (a PIL image), any size: resized to cover (width, height) and centre-cropped
    camera: CameraPath  # one pose a generated frame (8k + 1 of them), intrinsics in pixels of `camera.image_size`
    seeds: list[int]
    steps: int
    guidance: float
    flow_shift: float
    width: int = TARGET_WIDTH
    height: int = TARGET_HEIGHT
    negative_prompt: str = ""


@dataclass
class WorldResult:
    videos: list[torch.Tensor]  # uint8 [F, H, W, 3] on the CPU, one a seed
    frames: int
    c2w: np.ndarray  # [F, 4, 4] the poses the clip follows (OpenCV axes, frame 0 the identity)
    intrinsics: np.ndarray  # [F, 4] fx, fy, cx, cy in pixels of the generated (cropped) frames
    timings: dict[str, float] = field(default_factory=dict)
    generated_size: tuple[int, int] = (0, 0)  # (width, height)
    memory: dict = field(default_factory=dict)  # the memory plan that finished the run (MemoryPlan.record())


@dataclass(frozen=True)
class WorldShape:
    width: int
    height: int
    frames: int  # pixel frames: the camera path's
    latent: tuple[int, int, int, int]  # [C, F_latent, h, w]


class WorldPipeline(PlacedPipeline):
    """Text encoder + our SANA-WM DiT + the LTX-2 VAE, placed on the device as a memory plan says."""

    def __init__(self, *, transformer, text_encoder: TextEncoder, vae: VideoVAE, scheduler_config: dict,
                 device: torch.device | str, dtype: torch.dtype, plan=None):
        """Without `plan`, the modules stay where they are and clips decode without tiles (tiles only after an
        out-of-memory error)."""
        from ..placement import Placement

        self.transformer = transformer
        self.text_encoder = text_encoder
        self.vae = vae
        self.scheduler_config = scheduler_config
        self.device = torch.device(device)
        self.dtype = dtype
        text_model = getattr(text_encoder, "model", None)
        plan = self._default_plan(text_model) if plan is None else plan
        # The CUDA-graph wrapper replays the image DiT's call; the world DiT takes camera tensors besides.
        plan = dataclasses.replace(plan, cuda_graphs=False)
        self.placement = Placement(plan, transformer=transformer, text_model=text_model, vae=vae.module,
                                   device=self.device)
        self._follow_placement()

    def _default_plan(self, text_model):
        from ..device import DTYPE_NAMES, probe_device
        from ..memory import Workload, resident_plan, sizes_of_clip_modules

        sizes = sizes_of_clip_modules(
            self.transformer, text_model, self.vae.module,
            transformer_config={"_class_name": WORLD_CLASS_NAME, **dataclasses.asdict(self.transformer.config)},
            vae_config={"_class_name": self.vae.geometry.class_name, **dict(self.vae.module.config)})
        work = Workload(TARGET_WIDTH, TARGET_HEIGHT, frames=RELEASED_FRAMES, conditioned=True)
        return resident_plan(probe_device(self.device), sizes, work, DTYPE_NAMES.get(self.dtype, "fp32"),
                             cuda_graphs=False)

    @classmethod
    def from_pretrained(cls, model_dir: Path, *, dtype: torch.dtype, device: torch.device | str,
                        variant: str | None = None, plan=None, fp8: bool = False) -> "WorldPipeline":
        """Load every component of a diffusers-format SANA-WM folder (`SanaWMPipeline`). With `plan`, each component
        loads where the plan keeps it, in the plan's dtypes. `fp8` quantizes the DiT's block linears to fp8
        (`WorldBlock.FP8_LINEARS`) as the image and video pipelines do (`sana.loading.fp8`)."""
        from ..device import DTYPES
        from ..loading import load_world_transformer
        from ..loading.fp8 import load_fp8

        family = family_from_index(model_index(model_dir))
        if family != "wm":
            raise SanaError(f"{model_dir} holds a {family or 'non-SANA-WM'} model", "`sana world` takes SANA-WM models")
        for component in ("transformer", "text_encoder", "tokenizer", "vae"):
            require_component(model_dir, component)

        def load_device(component: str):
            return device if plan is None or plan.home(component) == "device" else "cpu"

        text_dtype = DTYPES[plan.te_dtype] if plan is not None else dtype
        vae_dtype = DTYPES[plan.vae_dt] if plan is not None else dtype
        def dit():
            def load(where):
                return load_world_transformer(model_dir, dtype=dtype, device=where, variant=variant)

            return load_fp8(load, load_device("transformer")) if fp8 else load(load_device("transformer"))

        loaded = load_together({
            "transformer": dit,
            "text_encoder": lambda: TextEncoder.from_pretrained(
                model_dir, dtype=text_dtype, device=load_device("text_encoder"), variant=variant,
                instruction=WORLD_COMPLEX_HUMAN_INSTRUCTION, lowercase=False),
            "vae": lambda: load_video_vae(model_dir, dtype=vae_dtype, device=load_device("vae"), variant=variant)})
        transformer, text_encoder, vae = loaded["transformer"], loaded["text_encoder"], loaded["vae"]
        if vae.geometry.class_name != "AutoencoderKLLTX2Video":
            raise SanaError(f"{model_dir}: SANA-WM decodes with the LTX-2 VAE, not {vae.geometry.label}")
        return cls(transformer=transformer, text_encoder=text_encoder, vae=vae,
                   scheduler_config=scheduler_config(model_dir), device=device, dtype=dtype, plan=plan)

    # -- steps --------------------------------------------------------------------------------------------

    def clip_shape(self, request: WorldRequest) -> WorldShape:
        """The generated size (as asked: SANA-WM has no aspect bins), the camera path's frames, the latent shape."""
        vae = self.vae.geometry
        if request.width % vae.spatial or request.height % vae.spatial:
            raise UsageError(f"size {request.width}x{request.height} is not a multiple of {vae.spatial}",
                             f"SANA-WM sizes are multiples of {vae.spatial} (it was trained at 1280x704)")
        frames = request.camera.num_frames
        if (frames - 1) % vae.temporal:
            raise UsageError(f"the camera path has {frames} frames; SANA-WM generates {vae.temporal}k+1 frames",
                             "resolve the path with sana.camera.resolve_camera, which snaps the count")
        latent = (self.transformer.config.in_channels, latent_frames(frames, vae.temporal),
                  request.height // vae.spatial, request.width // vae.spatial)
        return WorldShape(request.width, request.height, frames, latent)

    def camera_inputs(self, request: WorldRequest) -> WorldInputs:
        """The cropped first frame and the camera tensors (raymap, chunked Plücker) at the generated size."""
        vae = self.vae.geometry
        return world_inputs(request.camera, request.image, request.height, request.width,
                            (vae.temporal, vae.spatial, vae.spatial))

    def encode(self, request: WorldRequest) -> PromptEmbeddings:
        """Text rows for one forward: [negative (no instruction), prompt (with it)] with CFG, else [prompt]."""
        items = [(request.negative_prompt, False)] if request.guidance > 1.0 else []
        items.append((request.prompt, True))
        return self.text_encoder.encode_many(items).trimmed().to(self.device)

    def encode_first_frame(self, pixels: torch.Tensor, shape: WorldShape) -> torch.Tensor:
        """The cropped first frame [1, 3, H, W] in [-1, 1] -> its latent [1, C, 1, h, w] in the transformer dtype:
        the encoder's mode, normalised `(z - mean) * scaling_factor / std` (SANA-WM's own normalisation)."""
        self._tile_vae(shape.height, shape.width)
        module = self.vae.module
        clip = pixels.unsqueeze(2).to(self.vae.device, self.vae.dtype)  # [1, 3, 1, H, W]
        z = module.encode(clip).latent_dist.mode()
        mean, std = self._latent_stats(z)
        return ((z - mean) * module.config.scaling_factor / std).to(self.dtype)

    def _latent_stats(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The LTX-2 VAE's per-channel (mean, std) buffers as [1, C, 1, 1, 1] in `like`'s dtype and device."""
        module = self.vae.module
        view = (1, -1, 1, 1, 1)
        return module.latents_mean.view(view).to(like), module.latents_std.view(view).to(like)

    def _tile_vae(self, height: int, width: int) -> None:
        """The plan's spatial tiles and temporal pieces for a clip of height x width px."""
        from ..placement import video_decode_tiling

        video_decode_tiling(self.plan, height, width).apply(self.vae.module)

    def _prediction(self, text: PromptEmbeddings, camera: dict[str, torch.Tensor], guidance: float):
        """predict(latents [1, C, F, h, w], t) -> the guided velocity, in the transformer dtype."""
        copies = len(text)

        def predict(latents: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            x = torch.cat([latents] * copies) if copies > 1 else latents  # [B', C, F, h, w]
            timestep = frame_timesteps(t, x.shape[0], x.shape[2])  # [B', 1, F]: 0 on the clean first frame
            out = self.denoiser(x, timestep, text.embeds, text.mask, camera=camera["camera_conditions"],
                                plucker=camera["chunk_plucker"])
            return sampling.guided(out, batch=1, guidance=guidance, pag=0.0)  # CFG in the transformer dtype

        return predict

    def _step(self, scheduler, latents: torch.Tensor):
        """step(velocity, t, latents) -> latents: the per-token Euler step, frame 0 kept clean (module docstring)."""
        condition_mask = torch.zeros_like(latents)  # [1, C, F, h, w], ones on the first frame
        condition_mask[:, :, :1] = 1.0
        tokens_per_frame = latents.shape[-2] * latents.shape[-1]

        def step(velocity: torch.Tensor, t: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
            per_token = frame_timesteps(t, 1, latents.shape[2]).reshape(1, -1)
            per_token = per_token.repeat_interleave(tokens_per_frame, dim=1)  # [1, F*h*w]
            stepped = sampling.per_token_euler(scheduler, velocity, t, latents, per_token)
            keep_clean = t / 1000.0 - 1e-6 < (1.0 - condition_mask)  # compared in the transformer dtype
            return torch.where(keep_clean, stepped, latents).to(self.dtype)

        return step

    def _denoise(self, text: PromptEmbeddings, camera: dict, request: WorldRequest, latents: torch.Tensor,
                 events: Events) -> torch.Tensor:
        scheduler = sampling.make_scheduler("flow-euler", flow_shift=request.flow_shift,
                                            base_config=self.scheduler_config)
        scheduler.set_timesteps(request.steps, device=self.device)
        return sampling.denoise(self._prediction(text, camera, request.guidance), latents, scheduler,
                                on_step=events.on_step, step=self._step(scheduler, latents))

    @torch.no_grad()
    def generate(self, request: WorldRequest, events: Events | None = None, refiner=None) -> WorldResult:
        """The clips of a request; with `refiner` (a `world_refiner.WorldRefiner`), each seed's latents go through
        SANA-WM's stage 2 before the decode, and the clips lose their first frame (the refiner's sink)."""
        self._start_peak_measure()
        events = events or Events()
        timings: dict[str, float] = {}

        # 1. Sizes, the cropped first frame, the intrinsics that follow the crop, the camera tensors.
        shape = self.clip_shape(request)
        inputs = self.camera_inputs(request)
        use_cfg = request.guidance > 1.0
        camera = camera_model_kwargs(inputs, device=self.device, dtype=self.dtype, guidance=use_cfg)

        # 2. Encode the prompts.
        start = events.phase("encode")
        text = self._recovering("encode", lambda: self.encode(request), events,
                                SanaError("out of GPU memory while encoding the prompt",
                                          "free GPU memory (other processes may hold it)"))
        timings["encode"] = self._elapsed(start)

        # 3. The first frame's clean latent.
        start = events.phase("encode image")
        first = self._recovering("condition", lambda: self.encode_first_frame(inputs.pixel_values, shape), events,
                                 SanaError("out of GPU memory while encoding the first frame",
                                           "free GPU memory (other processes may hold it)"))
        first = first.to(self.device)
        timings["encode image"] = self._elapsed(start)

        # 4. Each seed: noise for every latent frame (frame 0 the first frame's latent), denoise, decode.
        videos = []
        for seed in request.seeds:
            latents = sampling.initial_noise([sampling.cpu_generator(seed)], shape.latent, dtype=self.dtype)
            latents = latents.to(self.device)
            latents[:, :, :1] = first
            start = events.phase("denoise")
            failure = self._denoise_failure(shape, use_cfg)
            latents = self._recovering("denoise", lambda: self._denoise(text, camera, request, latents, events),
                                       events, failure)
            timings["denoise"] = timings.get("denoise", 0.0) + self._elapsed(start)
            if refiner is not None:
                start = events.phase("refine")
                latents = refiner.refine(latents, request.prompt, fps=request.camera.fps, seed=seed)
                timings["refine"] = timings.get("refine", 0.0) + self._elapsed(start)
            start = events.phase("decode")
            video = self.decode(latents, events)
            videos.append(video[SINK_FRAMES:] if refiner is not None else video)
            timings["decode"] = timings.get("decode", 0.0) + self._elapsed(start)
        dropped = SINK_FRAMES if refiner is not None else 0  # the refined clip starts at the path's second pose
        return WorldResult(videos=videos, frames=shape.frames - dropped, c2w=request.camera.c2w[dropped:].copy(),
                           intrinsics=inputs.intrinsics[dropped:], timings=timings,
                           generated_size=(shape.width, shape.height), memory=self._memory_record())

    def _denoise_failure(self, shape: WorldShape, use_cfg: bool) -> SanaError:
        """The error when even the plan's lowest step runs out of memory: what that plan would need."""
        lowest = self.plan
        while (lower := lowest.lower("denoise")) is not None:
            lowest = lower
        tokens = shape.latent[1] * shape.latent[2] * shape.latent[3]
        return SanaError(f"out of GPU memory while denoising {shape.frames} frames at {shape.width}x{shape.height} "
                         f"in one pass ({tokens:,} tokens x {1 + use_cfg} rows)",
                         f"the memory plan needs about {lowest.needs() / 2**30:.1f} GiB of free GPU memory "
                         f"({lowest.label()}); use fewer --frames or free GPU memory")

    def decode(self, latents: torch.Tensor, events: Events | None = None) -> torch.Tensor:
        """Latents [1, C, F, h, w] -> uint8 frames [F', H, W, 3] on the CPU. An out-of-memory decode is retried in
        smaller pieces and tiles (then under a lower placement tier)."""
        failure = SanaError("out of GPU memory while decoding, even in tiles", "use fewer --frames, or free GPU memory")
        return self._recovering("decode", lambda: self._decode(latents), events, failure)

    def _decode(self, latents: torch.Tensor) -> torch.Tensor:
        spatial = self.vae.geometry.spatial
        self._tile_vae(latents.shape[-2] * spatial, latents.shape[-1] * spatial)
        module = self.vae.module
        z = latents.to(self.vae.device, self.vae.dtype)
        mean, std = self._latent_stats(z)
        pixels = module.decode(z / module.config.scaling_factor * std + mean, return_dict=False)[0]  # [1, 3, F, H, W]
        check_finite(pixels, "clip")
        return to_uint8(pixels[0].transpose(0, 1)).cpu()  # [F, H, W, 3]


def frame_timesteps(t: torch.Tensor, rows: int, frames: int) -> torch.Tensor:
    """[rows, 1, frames] fp32: t on every latent frame but the first, whose clean latent has timestep 0
    (diffusers' `min(t, (1 - mask) * 1000)`)."""
    timestep = t.float().reshape(1, 1, 1).repeat(rows, 1, frames)
    timestep[:, :, 0] = 0.0
    return timestep


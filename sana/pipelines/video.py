"""The SANA-Video pipelines on our own DiT: text to video, and image to video (the first frame given).

Steps of `generate`: sizes (the trained aspect bin, the frame count the VAE takes), encode the prompts, draw the
noise (image to video: the first latent frame becomes the encoded image), denoise, decode each clip, resize it
to the request, 8-bit frames. The arithmetic is diffusers' `SanaVideoPipeline` / `SanaImageToVideoPipeline`:
the video instruction prefix, " motion score: N." appended to the prompt, CFG rows [negative, positive] in one
batched forward, latents in fp32 between steps, the prediction in fp32 before CFG, the learned-sigma half
dropped when the DiT predicts 2 x the latent channels. Image to video keeps the first frame's clean latent: its
timestep is 0 and the scheduler steps only frames 1: (`sampling.denoise(..., frozen_frames=1)`).

Weights move as the memory plan says and an out-of-memory phase steps the plan down (`common.PlacedPipeline`);
nothing here prints.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .. import sampling
from ..components import family_from_index, model_index, read_json, require_component, scheduler_config
from ..errors import SanaError, UsageError
from ..models.text_context import LazyTextContext
from ..text import VIDEO_COMPLEX_HUMAN_INSTRUCTION, PromptEmbeddings, TextEncoder
from .common import Events, PlacedPipeline, check_finite, load_together, resize_and_crop, to_uint8
from .sizes import latent_frames, snap_frames, video_binned_size
from .video_vae import VideoVAE, load_video_vae

SIZE_MULTIPLE = 32  # diffusers' check on the generated height and width


def motion_prompt(prompt: str, motion_score: int | None) -> str:
    """The text the model reads: diffusers' examples append " motion score: N." (N = 30); None appends nothing."""
    return prompt if motion_score is None else f"{prompt} motion score: {motion_score}."


@dataclass
class VideoRequest:
    """One prompt, one or more seeds: everything that decides the frames."""

    prompt: str  # as given; the motion score is appended when the prompt is encoded
    seeds: list[int]
    width: int
    height: int
    frames: int
    steps: int
    guidance: float
    sampler: str  # "flow-dpm" | "flow-euler"
    flow_shift: float
    negative_prompt: str = ""
    motion_score: int | None = 30
    image: Any = None  # image to video: the first frame (a PIL image); None for text to video


@dataclass
class VideoResult:
    videos: list[torch.Tensor]  # uint8 [F, H, W, 3] on the CPU, one a seed
    frames: int  # frames of each clip (the request's count, snapped to the VAE's rule)
    timings: dict[str, float] = field(default_factory=dict)
    generated_size: tuple[int, int] = (0, 0)  # (width, height) the DiT ran at, before resizing to the request
    memory: dict = field(default_factory=dict)  # the memory plan that finished the run (MemoryPlan.record())


@dataclass(frozen=True)
class ClipLayout:
    width: int  # generated px (the aspect bin)
    height: int
    frames: int  # decoded frames
    latent: tuple[int, int, int, int]  # [C, F_latent, h, w]


class VideoPipeline(PlacedPipeline):
    """Text encoder + our video DiT + a video VAE (Wan 2.1 or LTX-2), placed on the device as a memory plan says."""

    def __init__(self, *, transformer, text_encoder: TextEncoder, vae: VideoVAE, scheduler_config: dict,
                 device: torch.device | str, dtype: torch.dtype, plan=None, cuda_graphs: bool = False):
        """Without `plan`, the modules stay where they are and clips decode without tiles (tiles only after an
        out-of-memory error); `cuda_graphs` replays the DiT step from a captured graph on CUDA (worth it for short
        steps only: small clips)."""
        from ..placement import Placement

        self.transformer = transformer
        self.text_encoder = text_encoder
        self.vae = vae
        self.scheduler_config = scheduler_config
        self.device = torch.device(device)
        self.dtype = dtype
        text_model = getattr(text_encoder, "model", None)
        if plan is None:
            plan = self._default_plan(text_model, cuda_graphs)
        self.placement = Placement(plan, transformer=transformer, text_model=text_model, vae=vae.module,
                                   device=self.device)
        self._follow_placement()

    def _default_plan(self, text_model, cuda_graphs: bool):
        import dataclasses

        from ..device import DTYPE_NAMES, probe_device
        from ..memory import Workload, resident_plan, sizes_of_clip_modules

        cfg = self.transformer.config
        sizes = sizes_of_clip_modules(
            self.transformer, text_model, self.vae.module,
            transformer_config={"_class_name": "SanaVideoTransformer3DModel", **dataclasses.asdict(cfg)},
            vae_config={"_class_name": self.vae.geometry.class_name, **dict(self.vae.module.config)})
        width, height = video_binned_size(832, 480, cfg.sample_size)
        return resident_plan(probe_device(self.device), sizes, Workload(width, height, frames=81),
                             DTYPE_NAMES.get(self.dtype, "fp32"), cuda_graphs=cuda_graphs)

    @classmethod
    def from_pretrained(cls, model_dir: Path, *, dtype: torch.dtype, device: torch.device | str,
                        variant: str | None = None, plan=None, transformer_path: Path | str | None = None,
                        loras: list[tuple[Path, float]] = (), cuda_graphs: bool = False,
                        fp8: bool = False) -> "VideoPipeline":
        """Load every component of a diffusers-format SANA-Video folder (text to video or image to video: the
        same weights); `transformer_path` swaps in other DiT weights read with the folder's transformer config.
        With `plan`, each component loads where the plan keeps it, in the plan's dtypes (and the plan's
        `cuda_graphs` replaces the argument). `fp8` quantizes the DiT's block linears to fp8 as
        `ImagePipeline.from_pretrained` does (`sana.loading.fp8`)."""
        from ..device import DTYPES
        from ..loading import load_transformer
        from ..loading.fp8 import load_fp8
        from ..models.video_transformer import SanaVideoTransformer

        family = family_from_index(model_index(model_dir))
        if family != "video":
            raise SanaError(f"{model_dir} holds a {family or 'non-SANA-Video'} model",
                            "`sana video` takes SANA-Video models")
        for component in ("transformer", "text_encoder", "tokenizer", "vae"):
            require_component(model_dir, component)

        def load_device(component: str):
            return device if plan is None or plan.home(component) == "device" else "cpu"

        def dit():
            weights = Path(transformer_path).expanduser() if transformer_path else model_dir
            config = read_json(model_dir / "transformer" / "config.json") if weights.is_file() else None

            def load(where):
                transformer = load_transformer(weights, dtype=dtype, device=where, config=config, variant=variant,
                                               loras=list(loras))
                if not isinstance(transformer, SanaVideoTransformer):
                    raise SanaError(f"{weights} does not hold a SANA-Video transformer")
                return transformer

            return load_fp8(load, load_device("transformer")) if fp8 else load(load_device("transformer"))

        text_dtype = DTYPES[plan.te_dtype] if plan is not None else dtype
        vae_dtype = DTYPES[plan.vae_dt] if plan is not None else dtype
        loaded = load_together({
            "transformer": dit,
            "text_encoder": lambda: TextEncoder.from_pretrained(
                model_dir, dtype=text_dtype, device=load_device("text_encoder"), variant=variant,
                instruction=VIDEO_COMPLEX_HUMAN_INSTRUCTION),
            "vae": lambda: load_video_vae(model_dir, dtype=vae_dtype, device=load_device("vae"), variant=variant)})
        return cls(**loaded,
                   scheduler_config=scheduler_config(model_dir), device=device, dtype=dtype, plan=plan,
                   cuda_graphs=cuda_graphs)

    # -- steps --------------------------------------------------------------------------------------------

    def clip_layout(self, request: VideoRequest) -> ClipLayout:
        """The generated size (the trained aspect bin), the frame count the VAE takes, the latent shape."""
        cfg, vae = self.transformer.config, self.vae.geometry
        width, height = video_binned_size(request.width, request.height, cfg.sample_size)
        if width % SIZE_MULTIPLE or height % SIZE_MULTIPLE:
            raise UsageError(f"size {width}x{height} is not a multiple of {SIZE_MULTIPLE}",
                             f"use sides that are multiples of {SIZE_MULTIPLE}")
        frames = snap_frames(request.frames, vae.temporal)
        latent = (cfg.in_channels, latent_frames(frames, vae.temporal), height // vae.spatial, width // vae.spatial)
        return ClipLayout(width, height, frames, latent)

    def encode(self, request: VideoRequest) -> tuple[PromptEmbeddings, int]:
        """Text rows for one batched forward: [negative] (with CFG) then [prompt], each `len(seeds)` rows."""
        batch = len(request.seeds)
        items = [(request.negative_prompt, False)] if request.guidance > 1.0 else []
        items.append((motion_prompt(request.prompt, request.motion_score), True))
        rows = self.text_encoder.encode_many(items).trimmed().to(self.device)  # from the CPU when it runs there
        return rows.index([i for i in range(len(rows)) for _ in range(batch)]), batch

    def encode_first_frame(self, image, shape: ClipLayout) -> torch.Tensor:
        """A PIL image -> normalised latents [1, C, 1, h, w] in fp32: resized to the generated size (LANCZOS,
        no crop) and scaled to [-1, 1] as diffusers' VideoProcessor does, then the VAE encoder's mode."""
        import numpy as np
        from PIL import Image

        resized = image.convert("RGB").resize((shape.width, shape.height), resample=Image.LANCZOS)
        pixels = torch.from_numpy(np.asarray(resized).astype(np.float32) / 255.0)  # [H, W, 3]
        pixels = (2.0 * pixels - 1.0).permute(2, 0, 1)[None]  # [1, 3, H, W]
        self._tile_vae(shape.height, shape.width)
        return self.vae.encode_image(pixels).float()

    def _tile_vae(self, height: int, width: int) -> None:
        """The plan's spatial tiles (and LTX-2's temporal pieces) for a clip of height x width px."""
        from ..placement import video_decode_tiling

        video_decode_tiling(self.plan, height, width).apply(self.vae.module)

    def _prediction(self, text: PromptEmbeddings, request: VideoRequest, batch: int, first_frame_fixed: bool):
        cfg = self.transformer.config
        copies = len(text) // batch
        learned_sigma = cfg.output_channels // 2 == cfg.in_channels
        context = LazyTextContext(self.transformer, text.embeds.to(self.dtype), text.mask)

        def predict(latents: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            x = torch.cat([latents] * copies) if copies > 1 else latents  # [B', C, F, h, w]
            timestep = t.to(self.device, torch.float32).expand(x.shape[0])  # [B']
            if first_frame_fixed:  # per latent frame: 0 on the clean first frame, t elsewhere
                # [1, F']: one row for every clip, embedded once, so a clip replays alike alone or in a batch (the
                # timestep MLP's rounding depends on how many rows it gets)
                timestep = timestep[:1, None].repeat(1, x.shape[2] // cfg.patch_size[0])
                timestep[:, 0] = 0.0
            out = self.denoiser(x.to(self.dtype), context(), timestep).float()
            out = sampling.guided(out, batch=batch, guidance=request.guidance, pag=0.0)
            return out.chunk(2, dim=1)[0] if learned_sigma else out

        return predict

    def _denoise(self, text: PromptEmbeddings, batch: int, request: VideoRequest, latents: torch.Tensor,
                 events: Events) -> torch.Tensor:
        first_frame_fixed = request.image is not None
        scheduler = sampling.make_scheduler(request.sampler, flow_shift=request.flow_shift,
                                            base_config=self.scheduler_config)
        scheduler.set_timesteps(request.steps, device=self.device)
        predict = self._prediction(text, request, batch, first_frame_fixed)
        return sampling.denoise(predict, latents, scheduler, on_step=events.on_step,
                                frozen_frames=1 if first_frame_fixed else 0)

    @torch.no_grad()
    def generate(self, request: VideoRequest, events: Events | None = None) -> VideoResult:
        self._start_peak_measure()
        events = events or Events()
        timings: dict[str, float] = {}
        if request.sampler not in ("flow-dpm", "flow-euler"):
            raise UsageError(f"unknown sampler '{request.sampler}' for a video model", "use flow-dpm or flow-euler")

        # 1. Sizes: the nearest trained aspect bin, the frame count the VAE takes, the latent shape.
        shape = self.clip_layout(request)
        if shape.frames != request.frames:
            events.notice(f"{request.frames} frames snapped to {shape.frames} (the {self.vae.geometry.label} VAE "
                          f"makes {self.vae.geometry.temporal}k+1 frames)")

        # 2. Encode the prompts.
        start = events.phase("encode")
        text, batch = self._recovering("encode", lambda: self.encode(request), events,
                                       SanaError("out of GPU memory while encoding the prompt",
                                                 "free GPU memory (other processes may hold it)"))
        timings["encode"] = self._elapsed(start)

        # 3. Initial latents [B, C, F, h, w] in fp32: noise for every frame from each seed's CPU generator (what
        #    diffusers draws); image to video then overwrites frame 0 with the encoded image.
        latents = sampling.initial_noise([sampling.cpu_generator(s) for s in request.seeds], shape.latent)
        latents = latents.to(self.device)
        if request.image is not None:
            start = events.phase("encode image")
            failure = SanaError("out of GPU memory while encoding the first frame", "use a smaller --res")
            first = self._recovering("condition", lambda: self.encode_first_frame(request.image, shape), events,
                                     failure)
            latents[:, :, :1] = first.to(self.device)
            timings["encode image"] = self._elapsed(start)

        # 4. Denoise.
        start = events.phase("denoise")
        failure = SanaError(f"out of GPU memory while denoising {shape.frames} frames at {shape.width}x"
                            f"{shape.height} with {len(request.seeds)} clip(s)",
                            "use a smaller --res, fewer --frames or --num, or free GPU memory")
        latents = self._recovering("denoise", lambda: self._denoise(text, batch, request, latents, events),
                                   events, failure)
        timings["denoise"] = self._elapsed(start)

        # 5. Decode each clip, resize to the request, 8-bit frames.
        start = events.phase("decode")
        videos = [self.decode(latents[i : i + 1], request.width, request.height, events)
                  for i in range(latents.shape[0])]
        timings["decode"] = self._elapsed(start)
        return VideoResult(videos=videos, frames=shape.frames, timings=timings,
                           generated_size=(shape.width, shape.height), memory=self._memory_record())

    def decode(self, latents: torch.Tensor, width: int, height: int, events: Events | None = None) -> torch.Tensor:
        """Latents [1, C, F, h, w] -> uint8 frames [F', height, width, 3] on the CPU. An out-of-memory decode is
        retried in smaller tiles (then under a lower placement tier)."""
        failure = SanaError("out of GPU memory while decoding, even in tiles",
                            "use a smaller --res or fewer --frames, or free GPU memory")
        return self._recovering("decode", lambda: self._decode(latents, width, height), events, failure)

    def _decode(self, latents: torch.Tensor, width: int, height: int) -> torch.Tensor:
        self._tile_vae(latents.shape[-2] * self.vae.geometry.spatial, latents.shape[-1] * self.vae.geometry.spatial)
        pixels = self.vae.decode(latents)  # [1, 3, F, H, W]
        check_finite(pixels, "clip")
        frames = resize_and_crop(pixels[0].transpose(0, 1), width, height)  # [F, 3, height, width]
        return to_uint8(frames).cpu()  # [F, height, width, 3]

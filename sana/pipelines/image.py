"""The SANA image pipeline (SANA 1.0 / 1.5 / 2K / 4K, PAG, Sprint) on our own DiT.

Steps of `generate`: encode prompts, draw noise, denoise (CFG / PAG as one batched forward), decode, resize
to the request. Progress and timings leave through `Events`; nothing here prints.

Where the weights are during each step is the memory plan's business (sana.memory, sana.placement): each step
runs inside `placement.phase(...)`, and an out-of-memory error in a step retries it under the plan's next lower
step (smaller VAE tiles, then the next placement tier) with one notice (`common.PlacedPipeline`).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from .. import sampling
from ..components import family_from_index, load_vae, model_index, read_json, require_component, scheduler_config
from ..errors import SanaError
from ..graphs import GraphedForward
from ..memory import MemoryPlan
from ..models.text_context import LazyTextContext
from ..text import PromptEmbeddings, TextEncoder
from .common import DecoderThread, Events, PlacedPipeline, check_finite, load_together, resize_and_crop, to_uint8
from .sizes import binned_size


@dataclass
class ImageRequest:
    """One prompt, one or more seeds: everything that decides the pixels."""

    prompt: str
    seeds: list[int]
    width: int
    height: int
    steps: int
    guidance: float
    sampler: str
    flow_shift: float
    negative_prompt: str = ""
    pag: float = 0.0
    pag_layers: tuple[int, ...] = (8,)
    max_timesteps: float = 1.5708  # Sprint (SCM) only
    intermediate_timesteps: float | None = 1.3  # Sprint with 2 steps only

    def record_extra(self) -> dict:
        """What a file's record keeps beyond `GenerationRecord`'s fields to replay this request: Sprint's
        TrigFlow timesteps (its start, and the middle one of a 2-step run)."""
        if self.sampler != "scm":
            return {}
        extra = {"max_timesteps": self.max_timesteps}
        if self.steps == 2 and self.intermediate_timesteps is not None:
            extra["intermediate_timesteps"] = self.intermediate_timesteps
        return extra


@dataclass
class ImageResult:
    images: list  # PIL images, one a seed
    timings: dict[str, float] = field(default_factory=dict)
    generated_size: tuple[int, int] = (0, 0)  # (width, height) the DiT ran at, before resizing to the request
    memory: dict = field(default_factory=dict)  # the memory plan that finished the run (MemoryPlan.record())


class ImagePipeline(PlacedPipeline):
    """Text encoder + our DiT + DC-AE, for one model, placed on the device as a memory plan says."""

    def __init__(self, *, transformer, text_encoder: TextEncoder, vae, family: str, scheduler_config: dict,
                 device: torch.device, dtype: torch.dtype, cuda_graphs: bool = True, plan: MemoryPlan | None = None,
                 decoder_thread: DecoderThread | None = None):
        """`vae` is our DC-AE decoder (`sana.components.load_vae`). Without `plan`, the modules stay where they are
        (everything resident), the VAE decodes whole images, and on CUDA each step replays a captured graph of the
        DiT forward (unless `cuda_graphs` is False). With `decoder_thread`, every decode runs there (the pipeline
        closes it when it is collected)."""
        import weakref

        from ..placement import Placement

        self.transformer = transformer
        self.text_encoder = text_encoder
        self.vae = vae
        self.family = family
        self.scheduler_config = scheduler_config
        self.device = torch.device(device)
        self.dtype = dtype
        self.vae_scale_factor = vae.spatial_compression_ratio
        self.native_resolution = transformer.config.sample_size * self.vae_scale_factor
        text_model = getattr(text_encoder, "model", None)
        if plan is None:
            plan = self._default_plan(text_model, cuda_graphs)
        self.placement = Placement(plan, transformer=transformer, text_model=text_model, vae=vae, device=self.device)
        self._follow_placement()
        self.decoder_thread = decoder_thread
        if decoder_thread is not None:
            weakref.finalize(self, decoder_thread.close)

    def _default_plan(self, text_model, cuda_graphs: bool) -> MemoryPlan:
        from ..device import DTYPE_NAMES, probe_device
        from ..memory import Workload, resident_plan, sizes_of_modules

        sizes = sizes_of_modules(self.transformer, text_model, self.vae)
        work = Workload(self.native_resolution, self.native_resolution)
        return resident_plan(probe_device(self.device), sizes, work, DTYPE_NAMES.get(self.dtype, "fp32"),
                             cuda_graphs=cuda_graphs)

    @classmethod
    def from_pretrained(cls, model_dir: Path, *, dtype: torch.dtype, device: torch.device | str,
                        family: str | None = None, variant: str | None = None,
                        loras: list[tuple[Path, float]] = (), cuda_graphs: bool = True,
                        transformer_path: Path | str | None = None, plan: MemoryPlan | None = None,
                        fp8: bool = False, warm_for: tuple[int, int] | None = None) -> "ImagePipeline":
        """Load every component of a diffusers-format folder; `transformer_path` swaps in other DiT weights
        (a fine-tune, an NVlabs `.pth`, a single safetensors file) read with the folder's transformer config.

        With `plan`, each component loads where the plan keeps it (the device, or host memory for offloaded and
        streamed ones, or the CPU in the plan's text-encoder dtype), so nothing larger than the plan allows ever
        reaches the device; the plan's `cuda_graphs` replaces the argument. `fp8` quantizes the DiT's block linears
        to fp8 (`sana.models.fp8`; fast on GPUs of compute capability 8.9+ with bf16 activations); where the plan
        keeps the DiT on the device, they are quantized there one at a time from a load to host memory, so the
        device never holds the bf16 DiT (`sana.loading.fp8`).

        The components load side by side (`load_together`). With `warm_for` (the first image's width and height)
        on a CUDA device, the text encoder and the VAE decoder, once loaded, each run once at that image's shapes
        while the larger DiT is still loading, so the kernels they use are loaded and cuBLAS / cuDNN set up before
        the first image needs them (only where the plan keeps them on the device). The text encoder warms in this
        thread, whose library handles the first image uses; on CUDA every decode runs on a `DecoderThread`, where
        the decoder warms meanwhile (cuDNN's plans are cached per thread), and the first denoising step waits for
        that warm-up, so the two never meet in a CUDA graph capture or beyond the plan's memory.
        """
        from ..device import DTYPES
        from ..loading import load_transformer
        from ..loading.fp8 import load_fp8

        index = model_index(model_dir)
        family = family or family_from_index(index) or "sana"
        if family not in ("sana", "sana1.5", "sprint"):
            raise SanaError(f"{model_dir} holds a {family} model", "`sana gen` and `sana sprint` take image models")
        require_component(model_dir, "transformer")

        def load_device(component: str):
            return device if plan is None or plan.home(component) == "device" else "cpu"

        def dit():
            weights = model_dir if transformer_path is None else Path(transformer_path).expanduser()
            config = read_json(model_dir / "transformer" / "config.json") if weights.is_file() else None

            def load(where):
                return load_transformer(weights, dtype=dtype, device=where, config=config, variant=variant,
                                        loras=list(loras))

            return load_fp8(load, load_device("transformer")) if fp8 else load(load_device("transformer"))

        @torch.no_grad()
        def warm_text_encoder(encoder):
            encoder.encode_many([("", False), ("", True)])  # the negative's and the prompt's lengths

        @torch.no_grad()
        def warm_decoder(decoder):
            from ..placement import decode_tiling

            sample_size = read_json(model_dir / "transformer" / "config.json").get("sample_size", 32)
            scale = decoder.spatial_compression_ratio
            width, height = binned_size(*warm_for, sample_size * scale)
            latents = torch.zeros(1, decoder.config.latent_channels, height // scale, width // scale, device=device,
                                  dtype=decoder.dtype)
            decoder.decode(latents, tile=decode_tiling(plan, height, width) if plan is not None else None)

        def head_start(warm_up):
            def run(component):
                try:
                    warm_up(component)
                except torch.OutOfMemoryError:  # only a head start: the phase itself has the plan's fallbacks
                    torch.cuda.empty_cache()
            return run

        decoder_thread = DecoderThread(device) if warms_while_loading(device) else None
        warm = {}
        if warm_for is not None and decoder_thread is not None:
            if load_device("text_encoder") == device:
                warm["text_encoder"] = head_start(warm_text_encoder)
            if load_device("vae") == device:
                warm["vae"] = lambda decoder: decoder_thread.warm(lambda: head_start(warm_decoder)(decoder))
        text_dtype = DTYPES[plan.te_dtype] if plan is not None else dtype
        loaded = load_together({
            "transformer": dit,
            "text_encoder": lambda: TextEncoder.from_pretrained(
                model_dir, dtype=text_dtype, device=load_device("text_encoder"), variant=variant),
            "vae": lambda: load_vae(model_dir, dtype=DTYPES[plan.vae_dt] if plan is not None else dtype,
                                    device=load_device("vae"), variant=variant)}, warm)
        return cls(**loaded, family=family,
                   scheduler_config=scheduler_config(model_dir), device=device, dtype=dtype, cuda_graphs=cuda_graphs,
                   plan=plan, decoder_thread=decoder_thread)

    @property
    def is_sprint(self) -> bool:
        return self.family == "sprint" or bool(getattr(self.transformer.config, "guidance_embeds", False))

    # -- steps --------------------------------------------------------------------------------------------

    def encode(self, request: ImageRequest) -> tuple[PromptEmbeddings, int]:
        """Text rows for one batched forward: [uncond] [cond] [cond for PAG], each `len(seeds)` rows."""
        return self.encode_batch([request])

    def encode_batch(self, requests: list[ImageRequest]) -> tuple[PromptEmbeddings, int]:
        """Text rows for several requests in one forward: each group ([uncond] [cond] [cond for PAG]) holds every
        request's rows in order, each request's prompt repeated over its seeds; the groups are what the guided
        prediction splits. The requests share guidance and PAG (`batch_key`)."""
        first = requests[0]
        groups = []  # (prompt, with_instruction) of each request, per group; all prompts in one text-encoder forward
        if not self.is_sprint and first.guidance > 1.0:
            groups.append([(r.negative_prompt, False) for r in requests])
        groups.append([(r.prompt, True) for r in requests])
        if not self.is_sprint and first.pag > 0.0:
            groups.append([(r.prompt, True) for r in requests])
        items = [item for group in groups for item in group]
        rows = self.text_encoder.encode_many(items).trimmed().to(self.device)  # from the CPU when the encoder runs there
        # one encoding an item, repeated over its request's seeds
        repeats = [len(r.seeds) for r in requests] * len(groups)
        images = sum(len(r.seeds) for r in requests)
        return rows.index([i for i, count in enumerate(repeats) for _ in range(count)]), images

    def _flow_prediction(self, text: PromptEmbeddings, request: ImageRequest, batch: int):
        copies = len(text) // batch
        perturbed = batch if request.pag > 0.0 else 0
        layers = tuple(request.pag_layers) if perturbed else ()

        context = LazyTextContext(self.transformer, text.embeds.to(self.dtype), text.mask)

        def predict(latents: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            x = torch.cat([latents] * copies) if copies > 1 else latents
            timestep = t.expand(x.shape[0]).to(self.device) * self.transformer.config.timestep_scale
            out = self.denoiser(x.to(self.device, self.dtype), context(), timestep, perturbed_rows=perturbed,
                                perturbed_layers=layers).float()
            return sampling.guided(out, batch=batch, guidance=request.guidance, pag=request.pag)

        return predict

    def _trigflow_prediction(self, text: PromptEmbeddings, request: ImageRequest, sigma_data: float):
        cfg = self.transformer.config
        guidance = torch.full((len(text),), request.guidance, device=self.device) * cfg.guidance_embeds_scale

        context = LazyTextContext(self.transformer, text.embeds.to(self.dtype), text.mask)

        def flow_model(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            return self.denoiser(x.to(self.dtype), context(), t, guidance=guidance.to(self.dtype))

        def predict(latents: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
            theta = theta.to(self.device).expand(latents.shape[0])
            return sampling.trigflow_velocity(flow_model, latents.to(self.device), theta, sigma_data)

        return predict

    @torch.no_grad()
    def generate(self, request: ImageRequest, events: Events | None = None) -> ImageResult:
        self._start_peak_measure()
        return self._generate(request, lambda: self.encode(request), events)

    @torch.no_grad()
    def generate_batch(self, requests: list[ImageRequest], events: Events | None = None) -> list[ImageResult]:
        """Several requests that share everything but the prompts and seeds (equal `batch_key`) in one forward;
        one result each, its images the ones `generate(request)` draws (each image's noise comes from its own
        seed; the rows only share the matmuls, so the pixels agree within rounding)."""
        if len({batch_key(r) for r in requests}) != 1:
            raise ValueError("requests batched together must share size, steps, guidance, PAG and sampler")
        if len(requests) == 1:
            return [self.generate(requests[0], events)]
        seeds = [s for r in requests for s in r.seeds]
        merged = replace(requests[0], prompt="", negative_prompt="", seeds=seeds)
        result = self._generate(merged, lambda: self.encode_batch(requests), events)
        results, start = [], 0
        for r in requests:
            images = result.images[start : start + len(r.seeds)]
            start += len(r.seeds)
            results.append(ImageResult(images=images, timings=dict(result.timings),
                                       generated_size=result.generated_size, memory=result.memory))
        return results

    def _generate(self, request: ImageRequest, encode, events: Events | None) -> ImageResult:
        """The steps of `generate`; `encode()` gives the text rows (one request's, or a batch's)."""
        events = events or Events()
        timings: dict[str, float] = {}
        # 1. Size: generate at the nearest trained aspect bin, resize to the request afterwards.
        gen_w, gen_h = binned_size(request.width, request.height, self.native_resolution)
        latent_shape = (self.transformer.config.in_channels, gen_h // self.vae_scale_factor, gen_w // self.vae_scale_factor)

        # 2. Encode the prompts.
        start = events.phase("encode")
        text, batch = self._recovering("encode", encode, events,
                                       SanaError("out of GPU memory while encoding the prompt",
                                                 "free GPU memory (other processes may hold it)"))
        timings["encode"] = self._elapsed(start)

        # 3. Denoise.
        start = events.phase("denoise")
        failure = SanaError(f"out of GPU memory while denoising at {gen_w}x{gen_h} with {len(request.seeds)} image(s)",
                            "use a smaller --res or --num, or free GPU memory")
        latents = self._recovering("denoise", lambda: self._denoise(text, batch, request, latent_shape, events),
                                   events, failure)
        timings["denoise"] = self._elapsed(start)

        # 4. Decode, resize to the request, convert.
        start = events.phase("decode")
        images = []
        for i in range(latents.shape[0]):
            images.append(self.decode(latents[i : i + 1], request.width, request.height, events))
            events.output(i, images[-1], lambda: {"timings": {**timings, "decode": self._elapsed(start)},
                                                  "memory": self._memory_record(), "generated_size": (gen_w, gen_h)})
        timings["decode"] = self._elapsed(start)
        return ImageResult(images=images, timings=timings, generated_size=(gen_w, gen_h), memory=self._memory_record())

    def _denoise(self, text: PromptEmbeddings, batch: int, request: ImageRequest, latent_shape, events: Events):
        self._beside_decoder_warm_up()
        generators = [sampling.cpu_generator(s) for s in request.seeds]
        latents = sampling.initial_noise(generators, latent_shape).to(self.device)
        if self.is_sprint:
            scheduler = sampling.make_scheduler("scm", flow_shift=request.flow_shift, base_config=self.scheduler_config)
            sampling.set_scm_timesteps(scheduler, request.steps, max_timesteps=request.max_timesteps,
                                       intermediate_timesteps=request.intermediate_timesteps)
            sigma_data = scheduler.config.sigma_data
            predict = self._trigflow_prediction(text, request, sigma_data)
            latents = sampling.denoise(predict, latents * sigma_data, scheduler, generators=generators,
                                       on_step=events.on_step) / sigma_data
        else:
            scheduler = sampling.make_scheduler(request.sampler, flow_shift=request.flow_shift,
                                                base_config=self.scheduler_config)
            scheduler.set_timesteps(request.steps, device=self.device)
            predict = self._flow_prediction(text, request, batch)
            latents = sampling.denoise(predict, latents, scheduler, on_step=events.on_step)
        return latents

    def _beside_decoder_warm_up(self) -> None:
        """Let the first steps run while the decoder still warms up on its thread (cuDNN building its plans, ~1-2 s
        at 1024 px), eagerly until it ends, when the plan has room for both at once; else wait for it, as a graph
        capture must not meet its allocations."""
        thread = self.decoder_thread
        if thread is None:
            return
        hold = thread.warming if thread.warming() and self.plan.fits_at_once("denoise", "decode") else None
        if hold is None:
            thread.wait_warm()
        if isinstance(self.denoiser, GraphedForward):
            self.denoiser.hold_capture = hold

    # -- the steps one at a time, for front ends that run each in a step of their own (the ComfyUI nodes) ---

    @torch.no_grad()
    def encode_prompt(self, prompt: str, negative_prompt: str = "",
                      events: Events | None = None) -> PromptEmbeddings:
        """Rows [negative, prompt] ([2, 300, C]; the instruction before the prompt only), encoded in the plan's
        encode phase. `sample` takes from them the rows a request needs."""
        items = [(negative_prompt, False), (prompt, True)]
        failure = SanaError("out of GPU memory while encoding the prompt",
                            "free GPU memory (other processes may hold it)")
        return self._recovering("encode", lambda: self.text_encoder.encode_many(items), events, failure)

    @torch.no_grad()
    def sample(self, request: ImageRequest, text: PromptEmbeddings, events: Events | None = None) -> torch.Tensor:
        """Steps 1 and 3 of `generate` on `encode_prompt`'s rows for the request's prompts: the denoised latents
        [len(seeds), C, h, w] at the trained aspect bin nearest the request (`decode` makes each an image of the
        requested size). The same rows, noise and loop as `generate`, so the same pixels."""
        events = events or Events()
        gen_w, gen_h = binned_size(request.width, request.height, self.native_resolution)
        scale = self.vae_scale_factor
        latent_shape = (self.transformer.config.in_channels, gen_h // scale, gen_w // scale)
        # The groups of `encode_batch`: [negative] (CFG), [prompt], [prompt] (PAG); each row once a seed.
        groups = ([0] if not self.is_sprint and request.guidance > 1.0 else []) + [1]
        groups += [1] if not self.is_sprint and request.pag > 0.0 else []
        batch = len(request.seeds)
        rows = text.index([g for g in groups for _ in range(batch)]).trimmed().to(self.device)
        failure = SanaError(f"out of GPU memory while denoising at {gen_w}x{gen_h} with {batch} image(s)",
                            "use a smaller size or batch, or free GPU memory")
        return self._recovering("denoise", lambda: self._denoise(rows, batch, request, latent_shape, events), events,
                                failure)

    def decode(self, latents: torch.Tensor, width: int, height: int, events: Events | None = None):
        """Latents [1, C, h, w] -> one PIL image of width x height. An out-of-memory decode is retried in smaller
        tiles (then under a lower placement tier)."""
        failure = SanaError("out of GPU memory while decoding, even in tiles", "use a smaller --res or free GPU memory")
        if self.decoder_thread is None:
            return self._recovering("decode", lambda: self._decode(latents, width, height), events, failure)
        return self._recovering("decode", lambda: self.decoder_thread.run(lambda: self._decode(latents, width, height)),
                                events, failure)

    def _decode(self, latents: torch.Tensor, width: int, height: int):
        from ..placement import decode_tiling

        tile = decode_tiling(self.plan, latents.shape[-2] * self.vae_scale_factor,
                             latents.shape[-1] * self.vae_scale_factor)
        scaled = latents.to(self.device, self.vae.dtype) / self.vae.config.scaling_factor
        pixels = self.vae.decode(scaled, tile=tile)  # [1, 3, H, W]
        check_finite(pixels, "image")
        return pixels_to_pil(resize_and_crop(pixels, width, height))


def warms_while_loading(device: torch.device | str) -> bool:
    """Whether `from_pretrained(warm_for=...)` warms components during the load: on CUDA, where the first run of each
    kernel loads it (and cuBLAS / cuDNN set up); a CPU has nothing to warm."""
    return torch.device(device).type == "cuda"


def batch_key(request: ImageRequest) -> tuple:
    """What requests must share to run in one forward (`ImagePipeline.generate_batch`): all but prompts and seeds."""
    return (request.width, request.height, request.steps, request.guidance, request.sampler, request.flow_shift,
            request.pag, tuple(request.pag_layers), request.max_timesteps, request.intermediate_timesteps)


def pixels_to_pil(pixels: torch.Tensor):
    """[1, 3, H, W] in [-1, 1] -> a PIL RGB image (`common.to_uint8`: only uint8 reaches the host; at 4096 px that
    is 50 MB instead of a 200 MB fp32 copy converted on the CPU)."""
    from PIL import Image

    return Image.fromarray(to_uint8(pixels[0]).cpu().numpy())

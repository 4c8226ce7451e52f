"""The image nodes: Model Loader, LoRA, Text Encode, Sampler, Sprint, Decode and Generate.

Each node's function is a few numbered steps over the engine's public pipeline (`ImagePipeline.encode_prompt`,
`sample`, `decode`, `generate`), so a graph draws what `sana gen` draws for the same settings. Values a graph can
get wrong before it runs (an unknown or missing model, a LoRA file that is not one) are refused by
`VALIDATE_INPUTS`, which ComfyUI turns into `node_errors`; the rest are one-line `SanaError`s when the node runs.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from sana.errors import SanaError, UsageError

from . import convert, host, widgets
from .models import DTYPES, IMAGE_FAMILIES, SanaModel, choose, default_model, model_choices

CATEGORY = "sana"
GEN_FAMILIES = ("sana", "sana1.5")


def _validation(check) -> bool | str:
    """True, or the one-line message ComfyUI shows in the node's error."""
    try:
        check()
    except SanaError as exc:
        return str(exc)
    return True


@dataclass
class Conditioning:
    """SANA_CONDITIONING: the prompts and their encoder rows [negative, prompt] ([2, 300, C]), and which model's
    text encoder made them."""

    prompt: str
    negative: str
    rows: object  # sana.text.PromptEmbeddings
    model_key: tuple

    def check(self, model: SanaModel) -> None:
        if self.model_key[0] != model.key[0]:
            raise UsageError("the conditioning was encoded by another model's text encoder",
                             "connect Sana Text Encode to the same model as the sampler")


# -- models -------------------------------------------------------------------------------------------------

class SanaModelLoader:
    DESCRIPTION = ("A SANA model: a registry name (`sana models list`; nano is built in), a downloaded hub id, or a "
                   "diffusers-format folder in ComfyUI's models/sana (an API graph may give any folder's path). "
                   "Nothing is downloaded (`sana models pull NAME` does that). It loads when a node first needs "
                   "it, placed as the memory plan for this device says.")
    CATEGORY = CATEGORY
    FUNCTION = "load"
    RETURN_TYPES = ("SANA_MODEL",)
    RETURN_NAMES = ("model",)

    @classmethod
    def INPUT_TYPES(cls):
        from sana.memory import MODES

        return {"required": {
            "model": (model_choices(), {"default": default_model(), "tooltip": "The model to load."}),
            "dtype": (list(DTYPES), {"default": "auto", "tooltip": "auto: the device's best."}),
            "memory": (list(MODES), {"default": "auto", "tooltip": "Placement tier; auto: from the free memory."})}}

    @classmethod
    def VALIDATE_INPUTS(cls, model):
        # Only `model`: ComfyUI reports a failed check once for each input this method takes.
        return _validation(lambda: choose(model))

    def load(self, model, dtype, memory):
        return (choose(model, dtype, memory),)


class SanaLoRA:
    DESCRIPTION = ("Merges a diffusers-format SANA LoRA (a file in ComfyUI's models/loras; an API graph may give any "
                   "LoRA file's or `sana finetune` folder's path) into the model's weights at load: the model "
                   "reloads. A LoRA trained for another model is refused here.")
    CATEGORY = CATEGORY
    FUNCTION = "apply"
    RETURN_TYPES = ("SANA_MODEL",)
    RETURN_NAMES = ("model",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": ("SANA_MODEL",),
            "lora_name": (host.lora_files() or [""], {"tooltip": "A LoRA file in ComfyUI's models/loras."}),
            "strength": ("FLOAT", {"default": 1.0, "min": -10.0, "max": 10.0, "step": 0.05})}}

    @classmethod
    def VALIDATE_INPUTS(cls, lora_name):
        return _validation(lambda: _lora_file(lora_name))

    def apply(self, model: SanaModel, lora_name, strength):
        # 1. The file; 2. a handle with the LoRA; 3. loaded now, so a LoRA for another model fails on this node.
        file = _lora_file(lora_name)
        with_lora = model.with_lora(file, strength)
        with_lora.pipeline()
        return (with_lora,)


def _lora_file(lora_name: str):
    """A name in ComfyUI's models/loras, else a path: the LoRA file (`sana.lora.lora_file` checks it is one)."""
    from pathlib import Path

    from sana.lora import lora_file

    found = host.lora_path(lora_name)
    path = found if found is not None else Path(lora_name.strip()).expanduser()
    if not lora_name.strip() or not path.exists():
        raise UsageError(f"no LoRA named '{lora_name}'" if lora_name.strip() else "no LoRA given",
                         "put it in ComfyUI's models/loras")
    return lora_file(path)


# -- the steps ------------------------------------------------------------------------------------------------

class SanaTextEncode:
    DESCRIPTION = "The prompt and negative prompt through the model's Gemma-2 text encoder (with SANA's instruction)."
    CATEGORY = CATEGORY
    FUNCTION = "encode"
    RETURN_TYPES = ("SANA_CONDITIONING",)
    RETURN_NAMES = ("conditioning",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model": ("SANA_MODEL",), "prompt": widgets.prompt(), "negative": widgets.negative()}}

    def encode(self, model: SanaModel, prompt, negative):
        model.require(*IMAGE_FAMILIES, node="Sana Text Encode")
        rows = model.pipeline().encode_prompt(prompt, negative, host.events(1))
        return (Conditioning(prompt, negative, rows, model.key),)


def _request(model: SanaModel, cond: Conditioning, *, seed, batch_size, width, height, steps, guidance, sampler,
             shift, pag=0.0, pag_layer=-1, max_timesteps=1.5708, intermediate_timesteps=1.3):
    """The ImageRequest `sana gen` makes for these settings (sides snapped to 32, the model's shift and PAG layer
    when 0 / -1), after checking that it fits in memory here."""
    from sana.memory import Workload
    from sana.pipelines.image import ImageRequest
    from sana.pipelines.sizes import binned_size

    d = model.image_defaults()
    # 0 (-1 for guidance): the model's default, as `sana gen` takes it when the option is not given
    steps, width, height = steps or d.steps, width or d.resolution, height or d.resolution
    guidance = d.cfg if guidance < 0 else guidance
    if widgets.snapped(width, height) != (width, height):
        host.log.warning("sana: size %dx%d snapped to %dx%d (sides are multiples of 32)", width, height,
                         *widgets.snapped(width, height))
        width, height = widgets.snapped(width, height)
    negative = cond.negative
    if model.family == "sprint" and negative:
        host.log.warning("sana: SANA-Sprint takes no negative prompt; it is left out, and not recorded")
        negative = ""
    request = ImageRequest(prompt=cond.prompt, negative_prompt=negative, seeds=widgets.seeds(seed, batch_size),
                           width=width, height=height, steps=steps, guidance=guidance, sampler=sampler,
                           flow_shift=shift or d.shift, pag=pag,
                           pag_layers=(pag_layer if pag_layer >= 0 else d.pag_layer,),
                           max_timesteps=max_timesteps, intermediate_timesteps=intermediate_timesteps)
    copies = 1 if model.family == "sprint" else 1 + (guidance > 1.0) + (pag > 0.0)
    gen_w, gen_h = binned_size(width, height, d.resolution)
    model.check_fits(Workload(gen_w, gen_h, images=batch_size, rows=batch_size * copies),
                     f"{batch_size} image(s) at {width}x{height}")
    return request


def _latent(model: SanaModel, request, latents, seconds: float) -> dict:
    """LATENT {"samples": [B, C, h, w]}: the DC-AE's own latent space (ComfyUI's convention: the DiT's latents
    divided by the VAE's scaling factor), on the CPU in fp32; "sana" keeps what Decode and Save need."""
    pipe = model.pipeline()
    samples = latents.float().cpu() / pipe.vae.config.scaling_factor
    records = [convert.record(model, prompt=request.prompt, negative=request.negative_prompt, seed=s,
                              steps=request.steps, guidance=request.guidance, sampler=request.sampler,
                              shift=request.flow_shift, width=request.width, height=request.height, pag=request.pag,
                              pag_layer=request.pag_layers[0], timings={"denoise": seconds},
                              extra=request.record_extra())
               for s in request.seeds]
    return {"samples": samples, "sana": {"width": request.width, "height": request.height,
                                         "latent_hw": list(samples.shape[-2:]), "records": records}}


class SanaSampler:
    DESCRIPTION = ("Our denoise loop (flow DPM-Solver++ or flow Euler, CFG and PAG in one batched forward) from "
                   "diffusers-identical noise: the latents `sana gen` gets for the same settings.")
    CATEGORY = CATEGORY
    FUNCTION = "sample"
    RETURN_TYPES = ("LATENT",)
    RETURN_NAMES = ("latent",)

    @classmethod
    def INPUT_TYPES(cls):
        d = widgets.preset(widgets.IMAGE_PRESET)
        return {"required": {
                    "model": ("SANA_MODEL",), "conditioning": ("SANA_CONDITIONING",), "seed": widgets.seed(),
                    "steps": widgets.model_steps(0), "guidance": widgets.model_guidance(),
                    "pag": ("FLOAT", {"default": d["pag"], "min": 0.0, "max": 20.0, "step": 0.1, "round": 0.01,
                                      "tooltip": "Perturbed-attention guidance scale (0: off)."}),
                    "sampler": (["flow-dpm", "flow-euler"], {"default": d["sampler"]}), "shift": widgets.shift(),
                    "width": widgets.model_side("width"), "height": widgets.model_side("height"),
                    "batch_size": widgets.batch_size()},
                "optional": {
                    "pag_layer": ("INT", {"default": -1, "min": -1, "max": 100,
                                          "tooltip": "Block whose self-attention PAG perturbs; -1: the model's."})}}

    def sample(self, model: SanaModel, conditioning: Conditioning, seed, steps, guidance, pag, sampler, shift, width,
               height, batch_size, pag_layer=-1):
        # 1. The model and conditioning belong together; 2. the request, checked against the memory plan;
        # 3. the loop, the progress bar following it.
        model.require(*GEN_FAMILIES, node="Sana Sampler (SANA-Sprint models: Sana Sprint)")
        conditioning.check(model)
        request = _request(model, conditioning, seed=seed, batch_size=batch_size, width=width, height=height,
                           steps=steps, guidance=guidance, sampler=sampler, shift=shift, pag=pag, pag_layer=pag_layer)
        start = time.perf_counter()
        latents = model.pipeline().sample(request, conditioning.rows, host.events(request.steps))
        return (_latent(model, request, latents, time.perf_counter() - start),)


class SanaSprint:
    DESCRIPTION = "SANA-Sprint's 1-4 step sampler (TrigFlow / SCM, guidance through the guidance embedding)."
    CATEGORY = CATEGORY
    FUNCTION = "sample"
    RETURN_TYPES = ("LATENT",)
    RETURN_NAMES = ("latent",)

    @classmethod
    def INPUT_TYPES(cls):
        d = widgets.preset(widgets.SPRINT_PRESET)
        return {"required": {
                    "model": ("SANA_MODEL",), "conditioning": ("SANA_CONDITIONING",), "seed": widgets.seed(),
                    "steps": widgets.steps(d["steps"], 1, 4, "1 to 4 steps."),
                    "guidance": widgets.guidance(d["guidance"], "Guidance fed to the guidance embedding."),
                    "width": widgets.side(d["resolution"], "width"), "height": widgets.side(d["resolution"], "height"),
                    "batch_size": widgets.batch_size()},
                "optional": {
                    "max_timesteps": ("FLOAT", {"default": d["max_timesteps"], "min": 0.1, "max": 1.5708,
                                                "step": 0.01, "round": 0.0001}),
                    "intermediate_timesteps": ("FLOAT", {"default": d["intermediate_timesteps"], "min": 0.0,
                                                         "max": 1.5708, "step": 0.01, "round": 0.0001,
                                                         "tooltip": "The middle timestep of a 2-step run."})}}

    def sample(self, model: SanaModel, conditioning: Conditioning, seed, steps, guidance, width, height, batch_size,
               max_timesteps=1.5708, intermediate_timesteps=1.3):
        model.require("sprint", node="Sana Sprint")
        conditioning.check(model)
        request = _request(model, conditioning, seed=seed, batch_size=batch_size, width=width, height=height,
                           steps=steps, guidance=guidance, sampler="scm", shift=0.0, max_timesteps=max_timesteps,
                           intermediate_timesteps=intermediate_timesteps)
        start = time.perf_counter()
        latents = model.pipeline().sample(request, conditioning.rows, host.events(request.steps))
        return (_latent(model, request, latents, time.perf_counter() - start),)


class SanaDecode:
    DESCRIPTION = ("Our DC-AE decoder, in the tiles the memory plan chose, to the size the sampler was asked for "
                   "(IMAGE [B, H, W, 3] in 0..1).")
    CATEGORY = CATEGORY
    FUNCTION = "decode"
    RETURN_TYPES = ("IMAGE", "SANA_INFO")
    RETURN_NAMES = ("image", "info")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model": ("SANA_MODEL",), "latent": ("LATENT",)}}

    def decode(self, model: SanaModel, latent: dict):
        model.require(*IMAGE_FAMILIES, node="Sana Decode")
        pipe = model.pipeline()
        samples = latent["samples"]  # [B, C, h, w] in the DC-AE's latent space
        channels, scale = pipe.transformer.config.in_channels, pipe.vae_scale_factor
        if samples.ndim != 4 or samples.shape[1] != channels:
            raise UsageError(f"this latent has shape {list(samples.shape)}; {model.name} decodes [B, {channels}, h, w]",
                             "decode a latent of the same model")
        # The requested size when the latent is still the sampler's; a latent changed on the way decodes as it is.
        info = latent.get("sana") or {}
        same = info.get("latent_hw") == list(samples.shape[-2:])
        if same:
            width, height = info["width"], info["height"]
        else:
            width, height = samples.shape[-1] * scale, samples.shape[-2] * scale
        count = samples.shape[0]
        events, images = host.events(count), []
        for i in range(count):  # one image at a time, in the plan's tiles; the bar counts images
            images.append(pipe.decode(samples[i : i + 1] * pipe.vae.config.scaling_factor, width, height, events))
            events.on_step(i + 1, count)
        records = info.get("records", []) if same else []
        return (convert.pil_to_image(images), records)


class SanaGenerate:
    DESCRIPTION = "Prompt to image in one node: `sana gen`'s whole run (SANA-Sprint models too)."
    CATEGORY = CATEGORY
    FUNCTION = "generate"
    RETURN_TYPES = ("IMAGE", "SANA_INFO")
    RETURN_NAMES = ("image", "info")

    @classmethod
    def INPUT_TYPES(cls):
        types = SanaSampler.INPUT_TYPES()
        required = {"model": ("SANA_MODEL",), "prompt": widgets.prompt(), "negative": widgets.negative(),
                    **{k: v for k, v in types["required"].items() if k not in ("model", "conditioning")}}
        return {"required": required, "optional": types["optional"]}

    def generate(self, model: SanaModel, prompt, negative, seed, steps, guidance, pag, sampler, shift, width, height,
                 batch_size, pag_layer=-1):
        model.require(*IMAGE_FAMILIES, node="Sana Generate")
        sprint = model.family == "sprint"
        if sprint and steps and not 1 <= steps <= 4:
            raise UsageError(f"steps {steps} is out of range for SANA-Sprint", "use 1 to 4 steps")
        if sprint and pag > 0:
            raise UsageError("PAG does not apply to SANA-Sprint", "set pag to 0")
        d = model.image_defaults()
        cond = Conditioning(prompt, negative, None, model.key)
        request = _request(model, cond, seed=seed, batch_size=batch_size, width=width, height=height, steps=steps,
                           guidance=guidance, sampler="scm" if sprint else sampler, shift=shift, pag=pag,
                           pag_layer=pag_layer, max_timesteps=d.max_timesteps,
                           intermediate_timesteps=d.intermediate_timesteps)
        result = model.pipeline().generate(request, host.events(request.steps))
        records = [convert.record(model, prompt=prompt, negative=request.negative_prompt, seed=s, steps=request.steps,
                                  guidance=request.guidance, sampler=request.sampler, shift=request.flow_shift,
                                  width=request.width, height=request.height, pag=pag,
                                  pag_layer=request.pag_layers[0], timings=result.timings,
                                  extra={"generated_size": list(result.generated_size),
                                         **request.record_extra()})
                   for s in request.seeds]
        return (convert.pil_to_image(result.images), records)

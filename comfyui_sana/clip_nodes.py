"""The clip nodes: Sana Video (text or a first frame to video) and Sana World (a first frame along a camera path).

A clip leaves as ComfyUI's usual IMAGE batch of frames [F, H, W, 3] (for its video nodes, or Sana Save, which writes
an MP4 with our record), beside a SANA_INFO with the clip's record. Each node is `sana video` / `sana world`'s run
for one clip: the same defaults (from the model's preset), requests, memory plan and pipeline.
"""

from __future__ import annotations

from sana.errors import UsageError

from . import convert, host, widgets
from .models import SanaModel, world_refiner

CATEGORY = "sana"


def _frames(default: int, tooltip: str) -> tuple:
    return ("INT", {"default": default, "min": 0, "max": 1025, "tooltip": tooltip})


class SanaVideo:
    DESCRIPTION = ("SANA-Video: a prompt (and, connected, a first frame) to a clip of frames. The prompt is read as "
                   "`sana video` reads it (the video instruction, \" motion score: N.\" appended).")
    CATEGORY = CATEGORY
    FUNCTION = "generate"
    RETURN_TYPES = ("IMAGE", "SANA_INFO")
    RETURN_NAMES = ("frames", "info")

    @classmethod
    def INPUT_TYPES(cls):
        d = widgets.preset(widgets.VIDEO_PRESET)
        return {"required": {
                    "model": ("SANA_MODEL",), "prompt": widgets.prompt(), "negative": widgets.negative(),
                    "seed": widgets.seed(), "width": widgets.side(d["width"], "width"),
                    "height": widgets.side(d["height"], "height"),
                    "frames": _frames(d["frames"], "Frames; snapped to what the VAE makes (4k+1 or 8k+1)."),
                    "steps": widgets.model_steps(0), "guidance": widgets.guidance(d["guidance"]),
                    "sampler": (["auto", "flow-dpm", "flow-euler"], {
                        "default": "auto", "tooltip": "auto: the preset's (flow-dpm; flow-euler with a first frame)."}),
                    "shift": widgets.shift(),
                    "motion_score": ("INT", {"default": d["motion_score"], "min": -1, "max": 100,
                                             "tooltip": "Appended as \" motion score: N.\"; -1: nothing appended."}),
                    "fps": ("FLOAT", {"default": float(d["fps"]), "min": 1.0, "max": 120.0, "step": 1.0,
                                      "tooltip": "Frame rate written with the clip."})},
                "optional": {"image": ("IMAGE", {"tooltip": "First frame: image to video."})}}

    def generate(self, model: SanaModel, prompt, negative, seed, width, height, frames, steps, guidance, sampler,
                 shift, motion_score, fps, image=None):
        from sana.memory import Workload
        from sana.pipelines.video import VideoRequest

        # 1. Settings over the model's defaults; 2. the memory check; 3. the clip, its record.
        model.require("video", node="Sana Video")
        d = model.video_defaults()
        width, height = widgets.snapped(width, height)
        first = convert.image_to_pil(image) if image is not None else None
        request = VideoRequest(
            prompt=prompt, seeds=[seed], width=width, height=height, frames=frames or d.frames,
            steps=steps or d.steps, guidance=guidance,
            sampler=(d.i2v_sampler if first else d.sampler) if sampler == "auto" else sampler,
            flow_shift=shift or d.shift, negative_prompt=negative,
            motion_score=None if motion_score < 0 else motion_score, image=first)
        gen_w, gen_h = model.video_binned(width, height)
        model.check_fits(Workload(gen_w, gen_h, images=1, rows=1 + (guidance > 1.0), frames=request.frames,
                                  conditioned=first is not None), f"{request.frames} frames at {width}x{height}")
        result = model.pipeline().generate(request, host.events(request.steps))
        info = convert.record(model, prompt=prompt, negative=negative, seed=seed, steps=request.steps,
                              guidance=guidance, sampler=request.sampler, shift=request.flow_shift, width=width,
                              height=height, frames=result.frames, fps=fps, timings=result.timings,
                              extra={"generated_size": list(result.generated_size),
                                     "motion_score": request.motion_score,
                                     "mode": "image-to-video" if first else "text-to-video"})
        return (convert.frames_to_image(result.videos[0]), [info])


class SanaWorld:
    DESCRIPTION = ("SANA-WM: a first frame explored along a camera path: a camera file (nerfstudio camera_path.json, "
                   "a sana camera JSON, (F, 4, 4) poses .npy, a RealEstate10K .txt) or an action string "
                   "(e.g. w-8,jw-8: see `sana world --help`).")
    CATEGORY = CATEGORY
    FUNCTION = "generate"
    RETURN_TYPES = ("IMAGE", "SANA_INFO")
    RETURN_NAMES = ("frames", "info")

    @classmethod
    def INPUT_TYPES(cls):
        d = widgets.preset(widgets.WORLD_PRESET)
        return {"required": {
                    "model": ("SANA_MODEL",), "image": ("IMAGE", {"tooltip": "The first frame."}),
                    "prompt": widgets.prompt(),
                    "camera": ("STRING", {"default": "", "tooltip": "A camera path file; replaces actions when set."}),
                    "actions": ("STRING", {"default": "", "tooltip": "Camera moves, e.g. w-8,jw-8 (with a fov)."}),
                    "seed": widgets.seed(), "width": widgets.side(d["width"], "width"),
                    "height": widgets.side(d["height"], "height"),
                    "frames": _frames(0, "Frames (8k+1); 0: the model's default, or the whole path if shorter."),
                    "steps": widgets.model_steps(0), "guidance": widgets.guidance(d["guidance"]),
                    "shift": widgets.shift()},
                "optional": {
                    "negative": widgets.negative(),
                    "fov": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 170.0, "step": 0.5,
                                      "tooltip": "The first frame's vertical field of view in degrees (actions "
                                                 "need one); 0: the camera file's own intrinsics."}),
                    "refine": ("BOOLEAN", {"default": False, "tooltip": "Run SANA-WM's stage 2 (the LTX-2 refiner, "
                                           "GPU only in practice) before the decode; the clip loses its first "
                                           "frame."}),
                    "refiner": ("STRING", {"default": "", "tooltip": "The refiner's folder (a diffusers "
                                           "SanaWMLTX2Refiner); empty: the model folder's refiner/."})}}

    def generate(self, model: SanaModel, image, prompt, camera, actions, seed, width, height, frames, steps, guidance,
                 shift, negative="", fov=0.0, refine=False, refiner=""):
        from sana.memory import Workload
        from sana.pipelines.world import WorldRequest
        from sana_cli.world_camera import CameraSource, resolve_path

        # 1. The first frame and the camera path resolved for its size; 2. the memory check; 3. the clip.
        model.require("wm", node="Sana World")
        if not camera.strip() and not actions.strip():
            raise UsageError("no camera path given", "give a camera file or an action string")
        if not camera.strip() and fov <= 0:
            raise UsageError("an action string carries no intrinsics", "set fov (the first frame's vertical field "
                             "of view in degrees)")
        d = model.world_defaults()
        refiner_dir = None
        if refine or refiner.strip():
            from sana.pipelines.world_refiner import refiner_folder

            refiner_dir = refiner_folder(refiner.strip() or None, model.path)
            if refiner_dir is None:
                raise UsageError(f"{model.name} has no refiner/", "give the refiner's folder")
        width, height = widgets.snapped(width, height)
        first = convert.image_to_pil(image)
        source = CameraSource(camera.strip() or None, None if camera.strip() else actions.strip(),
                              {"fov": fov} if fov > 0 else {})
        path = resolve_path(source, first.size, frames or None, d.frames)
        for notice in path.notices:
            host.log.warning("sana: %s", notice)
        model.check_fits(Workload(width, height, images=1, rows=1 + (guidance > 1.0), frames=path.num_frames,
                                  conditioned=True, fps=path.fps), f"{path.num_frames} frames at {width}x{height}")
        request = WorldRequest(prompt=prompt, image=first, camera=path, seeds=[seed], steps=steps or d.steps,
                               guidance=guidance, flow_shift=shift or d.shift, width=width, height=height,
                               negative_prompt=negative)
        pipe = model.pipeline()
        stage2 = world_refiner(refiner_dir, pipe) if refiner_dir is not None else None
        result = pipe.generate(request, host.events(request.steps), refiner=stage2)
        extra = {"generated_size": list(result.generated_size), "camera": path.source,
                 "camera_kind": path.source_kind, "camera_settings": dict(path.params)}
        if stage2 is not None:
            extra["refiner"] = stage2.record(seed)
        info = convert.record(model, prompt=prompt, negative=negative, seed=seed, steps=request.steps,
                              guidance=guidance, sampler="flow-euler", shift=request.flow_shift, width=width,
                              height=height, frames=result.frames, fps=path.fps, timings=result.timings,
                              extra=extra)
        return (convert.frames_to_image(result.videos[0]), [info])

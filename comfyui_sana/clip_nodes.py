"""The clip nodes: Sana Video (text or a first frame to video) and Sana World (a first frame along a camera path).

A clip leaves as ComfyUI's usual IMAGE batch of frames [F, H, W, 3] (for its video nodes, or Sana Save, which writes
an MP4 with our record), beside a SANA_INFO with the clip's record. Each node is `sana video` / `sana world`'s run
for one clip: the same defaults (from the model's preset), requests, memory plan and pipeline.
"""

from __future__ import annotations

from pathlib import Path

from sana.errors import UsageError

from . import convert, host, widgets
from .models import SanaModel, world_refiner

CATEGORY = "sana"
MODEL_MOTION_SCORE = -2  # the motion score widget's "the model's default"


def _frames(tooltip: str) -> tuple:
    return ("INT", {"default": 0, "min": 0, "max": 1025, "tooltip": tooltip})


def _size(width: int, height: int) -> str | None:
    """The widgets' size as `--res` gives it (sides snapped to 32, with a warning), None for the model's own."""
    if not width and not height:
        return None
    if not width or not height:
        raise UsageError("give both width and height, or 0 for both (the model's size)")
    if widgets.snapped(width, height) != (width, height):
        host.log.warning("sana: size %dx%d snapped to %dx%d (sides are multiples of 32)", width, height,
                         *widgets.snapped(width, height))
    return "{}x{}".format(*widgets.snapped(width, height))


def _first_frame(image):
    """The IMAGE input's first image as PIL (a warning when it holds more), or None."""
    if image is None:
        return None
    if image.ndim == 4 and image.shape[0] > 1:
        host.log.warning("sana: the first-frame input holds %d images; the first is used", image.shape[0])
    return convert.image_to_pil(image)


class SanaVideo:
    DESCRIPTION = ("SANA-Video: a prompt (and, connected, a first frame) to a clip of frames, as `sana video` makes "
                   "it: the video instruction, \" motion score: N.\" appended unless the prompt has one, and 0 (-1 "
                   "for guidance, -2 for the motion score) taking the model's own default.")
    CATEGORY = CATEGORY
    FUNCTION = "generate"
    RETURN_TYPES = ("IMAGE", "SANA_INFO")
    RETURN_NAMES = ("frames", "info")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
                    "model": ("SANA_MODEL",), "prompt": widgets.prompt(), "negative": widgets.negative(),
                    "seed": widgets.seed(), "width": widgets.model_side("width"),
                    "height": widgets.model_side("height"),
                    "frames": _frames("Frames, snapped to what the VAE makes (4k+1 or 8k+1); 0: the model's."),
                    "steps": widgets.model_steps(0), "guidance": widgets.model_guidance(),
                    "sampler": (["auto", "flow-dpm", "flow-euler"], {
                        "default": "auto", "tooltip": "auto: the model's (flow-euler with a first frame)."}),
                    "shift": widgets.shift(),
                    "motion_score": ("INT", {"default": MODEL_MOTION_SCORE, "min": MODEL_MOTION_SCORE, "max": 100,
                                             "tooltip": "Appended as \" motion score: N.\"; -1: nothing appended; "
                                                        "-2: the model's default (none if the prompt has one)."}),
                    "fps": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 120.0, "step": 1.0,
                                      "tooltip": "Frame rate written with the clip; 0: the model's."})},
                "optional": {"image": ("IMAGE", {"tooltip": "First frame: image to video (the clip takes its "
                                                            "shape unless width and height are set)."})}}

    def generate(self, model: SanaModel, prompt, negative, seed, width, height, frames, steps, guidance, sampler,
                 shift, motion_score, fps, image=None):
        from sana.components import clip_model_configs
        from sana.memory import Workload
        from sana.pipelines.sizes import video_vae_geometry
        from sana.pipelines.video import VideoRequest
        from sana_cli.clip_settings import FirstFrame, build_request

        # 1. `sana video`'s request from the widgets over the model's defaults; 2. the memory check; 3. the clip and
        #    its record (the first frame goes with it, for Sana Save to write beside the clip).
        model.require("video", node="Sana Video")
        d = model.video_defaults()
        t_config, vae_config = clip_model_configs(model._resolved(), model.spec)
        first = _first_frame(image)
        motion = (None if motion_score == MODEL_MOTION_SCORE else "none" if motion_score == -1
                  else str(motion_score))
        settings = {"res": _size(width, height), "frames": frames or None, "steps": steps or None,
                    "cfg": None if guidance < 0 else guidance, "sampler": None if sampler == "auto" else sampler,
                    "shift": shift or None, "negative": negative, "motion_score": motion}
        request = build_request(prompt, settings, [seed], d, video_vae_geometry(vae_config), t_config,
                                FirstFrame(first, Path("the first frame"), "") if first else None, VideoRequest)
        fps = fps or d.fps
        gen_w, gen_h = model.video_binned(request.width, request.height)
        model.check_fits(Workload(gen_w, gen_h, images=1, rows=1 + (request.guidance > 1.0), frames=request.frames,
                                  conditioned=first is not None),
                         f"{request.frames} frames at {request.width}x{request.height}")
        result = model.pipeline().generate(request, host.events(request.steps))
        extra = {"generated_size": list(result.generated_size), "motion_score": request.motion_score,
                 "mode": "image-to-video" if first else "text-to-video"}
        if first is not None:
            extra[convert.FIRST_FRAME_KEY] = convert.png_base64(first)
        info = convert.record(model, prompt=prompt, negative=negative, seed=seed, steps=request.steps,
                              guidance=request.guidance, sampler=request.sampler, shift=request.flow_shift,
                              width=request.width, height=request.height, frames=result.frames, fps=fps,
                              timings=result.timings, extra=extra)
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
        return {"required": {
                    "model": ("SANA_MODEL",), "image": ("IMAGE", {"tooltip": "The first frame."}),
                    "prompt": widgets.prompt(),
                    "camera": ("STRING", {"default": "", "tooltip": "A camera path file; replaces actions when set."}),
                    "actions": ("STRING", {"default": "", "tooltip": "Camera moves, e.g. w-8,jw-8 (with a fov)."}),
                    "seed": widgets.seed(), "width": widgets.model_side("width"),
                    "height": widgets.model_side("height"),
                    "frames": _frames("Frames (8k+1); 0: the model's default, or the whole path if shorter."),
                    "steps": widgets.model_steps(0), "guidance": widgets.model_guidance(),
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
            refiner_dir = refiner_dir.resolve()  # recorded absolute: `sana world --from` finds it from anywhere
        size = _size(width, height)
        width, height = (int(v) for v in size.split("x")) if size else (d.width, d.height)
        guidance = d.cfg if guidance < 0 else guidance
        first = _first_frame(image)
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
        from sana.camera.export import camera_record

        # The record `sana world` writes; Sana Save writes the camera file (and the first frame) beside the clip.
        camera_extra, camera_text = camera_record(path, "clip.mp4", frames=result.frames)
        del camera_extra["camera_file"], camera_extra["camera_file_sha256"]  # named by Sana Save
        extra = {"generated_size": list(result.generated_size), **camera_extra,
                 convert.CAMERA_JSON_KEY: camera_text, convert.FIRST_FRAME_KEY: convert.png_base64(first)}
        if stage2 is not None:
            extra["refiner"] = stage2.record(seed)
        info = convert.record(model, prompt=prompt, negative=negative, seed=seed, steps=request.steps,
                              guidance=guidance, sampler="flow-euler", shift=request.flow_shift, width=width,
                              height=height, frames=result.frames, fps=path.fps, timings=result.timings,
                              extra=extra)
        return (convert.frames_to_image(result.videos[0]), [info])

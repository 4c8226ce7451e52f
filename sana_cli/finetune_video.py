"""`sana finetune` on a video model: the settings a clip run adds (frames, rate, motion score from the model's
preset) and the check that clips go to a video model and images to an image model, all before torch loads."""

from __future__ import annotations

from pathlib import Path

from sana.errors import UsageError


def _video_configs(folder: Path) -> tuple[dict, dict] | None:
    """(transformer config, VAE config) of a SANA-Video model folder, None for other models."""
    from sana.components import read_json

    tconf = read_json(folder / "transformer" / "config.json")
    if tconf.get("_class_name") != "SanaVideoTransformer3DModel":
        return None
    return tconf, read_json(folder / "vae" / "config.json")


def video_native(folder: Path) -> int | None:
    """A video model's native side in pixels (480 for the 480p models), None for other models."""
    from sana.pipelines.sizes import video_vae_geometry
    from sana.training.video_data import native_resolution

    configs = _video_configs(folder)
    if configs is None:
        return None
    try:
        geometry = video_vae_geometry(configs[1])
    except ValueError as exc:
        raise UsageError(f"{folder}: {exc}") from None
    return native_resolution(configs[0], geometry.spatial)


def video_settings(model_arg: str | None, folder: Path, flags: dict) -> dict:
    """TrainConfig values of a video model's run from its preset: frames, fps and motion score as `sana video`
    generates by default (so a LoRA learns what inference asks for); {} for an image model."""
    from sana.components import scheduler_config
    from sana.registry import find_spec

    from sana.registry import clip_defaults

    configs = _video_configs(folder)
    if configs is None:
        if flags.get("frames") is not None:
            raise UsageError("--frames is for video models", f"{model_arg or 'the model'} is an image model")
        return {}
    spec = find_spec(model_arg) if model_arg and not Path(model_arg).expanduser().exists() else None
    defaults = clip_defaults(spec, scheduler_config(folder), configs[0], folder)
    return {"frames": defaults.frames, "fps": defaults.fps, "motion_score": defaults.motion_score}


def check_data_kind(data: Path, video: bool) -> None:
    """Clips for a video model, images for an image model: the other way round is a one-line error. For a video
    model every folder of images may be a clip (its scan reports what it cannot caption); for an image model only
    one captioned as a clip is, so images in subfolders stay images."""
    from sana.training.video_data import clips_and_images, find_clips

    if video:
        clips, images, _ = find_clips(Path(data).expanduser())
        if images and not clips:
            raise UsageError(f"{data} holds images, not clips",
                             "fine-tune an image model with it, or give a video model a folder of videos")
        return
    clips, images = clips_and_images(Path(data))
    if clips and not images:
        raise UsageError(f"{data} holds video clips, not images",
                         "fine-tune a video model with it: --model nano-video or video-2b-480p")

"""Fine-tuning SANA-Video (and training the nano video model from scratch): the supervised `Trainer` on clips.

Everything but the data, the random initialisation, the loss's shapes and the validation samples is the image
trainer's: LoRA / full, precision, gradient accumulation, EMA, DDP / FSDP2, checkpoints, exact `--resume`,
`--max-minutes`, the export (a diffusers LoRA file, which `SanaVideoPipeline.load_lora_weights` reads, or a
model folder). Differences:
- data (`scan`, `video_data`, `video_cache`): clips resampled to the model's frame rate, cut or snapped to its frame rule,
  bucketed by (width, height, frames); latents are the video VAE's normalised latents [C, F', h, w], captions are
  encoded with the video instruction and the motion score `sana video` appends;
- loss: the image trainer's on [B, C, F', h, w], one timestep a clip (text to video), passed unscaled;
- validation: clips from `VideoPipeline` (caption embeddings from the cache), written as MP4 (GIF when there is
  no ffmpeg).
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import SanaError, UsageError
from .config import TrainConfig
from .features import ScannedData, unusable
from .step import load_or_initialise
from .trainer import Trainer, TrainEvents, TrainResult, run_trainer
from .video_cache import clip_source
from .video_data import SIZE_MULTIPLE, clip_buckets, native_resolution, plan_clips, scan_clip_folder, snap_down


def caption_as_read(caption: str, motion_score: int | None) -> str:
    """A caption as the model reads it: with " motion score: N." as `sana video` appends it to prompts, unless
    the caption says one already or `motion_score` is None."""
    import re

    from ..pipelines.video import motion_prompt

    if motion_score is None or re.search(r"motion score:\s*\d+", caption, re.IGNORECASE):
        return caption
    return motion_prompt(caption, motion_score)


def build_video_transformer(cfg: TrainConfig, device: torch.device, weight_dtype: torch.dtype):
    """The SANA-Video DiT: pretrained weights from the base model, or freshly initialised (`--init random`) from
    `cfg.transformer_config` or the base model's config."""
    from ..models.video_transformer import SanaVideoTransformer, VideoTransformerConfig

    model = load_or_initialise(cfg, device, weight_dtype, SanaVideoTransformer, VideoTransformerConfig,
                               "video transformer")
    if not isinstance(model, SanaVideoTransformer):
        raise UsageError(f"{Path(cfg.model_dir)} holds no SANA-Video transformer", "fine-tune clips with a SANA-Video model")
    return model


class VideoTrainer(Trainer):
    # 1. Data: clips (the cache steps are the image trainer's) ----------------------------------------------------
    def scan(self, model_dir: Path) -> ScannedData:
        """The clips of the data folder with their captions as the model reads them, each planned: frames at the
        model's rate, snapped to the VAE's rule, in the aspect bucket nearest its shape."""
        from ..components import read_json
        from ..pipelines.sizes import read_video_vae_geometry
        from ..text import VIDEO_COMPLEX_HUMAN_INSTRUCTION

        cfg = self.cfg
        samples, report = scan_clip_folder(Path(cfg.data), caption=cfg.caption, trigger=cfg.trigger)
        if not samples:
            raise unusable("clips", cfg.data, report,
                           "put videos (or folders of frames) with same-name .txt captions or a metadata.jsonl there")
        geometry = read_video_vae_geometry(model_dir)
        frames = snap_down(cfg.frames, geometry.temporal)
        if frames != cfg.frames:
            self.events.notice(f"--frames {cfg.frames} snapped to {frames} (the {geometry.label} VAE takes "
                               f"{geometry.temporal}k+1 frames)")
        tconf = cfg.transformer_config or read_json(model_dir / "transformer" / "config.json")
        native = native_resolution(tconf, geometry.spatial)
        buckets = clip_buckets(cfg.resolution, native, int(tconf.get("sample_size", 0)))
        if cfg.resolution != native and cfg.resolution % SIZE_MULTIPLE:  # as the image trainer says of its grid
            square = min(buckets, key=lambda wh: abs(wh[0] - wh[1]))
            self.events.notice(f"--res {cfg.resolution}: clip sides are multiples of {SIZE_MULTIPLE} for this model, "
                               f"so square clips train at {square[0]}x{square[1]}")
        samples, plans = plan_clips(samples, report, buckets=buckets, frames=frames, fps=cfg.fps,
                                    temporal=geometry.temporal, min_frames=geometry.temporal + 1)
        if not samples:
            raise unusable("clips", cfg.data, report)
        captions = [caption_as_read(s.caption, cfg.motion_score) for s in samples]
        self.val_texts = [caption_as_read(p, cfg.motion_score) for p in cfg.val_prompts]
        return ScannedData(clip_source(samples, plans, captions), report, self.val_texts, noun="clips",
                           instruction=VIDEO_COMPLEX_HUMAN_INSTRUCTION)

    # 2. The model ---------------------------------------------------------------------------------------------
    LABEL = "video transformer"

    def model_classes(self):
        from ..models.video_transformer import SanaVideoTransformer, VideoTransformerConfig

        return SanaVideoTransformer, VideoTransformerConfig

    def build(self, model: torch.nn.Module | None = None) -> None:
        if model is None:
            # LoRA: the frozen base in the compute dtype; full: fp32 master weights (as the image trainer).
            weight_dtype = self.dtype if self.cfg.mode == "lora" else torch.float32
            model = build_video_transformer(self.cfg, self.device, weight_dtype)
        super().build(model)

    # 3. The loss: the image trainer's on [B, C, F', h, w], one timestep a clip ----------------------------------
    def model_timesteps(self, sigma: torch.Tensor) -> torch.Tensor:
        return sigma * 1000.0  # SANA-Video's pipelines pass the scheduler's timesteps unscaled

    # 6. Validation clips ----------------------------------------------------------------------------------------
    @torch.no_grad()
    def validate(self, step: int) -> None:
        from ..outputs import GenerationRecord, save_video
        from ..pipelines.video import VideoPipeline, VideoRequest
        from ..pipelines.video_vae import load_video_vae

        cfg = self.cfg
        width, height = _validation_size(cfg, self.items)
        suffix = ".mp4" if _have_ffmpeg() else ".gif"

        def pipeline(prompts) -> VideoPipeline:
            vae = load_video_vae(Path(cfg.model_dir), dtype=torch.float32, device=self.device)
            return VideoPipeline(transformer=self.model, text_encoder=prompts, vae=vae,
                                 scheduler_config=self.scheduler_config, device=self.device, dtype=self.dtype)

        def generate(pipe: VideoPipeline, folder: Path) -> None:
            for index, (prompt, text) in enumerate(zip(cfg.val_prompts, self.val_texts)):
                request = VideoRequest(prompt=text, seeds=[cfg.val_seed], width=width, height=height, frames=cfg.frames,
                                       steps=cfg.val_steps, guidance=cfg.validation_guidance(), sampler="flow-dpm",
                                       flow_shift=self.flow_shift, motion_score=None)  # `text` has it already
                with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype != torch.float32):
                    result = pipe.generate(request)
                if self.world.is_main:
                    record = GenerationRecord(prompt=prompt, family="video", seed=cfg.val_seed, steps=cfg.val_steps,
                                              guidance=cfg.validation_guidance(), sampler="flow-dpm",
                                              flow_shift=self.flow_shift, width=width, height=height,
                                              **self.sample_source(step, {"motion_score": cfg.motion_score}))
                    path = save_video(result.videos[0].numpy(), folder / f"step-{step:06d}-{index}{suffix}", record,
                                      fps=cfg.fps, force=True)
                    self.events.saved("sample", path)

        self.sample_validation(pipeline, generate)


def _validation_size(cfg: TrainConfig, items) -> tuple[int, int]:
    """The most common training bucket's (width, height): validation clips look like the data."""
    from collections import Counter

    (width, height, _), _ = Counter(item.bucket for item in items).most_common(1)[0]
    return width, height


def _have_ffmpeg() -> bool:
    from ..outputs.video import ffmpeg_exe

    try:
        ffmpeg_exe()
        return True
    except SanaError:
        return False


def run(cfg: TrainConfig, *, resume: bool | Path = False, events: TrainEvents | None = None) -> TrainResult:
    """Train on clips as `cfg` says; the whole life of a run (process group included)."""
    return run_trainer(VideoTrainer, cfg, resume=resume, events=events)

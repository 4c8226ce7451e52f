"""Fine-tuning SANA-Video (and training the nano video model from scratch): the supervised `Trainer` on clips.

Everything but the data, the random initialisation, the loss's shapes and the validation samples is the image
trainer's: LoRA / full, precision, gradient accumulation, EMA, DDP / FSDP2, checkpoints, exact `--resume`,
`--max-minutes`, the export (a diffusers LoRA file, which `SanaVideoPipeline.load_lora_weights` reads, or a
model folder). Differences:
- data (`video_data`, `video_cache`): clips resampled to the model's frame rate, cut or snapped to its frame rule,
  bucketed by (width, height, frames); latents are the video VAE's normalised latents [C, F', h, w], captions are
  encoded with the video instruction and the motion score `sana video` appends;
- loss: flow matching on [B, C, F', h, w] with one timestep a clip (text to video);
- validation: clips from `VideoPipeline` (caption embeddings from the cache), written as MP4 (GIF when there is
  no ffmpeg).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from ..errors import SanaError, UsageError
from . import distributed
from .cache import Encoders, FeatureCache
from .config import TrainConfig
from .trainer import Trainer, TrainEvents, TrainResult, _CachedPrompts, shifted_sigmas
from .video_cache import cached_clip_items, fill_clip_cache, plan_clip_cache
from .video_data import clip_buckets, native_resolution, plan_clips, scan_clip_folder, snap_down


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
    from ..components import read_json
    from ..loading import load_transformer
    from ..models.video_transformer import SanaVideoTransformer, VideoTransformerConfig

    model_dir = Path(cfg.model_dir)
    if cfg.init == "random":
        raw = cfg.transformer_config or read_json(model_dir / "transformer" / "config.json")
        try:
            config = VideoTransformerConfig.from_dict(raw)
        except (TypeError, ValueError) as exc:
            raise SanaError(f"unsupported video transformer config: {exc}") from None
        model = SanaVideoTransformer(config)
        model.initialize_weights(torch.Generator().manual_seed(cfg.seed))
        return model.to(device=device, dtype=weight_dtype)
    model = load_transformer(model_dir, dtype=weight_dtype, device=device)
    if not isinstance(model, SanaVideoTransformer):
        raise UsageError(f"{model_dir} holds no SANA-Video transformer", "fine-tune clips with a SANA-Video model")
    return model


class VideoTrainer(Trainer):
    # 1. Data and cache ------------------------------------------------------------------------------------
    def prepare_data(self) -> None:
        from ..components import read_json, scheduler_config
        from ..pipelines.sizes import read_video_vae_geometry
        from ..text import VIDEO_COMPLEX_HUMAN_INSTRUCTION

        cfg, events = self.cfg, self.events
        model_dir = Path(cfg.model_dir)
        if events.on_phase:
            events.on_phase("data")
        samples, report = scan_clip_folder(Path(cfg.data), caption=cfg.caption, trigger=cfg.trigger)
        if not samples:
            reasons = "; ".join(report.lines()[1:]) or "the folder has no clips"
            raise UsageError(f"no usable training clips in {cfg.data}: {reasons}",
                             "put videos (or folders of frames) with same-name .txt captions or a metadata.jsonl there")
        geometry = read_video_vae_geometry(model_dir)
        frames = snap_down(cfg.frames, geometry.temporal)
        if frames != cfg.frames:
            events.notice(f"--frames {cfg.frames} snapped to {frames} (the {geometry.label} VAE takes "
                          f"{geometry.temporal}k+1 frames)")
        tconf = cfg.transformer_config or read_json(model_dir / "transformer" / "config.json")
        buckets = clip_buckets(cfg.resolution, native_resolution(tconf, geometry.spatial), int(tconf.get("sample_size", 0)))
        samples, plans = plan_clips(samples, report, buckets=buckets, frames=frames, fps=cfg.fps,
                                    temporal=geometry.temporal, min_frames=geometry.temporal + 1)
        if not samples:
            raise UsageError(f"no usable training clips in {cfg.data}: " + "; ".join(report.lines()[1:]))
        self.scheduler_config = scheduler_config(model_dir)
        self.flow_shift = cfg.flow_shift or float(self.scheduler_config.get("flow_shift", 3.0))

        if events.on_phase:
            events.on_phase("cache")
        self.cache = FeatureCache(Path(cfg.cache_dir) if cfg.cache_dir else self.out / "cache")
        encoders = Encoders(model_dir=model_dir, device=self.device, dtype=self.dtype,
                            instruction=VIDEO_COMPLEX_HUMAN_INSTRUCTION)
        captions = [caption_as_read(s.caption, cfg.motion_score) for s in samples]
        self.val_texts = [caption_as_read(p, cfg.motion_score) for p in cfg.val_prompts]
        plan = plan_clip_cache(samples, plans, captions, encoders, self.val_texts)
        fill_clip_cache(plan, samples, plans, captions, self.cache, encoders, rank=self.world.rank,
                        world=self.world.size, on_progress=events.on_progress)
        distributed.barrier(self.world)  # every rank encoded its share; all of it is on disk now
        items = cached_clip_items(plan, samples, plans, self.cache, report)
        if not items:
            raise UsageError(f"no usable training clips in {cfg.data}: " + "; ".join(report.lines()[1:]))
        self.items, self.text_keys, self.report = items, plan.extras, report
        if events.on_data and self.world.is_main:
            events.on_data(report)
        self._preload()
        self.groups = {}
        for index, item in enumerate(items):
            self.groups.setdefault(item.bucket, []).append(index)

    # 2. The model ---------------------------------------------------------------------------------------------
    def build(self, model: torch.nn.Module | None = None) -> None:
        if model is None:
            # LoRA: the frozen base in the compute dtype; full: fp32 master weights (as the image trainer).
            weight_dtype = self.dtype if self.cfg.mode == "lora" else torch.float32
            model = build_video_transformer(self.cfg, self.device, weight_dtype)
        super().build(model)

    # 3. The loss: flow matching on clips, one timestep a clip ----------------------------------------------------
    def loss(self, micro: int) -> torch.Tensor:
        cfg, device, dtype = self.cfg, self.device, self.dtype
        items = [self.items[i] for i in self._batch_for(micro)]
        latents, embeds, mask = self._features(items)  # [B, C, F', h, w], [B+1, L, C], [B+1, L]

        # The image trainer's draws, in its order, from the same (seed, micro-batch) generator: the global batch
        # is drawn and each rank keeps its slice, so N GPUs x batch B draw what one GPU x batch N*B draws.
        total, mine = cfg.batch_size * self.world.size, slice(self.world.rank * len(items), (self.world.rank + 1) * len(items))
        gen = torch.Generator(device=device).manual_seed(((cfg.seed * 1_000_003 + micro) * 65_537) % 2**63)
        drop = (torch.rand(total, generator=gen, device=device) < cfg.caption_dropout)[mine]  # [B]
        u = torch.randn(total, generator=gen, device=device)[mine] * cfg.logit_std + cfg.logit_mean
        noise = torch.randn((total, *latents.shape[1:]), generator=gen, device=device)[mine]  # [B, C, F', h, w]

        embeds = torch.where(drop[:, None, None], embeds[-1:], embeds[:-1])
        mask = torch.where(drop[:, None], mask[-1:], mask[:-1])
        sigma = shifted_sigmas(torch.sigmoid(u), self.flow_shift)  # [B]
        s = sigma.view(-1, 1, 1, 1, 1)
        noisy = (1.0 - s) * latents + s * noise
        target = noise - latents  # the velocity the model predicts
        timestep = sigma * 1000.0  # SANA-Video's pipelines pass the scheduler's timesteps unscaled
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            pred = self.runner(noisy.to(dtype), embeds.to(dtype), timestep, text_mask=mask)
        return F.mse_loss(pred.float(), target)

    # 6. Validation clips ----------------------------------------------------------------------------------------
    @torch.no_grad()
    def validate(self, step: int) -> None:
        from .. import ops
        from ..outputs import GenerationRecord, save_video
        from ..pipelines.video import VideoPipeline, VideoRequest
        from ..pipelines.video_vae import load_video_vae

        cfg = self.cfg
        vae = load_video_vae(Path(cfg.model_dir), dtype=torch.float32, device=self.device)
        prompts = _CachedPrompts(self, self.text_keys)
        pipe = VideoPipeline(transformer=self.model, text_encoder=prompts, vae=vae,
                             scheduler_config=self.scheduler_config, device=self.device, dtype=self.dtype)
        was_enabled = ops.kernels_enabled()
        ops.set_kernels_enabled(False)  # mixed fp32 / bf16 weights under autocast: the reference ops take any dtype
        self.model.eval()
        folder = self.out / "samples"
        folder.mkdir(parents=True, exist_ok=True)
        width, height = _validation_size(cfg, self.items)
        suffix = ".mp4" if _have_ffmpeg() else ".gif"
        try:
            for index, (prompt, text) in enumerate(zip(cfg.val_prompts, self.val_texts)):
                request = VideoRequest(prompt=text, seeds=[cfg.val_seed], width=width, height=height, frames=cfg.frames,
                                       steps=cfg.val_steps, guidance=cfg.val_guidance, sampler="flow-dpm",
                                       flow_shift=self.flow_shift, motion_score=None)  # `text` has it already
                with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype != torch.float32):
                    result = pipe.generate(request)
                if self.world.is_main:
                    record = GenerationRecord(prompt=prompt, model=str(self.out), family="video", seed=cfg.val_seed,
                                              steps=cfg.val_steps, guidance=cfg.val_guidance, sampler="flow-dpm",
                                              flow_shift=self.flow_shift, width=width, height=height,
                                              extra={"training_step": step, "motion_score": cfg.motion_score})
                    path = save_video(result.videos[0].numpy(), folder / f"step-{step:06d}-{index}{suffix}", record,
                                      fps=cfg.fps, force=True)
                    self.events.saved("sample", path)
        finally:
            ops.set_kernels_enabled(was_enabled)
            self.model.train()
            del pipe, vae
            if self.device.type == "cuda":
                torch.cuda.empty_cache()


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
    trainer = VideoTrainer(cfg, events)
    try:
        trainer.prepare_data()
        trainer.build()
        return trainer.train(resume)
    finally:
        distributed.teardown()

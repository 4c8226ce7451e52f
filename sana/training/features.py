"""The data side of `Trainer`: the data folder scanned and its features cached, the batch order, and batches of
cached features on the training device.

`prepare_data` is one set of steps for images and clips: `scan` (the trainer's kind: images here, clips in
`VideoTrainer`) reads the folder into a `ScannedData`, then the cache is planned, filled (each rank its share) and
read back. The batch order depends only on (seed, epoch). Small caches are held whole as a `FeatureTable`, so a
step opens no file.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch

from ..errors import UsageError
from . import distributed
from .cache import (NULL_CAPTION, CacheSource, Encoders, FeatureCache, FeatureTable, Item, cached_items, fill_cache,
                    image_source, plan_cache)
from .data import DataReport, aspect_buckets, epoch_batches, nearest_bucket, note_upscaled, scan_folder

MAX_TEXT_TOKENS = 300  # the text encoder's padded length
PRELOAD_BYTES = 4 * 2**30  # caches up to this size are held in host memory while training


@dataclass
class ScannedData:
    """A data folder read for training, before anything is encoded."""

    source: CacheSource
    report: DataReport
    val_captions: list[str]  # the validation prompts as the model reads them
    noun: str = "images"  # what messages call the samples
    instruction: tuple[str, ...] | None = None  # the captions' prompt prefix; None: the image models' one


def unusable(noun: str, data: str, report: DataReport, hint: str | None = None) -> UsageError:
    """The error "no usable training images in DATA: reasons" (`noun`: images or clips), reasons from the report."""
    reasons = "; ".join(report.lines()[1:]) or f"the folder has no {noun}"
    return UsageError(f"no usable training {noun} in {data}: {reasons}", hint)


class TrainingData:
    """`Trainer`'s data (see trainer.py): the feature cache, the items and their batches."""

    # 1. Data and cache ------------------------------------------------------------------------------------
    def prepare_data(self) -> None:
        from ..components import scheduler_config

        cfg, events = self.cfg, self.events
        model_dir = Path(cfg.model_dir)
        if events.on_phase:
            events.on_phase("data")
        scanned = self.scan(model_dir)
        self.scheduler_config = scheduler_config(model_dir)
        self.flow_shift = cfg.flow_shift or float(self.scheduler_config.get("flow_shift", 3.0))

        if events.on_phase:
            events.on_phase("cache")
        self.cache = FeatureCache(Path(cfg.cache_dir) if cfg.cache_dir else self.out / "cache")
        encoders = Encoders(model_dir=model_dir, device=self.device, dtype=self.dtype, instruction=scanned.instruction)
        plan = plan_cache(scanned.source, encoders, scanned.val_captions)
        filled = fill_cache(plan, scanned.source, self.cache, encoders, rank=self.world.rank, world=self.world.size,
                            on_progress=events.on_progress)
        summary = filled.summary(scanned.noun.rstrip("s"))  # "image" / "clip"
        if summary and self.world.is_main:  # rank 0's share: what a new dataset costs before the first step
            events.notice(summary)
        distributed.barrier(self.world)  # every rank encoded its share; all of it is on disk now
        report = scanned.report
        items = cached_items(plan, scanned.source, self.cache, report)
        if not items:
            raise unusable(scanned.noun, cfg.data, report)
        self.items, self.text_keys, self.report = items, plan.extras, report
        if events.on_data and self.world.is_main:
            events.on_data(report)
        self._preload()
        self._group_items()

    def scan(self, model_dir: Path) -> ScannedData:
        """The images of the data folder with their captions, each in the aspect bucket nearest its shape."""
        from ..components import read_json

        cfg = self.cfg
        samples, report = scan_folder(Path(cfg.data), caption=cfg.caption, trigger=cfg.trigger)
        if not samples:
            raise unusable("images", cfg.data, report,
                           "put images with same-name .txt captions (or a metadata.jsonl) there, or pass --caption")
        vae_config = read_json(model_dir / "vae" / "config.json")
        vae_factor = 2 ** (len(vae_config.get("encoder_block_out_channels", [0] * 6)) - 1)
        tconf = cfg.transformer_config or read_json(model_dir / "transformer" / "config.json")
        multiple = vae_factor * int(tconf.get("patch_size", 1))
        choices = aspect_buckets(cfg.resolution, multiple)
        square = min(choices, key=lambda wh: abs(wh[0] - wh[1]))
        if cfg.resolution % multiple:
            self.events.notice(f"--res {cfg.resolution}: sides are multiples of {multiple} for this model, so square "
                               f"images train at {square[0]}x{square[1]}")
        buckets = [nearest_bucket(s.width, s.height, choices) for s in samples]
        note_upscaled(samples, buckets, report)
        return ScannedData(image_source(samples, buckets), report, list(cfg.val_prompts))

    def use_features(self, latents: list[torch.Tensor], texts: list[torch.Tensor], flow_shift: float = 3.0) -> None:
        """Train on features already in memory (latents [C, h, w], caption embeddings [L, C_text]) instead of a
        data folder: for benchmarks and experiments that have no images."""
        store = {f"l{i}": t for i, t in enumerate(latents)} | {f"t{i}": t for i, t in enumerate(texts)}
        store["null"] = torch.zeros(1, texts[0].shape[-1])
        self.cache = _MemoryFeatures(store)
        self.items = [Item(latent=f"l{i}", text=f"t{i % len(texts)}", bucket=(l.shape[-1], l.shape[-2]))
                      for i, l in enumerate(latents)]
        self.text_keys = {NULL_CAPTION: "null"}
        self.report = DataReport(root=Path("."), used=len(latents))
        self.flow_shift, self.scheduler_config = flow_shift, {}
        self._group_items()

    def _group_items(self) -> None:
        """Item indices by bucket: a batch comes from one bucket."""
        self.groups: dict[tuple[int, ...], list[int]] = {}
        for index, item in enumerate(self.items):
            self.groups.setdefault(item.bucket, []).append(index)

    # 3. Batches ----------------------------------------------------------------------------------------------
    @lru_cache(maxsize=4)
    def _epoch(self, epoch: int) -> list[list[int]]:
        return epoch_batches(self.groups, self.cfg.batch_size * self.world.size, self.cfg.seed, epoch)

    def _batch_for(self, micro: int) -> list[int]:
        per_epoch = len(self._epoch(0))
        batch = self._epoch(micro // per_epoch)[micro % per_epoch]
        size = self.cfg.batch_size
        return batch[self.world.rank * size:(self.world.rank + 1) * size]

    def _preload(self, budget: int = PRELOAD_BYTES) -> None:
        """Hold the whole cache as a `FeatureTable` when it is small (nano models, most LoRA sets): on the GPU
        when it also fits in a quarter of its free memory, else in host memory. A step then opens no file and
        stacks no per-item tensors. Larger caches are read a file at a time, with the most recent kept."""
        keys = {it.latent for it in self.items}, {it.text for it in self.items} | set(self.text_keys.values())
        paths = [self.cache.latent_path(k) for k in keys[0]] + [self.cache.text_path(k) for k in keys[1]]
        if sum(p.stat().st_size for p in paths) > budget:
            return
        latents = {k: self.cache.read_latent(k) for k in sorted(keys[0])}
        texts = {k: self.cache.read_text(k) for k in sorted(keys[1])}
        size, place = FeatureTable.nbytes(latents, texts), torch.device("cpu")
        if size > budget:
            return
        if self.device.type == "cuda" and size <= torch.cuda.mem_get_info(self.device)[0] // 4:
            place = self.device
        self._memory = FeatureTable(latents, texts, place)

    def _latent(self, key: str) -> torch.Tensor:
        return self._memory.latent(key) if self._memory is not None else self._read_latent(key)

    def _text(self, key: str) -> torch.Tensor:
        return self._memory.text(key) if self._memory is not None else self._read_text(key)

    def _features(self, items: list) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Latents [B, C, h, w] (fp32) and caption embeddings [B + 1, L, C] (fp32) with their mask [B + 1, L]
        for `items`, on the training device; the last caption row is the empty caption (for dropout)."""
        device, null = self.device, self.text_keys[NULL_CAPTION]
        fixed = self.cfg.compile  # a compiled step wants one caption length, not the batch's longest
        if self._memory is not None:
            latents = self._memory.latent_batch([it.latent for it in items])
            embeds, mask = self._memory.text_batch([it.text for it in items] + [null], full_length=fixed)
            return (latents.to(device, torch.float32, non_blocking=True), embeds.to(device, torch.float32, non_blocking=True),
                    mask.to(device, non_blocking=True))
        latents = torch.stack([self._latent(it.latent) for it in items]).to(device, torch.float32, non_blocking=True)
        embeds, mask = _pad_rows([self._text(it.text) for it in items] + [self._text(null)], device,
                                 MAX_TEXT_TOKENS if fixed else 0)
        return latents, embeds, mask

    @lru_cache(maxsize=2048)
    def _read_latent(self, key: str) -> torch.Tensor:
        return self.cache.read_latent(key)

    @lru_cache(maxsize=2048)
    def _read_text(self, key: str) -> torch.Tensor:
        return self.cache.read_text(key)


def _pad_rows(rows: list[torch.Tensor], device: torch.device, at_least: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Caption embeddings of different lengths [L_i, C] -> [B, L, C] padded at the end, and the mask [B, L]."""
    length = max(at_least, *(r.shape[0] for r in rows))
    embeds = torch.zeros(len(rows), length, rows[0].shape[-1])
    mask = torch.zeros(len(rows), length, dtype=torch.long)
    for i, row in enumerate(rows):
        embeds[i, : row.shape[0]], mask[i, : row.shape[0]] = row.float(), 1
    return embeds.to(device, non_blocking=True), mask.to(device, non_blocking=True)


class _MemoryFeatures:
    def __init__(self, store: dict[str, torch.Tensor]):
        self.store = store

    def read_latent(self, key: str) -> torch.Tensor:
        return self.store[key]

    def read_text(self, key: str) -> torch.Tensor:
        return self.store[key]


class CachedPrompts:
    """The text-encoder interface the pipelines call, answered from the feature cache."""

    def __init__(self, trainer: TrainingData, keys: dict[str, str]):
        self.trainer, self.keys = trainer, keys

    def encode(self, prompts: list[str], *, with_instruction: bool = True):
        return self.encode_many([(p, with_instruction) for p in prompts])

    def encode_many(self, items: list[tuple[str, bool]]):
        """(prompt, with_instruction) items -> rows in order; the negative (no instruction) is the empty caption."""
        from ..text import PromptEmbeddings

        rows = []
        for prompt, with_instruction in items:
            key = self.keys[prompt if with_instruction and prompt != NULL_CAPTION else NULL_CAPTION]
            rows.append(self.trainer._text(key).float())
        # At least the text encoder's padded length: one width, as the text encoder gives.
        embeds, mask = _pad_rows(rows, torch.device("cpu"), MAX_TEXT_TOKENS)
        device = self.trainer.device
        return PromptEmbeddings(embeds.to(device, self.trainer.dtype), mask.to(device))

"""Pre-encoded training features: DC-AE latents and Gemma-2 caption embeddings, one safetensors file each.

Keys are content hashes of the input (image bytes + bucket size, or caption text) and of the encoder (its
config and weight files), so a changed image, caption, bucket or encoder gives a new entry and an unchanged
one is never encoded twice. The encoders are loaded only when something is missing, and freed afterwards,
so the DiT trains without them in memory. Three steps: `plan_cache` (keys), `fill_cache` (encode what is
missing; each rank of a distributed run its share), `cached_items` (what training can use, after all ranks).
They serve images and clips alike: a `CacheSource` holds what differs by kind (`image_source` here,
`video_cache.clip_source` for clips).
"""

from __future__ import annotations

import hashlib
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from ..errors import SanaError
from ..outputs import file_sha256
from .data import DataReport, Sample, load_rgb

NULL_CAPTION = ""  # the unconditional caption (caption dropout, validation CFG), encoded without the instruction


@dataclass(frozen=True)
class Item:
    """One training example in the cache."""

    latent: str  # file stem under latents/
    text: str  # file stem under text/
    bucket: tuple[int, ...]  # (width, height) in pixels; clips: (width, height, frames)


def _sha(*parts: str | bytes) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part if isinstance(part, bytes) else part.encode("utf-8"))
        digest.update(b"\0")
    return digest.hexdigest()[:32]


def component_fingerprint(component_dir: Path) -> str:
    """Identity of an encoder: its config files and the names, sizes and mtimes of its weight files."""
    parts = []
    for path in sorted(component_dir.iterdir()):
        if path.suffix == ".json":
            parts.append(path.read_bytes())
        elif path.is_file():
            stat = path.stat()
            parts.append(f"{path.name}:{stat.st_size}:{int(stat.st_mtime)}")
    return _sha(*parts)


def _write_atomic(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    from .checkpoint import save_safetensors

    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    save_safetensors({k: v.contiguous().cpu() for k, v in tensors.items()}, tmp)
    os.replace(tmp, path)


class FeatureCache:
    """latents/<key>.safetensors ({"latent": [C, h, w]}) and text/<key>.safetensors ({"embeds": [L, C]}, valid tokens only)."""

    def __init__(self, root: Path):
        self.root = Path(root)
        (self.root / "latents").mkdir(parents=True, exist_ok=True)
        (self.root / "text").mkdir(parents=True, exist_ok=True)

    def latent_path(self, key: str) -> Path:
        return self.root / "latents" / f"{key}.safetensors"

    def text_path(self, key: str) -> Path:
        return self.root / "text" / f"{key}.safetensors"

    def read_latent(self, key: str) -> torch.Tensor:
        return _read(self.latent_path(key), "latent")

    def read_text(self, key: str) -> torch.Tensor:
        return _read(self.text_path(key), "embeds")


class FeatureTable:
    """Cached features held as a few stacked tensors: latents one stack per shape, caption embeddings padded
    to one length. A batch is then an index lookup (on the training device when the table fits there) instead
    of a stack of per-item tensors, so small models are not held back by the host."""

    def __init__(self, latents: dict[str, torch.Tensor], texts: dict[str, torch.Tensor], device: torch.device):
        self.device = device
        stacks: dict[tuple[int, ...], list[torch.Tensor]] = {}
        self.latent_rows: dict[str, tuple[tuple[int, ...], int]] = {}  # key -> (shape, row in its stack)
        for key, latent in latents.items():
            rows = stacks.setdefault(tuple(latent.shape), [])
            self.latent_rows[key] = (tuple(latent.shape), len(rows))
            rows.append(latent)
        self.latents = {shape: torch.stack(rows).to(device) for shape, rows in stacks.items()}
        self.text_rows = {key: row for row, key in enumerate(texts)}
        self.text_lengths = [t.shape[0] for t in texts.values()]
        first = next(iter(texts.values()))
        table = torch.zeros(len(texts), max(self.text_lengths), first.shape[-1], dtype=first.dtype)
        for row, text in enumerate(texts.values()):
            table[row, : text.shape[0]] = text
        self.texts = table.to(device)  # [T, L_max, C]
        self.lengths = torch.tensor(self.text_lengths, device=device)  # [T]

    @staticmethod
    def nbytes(latents: dict[str, torch.Tensor], texts: dict[str, torch.Tensor]) -> int:
        """The table's size before it is built (captions count at the padded length)."""
        first = next(iter(texts.values()))
        longest = max(t.shape[0] for t in texts.values())
        return sum(t.numel() * t.element_size() for t in latents.values()) + \
            len(texts) * longest * first.shape[-1] * first.element_size()

    def _index(self, rows: list[int]) -> torch.Tensor:
        return torch.tensor(rows).to(self.device, non_blocking=True)

    def latent_batch(self, keys: list[str]) -> torch.Tensor:
        """[B, C, h, w] for latents of one shape (a batch comes from one aspect bucket)."""
        shape = self.latent_rows[keys[0]][0]
        if any(self.latent_rows[k][0] != shape for k in keys):
            raise ValueError("a batch mixes latent shapes")
        return self.latents[shape][self._index([self.latent_rows[k][1] for k in keys])]

    def text_batch(self, keys: list[str], full_length: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """[B, L, C] embeddings padded to the longest of these captions (or of all, `full_length`), and the
        mask [B, L]."""
        rows = [self.text_rows[k] for k in keys]
        # From the host copy of the lengths: no device sync.
        length = self.texts.shape[1] if full_length else max(self.text_lengths[r] for r in rows)
        index = self._index(rows)
        mask = torch.arange(length, device=self.device) < self.lengths[index, None]
        return self.texts[index, :length], mask.long()

    def latent(self, key: str) -> torch.Tensor:
        shape, row = self.latent_rows[key]
        return self.latents[shape][row]

    def text(self, key: str) -> torch.Tensor:
        row = self.text_rows[key]
        return self.texts[row, : self.text_lengths[row]]


def _read(path: Path, name: str) -> torch.Tensor:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return f.get_tensor(name)
    except Exception as exc:  # a cache file damaged by a crash or by hand: say which, so it can be deleted
        raise SanaError(f"cache file {path} is unreadable ({exc})", "delete it; it is re-encoded on the next run") from None


@dataclass
class Encoders:
    """How to reach the frozen encoders of the base model (loaded lazily)."""

    model_dir: Path
    device: torch.device
    dtype: torch.dtype
    instruction: tuple[str, ...] | None = None  # the prompt prefix captions get; None: the image models' one

    @property
    def vae_fingerprint(self) -> str:
        return component_fingerprint(self.model_dir / "vae")

    @property
    def text_fingerprint(self) -> str:
        parts = [component_fingerprint(self.model_dir / "text_encoder"), component_fingerprint(self.model_dir / "tokenizer")]
        if self.instruction is not None:  # another prefix gives other embeddings (image keys stay as they were)
            parts.append("\n".join(self.instruction))
        return _sha(*parts)


def text_key(caption: str, text_fingerprint: str, with_instruction: bool) -> str:
    return _sha("text-v1", text_fingerprint, caption, str(with_instruction))


@dataclass
class CachePlan:
    """The cache keys of a dataset: one latent and one caption key a sample, plus the extra captions'."""

    latent_keys: list[str]
    text_keys: list[str]
    extras: dict[str, str]  # caption -> key, for the empty caption and the validation prompts


@dataclass
class CacheSource:
    """One kind of training data (images or clips) as the cache steps see it: sample i's file, caption, bucket,
    key and pixels, and the VAE that encodes a batch of them."""

    paths: list[Path]  # an image, a clip file or a frames folder: what the report names
    captions: list[str]  # as the model reads them
    buckets: list[tuple[int, ...]]  # (width, height); clips: (width, height, frames)
    latent_key: Callable[[str, int], str]  # (the VAE's fingerprint, i) -> the latent's cache key
    read: Callable[[int], object]  # RGB, 0..255: a PIL image, or an array [T, H, W, 3]; raises OSError if unreadable
    load_vae: Callable[[Encoders], Callable[[torch.Tensor], torch.Tensor]]  # -> pixels [b, 3, ...] -> fp32 latents
    unreadable: str  # the report's reason for a sample that got no latent


def image_source(samples: list[Sample], buckets: list[tuple[int, int]]) -> CacheSource:
    """Images, each scaled to cover its bucket and centre-cropped, encoded by the DC-AE; a key hashes the image
    bytes and the bucket (the files are hashed once, in `plan_cache`)."""

    def latent_key(vae_fingerprint: str, i: int) -> str:
        return _sha("latent-v1", vae_fingerprint, file_sha256(samples[i].path), f"{buckets[i][0]}x{buckets[i][1]}")

    return CacheSource(paths=[s.path for s in samples], captions=[s.caption for s in samples], buckets=list(buckets),
                       latent_key=latent_key, read=lambda i: load_rgb(samples[i].path, buckets[i]),
                       load_vae=_image_vae, unreadable="unreadable or truncated image")


def _image_vae(encoders: Encoders) -> Callable[[torch.Tensor], torch.Tensor]:
    from ..components import load_autoencoder

    vae = load_autoencoder(encoders.model_dir, dtype=encoders.dtype, device=encoders.device)

    def encode(pixels: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            latents = vae.encode(pixels.to(encoders.device, encoders.dtype)).latent * vae.config.scaling_factor
        return latents.float()  # [b, C, h, w]

    return encode


def plan_cache(source: CacheSource, encoders: Encoders, extra_captions: list[str] = ()) -> CachePlan:
    """Keys for every sample and for the extra captions (the empty one is always among them)."""
    vae_fp, text_fp = encoders.vae_fingerprint, encoders.text_fingerprint
    latent_keys = [source.latent_key(vae_fp, i) for i in range(len(source.paths))]
    text_keys = [text_key(c, text_fp, True) for c in source.captions]
    extras = {c: text_key(c, text_fp, c != NULL_CAPTION) for c in [NULL_CAPTION, *extra_captions]}
    return CachePlan(latent_keys, text_keys, extras)


# Pixels a VAE encode takes at once: 8 images of 1024 px (the setting images were cached with from the start).
# Batches follow it, so 17-frame clips of 128 px go ~30 at a time and an 81-frame 480p clip alone (eight of those
# would hold tens of GB of encoder activations).
ENCODE_PIXELS = 8 * 1024 * 1024
MAX_ENCODE_BATCH = 64


def encode_batch(bucket: tuple[int, ...]) -> int:
    """Samples of this bucket ((width, height) or (width, height, frames)) a VAE encode takes at once."""
    return max(1, min(MAX_ENCODE_BATCH, ENCODE_PIXELS // max(1, math.prod(bucket))))


@dataclass
class CacheFill:
    """What one `fill_cache` call encoded and how long each part took (the cost of a new dataset, for the log)."""

    latents: int = 0
    latent_s: float = 0.0
    read_wait_s: float = 0.0  # of latent_s, waiting for files to be decoded (the encoder idle)
    texts: int = 0
    text_s: float = 0.0

    def summary(self, noun: str) -> str:
        parts = [f"{count} {what} in {seconds:.0f} s ({count / max(seconds, 1e-9):.0f}/s{extra})"
                 for count, what, seconds, extra in (
                     (self.latents, f"{noun} latents", self.latent_s, f", {self.read_wait_s:.0f} s waiting for files"),
                     (self.texts, "captions", self.text_s, "")) if count]
        return "encoded " + " and ".join(parts) if parts else ""


def fill_cache(plan: CachePlan, source: CacheSource, cache: FeatureCache, encoders: Encoders, *, rank: int = 0,
               world: int = 1, on_progress: Callable[[str, int, int], None] | None = None,
               batch_size: int = 8) -> CacheFill:
    """Encode what is missing; with `world` > 1 this rank's share of it (the caller then synchronises the ranks).
    A sample that fails to decode gets no latent; `cached_items` reports it. `batch_size` counts captions an
    encode; latents go by `encode_batch`."""
    # Shares are fixed by position in the whole list, not in the list of what is missing: another rank may
    # already have written some of its files when this one looks.
    missing_latents = [i for i, k in enumerate(plan.latent_keys)
                       if i % world == rank and not cache.latent_path(k).is_file()]
    captions = dict(zip(source.captions, plan.text_keys)) | plan.extras
    missing_text = [(c, k) for n, (c, k) in enumerate(captions.items())
                    if n % world == rank and not cache.text_path(k).is_file()]
    fill = CacheFill()
    if missing_latents:
        started = time.perf_counter()
        fill.latents, fill.read_wait_s = _encode_latents(source, missing_latents, plan.latent_keys, cache, encoders,
                                                         on_progress)
        fill.latent_s = time.perf_counter() - started
    if missing_text:
        started = time.perf_counter()
        _encode_texts(missing_text, cache, encoders, on_progress, batch_size)
        fill.texts, fill.text_s = len(missing_text), time.perf_counter() - started
    return fill


def cached_items(plan: CachePlan, source: CacheSource, cache: FeatureCache, report: DataReport) -> list[Item]:
    """The samples whose features are all in the cache, in sample order; the rest are reported as unreadable."""
    items = []
    for i, path in enumerate(source.paths):
        if cache.latent_path(plan.latent_keys[i]).is_file():
            items.append(Item(latent=plan.latent_keys[i], text=plan.text_keys[i], bucket=source.buckets[i]))
        else:
            report.skip(source.unreadable, path)
    missing = [k for k in [*plan.text_keys, *plan.extras.values()] if not cache.text_path(k).is_file()]
    if missing:
        raise SanaError(f"caption embedding {cache.text_path(missing[0])} is missing", "run again to encode it")
    report.used = len(items)
    return items


def _encode_latents(source: CacheSource, indices: list[int], keys: list[str], cache: FeatureCache, encoders: Encoders,
                    on_progress) -> tuple[int, float]:
    """Samples of one bucket encoded `encode_batch(bucket)` at a time, the next chunk decoded in threads meanwhile;
    returns how many were written (an unreadable sample is not) and the seconds spent waiting for decoded files."""
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np

    by_bucket: dict[tuple[int, ...], list[int]] = {}
    for i in indices:
        by_bucket.setdefault(source.buckets[i], []).append(i)
    chunks = [members[start:start + encode_batch(bucket)] for bucket, members in sorted(by_bucket.items())
              for start in range(0, len(members), encode_batch(bucket))]

    def pixels_of(i: int) -> torch.Tensor | None:
        try:
            array = source.read(i)
        except (OSError, ValueError, SyntaxError):
            return None  # no latent: cached_items reports it
        pixels = torch.from_numpy(np.asarray(array, dtype=np.float32)).movedim(-1, 0)  # [3, H, W] or [3, T, H, W]
        return pixels / 127.5 - 1.0

    encode = source.load_vae(encoders)
    done = written = 0
    waited = 0.0
    # Decoding (PIL, ffmpeg) releases the GIL: threads prepare the next chunk while this one encodes.
    pool = ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1))
    try:
        pending = [pool.submit(pixels_of, i) for i in chunks[0]] if chunks else []
        for n, chunk in enumerate(chunks):
            wait_started = time.perf_counter()
            decoded = [f.result() for f in pending]
            waited += time.perf_counter() - wait_started
            pending = [pool.submit(pixels_of, i) for i in chunks[n + 1]] if n + 1 < len(chunks) else []
            usable = [(i, p) for i, p in zip(chunk, decoded) if p is not None]
            if usable:
                latents = encode(torch.stack([p for _, p in usable]))  # [b, C, h, w] or [b, C, F', h, w], fp32
                for (i, _), latent in zip(usable, latents):
                    _write_atomic(cache.latent_path(keys[i]), {"latent": latent})
                written += len(usable)
            done += len(chunk)
            if on_progress:
                on_progress("latents", done, len(indices))
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        del encode  # the VAE with it
        _free(encoders.device)
    return written, waited


def _encode_texts(missing, cache, encoders, on_progress, batch_size) -> None:
    from ..text import TextEncoder

    prefix = {"instruction": encoders.instruction} if encoders.instruction is not None else {}
    encoder = TextEncoder.from_pretrained(encoders.model_dir, dtype=encoders.dtype, device=encoders.device, **prefix)
    try:
        for start in range(0, len(missing), batch_size):
            chunk = missing[start:start + batch_size]
            for with_instruction in (True, False):
                part = [(c, k) for c, k in chunk if (c != NULL_CAPTION) == with_instruction]
                if not part:
                    continue
                encoded = encoder.encode([c for c, _ in part], with_instruction=with_instruction)
                for (_, key), embeds, mask in zip(part, encoded.embeds, encoded.mask):
                    _write_atomic(cache.text_path(key), {"embeds": embeds[mask.bool()]})
            if on_progress:
                on_progress("captions", min(start + batch_size, len(missing)), len(missing))
    finally:
        del encoder
        _free(encoders.device)


def _free(device: torch.device) -> None:
    import gc

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


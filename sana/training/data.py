"""Training data: a folder of images with captions, aspect-ratio buckets, and the deterministic batch order.

Captions come from `metadata.jsonl` files (the imagefolder convention: `file_name` relative to the file's own
folder, and `text`) or from a same-name `.txt` beside each image, searched recursively. Files that cannot be
used are skipped and counted in a `DataReport`, never silently.
"""

from __future__ import annotations

import json
import math
import os
import random
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from ..errors import UsageError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
SIDECAR_SUFFIXES = {".txt", ".jsonl", ".json", ".csv", ".md"}
CAPTION_COLUMNS = ("text", "caption", "prompt")


@dataclass(frozen=True)
class Sample:
    path: Path
    caption: str
    width: int
    height: int


@dataclass
class DataReport:
    """What was found, and every file left out with the reason."""

    root: Path
    used: int = 0
    skipped: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    notes: list[str] = field(default_factory=list)  # about files used (e.g. upscaled a lot)

    def skip(self, reason: str, path: Path) -> None:
        self.skipped[reason].append(self.shown(path))

    @property
    def skipped_count(self) -> int:
        return sum(len(v) for v in self.skipped.values())

    def lines(self, examples: int = 3) -> list[str]:
        out = [f"{self.used} image(s) used"]
        for reason, paths in sorted(self.skipped.items()):
            shown = ", ".join(paths[:examples]) + (f", ... (+{len(paths) - examples})" if len(paths) > examples else "")
            out.append(f"{len(paths)} skipped: {reason} ({shown})")
        return out + self.notes

    def shown(self, path: Path) -> str:
        try:
            return str(path.relative_to(self.root))
        except ValueError:
            return str(path)


def metadata_rows(root: Path, report: DataReport, *, need_caption: bool = False) -> dict[Path, dict]:
    """metadata.jsonl rows under `root` by the path they name (`file_name`, relative to the file's own folder: an
    image, a clip or a frames folder). A line that cannot be read, has no caption with `need_caption`, or names a
    file that is not there, is reported and left out."""
    rows: dict[Path, dict] = {}
    for meta in sorted(root.rglob("metadata.jsonl")):
        try:
            text = read_text_file(meta)
        except CaptionUnreadable:
            report.skip("metadata.jsonl is not UTF-8 text", meta)
            continue
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                named = meta.parent / row["file_name"]
                if need_caption and row_caption(row) is None:
                    raise KeyError("no caption column")
                found = named.exists()
            except (KeyError, TypeError, ValueError):  # ValueError: not JSON, or a NUL in the name
                report.skip("unreadable metadata.jsonl line", Path(f"{meta}:{number}"))
                continue
            if not found:  # listed like every other left-out item, not dropped unsaid
                report.skip("named in metadata.jsonl but missing", named)
                continue
            if not named.resolve().is_relative_to(root.resolve()):
                report.skip("named in metadata.jsonl but outside the data folder", named)
                continue
            if named.resolve() in rows:
                report.skip("named twice in metadata.jsonl (the later row is used)", named)
            rows[named.resolve()] = row
    return rows


def row_caption(row: dict) -> str | None:
    """A metadata row's caption: its first text column among CAPTION_COLUMNS."""
    return next((row[c] for c in CAPTION_COLUMNS if isinstance(row.get(c), str)), None)


class CaptionUnreadable(ValueError):
    """A caption file that is not text in UTF-8 (or UTF-16 with its byte-order mark)."""


def read_text_file(path: Path) -> str:
    """A caption or metadata file's text: UTF-8 (a byte-order mark dropped) or UTF-16 with its mark, as editors on
    any system save them; anything else raises CaptionUnreadable rather than training on replacement characters."""
    import codecs

    data = path.read_bytes()
    for mark, encoding in ((codecs.BOM_UTF8, "utf-8-sig"), (codecs.BOM_UTF16_LE, "utf-16"),
                           (codecs.BOM_UTF16_BE, "utf-16")):
        if data.startswith(mark):
            break
    else:
        encoding = "utf-8"
    try:
        return data.decode(encoding)
    except UnicodeDecodeError:
        raise CaptionUnreadable(f"{path.name} is not UTF-8 text") from None


def sample_caption(caption: str | None, from_metadata: str | None, sidecar: Path, trigger: str | None) -> str | None:
    """The caption a sample trains on: the fixed `caption`, else its metadata.jsonl text, else its `.txt` sidecar;
    white space folded and `trigger` put in front. None when it has none; CaptionUnreadable when its sidecar is
    not UTF-8 text."""
    text = caption
    if text is None:
        text = from_metadata
    if text is None and sidecar.is_file():
        text = read_text_file(sidecar)
    if text is None or not text.strip():
        return None
    text = " ".join(text.split())
    return f"{trigger}, {text}" if trigger else text


EXIF_ORIENTATION = 0x0112
TRANSPOSED_ORIENTATIONS = (5, 6, 7, 8)  # EXIF orientations shown turned a quarter: width and height swap


def _image_size(path: Path) -> tuple[int, int] | str:
    """(width, height) as the image is shown (a phone photo's EXIF rotation applied, as `load_rgb` applies it),
    from the header; else why it cannot be used."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            width, height = image.size
            if _orientation(image) in TRANSPOSED_ORIENTATIONS:
                width, height = height, width
            return width, height
    except Image.DecompressionBombError:
        return "image too large to decode safely"
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        return "unreadable image"


def _orientation(image) -> int | None:
    """The EXIF orientation from what opening the file read, without decoding it: JPEG, WebP and TIFF carry it in
    their header; a PNG's `getexif` would decode the whole image to look past its pixel data, so only an eXIf
    chunk before them counts (where Pillow and most writers put it)."""
    from PIL import Image

    if image.format in ("JPEG", "MPO", "WEBP", "TIFF"):
        return image.getexif().get(EXIF_ORIENTATION)
    raw = image.info.get("exif")
    if not raw:
        return None
    exif = Image.Exif()
    exif.load(raw)
    return exif.get(EXIF_ORIENTATION)


def check_data_folder(root: Path) -> Path:
    """`root` with ~ expanded; a one-line error when it is missing or a file (training takes a folder)."""
    path = Path(root).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise UsageError(f"{root} is a file, not a data folder",
                         "give the folder that holds it: training reads a folder of captioned images or clips")
    raise UsageError(f"data folder not found: {root}",
                     "give a folder of images (or clips) with .txt captions or a metadata.jsonl")


RUN_MARKER = "train_config.json"  # every `sana finetune` run folder holds it from its start


def data_files(root: Path) -> list[Path]:
    """The files under `root` that training looks at: every file but hidden ones (.DS_Store, .cache, our own
    cache) and those of a `sana finetune` run folder inside it (the default `--out` lands there when the command
    runs in the data folder: its samples, plots and checkpoints are not data), sorted."""
    found = []
    for folder, dirs, files in os.walk(root, followlinks=True):  # as rglob walked linked folders
        dirs[:] = [d for d in dirs if not d.startswith(".") and not (Path(folder) / d / RUN_MARKER).is_file()]
        found += [Path(folder) / name for name in files if not name.startswith(".")]
    return sorted(path for path in found if path.is_file())


def data_fingerprint(data: str | Path) -> str | None:
    """What a run's data was, cheaply (no file is read): the count of files and a hash of their names, sizes and
    modification times, for a folder or a single file (an RL prompts file); None for anything else (`shapes`).
    A resume compares it to the run's record, before torch loads."""
    import hashlib

    path = Path(str(data)).expanduser()
    if path.is_dir():
        files = data_files(path)
    elif path.is_file():
        files, path = [path], path.parent
    else:
        return None
    digest = hashlib.sha256()
    for file in files:
        stat = file.stat()
        digest.update(f"{file.relative_to(path)}\0{stat.st_size}\0{stat.st_mtime_ns}\0".encode("utf-8", "replace"))
    return f"{len(files)} file{'s' if len(files) != 1 else ''}, {digest.hexdigest()[:12]}"


def captioned_images(root: Path, report: DataReport, *, caption: str | None = None,
                     trigger: str | None = None) -> Iterator[tuple[Path, str]]:
    """(image, caption) under `root` in path order, before any image is opened; what is left out goes to
    `report` as the walk reaches it (so the report is whole once the iterator is)."""
    rows = metadata_rows(root, report, need_caption=True)
    for path in data_files(root):
        suffix = path.suffix.lower()
        if suffix in SIDECAR_SUFFIXES:
            continue
        if suffix not in IMAGE_SUFFIXES:
            report.skip("not an image", path)
            continue
        row = rows.get(path.resolve(), {}) if caption is None else {}
        try:
            text = sample_caption(caption, row_caption(row), path.with_suffix(".txt"), trigger)
        except CaptionUnreadable:
            report.skip("caption file is not UTF-8 text", path.with_suffix(".txt"))
            continue
        if text is None:
            report.skip("no caption", path)
            continue
        yield path, text


def no_usable(noun: str, data: str, report: DataReport, hint: str | None = None) -> UsageError:
    """The error "no usable training images in DATA: reasons" (`noun`: images or clips), reasons from the report:
    the words of the trainer's own (`features.unusable`), said here before torch loads."""
    reasons = "; ".join(report.lines()[1:]) or f"the folder has no {noun}"
    return UsageError(f"no usable training {noun} in {data}: {reasons}", hint)


IMAGES_HINT = "put images with same-name .txt captions (or a metadata.jsonl) there, or pass --caption"


def check_images(data: str, *, caption: str | None = None, trigger: str | None = None) -> None:
    """A one-line error unless the folder holds a captioned image, found without decoding one: the walk stops at
    the first, so a large folder costs a listing. Images that turn out unreadable are the trainer's to find."""
    root = check_data_folder(data)
    report = DataReport(root=root)
    if next(captioned_images(root, report, caption=caption, trigger=trigger), None) is None:
        raise no_usable("images", data, report, IMAGES_HINT)


def scan_folder(root: Path, *, caption: str | None = None, trigger: str | None = None) -> tuple[list[Sample], DataReport]:
    """Every usable (image, caption) under `root`, sorted by path, and the report of what was skipped.

    `caption` gives every image that fixed caption (no caption files needed); `trigger` is put in front of
    each caption ("sks, a photo of ...").
    """
    root = check_data_folder(root)
    report = DataReport(root=root)
    candidates = list(captioned_images(root, report, caption=caption, trigger=trigger))
    # Image headers are read in threads: file opens dominate a large folder's scan.
    with ThreadPoolExecutor(max_workers=min(16, os.cpu_count() or 1)) as pool:
        sizes = list(pool.map(_image_size, [path for path, _ in candidates]))
    samples: list[Sample] = []
    for (path, text), size in zip(candidates, sizes):
        if isinstance(size, str):
            report.skip(size, path)
            continue
        samples.append(Sample(path=path, caption=text, width=size[0], height=size[1]))
    report.used = len(samples)
    return samples, report


# -- buckets ------------------------------------------------------------------------------------------------

def aspect_buckets(resolution: int, multiple: int) -> list[tuple[int, int]]:
    """(width, height) buckets of about resolution^2 pixels for aspect ratios from 1:4 to 4:1.

    The native SANA sizes use diffusers' trained aspect bins, so a fine-tune sees the shapes inference
    generates at; other sizes (small models) get buckets on a grid of `multiple`.
    """
    from ..pipelines.sizes import BINNED_RESOLUTIONS, aspect_ratio_bins

    bins = aspect_ratio_bins()[resolution] if resolution in BINNED_RESOLUTIONS else None
    if bins is not None:
        return sorted({(int(w), int(h)) for h, w in bins.values()})
    return ratio_grid(resolution, multiple)


def ratio_grid(resolution: int, multiple: int) -> list[tuple[int, int]]:
    """(width, height) buckets of about resolution^2 pixels for ratios 1:4 .. 4:1, sides on a grid of `multiple`."""
    buckets = set()
    for step in range(-8, 9):  # ratios 2^(step/4): 1:4 ... 4:1
        ratio = 2 ** (step / 4)
        width = max(multiple, round(resolution * math.sqrt(ratio) / multiple) * multiple)
        height = max(multiple, round(resolution / math.sqrt(ratio) / multiple) * multiple)
        buckets.add((width, height))
    return sorted(buckets)


def nearest_bucket(width: int, height: int, buckets: list[tuple[int, int]]) -> tuple[int, int]:
    ratio = math.log(width / height)
    return min(buckets, key=lambda b: (abs(math.log(b[0] / b[1]) - ratio), -b[0] * b[1]))


UPSCALE_NOTICE = 2.0  # images enlarged more than this to cover their bucket train blurry


def note_upscaled(samples: list[Sample], buckets: list[tuple[int, int]], report: DataReport,
                  examples: int = 3) -> None:
    """A report note naming the images enlarged more than UPSCALE_NOTICE times to cover their training size."""
    small = [(s, b) for s, b in zip(samples, buckets) if max(b[0] / s.width, b[1] / s.height) > UPSCALE_NOTICE]
    if not small:
        return
    shown = ", ".join(f"{report.shown(s.path)} {s.width}x{s.height} -> {b[0]}x{b[1]}" for s, b in small[:examples])
    more = f", ... (+{len(small) - examples})" if len(small) > examples else ""
    report.notes.append(f"{len(small)} upscaled more than {UPSCALE_NOTICE:g}x to their training size, so they train "
                        f"blurry ({shown}{more}); drop them or train at a lower --res")


def load_rgb(path: Path, size: tuple[int, int]):
    """The image as RGB, scaled to cover `size` (width, height) and centre-cropped to it. Raises OSError if truncated."""
    from PIL import Image, ImageOps

    with Image.open(path) as image:
        image.load()  # decode now: a truncated file fails here, not later
        image = ImageOps.exif_transpose(image)
        if image.mode.startswith("I"):  # 16- or 32-bit grey: converting would clip it to white
            image = _grey_to_8_bit(image)
        if image.mode in ("RGBA", "LA", "P"):
            image = image.convert("RGBA")
            background = Image.new("RGBA", image.size, (255, 255, 255, 255))
            image = Image.alpha_composite(background, image)
        image = image.convert("RGB")
    return ImageOps.fit(image, size, method=Image.Resampling.BICUBIC)


def _grey_to_8_bit(image):
    """A 16-bit (or 32-bit integer) grey image as 8-bit "L": 16-bit files scaled by 255/65535; 32-bit ones, whose
    range the mode does not say, by the largest value they hold when it passes 255."""
    import numpy as np
    from PIL import Image

    values = np.asarray(image).astype(np.float64)
    if image.mode.startswith("I;16"):
        scale = 255.0 / 65535.0
    else:
        peak = float(values.max()) if values.size else 0.0
        scale = 255.0 / peak if peak > 255 else 1.0
    return Image.fromarray(np.clip(np.rint(values * scale), 0, 255).astype(np.uint8), "L")


# -- batch order --------------------------------------------------------------------------------------------

def epoch_batches(groups: dict[tuple[int, int], list[int]], global_batch: int, seed: int, epoch: int) -> list[list[int]]:
    """One epoch of global batches, each from a single bucket, in a seeded random order.

    Every batch is full: a bucket's last partial batch is completed with items from the start of its own
    shuffled list, so every rank of a distributed run always gets the same number of items. The order depends
    only on (seed, epoch), which is what lets a resumed run continue exactly where it stopped.
    """
    rng = random.Random(seed * 1_000_003 + epoch)
    batches = []
    for key in sorted(groups):
        items = list(groups[key])
        rng.shuffle(items)
        count = max(1, math.ceil(len(items) / global_batch))
        padded = (items * math.ceil(count * global_batch / len(items)))[: count * global_batch]
        batches += [padded[i * global_batch:(i + 1) * global_batch] for i in range(count)]
    rng.shuffle(batches)
    return batches

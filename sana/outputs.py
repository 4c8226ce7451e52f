"""Writing images with their generation metadata, naming outputs, and reading the metadata back.

PNG carries an A1111-layout "parameters" text chunk (what Civitai and prompt readers look for), a "sana" chunk
with the full JSON record and an XMP packet marking the image as AI-generated. JPEG and WebP carry the JSON in
EXIF UserComment, the A1111 text in EXIF ImageDescription and the same XMP packet.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import unicodedata
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from PIL import Image, PngImagePlugin, UnidentifiedImageError

from .errors import SanaError, UsageError

# Pillow format name for each suffix we write.
FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}

# The reader regex A1111 and the tools that follow it use for the last line of "parameters".
A1111_PARAM_RE = re.compile(r"""\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)""")
NEGATIVE_PREFIX = "Negative prompt:"
VERSION_PREFIX = "sana "

PNG_JSON_KEY = "sana"
PNG_PARAMETERS_KEY = "parameters"
PNG_XMP_KEY = "XML:com.adobe.xmp"
EXIF_IFD = 0x8769
EXIF_IMAGE_DESCRIPTION = 0x010E
EXIF_USER_COMMENT = 0x9286
# A JPEG APP1 segment holds at most 65535 bytes, its length field and "Exif\0\0" included.
JPEG_MAX_EXIF_BYTES = 65533 - 6
JPEG_QUALITY = 95
WEBP_QUALITY = 95

XMP_PACKET = (
    '<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>\n'
    '<x:xmpmeta xmlns:x="adobe:ns:meta/">\n'
    ' <rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">\n'
    '  <rdf:Description rdf:about=""\n'
    '    xmlns:Iptc4xmpExt="http://iptc.org/std/Iptc4xmpExt/2008-02-29/"\n'
    '    Iptc4xmpExt:DigitalSourceType="http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia"/>\n'
    ' </rdf:RDF>\n'
    '</x:xmpmeta>\n'
    '<?xpacket end="r"?>'
)


# ----------------------------------------------------------------------------------------------------------------
# The record
# ----------------------------------------------------------------------------------------------------------------

@dataclass
class GenerationRecord:
    """Everything needed to replay one image; None where a foreign file did not say."""

    prompt: str
    negative_prompt: str = ""
    model: str | None = None  # registry name, repo id or directory, as given
    model_repo: str | None = None
    model_revision: str | None = None
    family: str | None = None  # "sana", "sana1.5" or "sprint"
    seed: int | None = None
    steps: int | None = None
    guidance: float | None = None  # CFG scale
    pag: float = 0.0  # PAG scale, 0 = off
    pag_layers: list[int] = field(default_factory=list)
    sampler: str | None = None  # "flow-dpm", "flow-euler" or "scm"
    flow_shift: float | None = None
    width: int | None = None
    height: int | None = None
    dtype: str | None = None
    loras: list[dict[str, Any]] = field(default_factory=list)  # {"path", "scale", "sha256"?}
    version: str | None = None  # sana version that wrote it
    timings: dict[str, float] = field(default_factory=dict)  # phase -> seconds
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self, indent: int | None = None) -> str:
        return json.dumps(asdict(self), ensure_ascii=False, indent=indent)

    @classmethod
    def from_json(cls, text: str) -> GenerationRecord:
        """Parse a JSON record; unknown keys (from newer versions) are ignored."""
        try:
            data = json.loads(text)
        except (json.JSONDecodeError, TypeError) as exc:
            raise SanaError(f"the metadata is not valid JSON ({exc})") from None
        if not isinstance(data, dict) or not isinstance(data.get("prompt"), str):
            raise SanaError("the metadata JSON has no prompt")
        known = {f.name for f in fields(cls)}
        values = {}
        for key, value in data.items():
            if key in known and value is not None:
                values[key] = _coerce_field(key, value)
        return cls(**values)

    def to_a1111(self) -> str:
        """The A1111 "parameters" text: prompt lines, "Negative prompt: ..." when set, then a "Key: value" line."""
        params: list[tuple[str, Any]] = [
            ("Steps", self.steps),
            ("Sampler", self.sampler),
            ("CFG scale", self.guidance),
        ]
        if self.pag:
            params += [("PAG scale", self.pag), ("PAG layers", ",".join(str(layer) for layer in self.pag_layers))]
        params += [
            ("Seed", self.seed),
            ("Size", f"{self.width}x{self.height}" if self.width and self.height else None),
            ("Model", self.model),
            ("Model repo", self.model_repo),
            ("Model revision", self.model_revision),
            ("Family", self.family),
            ("Flow shift", self.flow_shift),
            ("Dtype", self.dtype),
            ("LoRAs", ", ".join(f"{lora['path']}:{lora.get('scale', 1.0)}" for lora in self.loras)),
            ("Version", f"{VERSION_PREFIX}{self.version}" if self.version else None),
        ]
        line = ", ".join(f"{key}: {_a1111_value(value)}" for key, value in params if value not in (None, ""))
        lines = [self.prompt]
        if self.negative_prompt:
            lines.append(f"{NEGATIVE_PREFIX} {self.negative_prompt}")
        if line:
            lines.append(line)
        return "\n".join(lines)

    @classmethod
    def from_a1111(cls, text: str) -> GenerationRecord:
        """Best-effort record from A1111 "parameters" text; keys we do not map are kept in extra["a1111"]."""
        parsed = parse_a1111(text)
        params = {k: v for k, v in parsed.items() if k not in ("Prompt", "Negative prompt")}
        ours = params.get("Version", "").startswith(VERSION_PREFIX)
        record = cls(prompt=parsed["Prompt"], negative_prompt=parsed["Negative prompt"])
        unmapped: dict[str, str] = {}
        for key, value in params.items():
            try:
                if not _apply_a1111_param(record, key, value, ours):
                    unmapped[key] = value
            except ValueError:
                unmapped[key] = value
        if unmapped:
            record.extra["a1111"] = unmapped
        return record


def _coerce_field(key: str, value: Any) -> Any:
    """Types as the dataclass declares them, so a hand-edited record fails here rather than mid-run."""
    try:
        if key in ("seed", "steps", "width", "height"):
            if isinstance(value, bool) or float(value) != int(value):
                raise ValueError
            return int(value)
        if key in ("guidance", "pag", "flow_shift"):
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if key == "pag_layers":
            return [int(layer) for layer in value]
        if key == "loras":
            if not all(isinstance(lora, dict) and "path" in lora for lora in value):
                raise ValueError
            return [dict(lora) for lora in value]
        if key == "timings":
            return {str(phase): float(seconds) for phase, seconds in dict(value).items()}
        if key == "extra":
            if not isinstance(value, dict):
                raise ValueError
            return dict(value)
        return value if isinstance(value, str) else str(value)
    except (TypeError, ValueError):
        raise SanaError(f"the metadata field '{key}' has a bad value: {value!r}") from None


def _a1111_value(value: Any) -> str:
    """A value for the "Key: value" line; JSON-quoted where the reader regex would otherwise split it."""
    text = repr(value) if isinstance(value, float) else str(value)
    if any(c in text for c in ",:\n\r") or text != text.strip() or text.startswith('"'):
        return json.dumps(text, ensure_ascii=False)
    return text


def parse_a1111(text: str) -> dict[str, str]:
    """Split A1111 "parameters" text into {"Prompt", "Negative prompt", and each "Key": value}, values unquoted.

    Follows A1111's own reader: the last line holds the parameters only when the regex finds at least three
    pairs in it; otherwise it is part of the prompt.
    """
    lines = text.strip().split("\n")
    params: dict[str, str] = {}
    if len(lines) and len(A1111_PARAM_RE.findall(lines[-1])) >= 3:
        for key, value in A1111_PARAM_RE.findall(lines.pop()):
            value = value.strip()
            if len(value) >= 2 and value[0] == '"' and value[-1] == '"':
                try:
                    value = json.loads(value)
                except json.JSONDecodeError:
                    pass  # a quoted value that is not valid JSON is kept as written
            params[key.strip()] = value
    prompt_lines: list[str] = []
    negative_lines: list[str] = []
    for line in lines:
        if not negative_lines and line.startswith(NEGATIVE_PREFIX):
            negative_lines.append(line[len(NEGATIVE_PREFIX):].strip())
        elif negative_lines:
            negative_lines.append(line)
        else:
            prompt_lines.append(line)
    return {"Prompt": "\n".join(prompt_lines).strip(), "Negative prompt": "\n".join(negative_lines).strip(), **params}


def _apply_a1111_param(record: GenerationRecord, key: str, value: str, ours: bool) -> bool:
    """Set the field a parameter maps to; False when it has none. Raises ValueError on a bad number."""
    if key == "Steps":
        record.steps = int(value)
    elif key == "CFG scale":
        record.guidance = float(value)
    elif key == "Seed":
        record.seed = int(value)
    elif key == "Size":
        width, height = value.lower().split("x")
        record.width, record.height = int(width), int(height)
    elif not ours:
        # Another tool's sampler, model and version names mean nothing to our pipelines: kept, not mapped.
        return False
    elif key == "Sampler":
        record.sampler = value
    elif key == "PAG scale":
        record.pag = float(value)
    elif key == "PAG layers":
        record.pag_layers = [int(layer) for layer in re.split(r"[,\s]+", value) if layer]
    elif key == "Model":
        record.model = value
    elif key == "Model repo":
        record.model_repo = value
    elif key == "Model revision":
        record.model_revision = value
    elif key == "Family":
        record.family = value
    elif key == "Flow shift":
        record.flow_shift = float(value)
    elif key == "Dtype":
        record.dtype = value
    elif key == "LoRAs":
        record.loras = []
        for entry in value.split(", "):
            path, _, scale = entry.rpartition(":")
            record.loras.append({"path": path, "scale": float(scale)})
    elif key == "Version":
        record.version = value[len(VERSION_PREFIX):]
    else:
        return False
    return True


# ----------------------------------------------------------------------------------------------------------------
# Writing
# ----------------------------------------------------------------------------------------------------------------

def file_sha256(path: Path) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB pieces."""
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def image_format(path: Path) -> str:
    """Pillow format name for a path's suffix; UsageError for suffixes we do not write."""
    fmt = FORMATS.get(Path(path).suffix.lower())
    if fmt is None:
        shown = Path(path).suffix or Path(path).name
        raise UsageError(f"cannot write '{shown}' images", "use .png, .jpg, .jpeg or .webp")
    return fmt


def exists_error(path: Path) -> SanaError:
    return SanaError(f"{path} exists; use --force to overwrite or choose another -o")


def save_image(image: Image.Image, path: Path, record: GenerationRecord, *, force: bool = False) -> Path:
    """Write image with record's metadata, atomically; refuses to replace an existing file unless force.

    The image is written to a temporary file beside path, fsynced, then moved into place, so a failure or an
    interrupt never leaves a partial image under the final name.
    """
    path = Path(path)
    fmt = image_format(path)
    if path.is_dir():
        raise SanaError(f"{path} is a directory", "end -o with / to write into it")
    if path.exists() and not force:
        raise exists_error(path)
    if fmt == "JPEG" and image.mode not in ("RGB", "L", "CMYK"):
        image = image.convert("RGB")
    options = _metadata_options(fmt, record)
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = _create_temp_beside(path)
    try:
        with open(temp, "wb") as file:
            image.save(file, format=fmt, **options)
            file.flush()
            os.fsync(file.fileno())
        _move_into_place(temp, path, force)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    _fsync_directory(path.parent)
    return path


def _metadata_options(fmt: str, record: GenerationRecord) -> dict[str, Any]:
    xmp = XMP_PACKET.encode("utf-8")
    if fmt == "PNG":
        info = PngImagePlugin.PngInfo()
        # add_text writes tEXt when the value is Latin-1 and iTXt (UTF-8) otherwise.
        info.add_text(PNG_PARAMETERS_KEY, record.to_a1111())
        info.add_text(PNG_JSON_KEY, record.to_json())
        info.add_itxt(PNG_XMP_KEY, XMP_PACKET)  # uncompressed, as the XMP spec asks for PNG
        return {"pnginfo": info}
    exif = _exif_bytes(record, with_description=True)
    if fmt == "JPEG" and len(exif) > JPEG_MAX_EXIF_BYTES:
        # The JSON alone is the full record; the A1111 copy is the one to drop.
        exif = _exif_bytes(record, with_description=False)
        if len(exif) > JPEG_MAX_EXIF_BYTES:
            raise SanaError("the metadata is too long for a JPEG", "write a .png or .webp instead")
    quality = JPEG_QUALITY if fmt == "JPEG" else WEBP_QUALITY
    return {"exif": exif, "xmp": xmp, "quality": quality}


def _exif_bytes(record: GenerationRecord, *, with_description: bool) -> bytes:
    exif = Image.Exif()
    # Big-endian, as piexif (which A1111 uses) writes it; UserComment's UTF-16 follows the header's byte order.
    exif.endian = ">"
    if with_description:
        # The EXIF ASCII type predates UTF-8; readers accept UTF-8 there and Pillow would turn it into "?".
        exif[EXIF_IMAGE_DESCRIPTION] = record.to_a1111().encode("utf-8")
    exif.get_ifd(EXIF_IFD)[EXIF_USER_COMMENT] = encode_user_comment(record.to_json(), big_endian=True)
    return exif.tobytes()


def encode_user_comment(text: str, *, big_endian: bool) -> bytes:
    """EXIF UserComment: an 8-byte character-code prefix, then the text (ASCII, or UCS-2/UTF-16)."""
    if text.isascii():
        return b"ASCII\0\0\0" + text.encode("ascii")
    return b"UNICODE\0" + text.encode("utf-16-be" if big_endian else "utf-16-le")


def _create_temp_beside(path: Path) -> Path:
    # os.open honours the umask, unlike mkstemp's 0600, so the final file gets ordinary permissions.
    while True:
        temp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            os.close(os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            return temp
        except FileExistsError:
            continue


def _move_into_place(temp: Path, path: Path, force: bool) -> None:
    if force:
        os.replace(temp, path)
        return
    # A hard link fails if path appeared since the check in save_image; os.replace would silently clobber it.
    try:
        os.link(temp, path)
    except FileExistsError:
        raise exists_error(path) from None
    except OSError:  # file systems without hard links
        if path.exists():
            raise exists_error(path) from None
        os.replace(temp, path)
        return
    temp.unlink()


def _fsync_directory(directory: Path) -> None:
    """Make the rename durable; not every platform can open a directory, which is harmless to skip."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# ----------------------------------------------------------------------------------------------------------------
# Naming
# ----------------------------------------------------------------------------------------------------------------

def prompt_slug(prompt: str, max_length: int = 40) -> str:
    """ASCII words of the prompt joined by '-', cut at a word boundary; "image" when none are left."""
    ascii_text = unicodedata.normalize("NFKD", prompt).encode("ascii", "ignore").decode("ascii")
    words = re.findall(r"[a-z0-9]+", ascii_text.lower())
    slug = ""
    for word in words:
        candidate = f"{slug}-{word}" if slug else word
        if len(candidate) > max_length:
            break
        slug = candidate
    if not slug and words:
        slug = words[0][:max_length]
    return slug or "image"


def plan_output_paths(out: str | None, *, prompt: str, seeds: list[int], ext: str = ".png", force: bool,
                      index_start: int = 0) -> list[Path]:
    """One output path per seed.

    out may be:
    - None or "": the current directory, with default names;
    - an existing directory, or a path ending in "/" (created when the image is saved): default names there,
      "<prompt slug>-<seed><ext>", with "-1", "-2", ... appended when the name exists on disk or was already
      planned in this batch (unless force, which lets a default name replace a file on disk);
    - a file path (.png/.jpg/.jpeg/.webp; its suffix wins over ext): used as is for a single image. For several
      images, or when index_start > 0 (earlier prompts of the same run already used this -o), images are
      numbered by position: "name-<index_start + 1>.png", "name-<index_start + 2>.png", ... An existing file
      path is an error unless force.
    """
    if not seeds:
        return []
    if out and not (out.endswith(("/", os.sep)) or Path(out).expanduser().is_dir()):
        return _explicit_paths(Path(out).expanduser(), len(seeds), force, index_start)
    ext = ext.lower() if ext.startswith(".") else f".{ext.lower()}"
    directory = Path(out).expanduser() if out else Path(".")
    if directory.exists() and not directory.is_dir():
        raise UsageError(f"-o {out} is a file, not a directory")
    image_format(Path(f"x{ext}"))
    slug = prompt_slug(prompt)
    planned: set[Path] = set()
    paths = []
    for seed in seeds:
        stem = f"{slug}-{seed}"
        candidate = directory / f"{stem}{ext}"
        counter = 0
        while candidate in planned or (not force and candidate.exists()):
            counter += 1
            candidate = directory / f"{stem}-{counter}{ext}"
        planned.add(candidate)
        paths.append(candidate)
    return paths


def _explicit_paths(target: Path, count: int, force: bool, index_start: int) -> list[Path]:
    if not target.suffix:
        raise UsageError(f"-o {target} has no image suffix",
                         "use .png, .jpg or .webp, or end it with / for a directory")
    image_format(target)
    if count == 1 and index_start == 0:
        paths = [target]
    else:
        paths = [target.with_name(f"{target.stem}-{index_start + i + 1}{target.suffix}") for i in range(count)]
    if not force:
        for path in paths:
            if path.exists():
                raise exists_error(path)
    return paths


# ----------------------------------------------------------------------------------------------------------------
# Reading
# ----------------------------------------------------------------------------------------------------------------

def read_metadata(path: Path) -> GenerationRecord:
    """The record stored in an image: our JSON (PNG chunk or EXIF UserComment), else A1111 "parameters" text."""
    path = Path(path)
    if not path.exists():
        raise SanaError(f"{path} not found")
    if not path.is_file():
        raise SanaError(f"{path} is not a file")
    try:
        with Image.open(path) as image:
            texts = {k: v for k, v in image.info.items() if isinstance(v, str)}
            if image.format == "PNG" and not (PNG_JSON_KEY in texts or PNG_PARAMETERS_KEY in texts):
                # Some tools write text chunks after the image data; .text finds them but decodes the pixels.
                texts = dict(image.text)
            exif = image.getexif()
            user_comment = exif.get_ifd(EXIF_IFD).get(EXIF_USER_COMMENT)
            description = exif.get(EXIF_IMAGE_DESCRIPTION)
            exif_big_endian = exif.endian != "<"
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        raise SanaError(f"{path} is not an image that can be read") from None

    json_sources = [texts.get(PNG_JSON_KEY)]
    a1111_sources = [texts.get(PNG_PARAMETERS_KEY)]
    if isinstance(user_comment, bytes):
        comment = decode_user_comment(user_comment, big_endian=exif_big_endian)
        (json_sources if comment.lstrip().startswith("{") else a1111_sources).append(comment)
    if description:
        a1111_sources.append(_exif_text(description))

    problem: SanaError | None = None
    for text in json_sources:
        if text:
            try:
                return GenerationRecord.from_json(text)
            except SanaError as exc:
                problem = exc  # a damaged JSON record may still have an A1111 copy beside it
    for index, text in enumerate(a1111_sources):
        if not text:
            continue
        # A PNG "parameters" chunk is A1111 text by definition; EXIF text only when it has a parameters line,
        # since cameras put their own words there.
        if index == 0 or len(parse_a1111(text)) > 2:
            return GenerationRecord.from_a1111(text)
    if problem is not None:
        raise SanaError(f"{path}: {problem}")
    raise SanaError(f"{path} has no generation metadata", "sana reads its own metadata and A1111 'parameters'")


def decode_user_comment(data: bytes, *, big_endian: bool) -> str:
    """Text of an EXIF UserComment, from its 8-byte character-code prefix."""
    code, body = data[:8], data[8:]
    if code.startswith(b"UNICODE"):
        if body[:2] in (b"\xfe\xff", b"\xff\xfe"):
            return body.decode("utf-16")
        # Writers disagree on the byte order; ASCII-range characters show it by where their zero byte sits.
        zeros_even, zeros_odd = body[0::2].count(0), body[1::2].count(0)
        if zeros_even != zeros_odd:
            big_endian = zeros_even > zeros_odd
        return body.decode("utf-16-be" if big_endian else "utf-16-le", errors="replace").rstrip("\0")
    if code.startswith(b"ASCII") or code == b"\0" * 8:
        return body.decode("utf-8", errors="replace").rstrip("\0")
    return data.decode("utf-8", errors="replace").rstrip("\0")


def _exif_text(value: Any) -> str:
    """Pillow decodes EXIF ASCII as Latin-1; writers put UTF-8 there, so undo that when it fits."""
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace").rstrip("\0")
    try:
        return value.encode("latin-1").decode("utf-8")
    except (UnicodeEncodeError, UnicodeDecodeError):
        return str(value)

"""Reading the generation record back from an image or a clip (for `sana info` and `--from`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from ..errors import SanaError, UsageError
from .images import EXIF_IFD, EXIF_IMAGE_DESCRIPTION, EXIF_USER_COMMENT, PNG_JSON_KEY, PNG_PARAMETERS_KEY
from .record import GenerationRecord, parse_a1111
from .video import CLIP_JSON, MP4_JSON_KEY, MP4_PARAMETERS_KEY, PNG_FRAME_NAME, mp4_tags

# First bytes of the containers ffmpeg reads for us: ISO BMFF (MP4, MOV, M4V) boxes at offset 4, Matroska/WebM.
_ISO_BOXES = (b"ftyp", b"moov", b"mdat", b"wide", b"free", b"skip")
_MATROSKA_MAGIC = b"\x1a\x45\xdf\xa3"


def read_metadata(path: Path) -> GenerationRecord:
    """The record stored in an image or clip: our JSON record, else A1111 "parameters" text.

    Images: PNG "sana" / "parameters" chunks, EXIF UserComment / ImageDescription (JPEG, WebP, animated WebP).
    Clips: an MP4's `comment` / `description` tags, a GIF's comment, a PNG-frames folder's clip.json (else its
    first frame).
    """
    path = Path(path)
    if not path.exists():
        raise UsageError(f"{path} not found")
    if path.is_dir():
        return _read_frames_folder(path)
    if not path.is_file():
        raise SanaError(f"{path} is not a file")
    try:
        json_sources, a1111_sources = _image_sources(path)
    except UnidentifiedImageError:
        if not _is_video_container(path):
            raise UsageError(f"{path} is not an image or clip that can be read") from None
        json_sources, a1111_sources = _video_sources(path)
    except (OSError, SyntaxError, ValueError):
        raise UsageError(f"{path} is not an image or clip that can be read") from None
    return _record_from(path, json_sources, a1111_sources)


# Each source list holds texts in the order to try them; an A1111 text comes with whether it is A1111 text by
# definition (a PNG "parameters" chunk) or only when it has a parameters line (EXIF and MP4 descriptions, comments:
# cameras and editors put their own words there).
_Sources = tuple[list[str | None], list[tuple[str | None, bool]]]


def _image_sources(path: Path) -> _Sources:
    with Image.open(path) as image:
        texts = {k: v for k, v in image.info.items() if isinstance(v, str)}
        if image.format == "PNG" and not (PNG_JSON_KEY in texts or PNG_PARAMETERS_KEY in texts):
            # Some tools write text chunks after the image data; .text finds them but decodes the pixels.
            texts = dict(image.text)
        comment = image.info.get("comment") if image.format == "GIF" else None
        exif = image.getexif()
        user_comment = exif.get_ifd(EXIF_IFD).get(EXIF_USER_COMMENT)
        description = exif.get(EXIF_IMAGE_DESCRIPTION)
        exif_big_endian = exif.endian != "<"

    json_sources = [texts.get(PNG_JSON_KEY)]
    a1111_sources = [(texts.get(PNG_PARAMETERS_KEY), True)]
    if isinstance(user_comment, bytes):
        _sort_text(decode_user_comment(user_comment, big_endian=exif_big_endian), json_sources, a1111_sources)
    if description:
        a1111_sources.append((_exif_text(description), False))
    if isinstance(comment, bytes):
        _sort_text(comment.decode("utf-8", errors="replace"), json_sources, a1111_sources)
    return json_sources, a1111_sources


def _video_sources(path: Path) -> _Sources:
    tags = mp4_tags(path)
    json_sources: list[str | None] = []
    a1111_sources: list[tuple[str | None, bool]] = [(tags.get(MP4_PARAMETERS_KEY), False)]
    if tags.get(MP4_JSON_KEY):
        _sort_text(tags[MP4_JSON_KEY], json_sources, a1111_sources)
    return json_sources, a1111_sources


def _sort_text(text: str, json_sources: list, a1111_sources: list) -> None:
    """A free-form text field: our JSON record when it looks like JSON, else perhaps A1111 text."""
    if text.lstrip().startswith("{"):
        json_sources.append(text)
    else:
        a1111_sources.append((text, False))


def _record_from(path: Path, json_sources: list[str | None],
                 a1111_sources: list[tuple[str | None, bool]]) -> GenerationRecord:
    problem: SanaError | None = None
    for text in json_sources:
        if text:
            try:
                return GenerationRecord.from_json(text)
            except SanaError as exc:
                problem = exc  # a damaged JSON record may still have an A1111 copy beside it
    for text, by_definition in a1111_sources:
        if text and (by_definition or len(parse_a1111(text)) > 2):
            return GenerationRecord.from_a1111(text)
    if problem is not None:
        raise SanaError(f"{path}: {problem}")
    raise UsageError(f"{path} has no generation metadata", "sana reads its own metadata and A1111 'parameters'")


def _read_frames_folder(folder: Path) -> GenerationRecord:
    """A PNG-frames folder: its clip.json, else the metadata chunks of its first frame."""
    clip_json, first = folder / CLIP_JSON, folder / PNG_FRAME_NAME.format(0)
    if clip_json.is_file():
        try:
            return GenerationRecord.from_json(clip_json.read_text(encoding="utf-8"))
        except (SanaError, OSError, UnicodeDecodeError) as exc:
            if not first.is_file():
                raise SanaError(f"{clip_json}: {exc}") from None
    if first.is_file():
        return read_metadata(first)
    raise SanaError(f"{folder} is not a file or a PNG-frames folder",
                    f"a frames folder written by sana holds {CLIP_JSON} and {PNG_FRAME_NAME.format(0)}")


def _is_video_container(path: Path) -> bool:
    with open(path, "rb") as file:
        head = file.read(8)
    return head[4:8] in _ISO_BOXES or head[:4] == _MATROSKA_MAGIC


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

"""Writing images with their generation metadata.

PNG carries an A1111-layout "parameters" text chunk (what Civitai and prompt readers look for), a "sana" chunk
with the full JSON record and an XMP packet marking the image as AI-generated. JPEG and WebP carry the JSON in
EXIF UserComment, the A1111 text in EXIF ImageDescription and the same XMP packet.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from PIL import Image, PngImagePlugin

from ..errors import SanaError, UsageError
from .atomic import atomic_file
from .record import GenerationRecord

# Pillow format name for each suffix we write.
FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}

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


def image_format(path: Path) -> str:
    """Pillow format name for a path's suffix; UsageError for suffixes we do not write."""
    fmt = FORMATS.get(Path(path).suffix.lower())
    if fmt is None:
        shown = Path(path).suffix or Path(path).name
        raise UsageError(f"cannot write '{shown}' images", "use .png, .jpg, .jpeg or .webp")
    return fmt


def save_image(image: Image.Image, path: Path, record: GenerationRecord, *, force: bool = False) -> Path:
    """Write image with record's metadata, atomically; refuses to replace an existing file unless force.

    The image is written to a temporary file beside path, fsynced, then moved into place, so a failure or an
    interrupt never leaves a partial image under the final name.
    """
    path = Path(path)
    fmt = image_format(path)
    if fmt == "JPEG" and image.mode not in ("RGB", "L", "CMYK"):
        image = image.convert("RGB")
    options = metadata_options(fmt, record)
    with atomic_file(path, force=force) as temp:
        with open(temp, "wb") as file:
            image.save(file, format=fmt, **options)
    return path


def image_bytes(image: Image.Image, record: GenerationRecord, fmt: str) -> bytes:
    """The image encoded as `fmt` ("PNG", "JPEG" or "WEBP") with the record's metadata, as `save_image` writes
    it to a file (for answers that never touch the disk, e.g. the server's)."""
    import io

    if fmt == "JPEG" and image.mode not in ("RGB", "L", "CMYK"):
        image = image.convert("RGB")
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **metadata_options(fmt, record))
    return buffer.getvalue()


def metadata_options(fmt: str, record: GenerationRecord) -> dict[str, Any]:
    """Pillow save options that carry the record in a PNG, JPEG or WebP (still or animated)."""
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


JPEG_RECORD_ROOM = 8192  # bytes a record takes beyond its prompts (settings, timings, the memory plan), with room


def check_jpeg_room(prompt: str, negative: str = "") -> None:
    """Refuse, before any work, prompts too long for a JPEG's metadata to hold with the rest of the record."""
    size = len(_exif_bytes(GenerationRecord(prompt=prompt, negative_prompt=negative), with_description=False))
    if size + JPEG_RECORD_ROOM > JPEG_MAX_EXIF_BYTES:
        raise SanaError(f"the prompt is too long to record in a JPEG ({len(prompt) + len(negative):,} characters; "
                        f"its metadata holds 64 KB)", "write a .png or .webp instead")


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

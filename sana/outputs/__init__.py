"""Every output's metadata: one record, written with each image or clip, and read back for `sana info` / `--from`.

- `record`: GenerationRecord and its A1111 "parameters" text form;
- `images`: PNG / JPEG / WebP writing (`save_image`);
- `video`: MP4 / GIF / animated WebP / PNG-frames writing (`save_video`) and reading frames back (`read_clip`);
- `naming`: output paths for images and clips, and whether one is made already (`--skip-existing`);
- `reading`: `read_metadata` for every kind above;
- `atomic`: the atomic-write helpers both writers use.
"""

from .atomic import exists_error
from .images import (
    EXIF_IFD,
    EXIF_IMAGE_DESCRIPTION,
    EXIF_USER_COMMENT,
    FORMATS,
    JPEG_MAX_EXIF_BYTES,
    JPEG_QUALITY,
    PNG_JSON_KEY,
    PNG_PARAMETERS_KEY,
    PNG_XMP_KEY,
    WEBP_QUALITY,
    XMP_PACKET,
    check_jpeg_room,
    encode_user_comment,
    image_format,
    save_image,
)
from .naming import made_already, plan_clip_paths, plan_output_paths, prompt_slug, prompt_stem
from .reading import decode_user_comment, read_metadata
from .record import A1111_PARAM_RE, NEGATIVE_PREFIX, VERSION_PREFIX, GenerationRecord, file_sha256, parse_a1111
from .video import (
    CLIP_FORMATS,
    CLIP_JSON,
    CLIP_SUFFIXES,
    MP4_CRF,
    PNG_FRAME_NAME,
    clip_format,
    read_clip,
    save_video,
)

__all__ = [
    "A1111_PARAM_RE", "CLIP_FORMATS", "CLIP_JSON", "CLIP_SUFFIXES", "EXIF_IFD", "EXIF_IMAGE_DESCRIPTION",
    "EXIF_USER_COMMENT", "FORMATS", "GenerationRecord", "JPEG_MAX_EXIF_BYTES", "JPEG_QUALITY", "MP4_CRF",
    "NEGATIVE_PREFIX", "PNG_FRAME_NAME", "PNG_JSON_KEY", "PNG_PARAMETERS_KEY", "PNG_XMP_KEY", "VERSION_PREFIX",
    "WEBP_QUALITY", "XMP_PACKET", "check_jpeg_room", "clip_format", "decode_user_comment", "encode_user_comment", "exists_error",
    "file_sha256", "image_format", "made_already", "parse_a1111", "plan_clip_paths", "plan_output_paths",
    "prompt_slug", "prompt_stem", "read_clip", "read_metadata", "save_image", "save_video",
]

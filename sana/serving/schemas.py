"""Request and response bodies in the shapes OpenAI's Images and Videos APIs (and SGLang's extensions) use, and the
error."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

# Caps a request cannot exceed whatever the model (`admission` adds the per-model ones: n, steps, pixels).
MAX_PROMPT_CHARS = 4000  # dall-e-3's limit; the text encoder reads 300 tokens anyway
MAX_N = 10  # OpenAI's
MAX_STEPS = 100
MAX_SCALE = 30.0  # guidance and PAG scales
MAX_LORA_SCALE = 4.0
MAX_FRAMES = 1024  # a minute at 16 fps (`sana video`'s cap); the memory plan bounds it further
MAX_SECONDS = 64.0
MAX_FPS = 240.0
PROGRESS_ID = r"^[A-Za-z0-9_-]{8,64}$"  # a client-chosen key for /v1/progress/{id} (the web page's)


def _not_blank(prompt: str) -> str:
    if not prompt.strip():
        raise ValueError("only whitespace: say what to draw")
    return prompt


class ImageGenerationRequest(BaseModel):
    """`POST /v1/images/generations`. Fields OpenAI defines that do not change what is answered (quality, style,
    moderation, ...) are accepted and ignored, as OpenAI-compatible servers do; those that would (`stream`,
    `partial_images`, a transparent `background`) are read so that admission can refuse them."""

    # Integers are strict (JSON numbers only: no "2", no true, as OpenAI refuses them); no NaN or infinity.
    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)

    _prompt_not_blank = field_validator("prompt")(_not_blank)

    # OpenAI's fields
    prompt: str = Field(min_length=1, max_length=MAX_PROMPT_CHARS)
    model: str | None = None
    n: int = Field(1, ge=1, le=MAX_N, strict=True)
    size: str | None = None  # "WxH" or "auto" (the model's native square)
    response_format: Literal["b64_json", "url"] | None = None  # None: b64_json (URLs live only in this process)
    output_format: Literal["png", "jpeg", "webp"] | None = None  # None: png
    user: str | None = Field(None, max_length=256)
    output_compression: int | None = Field(None, ge=0, le=100, strict=True)  # checked as OpenAI does; unused
    stream: bool | None = None  # refused when true: the answer is one JSON body
    partial_images: int | None = Field(None, ge=0, le=3, strict=True)  # refused above 0 (a streaming option)
    background: Literal["transparent", "opaque", "auto"] | None = None  # "transparent" refused: images are RGB
    # SGLang's extensions
    seed: int | None = Field(None, ge=0, le=2**32 - 1, strict=True)
    negative_prompt: str | None = Field(None, max_length=MAX_PROMPT_CHARS)
    num_inference_steps: int | None = Field(None, ge=1, le=MAX_STEPS, strict=True)
    guidance_scale: float | None = Field(None, ge=0.0, le=MAX_SCALE)
    flow_shift: float | None = Field(None, gt=0.0, le=100.0)  # SGLang's newer image API reads it too
    # ours
    pag_scale: float | None = Field(None, ge=0.0, le=MAX_SCALE)
    pag_layer: int | None = Field(None, ge=0, le=1000, strict=True)
    sampler: str | None = Field(None, max_length=32)
    lora: str | None = Field(None, max_length=128)  # a name on the server's allow-list (`sana serve --lora`)
    lora_scale: float | None = Field(None, ge=-MAX_LORA_SCALE, le=MAX_LORA_SCALE)  # None: the allow-list's scale
    progress_id: str | None = Field(None, pattern=PROGRESS_ID)  # steps published on /v1/progress/{progress_id}


class ImageData(BaseModel):
    b64_json: str | None = None
    url: str | None = None
    revised_prompt: str | None = None


class ImagesResponse(BaseModel):
    created: int
    data: list[ImageData]
    output_format: str | None = None
    size: str | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "sana"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class VideoGenerationRequest(BaseModel):
    """`POST /v1/videos` (JSON or multipart form): OpenAI's Videos API fields, SGLang's extensions, and ours for
    world-model jobs (a camera path or actions). Frames: `num_frames` or `seconds` x fps (not both), else the
    model's."""

    # Not strict: a form's fields are strings. A bool is still no integer; no NaN or infinity.
    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)

    _prompt_not_blank = field_validator("prompt")(_not_blank)

    @field_validator("num_frames", "seed", "num_inference_steps", "motion_score", mode="before")
    @classmethod
    def _no_bool(cls, value):
        if isinstance(value, bool):
            raise ValueError("Input should be a valid integer, not a boolean")
        return value

    # OpenAI's fields
    prompt: str = Field(min_length=1, max_length=MAX_PROMPT_CHARS)
    model: str | None = None
    seconds: float | None = Field(None, gt=0.0, le=MAX_SECONDS)  # OpenAI sends "4": a number in a string
    size: str | None = None  # "WxH"; None: the model's default
    input_reference: Any = None  # the first frame: a base64 data URL, {"image_url": data URL}, or an uploaded file
    # SGLang's extensions
    reference_url: str | None = None  # refused: the server fetches nothing
    num_frames: int | None = Field(None, ge=1, le=MAX_FRAMES)
    fps: float | None = Field(None, gt=0.0, le=MAX_FPS)
    seed: int | None = Field(None, ge=0, le=2**32 - 1)
    negative_prompt: str | None = Field(None, max_length=MAX_PROMPT_CHARS)
    num_inference_steps: int | None = Field(None, ge=1, le=MAX_STEPS)
    guidance_scale: float | None = Field(None, ge=0.0, le=MAX_SCALE)
    flow_shift: float | None = Field(None, gt=0.0, le=100.0)
    # ours: SANA-Video
    sampler: str | None = Field(None, max_length=32)
    motion_score: int | None = Field(None, ge=0, le=1000)
    # ours: SANA-WM (a camera path is a camera file's JSON, or `actions` as `sana world --actions` takes them)
    camera: dict | list | None = None
    actions: str | None = Field(None, max_length=4000)
    fov: float | None = Field(None, gt=0.0, lt=180.0)
    intrinsics: list[float] | None = Field(None, min_length=4, max_length=4)  # fx, fy, cx, cy in the image's px
    pose_scale: float | None = Field(None, gt=0.0, le=1000.0)
    speed: float | None = Field(None, gt=0.0, le=100.0)
    turn_rate: float | None = Field(None, gt=0.0, le=90.0)
    refine: bool | None = None  # SANA-WM's stage 2, where the server loaded it (`sana serve --refiner`)


class VideoError(BaseModel):
    code: str
    message: str


class VideoObject(BaseModel):
    """OpenAI's `Video`, with SGLang's and our additions (frames, fps, the content URL, the time it took)."""

    id: str
    object: Literal["video"] = "video"
    model: str
    status: Literal["queued", "in_progress", "completed", "failed"]
    progress: int = 0
    created_at: int
    completed_at: int | None = None
    expires_at: int | None = None
    error: VideoError | None = None
    prompt: str | None = None
    remixed_from_video_id: str | None = None
    seconds: str
    size: str
    num_frames: int
    fps: float
    url: str | None = None
    inference_time_s: float | None = None


class VideoList(BaseModel):
    object: Literal["list"] = "list"
    data: list[VideoObject]
    first_id: str | None = None
    last_id: str | None = None
    has_more: bool = False


class VideoDeleted(BaseModel):
    id: str
    object: Literal["video.deleted"] = "video.deleted"
    deleted: bool = True


class ErrorBody(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorBody


# The error `type` OpenAI's API gives each status.
ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
               404: "invalid_request_error",
               405: "invalid_request_error", 409: "invalid_request_error", 413: "invalid_request_error",
               415: "invalid_request_error", 422: "invalid_request_error",
               429: "rate_limit_error", 499: "invalid_request_error", 500: "server_error", 503: "server_error"}


class ApiError(Exception):
    """An error answered in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}` with `status`."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.headers = headers or {}  # e.g. Retry-After on a 429, WWW-Authenticate on a 401

    def body(self) -> dict:
        error = ErrorBody(message=self.message, type=ERROR_TYPES.get(self.status, "invalid_request_error"),
                          param=self.param, code=self.code)
        return ErrorResponse(error=error).model_dump()

"""Request and response bodies in the shapes OpenAI's Images API (and SGLang's extensions) use, and the error."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

# Caps a request cannot exceed whatever the model (`admission` adds the per-model ones: n, steps, pixels).
MAX_PROMPT_CHARS = 4000  # dall-e-3's limit; the text encoder reads 300 tokens anyway
MAX_N = 10  # OpenAI's
MAX_STEPS = 100
MAX_SCALE = 30.0  # guidance and PAG scales


class ImageGenerationRequest(BaseModel):
    """`POST /v1/images/generations`. Fields OpenAI defines that do not apply here (quality, style, background,
    moderation, ...) are accepted and ignored, as OpenAI-compatible servers do."""

    model_config = ConfigDict(extra="ignore")

    # OpenAI's fields
    prompt: str = Field(min_length=1, max_length=MAX_PROMPT_CHARS)
    model: str | None = None
    n: int = Field(1, ge=1, le=MAX_N)
    size: str | None = None  # "WxH" or "auto" (the model's native square)
    response_format: Literal["b64_json", "url"] | None = None  # None: b64_json (URLs live only in this process)
    output_format: Literal["png", "jpeg", "webp"] | None = None  # None: png
    user: str | None = Field(None, max_length=256)
    # SGLang's extensions
    seed: int | None = Field(None, ge=0, le=2**32 - 1)
    negative_prompt: str | None = Field(None, max_length=MAX_PROMPT_CHARS)
    num_inference_steps: int | None = Field(None, ge=1, le=MAX_STEPS)
    guidance_scale: float | None = Field(None, ge=0.0, le=MAX_SCALE)
    # ours
    pag_scale: float | None = Field(None, ge=0.0, le=MAX_SCALE)
    sampler: str | None = Field(None, max_length=32)
    lora: Any = None  # not served yet: a request that names one is refused rather than silently ignored


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


class ErrorBody(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorBody


# The error `type` OpenAI's API gives each status.
ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "invalid_request_error",
               405: "invalid_request_error", 413: "invalid_request_error", 422: "invalid_request_error",
               429: "rate_limit_error", 499: "invalid_request_error", 500: "server_error", 503: "server_error"}


class ApiError(Exception):
    """An error answered in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}` with `status`."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code

    def body(self) -> dict:
        error = ErrorBody(message=self.message, type=ERROR_TYPES.get(self.status, "invalid_request_error"),
                          param=self.param, code=self.code)
        return ErrorResponse(error=error).model_dump()

"""Request bodies of `POST /v1/videos`: JSON, or a multipart form (what OpenAI's client sends, the first frame as
the file `input_reference`), or a URL-encoded form. Read with the standard library (the body is already capped in
size by the guard).

Form fields are strings; bracketed names nest as OpenAI's client writes them: `input_reference[image_url]` into a
dict, `intrinsics[]` into a list. A field holding JSON (`camera`) is parsed.
"""

from __future__ import annotations

import email.parser
import email.policy
import json
import re
from typing import Any
from urllib.parse import parse_qsl

from .clips import Upload
from .schemas import ApiError

JSON_FIELDS = ("camera",)
FILE_FIELDS = ("input_reference",)
NESTED_RE = re.compile(r"([A-Za-z_][\w]*)\[([\w]*)\]")


def media_type(content_type: str) -> str:
    return content_type.split(";", 1)[0].strip().lower()


def json_object(content_type: str, body: bytes, *, accepted: str = "JSON (Content-Type: application/json)") \
        -> dict[str, Any]:
    """A JSON request body as its object; ApiError 415 for another content type (`accepted` says which are
    taken), 400 for an empty body, bytes that are not UTF-8, invalid JSON or JSON that is no object."""
    kind = media_type(content_type)
    if kind != "application/json" and (kind or body.strip()):
        raise ApiError(415, f"unsupported content type '{kind[:60] or 'none'}': send {accepted}",
                       code="unsupported_media_type")
    if not body.strip():
        raise ApiError(400, "the request body is empty: send a JSON object (with at least 'prompt')",
                       code="missing_required_parameter")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ApiError(400, f"the request body is not UTF-8 text (byte {exc.start})", code="invalid_encoding") \
            from None
    try:
        fields = json.loads(text)
    except json.JSONDecodeError:
        raise ApiError(400, "the request body is not valid JSON", code="invalid_json") from None
    if not isinstance(fields, dict):
        raise ApiError(400, "the request body must be a JSON object", code="invalid_value")
    return fields


def parse_body(content_type: str, body: bytes) -> tuple[dict[str, Any], Upload | None]:
    """(fields, the uploaded first frame or None); ApiError 400 / 415 for a body that cannot be read."""
    kind = media_type(content_type)
    if kind == "multipart/form-data":
        return _multipart(content_type, body)
    if kind == "application/x-www-form-urlencoded":
        try:
            pairs = parse_qsl(body.decode("utf-8"), keep_blank_values=True, max_num_fields=200)
        except (UnicodeDecodeError, ValueError):
            raise ApiError(400, "the form cannot be read", code="invalid_form") from None
        return _nest(pairs), None
    return json_object(content_type, body, accepted="JSON (application/json) or a form (multipart/form-data, "
                                                    "application/x-www-form-urlencoded)"), None


def _multipart(content_type: str, body: bytes) -> tuple[dict[str, Any], Upload | None]:
    head = f"MIME-Version: 1.0\r\nContent-Type: {content_type}\r\n\r\n".encode("latin-1", "replace")
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + body)
    if not message.is_multipart() or message.defects:
        raise ApiError(400, "the multipart form cannot be read", code="invalid_form")
    pairs, upload = [], None
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if not name:
            continue
        payload = part.get_payload(decode=True) or b""
        filename = part.get_filename()
        if name in FILE_FIELDS and (filename is not None or not _is_text(payload)):
            upload = Upload(filename=filename, data=payload)
            continue
        if filename is not None:
            raise ApiError(400, f"unexpected file in the form field '{name[:40]}'", param=name[:40],
                           code="invalid_form")
        try:
            pairs.append((name, payload.decode("utf-8")))
        except UnicodeDecodeError:
            raise ApiError(400, f"the form field '{name[:40]}' is not UTF-8 text", param=name[:40],
                           code="invalid_form") from None
    return _nest(pairs), upload


def _is_text(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _nest(pairs: list[tuple[str, str]]) -> dict[str, Any]:
    """Form pairs as the JSON body they stand for."""
    fields: dict[str, Any] = {}
    for name, value in pairs:
        nested = NESTED_RE.fullmatch(name)
        if nested and nested.group(2) == "":  # name[] -> a list
            fields.setdefault(nested.group(1), [])
            if isinstance(fields[nested.group(1)], list):
                fields[nested.group(1)].append(value)
        elif nested:  # name[key] -> a dict
            fields.setdefault(nested.group(1), {})
            if isinstance(fields[nested.group(1)], dict):
                fields[nested.group(1)][nested.group(2)] = value
        else:
            fields[name] = value
    for name in JSON_FIELDS:
        if isinstance(fields.get(name), str):
            try:
                fields[name] = json.loads(fields[name])
            except json.JSONDecodeError:
                raise ApiError(400, f"the form field '{name}' is not valid JSON", param=name,
                               code="invalid_value") from None
    return {k: v for k, v in fields.items() if v != ""}

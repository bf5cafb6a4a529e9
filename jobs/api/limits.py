"""Request bodies: media type and size checked before anything is parsed.

    data = limits.json_body(request)                      # JOB_PAYLOAD_MAX_BYTES
    data = limits.json_body(request, limit=other_limit)
    limits.require_media_type(request, "application/x-ndjson")
    limits.check_content_length(request, limit)           # streaming views

A declared ``Content-Length`` over the limit is refused (413 ``payload_too_large``)
without reading a byte. A chunked body (``Transfer-Encoding: chunked``, no length;
Django itself would see it as empty) is read from the WSGI input, at most
``limit + 1`` bytes, so a client cannot make the server buffer more than the limit.
A body that is not ``application/json`` (or ``application/*+json``) answers 415
``unsupported_media_type``; malformed JSON, invalid UTF-8, ``NaN`` / ``Infinity``
answer 400 ``invalid_request``. An empty body is ``{}``.

Views read bodies only through these helpers, never through ``request.data`` (DRF's
parsers would read the whole body first and ignore a chunked one).
"""

import json
from typing import Any

from django.conf import settings
from rest_framework.request import Request

from .errors import invalid_request, payload_too_large, unsupported_media_type

READ_CHUNK = 64 * 1024


def media_type(request: Request) -> str:
    return request.META.get("CONTENT_TYPE", "").split(";")[0].strip().lower()


def require_media_type(request: Request, *accepted: str) -> None:
    if media_type(request) not in accepted:
        raise unsupported_media_type(media_type(request), expected=" or ".join(accepted))


def is_chunked(request: Request) -> bool:
    return "chunked" in request.META.get("HTTP_TRANSFER_ENCODING", "").lower()


def content_length(request: Request) -> int | None:
    raw = request.META.get("CONTENT_LENGTH") or ""
    if not raw:
        return None
    try:
        value = int(raw)
    except ValueError:
        raise invalid_request("Content-Length is not a number") from None
    if value < 0:
        raise invalid_request("Content-Length is negative")
    return value


def check_content_length(request: Request, limit: int) -> None:
    length = content_length(request)
    if length is not None and length > limit:
        raise payload_too_large(limit)


def read_body(request: Request, limit: int) -> bytes:
    """The whole body, refused with 413 past ``limit`` bytes (declared or streamed)."""
    length = content_length(request)
    if length is not None and not is_chunked(request):
        if length > limit:
            raise payload_too_large(limit)
        # Django's stream stops at Content-Length; read() bypasses DATA_UPLOAD_MAX_MEMORY_SIZE,
        # which would otherwise cap the body below a larger configured limit.
        return request._request.read(length) if length else b""
    if not is_chunked(request):
        return b""
    stream = request.META.get("wsgi.input")
    if stream is None:
        return b""
    chunks: list[bytes] = []
    size = 0
    while size <= limit:
        chunk = stream.read(min(READ_CHUNK, limit + 1 - size))
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    if size > limit:
        raise payload_too_large(limit)
    return b"".join(chunks)


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def is_json_media_type(value: str) -> bool:
    return value == "application/json" or (value.startswith("application/") and value.endswith("+json"))


def json_body(request: Request, limit: int | None = None) -> Any:
    """The parsed JSON body; 415 for another media type, 413 past the limit, 400 if malformed."""
    limit = settings.JOB_PAYLOAD_MAX_BYTES if limit is None else limit
    declared = media_type(request)
    if declared and not is_json_media_type(declared):
        raise unsupported_media_type(declared)
    check_content_length(request, limit)
    raw = read_body(request, limit)
    if not raw.strip():
        return {}
    if not declared:
        raise unsupported_media_type(declared)
    try:
        return json.loads(raw.decode("utf-8"), parse_constant=_refuse_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise invalid_request(f"malformed JSON: {exc}") from None

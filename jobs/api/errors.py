"""One error shape for the whole API: ``{"error": {"code", "message", ...}}``.

Views raise ``ApiError`` (or a helper below) and never build error responses by hand:

    raise not_found("job")
    raise invalid_state("job is succeeded")
    raise ApiError(409, "batch_closed", "batch is cancelled")
    raise ApiError(400, "invalid_item", "line 3 is not JSON", line=3)

``exception_handler`` (used by every view deriving from ``jobs.api.views.ApiView``)
turns ApiError, DRF's own exceptions (validation → 400 ``invalid_request`` with a
``fields`` object, 401, 404, 405, 415, 429 ...), the engine's exceptions
(``UnknownTask`` → 400 ``unknown_task``, ``InvalidInput`` → 400, ``IdempotencyConflict``
→ 409, ``InvalidState`` → 409, ``DoesNotExist`` → 404) and anything unexpected (500,
logged with its traceback, which never reaches the client) into that shape.

``json_404`` / ``json_500`` are the project's ``handler404`` / ``handler500``, so URLs
that match no view and errors outside DRF answer in the same shape, never in HTML.
"""

import logging
from typing import Any

from django.core.exceptions import ObjectDoesNotExist, PermissionDenied
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.views import defaults
from django.views.decorators.csrf import csrf_exempt
from drf_spectacular.utils import OpenApiResponse
from rest_framework import exceptions, serializers
from rest_framework.response import Response
from rest_framework.views import set_rollback

from jobs.lifecycle import IdempotencyConflict, InvalidInput, InvalidState
from jobs.registry import UnknownTask

logger = logging.getLogger("jobs.api")


class ApiError(Exception):
    """An error answer. ``extra`` keys are added next to code and message."""

    def __init__(
        self, status: int, code: str, message: str, *, headers: dict[str, str] | None = None, **extra: Any
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}
        self.extra = extra

    def body(self) -> dict[str, Any]:
        return error_body(self.code, self.message, **self.extra)


def error_body(code: str, message: str, **extra: Any) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, **extra}}


def not_found(what: str = "object") -> ApiError:
    return ApiError(404, "not_found", f"{what} not found")


def invalid_request(message: str, **extra: Any) -> ApiError:
    return ApiError(400, "invalid_request", message, **extra)


def invalid_state(message: str) -> ApiError:
    return ApiError(409, "invalid_state", message)


def unknown_task(message: str) -> ApiError:
    return ApiError(400, "unknown_task", message)


def idempotency_conflict(message: str) -> ApiError:
    return ApiError(409, "idempotency_conflict", message)


def payload_too_large(limit: int) -> ApiError:
    return ApiError(413, "payload_too_large", f"request body is larger than {limit} bytes", limit=limit)


def unsupported_media_type(media_type: str, expected: str = "application/json") -> ApiError:
    return ApiError(
        415, "unsupported_media_type", f"content type {media_type or '(none)'!r} is not supported; send {expected}"
    )


def rate_limited(retry_after: int) -> ApiError:
    return ApiError(
        429, "rate_limited", f"too many create calls; retry in {retry_after} s",
        headers={"Retry-After": str(retry_after)}, retry_after=retry_after,
    )


# DRF exception class → our code (status comes from the exception).
_DRF_CODES: list[tuple[type[exceptions.APIException], str]] = [
    (exceptions.NotAuthenticated, "unauthenticated"),
    (exceptions.AuthenticationFailed, "unauthenticated"),
    (exceptions.PermissionDenied, "permission_denied"),
    (exceptions.NotFound, "not_found"),
    (exceptions.MethodNotAllowed, "method_not_allowed"),
    (exceptions.NotAcceptable, "not_acceptable"),
    (exceptions.UnsupportedMediaType, "unsupported_media_type"),
    (exceptions.Throttled, "rate_limited"),
    (exceptions.ParseError, "invalid_request"),
]


def _from_drf(exc: exceptions.APIException) -> ApiError:
    headers = {}
    if getattr(exc, "auth_header", None):
        headers["WWW-Authenticate"] = exc.auth_header  # type: ignore[attr-defined]
    if isinstance(exc, exceptions.ValidationError):
        detail = exc.detail
        fields = detail if isinstance(detail, dict) else {"non_field_errors": detail}
        return ApiError(400, "invalid_request", "the request is invalid; see fields", headers=headers, fields=fields)
    code = next((c for cls, c in _DRF_CODES if isinstance(exc, cls)), str(exc.default_code))
    if isinstance(exc, exceptions.Throttled) and exc.wait is not None:
        headers["Retry-After"] = str(int(exc.wait) + 1)
    message = str(exc.detail)
    if isinstance(exc, exceptions.NotAuthenticated):
        message = "an API key is required: Authorization: Bearer <key>"
    return ApiError(exc.status_code, code, message, headers=headers)


def to_api_error(exc: Exception) -> ApiError | None:
    """The API answer for a known exception; None for an unexpected one (a 500)."""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, exceptions.APIException):
        return _from_drf(exc)
    if isinstance(exc, UnknownTask):
        return unknown_task(str(exc.args[0]) if exc.args else "unknown task")
    if isinstance(exc, InvalidInput):
        return invalid_request(str(exc))
    if isinstance(exc, IdempotencyConflict):
        return idempotency_conflict(str(exc))
    if isinstance(exc, InvalidState):
        return invalid_state(str(exc))
    if isinstance(exc, (Http404, ObjectDoesNotExist)):
        return not_found()
    if isinstance(exc, PermissionDenied):
        return ApiError(403, "permission_denied", "permission denied")
    return None


def server_error() -> ApiError:
    return ApiError(500, "server_error", "internal server error; the incident was logged")


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response:
    """DRF's EXCEPTION_HANDLER: everything a view raises becomes the common shape."""
    error = to_api_error(exc)
    if error is None:
        request = context.get("request")
        logger.error(
            "unhandled API error on %s %s", getattr(request, "method", "?"), getattr(request, "path", "?"),
            exc_info=exc,
        )
        error = server_error()
    set_rollback()
    return Response(error.body(), status=error.status, headers=error.headers)


def error_json_response(error: ApiError) -> JsonResponse:
    response = JsonResponse(error.body(), status=error.status)
    for name, value in error.headers.items():
        response[name] = value
    return response


@csrf_exempt  # a POST to an unknown path is a 404, not a CSRF 403 in HTML
def json_404(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    """handler404, and the catch-all for unknown paths under /api/ (JSON even with DEBUG)."""
    return error_json_response(ApiError(404, "not_found", f"no such resource: {request.path}"))


def json_500(request: HttpRequest) -> HttpResponse:
    return error_json_response(server_error())


# --- OpenAPI: the error shape, for extend_schema(responses=...) -----------------------


class ErrorDetailSerializer(serializers.Serializer):
    code = serializers.CharField(help_text="snake_case, stable: branch on this")
    message = serializers.CharField(help_text="a sentence for humans")


class ErrorSerializer(serializers.Serializer):
    error = ErrorDetailSerializer()


_DESCRIPTIONS = {
    400: "`invalid_request` (with `fields`), `unknown_task`, or another 400 code",
    401: "`unauthenticated`: no key, a wrong key or a revoked key",
    404: "`not_found`: unknown id, or another tenant's object",
    405: "`method_not_allowed`",
    409: "`idempotency_conflict` or `invalid_state`",
    413: "`payload_too_large`",
    415: "`unsupported_media_type`",
    429: "`rate_limited`, with a Retry-After header",
    500: "`server_error`",
}


def error_responses(*statuses: int) -> dict[int, OpenApiResponse]:
    """``responses`` entries for extend_schema: each status answers the error shape."""
    return {s: OpenApiResponse(ErrorSerializer, description=_DESCRIPTIONS.get(s, "error")) for s in statuses}



def _is_api_path(request: HttpRequest) -> bool:
    return request.path.startswith(("/api/", "/health", "/metrics"))


def handler404(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    """JSON for API, health and metrics paths; Django's page for the admin."""
    if _is_api_path(request):
        return json_404(request, exception)
    return defaults.page_not_found(request, exception or Http404())


def handler500(request: HttpRequest) -> HttpResponse:
    if _is_api_path(request):
        return json_500(request)
    return defaults.server_error(request)

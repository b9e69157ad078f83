"""One table from error code to HTTP status, and one error envelope for the whole API.

The envelope carries both client families at once: Jina clients read `detail` / `code` /
`request_id` (ErrorResponse in the Jina OpenAPI spec); the OpenAI SDK reads `error{}`.
"""

from __future__ import annotations

import logging
from enum import StrEnum
from typing import Any

from django.core.exceptions import PermissionDenied, RequestDataTooBig
from django.db import DatabaseError
from django.http import Http404, HttpRequest, HttpResponse
from django.template.loader import render_to_string
from django_ratelimit.exceptions import Ratelimited
from rest_framework import exceptions as drf_exceptions

from embeddings_site.json import json_response
from embeddings_site.log_context import log_context_update

logger = logging.getLogger(__name__)


class ErrorCode(StrEnum):
    INPUT_MODEL_NOT_FOUND = "INPUT_MODEL_NOT_FOUND"
    INPUT_INVALID_JSON = "INPUT_INVALID_JSON"
    INPUT_VALIDATION_ERROR = "INPUT_VALIDATION_ERROR"
    INPUT_TOO_MANY_ITEMS = "INPUT_TOO_MANY_ITEMS"
    INPUT_EMPTY = "INPUT_EMPTY"
    INPUT_TOKEN_LIMIT_EXCEEDED = "INPUT_TOKEN_LIMIT_EXCEEDED"
    INPUT_UNSUPPORTED_TASK = "INPUT_UNSUPPORTED_TASK"
    INPUT_INVALID_IMAGE = "INPUT_INVALID_IMAGE"
    INPUT_UNSUPPORTED_MODALITY = "INPUT_UNSUPPORTED_MODALITY"
    INPUT_BODY_TOO_LARGE = "INPUT_BODY_TOO_LARGE"
    INPUT_UNSUPPORTED_MEDIA_TYPE = "INPUT_UNSUPPORTED_MEDIA_TYPE"
    AUTH_MISSING_API_KEY = "AUTH_MISSING_API_KEY"
    AUTH_INVALID_API_KEY = "AUTH_INVALID_API_KEY"
    AUTH_INVALID_FORMAT = "AUTH_INVALID_FORMAT"
    AUTH_KEY_EXPIRED = "AUTH_KEY_EXPIRED"
    AUTH_MODEL_NOT_ALLOWED = "AUTH_MODEL_NOT_ALLOWED"
    AUTHZ_INSUFFICIENT_BALANCE = "AUTHZ_INSUFFICIENT_BALANCE"
    AUTHZ_FORBIDDEN = "AUTHZ_FORBIDDEN"
    RESOURCE_NOT_FOUND = "RESOURCE_NOT_FOUND"
    RESOURCE_CONFLICT = "RESOURCE_CONFLICT"
    RESOURCE_EXPIRED = "RESOURCE_EXPIRED"
    METHOD_NOT_ALLOWED = "METHOD_NOT_ALLOWED"
    RATE_REQUEST_LIMIT_EXCEEDED = "RATE_REQUEST_LIMIT_EXCEEDED"
    RATE_TOKEN_LIMIT_EXCEEDED = "RATE_TOKEN_LIMIT_EXCEEDED"
    RATE_CONCURRENCY_LIMIT_EXCEEDED = "RATE_CONCURRENCY_LIMIT_EXCEEDED"
    RATE_IP_LIMIT_EXCEEDED = "RATE_IP_LIMIT_EXCEEDED"
    RATE_BATCH_QUOTA_EXCEEDED = "RATE_BATCH_QUOTA_EXCEEDED"
    RATE_FILE_STORAGE_QUOTA_EXCEEDED = "RATE_FILE_STORAGE_QUOTA_EXCEEDED"
    INTERNAL_ERROR = "INTERNAL_ERROR"
    SERVICE_UNAVAILABLE = "SERVICE_UNAVAILABLE"
    SERVICE_TIMEOUT = "SERVICE_TIMEOUT"
    SERVICE_OVERLOADED = "SERVICE_OVERLOADED"


# code -> (HTTP status, OpenAI error type). Statuses follow the Jina OpenAPI error table.
ERROR_TABLE: dict[ErrorCode, tuple[int, str]] = {
    ErrorCode.INPUT_MODEL_NOT_FOUND: (400, "invalid_request_error"),
    ErrorCode.INPUT_INVALID_JSON: (400, "invalid_request_error"),
    ErrorCode.INPUT_VALIDATION_ERROR: (400, "invalid_request_error"),
    ErrorCode.INPUT_TOO_MANY_ITEMS: (400, "invalid_request_error"),
    ErrorCode.INPUT_EMPTY: (400, "invalid_request_error"),
    ErrorCode.INPUT_TOKEN_LIMIT_EXCEEDED: (400, "invalid_request_error"),
    ErrorCode.INPUT_UNSUPPORTED_TASK: (400, "invalid_request_error"),
    ErrorCode.INPUT_INVALID_IMAGE: (400, "invalid_request_error"),
    ErrorCode.INPUT_UNSUPPORTED_MODALITY: (400, "invalid_request_error"),
    ErrorCode.INPUT_BODY_TOO_LARGE: (413, "invalid_request_error"),
    ErrorCode.INPUT_UNSUPPORTED_MEDIA_TYPE: (415, "invalid_request_error"),
    ErrorCode.AUTH_MISSING_API_KEY: (401, "invalid_request_error"),
    ErrorCode.AUTH_INVALID_API_KEY: (401, "invalid_request_error"),
    ErrorCode.AUTH_INVALID_FORMAT: (401, "invalid_request_error"),
    ErrorCode.AUTH_KEY_EXPIRED: (401, "invalid_request_error"),
    ErrorCode.AUTH_MODEL_NOT_ALLOWED: (403, "permission_error"),
    ErrorCode.AUTHZ_INSUFFICIENT_BALANCE: (403, "insufficient_quota"),
    ErrorCode.AUTHZ_FORBIDDEN: (403, "permission_error"),
    ErrorCode.RESOURCE_NOT_FOUND: (404, "invalid_request_error"),
    ErrorCode.RESOURCE_CONFLICT: (409, "invalid_request_error"),
    ErrorCode.RESOURCE_EXPIRED: (410, "invalid_request_error"),
    ErrorCode.METHOD_NOT_ALLOWED: (405, "invalid_request_error"),
    ErrorCode.RATE_REQUEST_LIMIT_EXCEEDED: (429, "rate_limit_error"),
    ErrorCode.RATE_TOKEN_LIMIT_EXCEEDED: (429, "rate_limit_error"),
    ErrorCode.RATE_CONCURRENCY_LIMIT_EXCEEDED: (429, "rate_limit_error"),
    ErrorCode.RATE_IP_LIMIT_EXCEEDED: (429, "rate_limit_error"),
    ErrorCode.RATE_BATCH_QUOTA_EXCEEDED: (429, "rate_limit_error"),
    ErrorCode.RATE_FILE_STORAGE_QUOTA_EXCEEDED: (429, "rate_limit_error"),
    ErrorCode.INTERNAL_ERROR: (500, "server_error"),
    ErrorCode.SERVICE_UNAVAILABLE: (503, "server_error"),
    ErrorCode.SERVICE_TIMEOUT: (504, "server_error"),
    ErrorCode.SERVICE_OVERLOADED: (503, "server_error"),
}


class ApiError(Exception):
    """An error the API answers with its envelope; status and type come from ERROR_TABLE."""

    def __init__(
        self,
        code: ErrorCode,
        message: str,
        *,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.param = param
        self.headers = headers or {}

    @property
    def status(self) -> int:
        return ERROR_TABLE[self.code][0]

    @property
    def type(self) -> str:
        return ERROR_TABLE[self.code][1]


def error_body(error: ApiError, request_id: str) -> dict[str, Any]:
    """The one error envelope: Jina's fields and OpenAI's `error` object side by side."""
    return {
        "detail": error.message,
        "code": error.code.value,
        "request_id": request_id,
        "error": {
            "message": error.message,
            "type": error.type,
            "param": error.param,
            "code": error.code.value,
        },
    }


def _wants_page(request: HttpRequest) -> bool:
    """A person's browser on a page (not the API): answer with an HTML error page."""
    if request.path.startswith(("/v1/", "/internal/", "/api/")) or request.path == "/v1":
        return False
    return "text/html" in request.headers.get("Accept", "")


def error_response(request: HttpRequest, error: ApiError) -> HttpResponse:
    request_id = getattr(request, "request_id", "")
    log_context_update(code=error.code.value)
    if _wants_page(request):
        html = render_to_string(
            "error.html", {"error": error, "request_id": request_id}, request=request
        )
        page = HttpResponse(html, status=error.status)
        for name, value in error.headers.items():
            page[name] = value
        return page
    response = json_response(error_body(error, request_id), status=error.status)
    for name, value in error.headers.items():
        response[name] = value
    if error.status == 401:
        response["WWW-Authenticate"] = 'Bearer realm="api"'
    return response


def _first_validation_error(detail: Any, path: tuple[str, ...] = ()) -> tuple[str, str, str]:
    """The first error in DRF's nested ValidationError detail, as (param, message, code)."""
    if isinstance(detail, dict) and detail:
        key, value = next(iter(detail.items()))
        return _first_validation_error(
            value, path if key == "non_field_errors" else (*path, str(key))
        )
    if isinstance(detail, list) and detail:
        return _first_validation_error(detail[0], path)
    return ".".join(path), str(detail), str(getattr(detail, "code", "invalid"))


def api_error_from_exception(exc: BaseException) -> ApiError | None:
    """Map any exception the API knows how to answer to an ApiError; None for real bugs."""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, RequestDataTooBig):
        return ApiError(ErrorCode.INPUT_BODY_TOO_LARGE, "Request body is too large.")
    if isinstance(exc, drf_exceptions.ValidationError):
        param, message, code = _first_validation_error(exc.detail)
        error_code = (
            ErrorCode(code) if code in ErrorCode.__members__ else ErrorCode.INPUT_VALIDATION_ERROR
        )
        text = f"{param}: {message}" if param else message
        return ApiError(error_code, text, param=param or None)
    if isinstance(exc, drf_exceptions.ParseError):
        return ApiError(ErrorCode.INPUT_INVALID_JSON, str(exc.detail))
    if isinstance(exc, drf_exceptions.UnsupportedMediaType):
        return ApiError(
            ErrorCode.INPUT_UNSUPPORTED_MEDIA_TYPE,
            f"{exc.detail} Send the body as JSON with 'Content-Type: application/json'.",
        )
    if isinstance(exc, drf_exceptions.MethodNotAllowed):
        return ApiError(ErrorCode.METHOD_NOT_ALLOWED, str(exc.detail))
    if isinstance(exc, Http404 | drf_exceptions.NotFound):
        return ApiError(ErrorCode.RESOURCE_NOT_FOUND, "Resource not found.")
    if isinstance(exc, drf_exceptions.NotAuthenticated | drf_exceptions.AuthenticationFailed):
        return ApiError(ErrorCode.AUTH_MISSING_API_KEY, str(exc.detail))
    if isinstance(exc, Ratelimited):
        return ApiError(
            ErrorCode.RATE_IP_LIMIT_EXCEEDED,
            "IP rate limit exceeded. Too many requests from this IP address. Reduce request frequency.",
            headers={"Retry-After": "60"},
        )
    if isinstance(exc, PermissionDenied | drf_exceptions.PermissionDenied):
        return ApiError(ErrorCode.AUTHZ_FORBIDDEN, "You do not have permission to do this.")
    if isinstance(exc, drf_exceptions.Throttled):
        return ApiError(ErrorCode.RATE_IP_LIMIT_EXCEEDED, str(exc.detail))
    if isinstance(exc, drf_exceptions.APIException):
        return ApiError(ErrorCode.INPUT_VALIDATION_ERROR, str(exc.detail))
    if isinstance(exc, DatabaseError):
        # A dropped connection or a timeout: the next try gets a fresh connection.
        logger.warning("Database error answered 503: %s", exc)
        return database_unavailable()
    return None


def database_unavailable() -> ApiError:
    """The coded answer to a database fault (nothing was charged)."""
    return ApiError(
        ErrorCode.SERVICE_UNAVAILABLE,
        "The database is unavailable right now; nothing was charged. Please retry with backoff.",
        headers={"Retry-After": "1"},
    )


def api_exception_handler(exc: Exception, context: dict[str, Any]) -> HttpResponse | None:
    """DRF's EXCEPTION_HANDLER: every known error becomes the envelope; bugs reach handler500."""
    error = api_error_from_exception(exc)
    if error is None:
        return None
    return error_response(context["request"], error)


# Django-level handlers (urls.py), so that even a wrong URL or a crash answers with the envelope.
def handler400(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    error = api_error_from_exception(exception) if exception else None
    return error_response(
        request, error or ApiError(ErrorCode.INPUT_VALIDATION_ERROR, "Bad request.")
    )


def handler403(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    error = api_error_from_exception(exception) if exception else None
    return error_response(request, error or ApiError(ErrorCode.AUTHZ_FORBIDDEN, "Forbidden."))


def handler404(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    return error_response(
        request, ApiError(ErrorCode.RESOURCE_NOT_FOUND, f"No route for {request.path}.")
    )


def handler500(request: HttpRequest) -> HttpResponse:
    return error_response(
        request,
        ApiError(
            ErrorCode.INTERNAL_ERROR,
            "An unexpected error occurred. If this persists, contact support with the request_id.",
        ),
    )

"""Request id on every response, and the body size cap checked before a byte is read."""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable

from django.conf import settings
from django.http import HttpRequest, HttpResponse

from embeddings_site.errors import ApiError, ErrorCode, error_response

_CLIENT_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


class RequestIdMiddleware:
    """Tags each request with an id (the client's X-Request-ID when sane) and echoes it back."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        incoming = request.headers.get("X-Request-ID", "")
        request_id = incoming if _CLIENT_REQUEST_ID.match(incoming) else secrets.token_hex(8)
        request.request_id = request_id  # type: ignore[attr-defined]
        response = self.get_response(request)
        response["X-Request-ID"] = request_id
        return response


class RequestBodyLimitMiddleware:
    """Refuses a declared body over MAX_REQUEST_BYTES with 413 without reading it."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        declared = request.META.get("CONTENT_LENGTH") or "0"
        try:
            length = int(declared)
        except ValueError:
            length = 0
        if length > settings.MAX_REQUEST_BYTES:
            limit_mb = settings.MAX_REQUEST_BYTES / (1024 * 1024)
            return error_response(
                request,
                ApiError(
                    ErrorCode.INPUT_BODY_TOO_LARGE,
                    f"Request body of {length} bytes exceeds the {limit_mb:g} MiB limit.",
                ),
            )
        return self.get_response(request)

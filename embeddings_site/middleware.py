"""Request id and arrival time on every request (with its log scope, its server span and, for
the API, one summary record), the body size cap checked before a byte is read, and database
faults answered 503 instead of 500."""

from __future__ import annotations

import logging
import re
import secrets
import time
from collections.abc import Callable
from typing import Any

from django.conf import settings
from django.db import DatabaseError
from django.http import HttpRequest, HttpResponse
from opentelemetry.trace import SpanKind

from embeddings_site import deadlines
from embeddings_site.errors import ApiError, ErrorCode, database_unavailable, error_response
from embeddings_site.log_context import log_context, log_scope
from embeddings_site.tracing import span, span_failed, span_set_raw, tracing_enabled

_CLIENT_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
# The public API, whose requests each get one summary record (not probes or worker heartbeats).
_SUMMARY_PREFIXES = ("/v1/", "/v2/")
requests_logger = logging.getLogger("embeddings_site.requests")


def request_arrival(request: HttpRequest) -> float:
    """When the request arrived, on the deadline clock: now, or earlier by the time a trusted
    proxy says it queued (X-Request-Start: t=<epoch seconds, ms or µs>, as nginx or Heroku set
    it) when TRUST_X_REQUEST_START is on. Never in the future, never more than a deadline ago."""
    now = deadlines.clock()
    if not settings.TRUST_X_REQUEST_START:
        return now
    raw = request.headers.get("X-Request-Start", "").strip().removeprefix("t=")
    try:
        stamp = float(raw)
    except ValueError:
        return now
    while stamp > 1e11:  # milliseconds or microseconds since the epoch
        stamp /= 1000
    queued = min(max(time.time() - stamp, 0.0), float(settings.REQUEST_TIMEOUT_SECONDS))
    return now - queued


class RequestIdMiddleware:
    """Tags each request with an id (the client's X-Request-ID when sane) and echoes it back."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        # The request's deadline and its recorded latency count from its arrival.
        arrived = request.arrived = request_arrival(request)  # type: ignore[attr-defined]
        incoming = request.headers.get("X-Request-ID", "")
        request_id = incoming if _CLIENT_REQUEST_ID.match(incoming) else secrets.token_hex(8)
        request.request_id = request_id  # type: ignore[attr-defined]
        # Every record of this request carries its id (embeddings_site.log_context); the
        # views add the key prefix, endpoint and model as they learn them. A page's path is
        # left out of records and spans: some hold one-time tokens (password reset, e-mail
        # verification links); its span is named by its URL pattern instead.
        api = request.path.startswith(tuple(settings.API_PATH_PREFIXES))
        with (
            log_scope(request_id=request_id, path=request.path if api else None) as fields,
            span(
                f"{request.method} {request.path}" if api else str(request.method),
                kind=SpanKind.SERVER,
                carrier=_trace_headers(request) if tracing_enabled() else None,
            ) as server_span,
        ):
            response = self.get_response(request)
            response["X-Request-ID"] = request_id
            fields["status"] = response.status_code
            fields["latency_ms"] = round((deadlines.clock() - arrived) * 1000, 3)
            if server_span is not None:
                span_set_raw(server_span, _span_attributes(request, response.status_code, api))
                if not api and request.resolver_match is not None:
                    server_span.update_name(f"{request.method} /{request.resolver_match.route}")
                if response.status_code >= 500:
                    span_failed(server_span, str(fields.get("code") or response.status_code))
            if settings.LOG_REQUESTS and request.path.startswith(_SUMMARY_PREFIXES):
                requests_logger.info("%s %s %s", request.method, request.path, response.status_code)
        return response


def _trace_headers(request: HttpRequest) -> dict[str, str]:
    """A caller's W3C trace headers, which the request's span continues."""
    carrier = {}
    for name in ("traceparent", "tracestate"):
        value = request.headers.get(name)
        if value:
            carrier[name] = value
    return carrier


def _span_attributes(request: HttpRequest, status: int, api: bool) -> dict[str, Any]:
    fields = log_context()
    attributes: dict[str, Any] = {
        "http.request.method": request.method,
        "http.response.status_code": status,
    }
    if api:
        attributes["url.path"] = request.path
    elif request.resolver_match is not None:
        attributes["http.route"] = f"/{request.resolver_match.route}"
    for name in ("request_id", "key_prefix", "endpoint", "model", "tokens", "code"):
        if fields.get(name) not in (None, ""):
            attributes[f"embeddings.{name}"] = fields[name]
    return attributes


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


class DatabaseFaultMiddleware:
    """A database fault outside the API views (pages, probes) answers a coded 503, not a 500.

    Django has already marked a broken connection unusable; the next request opens a new one.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        return self.get_response(request)

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        if isinstance(exception, DatabaseError):
            return error_response(request, database_unavailable())
        return None

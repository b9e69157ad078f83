"""Prometheus metrics (prometheus-client) and the /metrics endpoint, which is not public:
it answers a bearer METRICS_TOKEN, or a signed-in staff user, and 404 to everyone else.

Every metered request's samples carry its `endpoint` (the API view's: embeddings, rerank,
classify, train, tokenize), so one operation's traffic, tokens, errors and latency can be
watched apart from the others'.

With several gunicorn workers, set PROMETHEUS_MULTIPROC_DIR to an empty directory: every
process writes its samples there and /metrics adds them up.
"""

from __future__ import annotations

import hmac
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager

from django.conf import settings
from django.http import Http404, HttpRequest, HttpResponse
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)

LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)

REQUESTS = Counter(
    "embeddings_requests", "Metered API requests answered", ["endpoint", "model", "status"]
)
ERRORS = Counter(
    "embeddings_errors",
    "Metered API requests answered with an error",
    ["endpoint", "model", "code"],
)
TOKENS = Counter("embeddings_tokens", "Tokens charged", ["endpoint", "model", "kind"])
LATENCY = Histogram(
    "embeddings_request_seconds",
    "Time from admission to answer",
    ["endpoint", "model"],
    buckets=LATENCY_BUCKETS,
)
BATCH_ITEMS = Histogram(
    "embeddings_batch_items",
    "Inputs per forward pass of an in-process model (dynamic batching)",
    ["model"],
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024),
)
LEDGER_GROUP_WRITES = Histogram(
    "embeddings_ledger_group_writes",
    "Debits and served marks per ledger transaction (group commit)",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128),
)
WORKER_REQUESTS = Counter(
    "embeddings_worker_requests", "Calls to vLLM workers", ["model", "worker", "outcome"]
)
WORKER_SECONDS = Histogram(
    "embeddings_worker_seconds",
    "Time a vLLM worker took to answer",
    ["model", "worker"],
    buckets=LATENCY_BUCKETS,
)


def request_observe(
    *,
    endpoint: str,
    model: str,
    status: int,
    code: str,
    text_tokens: int,
    image_tokens: int,
    seconds: float,
) -> None:
    """One answered metered request."""
    model = model or "unknown"
    REQUESTS.labels(endpoint, model, str(status)).inc()
    LATENCY.labels(endpoint, model).observe(seconds)
    if code:
        ERRORS.labels(endpoint, model, code).inc()
    else:
        TOKENS.labels(endpoint, model, "text").inc(text_tokens)
        if image_tokens:
            TOKENS.labels(endpoint, model, "image").inc(image_tokens)


@contextmanager
def worker_call(*, model: str, worker: str) -> Iterator[None]:
    """Time one call to a worker and count its outcome."""
    started = time.perf_counter()
    try:
        yield
    except Exception:
        WORKER_REQUESTS.labels(model, worker, "error").inc()
        raise
    WORKER_REQUESTS.labels(model, worker, "ok").inc()
    WORKER_SECONDS.labels(model, worker).observe(time.perf_counter() - started)


def bearer_token_matches(header: str, expected: str) -> bool:
    """`Authorization: Bearer <expected>`, compared in constant time; False when nothing is expected.

    Compared as UTF-8 bytes: `hmac.compare_digest` raises TypeError on a str holding non-ASCII
    characters, which any caller can put in the header.
    """
    scheme, _, token = header.partition(" ")
    if not expected or scheme.lower() != "bearer":
        return False
    presented = token.strip().encode("utf-8", "surrogatepass")
    return hmac.compare_digest(presented, expected.encode("utf-8", "surrogatepass"))


def metrics_caller_allowed(request: HttpRequest) -> bool:
    """The caller presents METRICS_TOKEN as a bearer, or is a signed-in staff user."""
    if bearer_token_matches(request.headers.get("Authorization", ""), settings.METRICS_TOKEN):
        return True
    user = getattr(request, "user", None)
    return bool(user is not None and user.is_authenticated and user.is_staff)


def metrics_view(request: HttpRequest) -> HttpResponse:
    """GET /metrics in Prometheus' text format, for the token or staff; 404 otherwise."""
    if not metrics_caller_allowed(request):
        raise Http404
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return HttpResponse(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)
    return HttpResponse(generate_latest(REGISTRY), content_type=CONTENT_TYPE_LATEST)

"""OpenTelemetry traces: the one module that speaks to it (the API here, the SDK and the OTLP
exporter only in `tracing_start`).

With OTEL_EXPORTER_OTLP_ENDPOINT set, each process (a gunicorn worker, a Celery worker, a
manage.py command) installs an SDK provider once at start-up and exports its spans over
OTLP/HTTP in batches from a background thread; the SDK reads the other standard variables
(OTEL_TRACES_SAMPLER, OTEL_EXPORTER_OTLP_HEADERS, OTEL_RESOURCE_ATTRIBUTES) itself. Without
it nothing is installed and `span()` costs one global read: no span objects, no context
switches, no propagation headers.

Spans: the request (SERVER, continuing a caller's `traceparent`), the lifecycle's steps
(authenticate, preadmit, count, debit, infer, settle), each call to a vLLM worker (CLIENT, with
`traceparent` sent along, as vLLM and TEI read it), and a batch job's run and chunks.
Attributes are named `embeddings.*` (request_id, key_prefix, endpoint, model, tokens, code)
beside the standard `http.*`/`url.*`/`server.*` ones.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Mapping, MutableMapping
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any

from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

logger = logging.getLogger(__name__)

# None while tracing is off: the hot path checks this and nothing else.
_tracer: trace.Tracer | None = None
_provider: Any = None
_started_pid = 0


def tracing_start(*, role: str) -> bool:
    """Install the OTLP/HTTP-exporting provider in this process when an endpoint is configured
    (once per process; a forked child installs its own). Returns whether tracing is on."""
    global _started_pid
    from django.conf import settings

    endpoint = str(getattr(settings, "OTEL_EXPORTER_OTLP_ENDPOINT", "") or "").rstrip("/")
    if not endpoint:
        return False
    if _started_pid == os.getpid():
        return True
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    service = settings.OTEL_SERVICE_NAME or f"embeddings-{role}"
    provider = TracerProvider(
        resource=Resource.create({"service.name": service, "embeddings.process_role": role})
    )
    # The standard layout: the traces path under the endpoint (OTLP/HTTP's /v1/traces).
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(f"{endpoint}/v1/traces")))
    tracing_use(provider)
    _started_pid = os.getpid()
    logger.info("Exporting traces to %s as %s", endpoint, service)
    return True


def tracing_use(provider: Any) -> None:
    """Record spans with this SDK provider (None: stop tracing). Tests install one with an
    in-memory exporter this way."""
    global _tracer, _provider
    _provider = provider
    _tracer = provider.get_tracer("embeddings_site") if provider is not None else None


def tracing_enabled() -> bool:
    return _tracer is not None


def _record_error(current: Span, exc: BaseException) -> None:
    code = getattr(exc, "code", None)
    label = str(getattr(code, "value", code)) if code is not None else type(exc).__name__
    current.set_attribute("embeddings.code", label)
    current.set_attribute("error.type", label)
    status = getattr(exc, "status", None)
    if isinstance(status, int):
        current.set_attribute("http.response.status_code", status)
    current.set_status(Status(StatusCode.ERROR, label))


# What span() gives while tracing is off: entering it costs next to nothing.
NO_SPAN: AbstractContextManager[None] = nullcontext(None)


def span(
    name: str,
    *,
    kind: SpanKind = SpanKind.INTERNAL,
    attributes: Mapping[str, Any] | None = None,
    carrier: Mapping[str, str] | None = None,
) -> AbstractContextManager[Span | None]:
    """A span around a block, the current span's child (or, given a `carrier` of W3C headers,
    the child of the span that sent them). An exception leaving the block marks it an error
    with its code (an ApiError's) and goes on. Yields None while tracing is off."""
    tracer = _tracer
    if tracer is None:
        return NO_SPAN
    return _recorded_span(tracer, name, kind=kind, attributes=attributes, carrier=carrier)


@contextmanager
def _recorded_span(
    tracer: trace.Tracer,
    name: str,
    *,
    kind: SpanKind,
    attributes: Mapping[str, Any] | None,
    carrier: Mapping[str, str] | None,
) -> Iterator[Span]:
    parent: Context | None = propagate.extract(carrier) if carrier else None
    with tracer.start_as_current_span(
        name,
        context=parent,
        kind=kind,
        attributes=_clean(attributes) if attributes else None,
        record_exception=False,
        set_status_on_exception=False,
    ) as current:
        try:
            yield current
        except BaseException as exc:
            _record_error(current, exc)
            raise


def span_set(current: Span | None = None, **attributes: Any) -> None:
    """Set `embeddings.<name>` attributes on a span (the current one by default)."""
    if _tracer is None:
        return
    target = current if current is not None else trace.get_current_span()
    target.set_attributes(_clean({f"embeddings.{k}": v for k, v in attributes.items()}))


def span_set_raw(current: Span | None, attributes: Mapping[str, Any]) -> None:
    """Set attributes under their own (standard) names."""
    if _tracer is None or current is None:
        return
    current.set_attributes(_clean(attributes))


def span_error(current: Span | None, exc: BaseException) -> None:
    """Mark a span failed with an error that was handled (answered) rather than raised."""
    if _tracer is None or current is None:
        return
    _record_error(current, exc)


def span_failed(current: Span | None, label: str) -> None:
    """Mark a span failed (a 5xx answer), with the error's code as its description."""
    if _tracer is None or current is None:
        return
    current.set_attribute("error.type", label)
    current.set_status(Status(StatusCode.ERROR, label))


def trace_headers_inject(headers: MutableMapping[str, str]) -> None:
    """Add the current span's `traceparent` (and `tracestate`) to outgoing headers."""
    if _tracer is not None:
        propagate.inject(headers)


def current_trace_ids() -> tuple[str, str] | None:
    """The active span's trace and span ids in hex, for log records; None with no span."""
    if _tracer is None:
        return None
    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return None
    return format(context.trace_id, "032x"), format(context.span_id, "016x")


def _clean(attributes: Mapping[str, Any]) -> dict[str, Any]:
    """OTel takes str, bool, int and float values only; None and "" are left out."""
    clean: dict[str, Any] = {}
    for name, value in attributes.items():
        if value is None or value == "":
            continue
        clean[name] = value if isinstance(value, str | bool | int | float) else str(value)
    return clean

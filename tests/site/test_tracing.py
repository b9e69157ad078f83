"""Traces of /v1 requests (embeddings_site.tracing), recorded in-process by the SDK's in-memory
exporter: one trace per request, the lifecycle's steps as children of the request's span,
the attributes an operator searches by, and a refused request's error code."""

from __future__ import annotations

import logging

import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from billing.models import ApiKey
from embeddings_site.log_context import LogContextFilter, log_scope
from embeddings_site.tracing import span

STEPS = ("authenticate", "count", "preadmit", "debit", "infer", "settle")


def by_name(exporter: InMemorySpanExporter) -> dict[str, ReadableSpan]:
    finished = exporter.get_finished_spans()
    names = [item.name for item in finished]
    assert len(names) == len(set(names)), f"a span twice: {names}"
    return {item.name: item for item in finished}


def test_a_request_is_one_trace_with_the_lifecycle_steps_as_children(
    post_embeddings, api_key, spans
) -> None:
    response = post_embeddings(
        {"model": "all-MiniLM-L6-v2", "input": ["hello world", "traced"]},
        HTTP_X_REQUEST_ID="trace-me-1",
    )

    assert response.status_code == 200, response.content
    found = by_name(spans)
    root = found["POST /v1/embeddings"]
    assert root.kind is SpanKind.SERVER and root.parent is None
    for step in STEPS:
        assert step in found, f"no {step} span among {sorted(found)}"
        assert found[step].parent is not None
        assert found[step].parent.span_id == root.context.span_id, step
        assert found[step].context.trace_id == root.context.trace_id, step
    # The steps in the lifecycle's order (short texts are counted before pre-admission).
    starts = [found[step].start_time for step in STEPS[1:]]
    assert starts == sorted(starts)
    tokens = response.json()["usage"]["total_tokens"]
    assert root.attributes["embeddings.request_id"] == "trace-me-1"
    assert root.attributes["embeddings.key_prefix"] == api_key.prefix
    assert root.attributes["embeddings.model"] == "all-MiniLM-L6-v2"
    assert root.attributes["embeddings.endpoint"] == "embeddings"
    assert root.attributes["embeddings.tokens"] == tokens
    assert root.attributes["http.response.status_code"] == 200
    assert found["authenticate"].attributes["embeddings.key_prefix"] == api_key.prefix
    assert found["debit"].attributes["embeddings.tokens"] == tokens
    assert found["count"].attributes["embeddings.tokens"] == tokens
    for step in STEPS[1:]:
        assert found[step].attributes["embeddings.request_id"] == "trace-me-1", step
        assert found[step].attributes["embeddings.model"] == "all-MiniLM-L6-v2", step
    assert all(item.status.status_code is not StatusCode.ERROR for item in found.values())
    # Nothing of the full key is in any attribute.
    values = [str(v) for item in found.values() for v in (item.attributes or {}).values()]
    assert not any(api_key.plaintext in value for value in values)  # type: ignore[attr-defined]


def test_a_refused_request_records_its_error_code_on_the_step_that_refused_it(
    post_embeddings, api_key, spans
) -> None:
    ApiKey.objects.filter(pk=api_key.pk).update(tpm_limit=1)

    response = post_embeddings({"model": "all-MiniLM-L6-v2", "input": "far more than one token"})

    assert response.status_code == 400, response.content
    assert response.json()["code"] == "INPUT_TOKEN_LIMIT_EXCEEDED"
    found = by_name(spans)
    assert "debit" not in found and "infer" not in found
    refused = found["preadmit"]
    assert refused.status.status_code is StatusCode.ERROR
    assert refused.attributes["embeddings.code"] == "INPUT_TOKEN_LIMIT_EXCEEDED"
    assert refused.attributes["http.response.status_code"] == 400
    assert found["settle"].attributes["embeddings.code"] == "INPUT_TOKEN_LIMIT_EXCEEDED"
    assert found["settle"].attributes["embeddings.outcome"] == "refused"
    root = found["POST /v1/embeddings"]
    assert root.attributes["embeddings.code"] == "INPUT_TOKEN_LIMIT_EXCEEDED"
    assert root.attributes["http.response.status_code"] == 400


def test_a_bad_key_ends_the_trace_at_authentication(client, default_model, spans) -> None:
    response = client.post(
        "/v1/embeddings",
        data={"input": "hello"},
        content_type="application/json",
        HTTP_AUTHORIZATION="Bearer jina_not-a-real-key",
    )

    assert response.status_code == 401
    found = by_name(spans)
    assert set(found) == {"POST /v1/embeddings", "authenticate"}
    assert found["authenticate"].attributes["embeddings.code"] == "AUTH_INVALID_API_KEY"
    assert found["POST /v1/embeddings"].attributes["embeddings.code"] == "AUTH_INVALID_API_KEY"


def test_the_request_span_continues_the_callers_trace(post_embeddings, spans) -> None:
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    response = post_embeddings(
        {"input": "hello"}, HTTP_TRACEPARENT=f"00-{trace_id}-00f067aa0ba902b7-01"
    )

    assert response.status_code == 200, response.content
    root = by_name(spans)["POST /v1/embeddings"]
    assert format(root.context.trace_id, "032x") == trace_id
    assert root.parent is not None and format(root.parent.span_id, "016x") == "00f067aa0ba902b7"


def test_log_records_under_a_span_carry_its_trace_id(spans) -> None:
    record = logging.LogRecord("test", logging.INFO, __file__, 1, "inside", None, None)
    with log_scope(request_id="traced-record"), span("outer") as current:
        LogContextFilter().filter(record)
    assert current is not None
    assert record.trace_id == format(current.get_span_context().trace_id, "032x")  # type: ignore[attr-defined]
    assert record.span_id == format(current.get_span_context().span_id, "016x")  # type: ignore[attr-defined]
    assert record.request_id == "traced-record"  # type: ignore[attr-defined]


def test_without_a_provider_nothing_is_recorded_and_no_trace_id_is_logged() -> None:
    record = logging.LogRecord("test", logging.INFO, __file__, 1, "untraced", None, None)
    with span("outer") as current:
        LogContextFilter().filter(record)
    assert current is None
    assert not hasattr(record, "trace_id")


@pytest.mark.django_db
def test_a_pages_span_is_named_by_its_route_not_its_path(client, spans) -> None:
    """A password reset link's path holds a one-time token: it is in no span."""
    client.get("/accounts/reset/MQ/secret-reset-token/")

    [page] = spans.get_finished_spans()
    assert page.name == "GET /accounts/reset/<uidb64>/<token>/"
    assert page.attributes["http.route"] == "/accounts/reset/<uidb64>/<token>/"
    values = [page.name, *(str(v) for v in (page.attributes or {}).values())]
    assert not any("secret-reset-token" in value for value in values)

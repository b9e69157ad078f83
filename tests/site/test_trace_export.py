"""OTEL_EXPORTER_OTLP_ENDPOINT on a real gunicorn gateway: its worker installs the SDK at
start-up and posts the request's spans over OTLP/HTTP (protobuf) to the collector, and the
request's JSON log records carry the same trace id.

The collector is a small stdlib HTTP server that decodes what it receives with the OTLP
protobuf classes (an OpenTelemetry Collector binary is not installed here)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import requests
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from tests.infra import Gateway, create_key

pytestmark = pytest.mark.e2e


class OtlpCollector:
    """Receives OTLP/HTTP trace exports on /v1/traces and keeps every span with its resource."""

    def __init__(self) -> None:
        self.spans: list[dict[str, Any]] = []
        self.paths: list[str] = []
        self.lock = threading.Lock()
        collector = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers["Content-Length"]))
                export = ExportTraceServiceRequest.FromString(body)
                with collector.lock:
                    collector.paths.append(self.path)
                    for resource_spans in export.resource_spans:
                        resource = {
                            a.key: a.value.string_value for a in resource_spans.resource.attributes
                        }
                        for scope in resource_spans.scope_spans:
                            for span in scope.spans:
                                collector.spans.append(_span(span, resource))
                answer = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True
        ).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _span(span: Any, resource: dict[str, str]) -> dict[str, Any]:
    attributes = {}
    for attribute in span.attributes:
        value = attribute.value
        attributes[attribute.key] = getattr(value, value.WhichOneof("value"))
    return {
        "name": span.name,
        "trace_id": span.trace_id.hex(),
        "span_id": span.span_id.hex(),
        "parent_span_id": span.parent_span_id.hex(),
        "attributes": attributes,
        "resource": resource,
    }


@pytest.fixture
def collector() -> Iterator[OtlpCollector]:
    server = OtlpCollector()
    yield server
    server.close()


def test_a_gateway_exports_each_requests_spans_and_logs_their_trace_id(
    gateways: list[Gateway], collector: OtlpCollector, tmp_path: Path
) -> None:
    gateway = Gateway(
        tmp_path / "gw",
        workers=1,
        threads=2,
        env={
            "OTEL_EXPORTER_OTLP_ENDPOINT": collector.url,
            "OTEL_BSP_SCHEDULE_DELAY": "100",  # export every 0.1 s instead of every 5 s
            "LOG_FORMAT": "json",
        },
    ).start()
    gateways.append(gateway)
    key = create_key(gateway, email="traces@example.com")

    response = requests.post(
        f"{gateway.url}/v1/embeddings",
        json={"input": ["exported", "spans"]},
        headers={"Authorization": f"Bearer {key}", "X-Request-ID": "exported-1"},
        timeout=60,
    )
    assert response.status_code == 200, response.text

    deadline = time.monotonic() + 60
    while True:
        with collector.lock:
            mine = [s for s in collector.spans if s["name"] in STEPS or _is_root(s, "exported-1")]
            roots = [s for s in mine if _is_root(s, "exported-1")]
        trace_ids = {root["trace_id"] for root in roots}
        steps = {s["name"] for s in mine if s["trace_id"] in trace_ids}
        if roots and steps >= set(STEPS):
            break
        if time.monotonic() > deadline:
            pytest.fail(f"spans of the request not exported: {collector.spans}")
        time.sleep(0.1)

    [root] = roots
    assert set(collector.paths) == {"/v1/traces"}
    assert root["resource"]["service.name"] == "embeddings-gateway"
    assert root["attributes"]["embeddings.key_prefix"] == key[: len("jina_") + 8]
    assert root["attributes"]["http.response.status_code"] == 200
    children = [s for s in mine if s["trace_id"] == root["trace_id"] and s["name"] in STEPS]
    assert {s["parent_span_id"] for s in children} == {root["span_id"]}
    [summary] = [
        json.loads(line)
        for line in gateway.log.read_text().splitlines()
        if line.startswith("{") and '"embeddings_site.requests"' in line and "exported-1" in line
    ]
    assert summary["trace_id"] == root["trace_id"]
    assert summary["span_id"] == root["span_id"]


STEPS = ("authenticate", "count", "preadmit", "debit", "infer", "settle")


def _is_root(span: dict[str, Any], request_id: str) -> bool:
    return (
        span["name"] == "POST /v1/embeddings"
        and span["attributes"].get("embeddings.request_id") == request_id
    )

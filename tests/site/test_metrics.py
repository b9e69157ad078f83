"""/metrics: Prometheus text for the operator (token or staff), nobody else; and the counters
move by what a request did."""

from __future__ import annotations

import re
from typing import Any

import pytest
from django.test import Client

from billing.models import User
from tests.factories import ApiKeyFactory, UserFactory

pytestmark = pytest.mark.django_db


def sample(text: str, name: str, **labels: str) -> float:
    """A sample's value from Prometheus' text format (0 when absent)."""
    for line in text.splitlines():
        if not line.startswith(name + "{"):
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}")[0]))
        if all(found.get(k) == v for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_metrics_are_not_public(settings: Any) -> None:
    settings.METRICS_TOKEN = "s3cret-metrics-token"
    assert Client().get("/metrics").status_code == 404
    user = Client()
    user.force_login(UserFactory())
    assert user.get("/metrics").status_code == 404
    assert Client().get("/metrics", HTTP_AUTHORIZATION="Bearer wrong").status_code == 404
    assert (
        Client().get("/metrics", HTTP_AUTHORIZATION="Bearer s3cret-metrics-token").status_code
        == 200
    )
    staff = Client()
    staff.force_login(
        User.objects.create_user(email="ops@example.com", password="x", is_staff=True)
    )
    assert staff.get("/metrics").status_code == 200
    settings.METRICS_TOKEN = ""
    assert Client().get("/metrics", HTTP_AUTHORIZATION="Bearer ").status_code == 404


def test_requests_tokens_latency_errors_and_batch_sizes_are_counted(
    settings: Any, default_model: Any
) -> None:
    settings.METRICS_TOKEN = "t"
    auth = {"HTTP_AUTHORIZATION": "Bearer t"}
    model = default_model.name
    before = Client().get("/metrics", **auth).content.decode()
    key = ApiKeyFactory()
    ok = Client().post(
        "/v1/embeddings", {"input": ["one", "two", "three"]}, content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {key.plaintext}",
    )  # fmt: skip
    bad = Client().post(
        "/v1/embeddings", {"input": "x", "dimensions": 0}, content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {key.plaintext}",
    )  # fmt: skip
    assert ok.status_code == 200 and bad.status_code == 400
    after = Client().get("/metrics", **auth).content.decode()

    def moved(name: str, **labels: str) -> float:
        return sample(after, name, **labels) - sample(before, name, **labels)

    assert moved("embeddings_requests_total", endpoint="embeddings", model=model, status="200") == 1
    assert (
        moved("embeddings_tokens_total", endpoint="embeddings", model=model, kind="text")
        == ok.json()["usage"]["total_tokens"]
    )
    assert moved("embeddings_request_seconds_count", endpoint="embeddings", model=model) >= 1
    assert (
        sum(moved("embeddings_errors_total", code=code) for code in ("INPUT_VALIDATION_ERROR",))
        + moved("embeddings_requests_total", status="400")
        >= 1
    )
    assert (
        moved("embeddings_batch_items_sum", model=model) >= 3
    )  # the three inputs went through a pass

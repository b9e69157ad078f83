"""/metrics tells the operations apart (issue 15): every metered request's counters, tokens,
errors and latency carry the endpoint it was sent to, so rerank and classify traffic can be
watched beside embeddings."""

from __future__ import annotations

import re
from typing import Any

import pytest
from django.test import Client

from billing.models import ApiKey
from tests.factories import ApiKeyFactory

pytestmark = pytest.mark.django_db

TOKEN = "metrics-endpoints-token"


def total(text: str, name: str, **labels: str) -> float:
    """The sum of a metric's samples whose labels include `labels` (Prometheus' text format)."""
    found = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{"):
            have = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}")[0]))
            if all(have.get(key) == value for key, value in labels.items()):
                found += float(line.rsplit(" ", 1)[1])
    return found


def scrape() -> str:
    response = Client().get("/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}")
    assert response.status_code == 200
    return response.content.decode()


def post(api_key: ApiKey, path: str, body: dict[str, Any]) -> Any:
    return Client().post(
        path,
        body,
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {api_key.plaintext}",
    )


@pytest.fixture
def metrics(settings: Any) -> None:
    settings.METRICS_TOKEN = TOKEN


@pytest.mark.parametrize(
    ("endpoint", "path", "body", "bad"),
    [
        ("embeddings", "/v1/embeddings", {"input": ["one", "two"]}, {"input": "x", "dimensions": 0}),
        (
            "rerank",
            "/v1/rerank",
            {
                "query": "Which animal runs fastest?",
                "documents": ["Quarterly revenue grew.", "The cheetah runs at 100 km/h."],
            },
            {"query": "q", "documents": []},
        ),
        (
            "classify",
            "/v1/classify",
            {"input": ["The striker scored twice.", "Rates rose again."], "labels": ["Sports", "Finance"]},
            {"input": ["x"], "labels": []},
        ),
    ],
)  # fmt: skip
def test_requests_tokens_errors_and_latency_carry_the_endpoint(
    metrics: None,
    default_model: Any,
    endpoint: str,
    path: str,
    body: dict[str, Any],
    bad: dict[str, Any],
) -> None:
    model = default_model.name
    api_key = ApiKeyFactory()
    before = scrape()
    served = post(api_key, path, {"model": model, **body})
    refused = post(api_key, path, {"model": model, **bad})
    assert served.status_code == 200, served.content
    assert refused.status_code == 400, refused.content
    after = scrape()

    def moved(name: str, **labels: str) -> float:
        return total(after, name, **labels) - total(before, name, **labels)

    assert moved("embeddings_requests_total", endpoint=endpoint, model=model, status="200") == 1
    assert moved("embeddings_requests_total", endpoint=endpoint, status="400") == 1
    assert (
        moved("embeddings_tokens_total", endpoint=endpoint, model=model, kind="text")
        == served.json()["usage"]["total_tokens"]
        > 0
    )
    assert moved("embeddings_errors_total", endpoint=endpoint, code=refused.json()["code"]) == 1
    assert moved("embeddings_request_seconds_count", endpoint=endpoint) == 2
    # ...and none of it is counted under another endpoint.
    for other in {"embeddings", "rerank", "classify"} - {endpoint}:
        assert moved("embeddings_requests_total", endpoint=other, model=model, status="200") == 0


def test_tokenize_is_counted_under_its_endpoint_and_charges_nothing(
    metrics: None, default_model: Any
) -> None:
    model = default_model.name
    api_key = ApiKeyFactory()
    before = scrape()
    response = post(api_key, "/v1/tokenize", {"model": model, "prompt": "Count these tokens."})
    assert response.status_code == 200, response.content
    after = scrape()

    def moved(name: str, **labels: str) -> float:
        return total(after, name, **labels) - total(before, name, **labels)

    assert moved("embeddings_requests_total", endpoint="tokenize", model=model, status="200") == 1
    assert moved("embeddings_tokens_total", endpoint="tokenize") == 0
    assert moved("embeddings_requests_total", endpoint="embeddings") == 0

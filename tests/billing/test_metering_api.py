"""Metering through the API: charge = usage, failed requests free, limits and their headers."""

from __future__ import annotations

import json
import re
from datetime import timedelta

import pytest
from django.utils import timezone

from billing.models import LedgerEntry, UsageRecord
from billing.selectors import usage_by_day
from billing.services import api_key_create
from metering.ledger import ledger_mismatches
from metering.usage import usage_rollup_day
from tests.factories import EmbeddingModelFactory, UserFactory
from tests.jina_spec import assert_error_envelope

RATE_HEADERS = [
    "X-RateLimit-Remaining-Requests",
    "X-RateLimit-Remaining-Tokens",
    "x-ratelimit-limit-requests",
    "x-ratelimit-limit-tokens",
    "x-ratelimit-remaining-requests",
    "x-ratelimit-remaining-tokens",
    "x-ratelimit-reset-requests",
    "x-ratelimit-reset-tokens",
]
DURATION = re.compile(r"^(\d+ms|(\d+m)?\d+(\.\d+)?s)$")


@pytest.fixture
def make_key(db):
    def make(**kwargs):
        api_key, plaintext = api_key_create(user=UserFactory(), **kwargs)
        api_key.plaintext = plaintext
        return api_key

    return make


@pytest.fixture
def call(client, default_model):
    def post(api_key, body):
        return client.post(
            "/v1/embeddings",
            data=json.dumps(body),
            content_type="application/json",
            HTTP_AUTHORIZATION=f"Bearer {api_key.plaintext}",
        )

    return post


def assert_rate_headers(response) -> None:
    for name in RATE_HEADERS:
        assert response.has_header(name), name
    assert DURATION.match(response["x-ratelimit-reset-requests"])
    assert DURATION.match(response["x-ratelimit-reset-tokens"])


def test_the_charge_is_exactly_the_usage(call, make_key) -> None:
    api_key = make_key(tokens=1000)
    response = call(api_key, {"input": ["one text", "and another one"]})
    assert response.status_code == 200
    usage = response.json()["usage"]["total_tokens"]
    api_key.refresh_from_db()
    assert api_key.balance == 1000 - usage
    record = UsageRecord.objects.get(api_key=api_key)
    assert (record.status, record.charged_tokens, record.text_tokens, record.http_status) == (
        "succeeded",
        usage,
        usage,
        200,
    )
    assert record.request_id == response["X-Request-ID"]
    assert record.latency_ms > 0
    assert list(LedgerEntry.objects.filter(usage=record).values_list("kind", "tokens")) == [
        ("usage", -usage)
    ]
    assert ledger_mismatches() == []
    assert_rate_headers(response)


def test_insufficient_balance_is_403_and_charges_nothing(call, make_key) -> None:
    api_key = make_key(tokens=2)
    response = call(api_key, {"input": "this costs more than two tokens"})
    assert response.status_code == 403
    assert_error_envelope(response.json(), "AUTHZ_INSUFFICIENT_BALANCE")
    assert_rate_headers(response)
    api_key.refresh_from_db()
    assert api_key.balance == 2
    record = UsageRecord.objects.get(api_key=api_key)
    assert (record.status, record.http_status, record.charged_tokens) == ("failed", 403, 0)
    assert ledger_mismatches() == []


def test_backend_failure_after_admission_is_refunded(call, make_key, db) -> None:
    """ADVERSARIAL 6: the registry claims 1024 tokens, the model has 512 positions: the forward
    pass fails after the debit, and the client gets a coded 5xx and its tokens back."""
    EmbeddingModelFactory(name="misconfigured", hugging_face_id="", max_tokens=1024)
    api_key = make_key(tokens=5000)
    response = call(api_key, {"model": "misconfigured", "input": "word " * 700})
    assert response.status_code == 503
    assert_error_envelope(response.json(), "SERVICE_UNAVAILABLE")
    assert_rate_headers(response)
    api_key.refresh_from_db()
    assert api_key.balance == 5000
    record = UsageRecord.objects.get(api_key=api_key)
    assert (record.status, record.http_status, record.charged_tokens) == ("failed", 503, 0)
    kinds = list(
        LedgerEntry.objects.filter(usage=record).order_by("id").values_list("kind", "tokens")
    )
    assert kinds == [("usage", -702), ("refund", 702)]
    assert ledger_mismatches() == []


@pytest.mark.parametrize(
    "body",
    [
        {"input": ""},
        {"input": ["x"] * 2049},
        {"input": "x", "model": "nope"},
        {"input": "word " * 400},
    ],
)
def test_bad_requests_cost_nothing(call, make_key, body) -> None:
    api_key = make_key(tokens=1000)
    response = call(api_key, body)
    assert response.status_code == 400
    assert_rate_headers(response)
    api_key.refresh_from_db()
    assert api_key.balance == 1000
    assert ledger_mismatches() == []


@pytest.mark.slow
def test_rpm_limit_is_a_429_with_retry_after(call, make_key) -> None:
    api_key = make_key(tokens=10_000, rpm=3)
    responses = [call(api_key, {"input": "hi"}) for _ in range(4)]
    assert [r.status_code for r in responses] == [200, 200, 200, 429]
    refused = responses[-1]
    assert_error_envelope(refused.json(), "RATE_REQUEST_LIMIT_EXCEEDED")
    assert 1 <= int(refused["Retry-After"]) <= 60
    assert_rate_headers(refused)
    assert refused["X-RateLimit-Remaining-Requests"] == "0"
    assert [r["x-ratelimit-remaining-requests"] for r in responses[:3]] == ["2", "1", "0"]
    assert responses[0]["x-ratelimit-limit-requests"] == "3"
    api_key.refresh_from_db()
    assert api_key.balance == 10_000 - 3 * responses[0].json()["usage"]["total_tokens"]


def test_tpm_limit_counts_tokens_not_requests(call, make_key) -> None:
    api_key = make_key(tokens=10_000, tpm=10)
    first = call(api_key, {"input": "hello world"})  # 4 tokens
    second = call(api_key, {"input": "hello world"})
    third = call(api_key, {"input": "hello world"})
    assert [first.status_code, second.status_code, third.status_code] == [200, 200, 429]
    assert_error_envelope(third.json(), "RATE_TOKEN_LIMIT_EXCEEDED")
    assert first["X-RateLimit-Remaining-Tokens"] == "6"
    assert second["X-RateLimit-Remaining-Tokens"] == "2"
    assert int(third["Retry-After"]) >= 1


def test_a_request_larger_than_the_whole_tpm_is_a_400_not_an_endless_429(call, make_key) -> None:
    api_key = make_key(tokens=10_000, tpm=10)
    response = call(
        api_key, {"input": "this sentence has rather more than ten tokens in it, surely"}
    )
    assert response.status_code == 400
    assert_error_envelope(response.json(), "INPUT_TOKEN_LIMIT_EXCEEDED")
    assert "tokens per minute" in response.json()["detail"]
    assert "Retry-After" not in response


@pytest.mark.slow
def test_usage_rows_and_daily_rollups(call, make_key, client) -> None:
    api_key = make_key(tokens=10_000)
    served = [call(api_key, {"input": f"text number {i}"}) for i in range(3)]
    call(api_key, {"input": ""})  # refused, free
    charged = sum(r.json()["usage"]["total_tokens"] for r in served)
    (today,) = usage_by_day(api_key=api_key)  # today: counted live from the request rows
    assert (today["requests"], today["errors"], today["charged_tokens"]) == (4, 1, charged)

    # The same requests as yesterday's: read from the rollup, as the dashboards read past days.
    yesterday = timezone.now().date() - timedelta(days=1)
    UsageRecord.objects.filter(api_key=api_key).update(
        created_at=timezone.now() - timedelta(days=1)
    )
    usage_rollup_day(day=yesterday)
    (day,) = usage_by_day(api_key=api_key)
    assert (day["day"], day["requests"], day["errors"]) == (yesterday, 4, 1)
    assert day["charged_tokens"] == charged
    by_model = usage_by_day(user=api_key.user, by=("model",))
    # The refused request never named a model that could be resolved.
    assert {row["model"]: row["requests"] for row in by_model} == {"all-MiniLM-L6-v2": 3, "": 1}


@pytest.fixture
def tight_ip_limits(settings):
    from django.core.cache import cache

    settings.IP_RATE_LIMIT_ANONYMOUS = "3/m"
    settings.IP_RATE_LIMIT_LOGIN = "2/m"
    cache.clear()
    yield
    cache.clear()


def test_anonymous_endpoints_are_limited_per_ip(client, default_model, tight_ip_limits) -> None:
    codes = [client.get("/v1/models", REMOTE_ADDR="203.0.113.7").status_code for _ in range(4)]
    assert codes == [200, 200, 200, 429]
    refused = client.get("/v1/models/all-MiniLM-L6-v2", REMOTE_ADDR="203.0.113.7")
    assert refused.status_code == 429
    assert_error_envelope(refused.json(), "RATE_IP_LIMIT_EXCEEDED")
    assert refused["Retry-After"]
    # Another address has its own allowance.
    assert client.get("/v1/models", REMOTE_ADDR="203.0.113.8").status_code == 200


def test_sign_in_attempts_are_limited_per_ip(client, db, tight_ip_limits, ip_limit_clock) -> None:
    attempts = [
        client.post(
            "/admin/login/",
            {"username": "a@example.com", "password": "wrong"},
            REMOTE_ADDR="198.51.100.1",
        )
        for _ in range(3)
    ]
    assert [a.status_code for a in attempts] == [200, 200, 429]
    assert attempts[-1].json()["code"] == "RATE_IP_LIMIT_EXCEEDED"
    # The window is django-ratelimit's fixed minute: the next one lets the address try again.
    ip_limit_clock.advance(60)
    again = client.post(
        "/admin/login/",
        {"username": "a@example.com", "password": "wrong"},
        REMOTE_ADDR="198.51.100.1",
    )
    assert again.status_code == 200

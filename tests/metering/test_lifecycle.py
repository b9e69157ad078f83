"""The metered lifecycle's failure paths: every one settles, nothing stays charged for an error.

Faults are injected where the database or the clock would produce them (a dropped connection
while settling, a request that outlives its deadline); the real Postgres version of the
dropped-connection case is tests/site/test_database_faults.py.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.db import OperationalError

from billing.models import UsageRecord
from billing.services import api_key_create
from embeddings_site import deadlines
from inference.registry import runtimes
from metering import lifecycle
from metering.ledger import usage_admit, usage_sweep_abandoned
from tests.factories import UserFactory
from tests.jina_spec import assert_error_envelope

pytestmark = pytest.mark.django_db


@pytest.fixture
def key() -> Any:
    api_key, plaintext = api_key_create(user=UserFactory(), tokens=100_000)
    api_key.plaintext = plaintext
    return api_key


@pytest.fixture
def embed(client, default_model, key):  # type: ignore[no-untyped-def]
    def post(body: dict[str, Any] | None = None) -> Any:
        return client.post(
            "/v1/embeddings",
            data=json.dumps(body or {"input": ["a short text"]}),
            content_type="application/json",
            HTTP_AUTHORIZATION=f"Bearer {key.plaintext}",
        )

    return post


class MovableClock:
    """The deadline clock, moved forward by the test instead of waited for."""

    def __init__(self) -> None:
        self.offset = 0.0
        self.real = deadlines.clock

    def __call__(self) -> float:
        return self.real() + self.offset


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> MovableClock:
    moving = MovableClock()
    monkeypatch.setattr(deadlines, "clock", moving)
    return moving


@pytest.fixture
def during_inference(monkeypatch: pytest.MonkeyPatch, default_model):  # type: ignore[no-untyped-def]
    """Run a callback while the model computes a request's vectors (the real model)."""

    def install(callback: Any) -> None:
        backend = runtimes.get(default_model).backend
        real = backend.embed

        def embed(items: Any) -> Any:
            vectors = real(items)
            callback()
            return vectors

        monkeypatch.setattr(backend, "embed", embed)

    return install


def balance(key: Any) -> int:
    key.refresh_from_db()
    return int(key.balance)


def test_a_result_produced_after_the_deadline_is_refunded_and_answered_504(
    embed, key, clock, during_inference, settings
) -> None:
    settings.REQUEST_TIMEOUT_SECONDS = 30
    during_inference(lambda: setattr(clock, "offset", 31.0))
    response = embed()
    assert response.status_code == 504
    assert_error_envelope(response.json(), "SERVICE_TIMEOUT")
    assert balance(key) == 100_000
    record = UsageRecord.objects.get(api_key=key)
    assert (record.status, record.http_status, record.error_code, record.charged_tokens) == (
        "failed",
        504,
        "SERVICE_TIMEOUT",
        0,
    )


def test_latency_counts_from_arrival(embed, key, clock, during_inference) -> None:
    during_inference(lambda: setattr(clock, "offset", 2.5))
    response = embed()
    assert response.status_code == 200
    record = UsageRecord.objects.get(api_key=key)
    assert record.latency_ms is not None and record.latency_ms >= 2500


def test_a_request_whose_deadline_passed_before_admission_costs_nothing(
    embed, key, settings
) -> None:
    settings.REQUEST_TIMEOUT_SECONDS = 0
    response = embed()
    assert response.status_code == 504
    assert_error_envelope(response.json(), "SERVICE_TIMEOUT")
    assert balance(key) == 100_000
    assert not UsageRecord.objects.filter(api_key=key, status="pending").exists()


def test_a_database_error_while_marking_served_is_a_coded_503_and_refunded(
    embed, key, monkeypatch: pytest.MonkeyPatch
) -> None:
    def dropped(**kwargs: Any) -> bool:
        raise OperationalError("server closed the connection unexpectedly")

    monkeypatch.setattr(lifecycle, "usage_succeed", dropped)
    response = embed()
    assert response.status_code == 503
    assert_error_envelope(response.json(), "SERVICE_UNAVAILABLE")
    assert response["Retry-After"] == "1"
    assert balance(key) == 100_000
    assert UsageRecord.objects.get(api_key=key).status == "failed"


def test_a_connection_lost_after_the_served_mark_committed_is_still_refunded(
    embed, key, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = lifecycle.usage_succeed

    def committed_then_dropped(**kwargs: Any) -> bool:
        real(**kwargs)
        raise OperationalError("connection lost while reading the commit's answer")

    monkeypatch.setattr(lifecycle, "usage_succeed", committed_then_dropped)
    response = embed()
    assert response.status_code == 503
    assert balance(key) == 100_000
    record = UsageRecord.objects.get(api_key=key)
    assert (record.status, record.charged_tokens) == ("failed", 0)


def test_a_refund_that_hits_a_dropped_connection_is_retried_at_once(
    embed, key, monkeypatch: pytest.MonkeyPatch, during_inference
) -> None:
    real = lifecycle.usage_refund
    attempts: list[int] = []

    def flaky(**kwargs: Any) -> bool:
        attempts.append(1)
        if len(attempts) == 1:
            raise OperationalError("terminating connection due to administrator command")
        return real(**kwargs)

    def model_fails() -> None:
        from inference.backends.base import BackendError

        raise BackendError("worker crashed")

    monkeypatch.setattr(lifecycle, "usage_refund", flaky)
    during_inference(model_fails)
    response = embed()
    assert response.status_code == 503
    assert len(attempts) == 2
    assert balance(key) == 100_000
    assert not UsageRecord.objects.filter(api_key=key, status="pending").exists()


def test_the_sweeper_refunds_once_however_many_processes_run_it(key, settings) -> None:
    usage = usage_admit(api_key=key, model="m", text_tokens=7)
    UsageRecord.objects.filter(pk=usage.pk).update(
        created_at=usage.created_at - __import__("datetime").timedelta(seconds=120)
    )
    assert balance(key) == 100_000 - 7
    assert usage_sweep_abandoned(older_than_seconds=90) == 1
    assert usage_sweep_abandoned(older_than_seconds=90) == 0
    assert balance(key) == 100_000
    assert UsageRecord.objects.get(pk=usage.pk).error_code == "GATEWAY_DIED"


def test_every_gateway_process_runs_the_sweeper(settings) -> None:
    import threading

    from metering.tasks import maintenance_start

    settings.BACKGROUND_MAINTENANCE = True
    settings.CELERY_BROKER_URL = "amqp://broker-configured-so-beat-would-run-rollups"
    started = maintenance_start()
    assert [thread.name for thread in started] == ["usage-sweeper"]
    assert all(thread.is_alive() for thread in started)
    assert "usage-sweeper" in {thread.name for thread in threading.enumerate()}


def _admission_scripts(redis_url: str) -> int:
    """EVALSHA calls the Redis server has run (the limiter's scripts), from its own stats."""
    import redis

    stats = redis.Redis.from_url(redis_url).info("commandstats")
    return int(stats.get("cmdstat_evalsha", {}).get("calls", 0))


def test_a_short_request_is_admitted_with_its_exact_tokens_in_one_limiter_call(
    embed, key, redis_server, settings
) -> None:
    from metering.limiter import get_limiter, reset_limiter

    settings.RATE_LIMIT_REDIS_URL = redis_server.url
    reset_limiter()
    # A busy process: every release rides the next admission (no quiet-time flush between).
    get_limiter().primary.flush_delay = 3600  # type: ignore[attr-defined]
    long_text = "word " * (settings.PREADMIT_COUNT_MAX_CHARACTERS // 5 + 1)
    embed({"input": [long_text], "truncate": True})  # loads the scripts
    before = _admission_scripts(redis_server.url)
    short = embed({"input": ["a short text"]})
    short_calls = _admission_scripts(redis_server.url) - before
    before = _admission_scripts(redis_server.url)
    long = embed({"input": [long_text], "truncate": True})
    long_calls = _admission_scripts(redis_server.url) - before

    assert short.status_code == long.status_code == 200
    # Counted before admission: one call takes the request, its slot and its exact tokens
    # (the previous request's slot rides it back). A long input is admitted on a bound first
    # and its exact tokens are taken at the debit: two calls.
    assert (short_calls, long_calls) == (1, 2)
    spent = short.json()["usage"]["total_tokens"] + 2 * long.json()["usage"]["total_tokens"]
    assert int(long["X-RateLimit-Remaining-Tokens"]) == 1_000_000 - spent

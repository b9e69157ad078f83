"""Usage by endpoint on the user's dashboard, each key's page and the staff dashboard (issue 15):
rerank, classify and tokenize requests are told apart from embeddings, today (counted live from
the request rows) and on earlier days (from the daily rollup), and a refused request counts as
an error of the endpoint it was sent to."""

from __future__ import annotations

from datetime import timedelta
from html.parser import HTMLParser
from typing import Any

import pytest
from django.test import Client
from django.utils import timezone

from billing.models import ApiKey, UsageDaily, UsageRecord, User
from billing.services import api_key_grant
from metering.ledger import usage_admit, usage_succeed
from metering.usage import usage_record_refused, usage_rollup_day
from tests.factories import ApiKeyFactory

pytestmark = pytest.mark.django_db

MODEL = "all-MiniLM-L6-v2"


class _EndpointTable(HTMLParser):
    """The rows of #usage-by-endpoint as {endpoint: {requests, tokens, errors}}, read from the
    cells' data attributes (what the page shows is their humanised form)."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: dict[str, dict[str, int]] = {}
        self.charts: set[str] = set()
        self._in_table = False
        self._endpoint: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        if tag == "table" and found.get("id") == "usage-by-endpoint":
            self._in_table = True
        elif self._in_table and tag == "tr" and found.get("data-endpoint"):
            self._endpoint = found["data-endpoint"] or ""
            self.rows[self._endpoint] = {}
        elif self._in_table and tag == "td" and self._endpoint is not None:
            for name in ("requests", "tokens", "errors"):
                value = found.get(f"data-{name}")
                if value is not None:
                    self.rows[self._endpoint][name] = int(value)
        elif tag == "svg" and (found.get("id") or "").startswith("chart-"):
            self.charts.add(found.get("id") or "")

    def handle_endtag(self, tag: str) -> None:
        if tag == "table":
            self._in_table = False
        elif tag == "tr":
            self._endpoint = None


def endpoint_table(html: str) -> _EndpointTable:
    parser = _EndpointTable()
    parser.feed(html)
    return parser


def served(api_key: ApiKey, *, endpoint: str, tokens: int, days_ago: int = 0) -> UsageRecord:
    """A request charged and served, as the lifecycle records it."""
    usage = usage_admit(api_key=api_key, model=MODEL, text_tokens=tokens, endpoint=endpoint)
    usage_succeed(usage=usage, latency_ms=3)
    if days_ago:
        when = timezone.now() - timedelta(days=days_ago)
        UsageRecord.objects.filter(pk=usage.pk).update(created_at=when, finished_at=when)
    return usage


def refused(api_key: ApiKey, *, endpoint: str) -> None:
    """A request answered 400 before anything was charged."""
    usage_record_refused(
        api_key_id=api_key.pk,
        request_id="refused",
        model=MODEL,
        endpoint=endpoint,
        http_status=400,
        error_code="INPUT_VALIDATION_ERROR",
    )


@pytest.fixture
def traffic() -> tuple[ApiKey, ApiKey]:
    """Two keys of one user and a key of someone else, with embeddings, rerank, classify and
    tokenize requests today and yesterday (yesterday rolled up, as the periodic task does)."""
    first = ApiKeyFactory(user__email="searcher@example.com")
    second = ApiKeyFactory(user=first.user)
    api_key_grant(api_key=second, tokens=1000, note="a second key starts empty")
    stranger = ApiKeyFactory(user__email="stranger@example.com")
    served(first, endpoint="embeddings", tokens=100)
    served(first, endpoint="rerank", tokens=40, days_ago=1)
    served(first, endpoint="rerank", tokens=60)
    refused(first, endpoint="rerank")
    served(second, endpoint="classify", tokens=25)
    served(second, endpoint="tokenize", tokens=0)
    served(stranger, endpoint="rerank", tokens=9000)
    usage_rollup_day(day=(timezone.now() - timedelta(days=1)).date())
    return first, second


def logged_in(user: User) -> Client:
    client = Client()
    client.force_login(user)
    return client


def test_the_daily_rollup_keeps_each_endpoint_apart() -> None:
    api_key = ApiKeyFactory()
    served(api_key, endpoint="embeddings", tokens=11, days_ago=1)
    served(api_key, endpoint="rerank", tokens=7, days_ago=1)
    served(api_key, endpoint="rerank", tokens=5, days_ago=1)
    day = (timezone.now() - timedelta(days=1)).date()
    assert usage_rollup_day(day=day) == 2
    assert usage_rollup_day(day=day) == 2  # idempotent
    rows = {row.endpoint: row for row in UsageDaily.objects.filter(api_key=api_key, day=day)}
    assert {name: (row.requests, row.charged_tokens) for name, row in rows.items()} == {
        "embeddings": (1, 11),
        "rerank": (2, 12),
    }


def test_the_dashboard_shows_requests_tokens_and_errors_by_endpoint(
    traffic: tuple[ApiKey, ApiKey],
) -> None:
    first, _ = traffic
    response = logged_in(first.user).get("/dashboard/")
    assert response.status_code == 200
    page = endpoint_table(response.content.decode())
    # Yesterday's rerank (rolled up) and today's (live) add up; the refusal is rerank's error;
    # the stranger's 9,000 rerank tokens are not this user's.
    assert page.rows == {
        "embeddings": {"requests": 1, "tokens": 100, "errors": 0},
        "rerank": {"requests": 3, "tokens": 100, "errors": 1},
        "classify": {"requests": 1, "tokens": 25, "errors": 0},
        "tokenize": {"requests": 1, "tokens": 0, "errors": 0},
    }
    assert {
        "chart-endpoint-embeddings",
        "chart-endpoint-rerank",
        "chart-endpoint-classify",
        "chart-endpoint-tokenize",
    } <= page.charts


def test_each_keys_page_shows_only_that_keys_endpoints(traffic: tuple[ApiKey, ApiKey]) -> None:
    first, second = traffic
    client = logged_in(first.user)
    assert endpoint_table(client.get(f"/dashboard/keys/{first.pk}/").content.decode()).rows == {
        "embeddings": {"requests": 1, "tokens": 100, "errors": 0},
        "rerank": {"requests": 3, "tokens": 100, "errors": 1},
    }
    assert endpoint_table(client.get(f"/dashboard/keys/{second.pk}/").content.decode()).rows == {
        "classify": {"requests": 1, "tokens": 25, "errors": 0},
        "tokenize": {"requests": 1, "tokens": 0, "errors": 0},
    }


def test_staff_see_every_users_usage_by_endpoint(traffic: tuple[ApiKey, ApiKey]) -> None:
    staff = User.objects.create_user(email="ops@example.com", password="x", is_staff=True)
    response = logged_in(staff).get("/staff/")
    assert response.status_code == 200
    page = endpoint_table(response.content.decode())
    assert page.rows["rerank"] == {"requests": 4, "tokens": 9100, "errors": 1}
    assert page.rows["embeddings"] == {"requests": 1, "tokens": 100, "errors": 0}
    assert set(page.rows) == {"embeddings", "rerank", "classify", "tokenize"}
    assert "chart-all-endpoint-rerank" in page.charts


def test_a_refused_request_counts_for_the_endpoint_it_was_sent_to(
    client: Client, default_model: Any
) -> None:
    """Through the real /v1/embeddings view: its refusal is an embeddings error."""
    api_key = ApiKeyFactory()
    response = client.post(
        "/v1/embeddings",
        {"input": "x", "dimensions": 0},
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {api_key.plaintext}",
    )
    assert response.status_code == 400
    page = endpoint_table(logged_in(api_key.user).get("/dashboard/").content.decode())
    assert page.rows == {"embeddings": {"requests": 1, "tokens": 0, "errors": 1}}


@pytest.mark.django_db(transaction=True)
def test_rows_rolled_up_before_the_migration_are_embeddings() -> None:
    from django.db import connection
    from django.db.migrations.executor import MigrationExecutor

    before = [("billing", "0006_forget_plaintext_keys_in_sessions")]
    after = [("billing", "0007_usage_daily_endpoint")]
    api_key = ApiKeyFactory()
    executor = MigrationExecutor(connection)
    executor.migrate(before)
    old = executor.loader.project_state(before).apps.get_model("billing", "UsageDaily")
    old.objects.create(
        api_key_id=api_key.pk, model=MODEL, day=timezone.now().date(), requests=2, charged_tokens=8
    )
    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate(after)
    (row,) = UsageDaily.objects.filter(api_key=api_key)
    assert (row.endpoint, row.requests, row.charged_tokens) == ("embeddings", 2, 8)

"""Usage you can slice (issue 16): a date range (presets and custom from/to) and a grouping by
day, model, key or endpoint on the dashboard, each key's page and the staff page, and a CSV of
exactly the table the page shows; staff see every user and revenue per day. Bad parameters are a
400 with a message, never a 500."""

from __future__ import annotations

import csv
import io
from datetime import date, timedelta
from html.parser import HTMLParser
from typing import Any

import pytest
from django.test import Client
from django.utils import timezone

from billing.models import ApiKey, Payment, User
from billing.services import api_key_grant
from metering.ledger import usage_admit, usage_succeed
from metering.usage import usage_record_refused, usage_rollup_day
from tests.factories import ApiKeyFactory

pytestmark = pytest.mark.django_db

FIELDS = ("requests", "errors", "text_tokens", "image_tokens", "charged_tokens")


class _Page(HTMLParser):
    """The rows of #usage-table (group value and figures, from the rows' data attributes), the
    days of each chart, and the form's error."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[dict[str, Any]] = []
        self.revenue: list[dict[str, str]] = []
        self.chart_days: dict[str, list[str]] = {}
        self.links: dict[str, str] = {}
        self.error = ""
        self._table = ""
        self._chart = ""
        self._in_error = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = {name: value or "" for name, value in attrs}
        if tag == "table":
            self._table = found.get("id", "")
        elif tag == "tr" and self._table == "usage-table" and "data-group" in found:
            self.rows.append(
                {
                    "group": found["data-group"],
                    **{name: int(found[f"data-{name.replace('_', '-')}"]) for name in FIELDS},
                }
            )
        elif tag == "tr" and self._table == "revenue-table" and "data-day" in found:
            self.revenue.append(found)
        elif tag == "svg" and found.get("id", "").startswith("chart-"):
            self._chart = found["id"]
            self.chart_days[self._chart] = []
        elif tag == "rect" and self._chart:
            self.chart_days[self._chart].append(found["data-day"])
        elif tag == "a" and found.get("id") in ("usage-csv", "revenue-csv"):
            self.links[found["id"]] = found["href"]
        elif found.get("id") == "usage-error":
            self._in_error = True

    def handle_endtag(self, tag: str) -> None:
        if tag == "table":
            self._table = ""
        elif tag == "svg":
            self._chart = ""
        elif tag == "p":
            self._in_error = False

    def handle_data(self, data: str) -> None:
        if self._in_error:
            self.error += data


def parsed(response: Any) -> _Page:
    page = _Page()
    page.feed(response.content.decode())
    return page


def csv_rows(response: Any) -> list[dict[str, Any]]:
    """The CSV's rows in the table's shape: its first column is the group."""
    assert response["Content-Type"].startswith("text/csv")
    reader = csv.DictReader(io.StringIO(response.content.decode()))
    group = (reader.fieldnames or [""])[0]
    return [{"group": row[group], **{name: int(row[name]) for name in FIELDS}} for row in reader]


def days_ago(days: int) -> date:
    return timezone.now().date() - timedelta(days=days)


def served(
    api_key: ApiKey, *, tokens: int, ago: int = 0, model: str = "model-a", **kw: Any
) -> None:
    """A request charged and served `ago` days ago (rolled up, as the periodic task does)."""
    usage = usage_admit(api_key=api_key, model=model, text_tokens=tokens, **kw)
    usage_succeed(usage=usage, latency_ms=2)
    if ago:
        when = timezone.now() - timedelta(days=ago)
        type(usage).objects.filter(pk=usage.pk).update(created_at=when, finished_at=when)
        usage_rollup_day(day=days_ago(ago))


@pytest.fixture
def traffic() -> dict[str, ApiKey]:
    """One user's two keys with usage today (live), 3, 20 and 40 days ago; a stranger's key."""
    first = ApiKeyFactory(user__email="slicer@example.com")
    second = ApiKeyFactory(user=first.user)
    api_key_grant(api_key=second, tokens=1000, note="a second key starts empty")
    stranger = ApiKeyFactory(user__email="stranger@example.com")
    served(first, tokens=100, model="model-a")
    served(first, tokens=30, model="model-b", endpoint="rerank")
    usage_record_refused(
        api_key_id=first.pk,
        request_id="r",
        model="",
        endpoint="embeddings",
        http_status=400,
        error_code="INPUT_VALIDATION_ERROR",
    )
    served(first, tokens=50, ago=3, model="model-b")
    served(second, tokens=7, ago=20, model="model-a")
    served(first, tokens=900, ago=40, model="model-a")
    served(stranger, tokens=5000, ago=3, model="model-a")
    return {"first": first, "second": second, "stranger": stranger}


def logged_in(user: User) -> Client:
    client = Client()
    client.force_login(user)
    return client


def by_group(rows: list[dict[str, Any]]) -> dict[str, tuple[int, int, int]]:
    return {row["group"]: (row["requests"], row["errors"], row["charged_tokens"]) for row in rows}


def test_a_range_keeps_its_days_and_excludes_the_others(traffic: dict[str, ApiKey]) -> None:
    client = logged_in(traffic["first"].user)
    today, d3, d20, d40 = (days_ago(n).isoformat() for n in (0, 3, 20, 40))

    week = parsed(client.get("/dashboard/?range=7d"))
    assert [row["group"] for row in week.rows] == [
        days_ago(n).isoformat() for n in range(6, -1, -1)
    ]
    busy = {row["group"]: row["charged_tokens"] for row in week.rows if row["requests"]}
    assert busy == {d3: 50, today: 130}  # today's requests counted live, the refusal as an error
    assert by_group(week.rows)[today] == (3, 1, 130)
    # Every chart spans the same seven days.
    assert week.chart_days["chart-tokens"] == [row["group"] for row in week.rows]

    month = {row["group"]: row["charged_tokens"] for row in parsed(client.get("/dashboard/")).rows}
    assert len(month) == 30 and month[d20] == 7 and d40 not in month

    custom = parsed(client.get(f"/dashboard/?range=custom&start={d40}&end={d40}"))
    assert by_group(custom.rows) == {d40: (1, 0, 900)}
    assert custom.chart_days["chart-tokens"] == [d40]

    this_month = parsed(client.get("/dashboard/?range=month"))
    assert this_month.rows[0]["group"] == timezone.now().date().replace(day=1).isoformat()
    assert this_month.rows[-1]["group"] == today


def test_usage_groups_by_model_key_and_endpoint(traffic: dict[str, ApiKey]) -> None:
    first, second = traffic["first"], traffic["second"]
    client = logged_in(first.user)
    query = "range=30d&group="
    assert by_group(parsed(client.get(f"/dashboard/?{query}model")).rows) == {
        "model-a": (2, 0, 107),
        "model-b": (2, 0, 80),
        "": (1, 1, 0),  # refused before a model was chosen
    }
    assert by_group(parsed(client.get(f"/dashboard/?{query}key")).rows) == {
        first.prefix: (4, 1, 180),
        second.prefix: (1, 0, 7),
    }
    assert by_group(parsed(client.get(f"/dashboard/?{query}endpoint")).rows) == {
        "embeddings": (4, 1, 157),
        "rerank": (1, 0, 30),
    }
    # A key's page: that key alone.
    assert by_group(parsed(client.get(f"/dashboard/keys/{second.pk}/?{query}model")).rows) == {
        "model-a": (1, 0, 7)
    }


@pytest.mark.parametrize(
    "query",
    [
        "range=7d",
        "range=90d&group=model",
        "range=30d&group=key",
        "range=month&group=endpoint",
        f"range=custom&start={days_ago(45).isoformat()}&end={days_ago(2).isoformat()}&group=day",
    ],
)
def test_the_csv_is_exactly_the_table_on_the_page(traffic: dict[str, ApiKey], query: str) -> None:
    client = logged_in(traffic["first"].user)
    for page_url in ("/dashboard/", f"/dashboard/keys/{traffic['first'].pk}/"):
        page = parsed(client.get(f"{page_url}?{query}"))
        assert page.rows
        # The page's own link, as a person would click it.
        response = client.get(page.links["usage-csv"])
        assert response.status_code == 200
        assert "attachment" in response["Content-Disposition"]
        assert csv_rows(response) == page.rows, page_url


def test_staff_slice_every_users_usage_and_see_revenue_per_day(
    traffic: dict[str, ApiKey],
) -> None:
    staff = User.objects.create_user(email="ops@example.com", password="x", is_staff=True)
    first = traffic["first"]
    for key, pack, amount, ago in (("a", "pack-1b", 5000, 0), ("b", "pack-1b", 5000, 0)):
        payment = Payment.objects.create(
            user=first.user,
            api_key=first,
            pack_id=pack,
            tokens=10**9,
            amount=amount,
            currency="usd",
            status=Payment.Status.SUCCEEDED,
            credited_tokens=10**9,
            idempotency_key=key,
        )
        Payment.objects.filter(pk=payment.pk).update(
            created_at=timezone.now() - timedelta(days=ago)
        )
    old = Payment.objects.create(
        user=first.user,
        api_key=first,
        pack_id="pack-1b",
        tokens=10**9,
        amount=700,
        currency="eur",
        status=Payment.Status.SUCCEEDED,
        credited_tokens=10**9,
        idempotency_key="old",
    )
    Payment.objects.filter(pk=old.pk).update(created_at=timezone.now() - timedelta(days=40))
    client = logged_in(staff)

    page = parsed(client.get("/staff/?range=30d&group=user"))
    assert by_group(page.rows) == {
        "slicer@example.com": (5, 1, 187),
        "stranger@example.com": (1, 0, 5000),
    }
    assert csv_rows(client.get(page.links["usage-csv"])) == page.rows
    # One day of payments spans the same 30 days as the usage charts (bug 6).
    assert page.chart_days["chart-revenue-usd"] == page.chart_days["chart-all-tokens"]
    assert len(page.chart_days["chart-revenue-usd"]) == 30
    assert "chart-revenue-eur" not in page.chart_days  # 40 days ago: outside the range
    today = days_ago(0).isoformat()
    assert [
        (row["data-day"], row["data-currency"], row["data-amount"]) for row in page.revenue
    ] == [(today, "usd", "10000")]
    response = client.get(page.links["revenue-csv"])
    assert response.status_code == 200
    revenue = list(csv.DictReader(io.StringIO(response.content.decode())))
    assert revenue == [{"day": today, "currency": "usd", "payments": "2", "amount": "100.00"}]

    wide = parsed(client.get(f"/staff/?range=custom&start={days_ago(60)}&end={today}"))
    assert [(row["data-currency"]) for row in wide.revenue] == ["eur", "usd"]


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("range=yearly", "Range: Select a valid choice"),
        ("group=colour", "Group by: Select a valid choice"),
        ("range=custom&start=2026-13-01&end=2026-12-01", "From: Enter a valid date"),
        ("range=custom&start=2026-11-02", "needs both a From and a To date"),
        ("range=custom&start=2026-11-02&end=2026-11-01", "To date is before the From date"),
        ("range=custom&start=2020-01-01&end=2021-06-01", "at most 366 days"),
        (f"range=custom&start=2026-01-01&end={days_ago(-3)}", "after today"),
    ],
)
@pytest.mark.slow
def test_bad_parameters_are_a_clear_message_never_a_500(
    traffic: dict[str, ApiKey], query: str, message: str
) -> None:
    first = traffic["first"]
    staff = User.objects.create_user(email="ops@example.com", password="x", is_staff=True)
    for client, url in (
        (logged_in(first.user), "/dashboard/"),
        (logged_in(first.user), f"/dashboard/keys/{first.pk}/"),
        (logged_in(staff), "/staff/"),
    ):
        response = client.get(f"{url}?{query}")
        assert response.status_code == 400, url
        page = parsed(response)
        assert message in page.error, (url, page.error)
        assert len(page.rows) == 30  # the last 30 days instead, said so
    response = logged_in(first.user).get(f"/dashboard/usage.csv?{query}")
    assert response.status_code == 400
    assert message in response.content.decode()


def test_the_csv_is_only_the_users_own(traffic: dict[str, ApiKey]) -> None:
    client = logged_in(traffic["first"].user)
    assert client.get(f"/dashboard/usage.csv?key={traffic['stranger'].pk}").status_code == 404
    assert client.get("/dashboard/usage.csv?key=abc").status_code == 400
    assert client.get("/dashboard/usage.csv?scope=all").status_code == 403
    assert client.get("/dashboard/usage.csv?table=revenue").status_code == 403
    mine = csv_rows(client.get("/dashboard/usage.csv?range=7d&group=key"))
    assert {row["group"] for row in mine} == {traffic["first"].prefix}
    assert Client().get("/dashboard/usage.csv").status_code == 302  # log in first


def test_a_csv_cell_is_never_run_as_a_spreadsheet_formula() -> None:
    api_key = ApiKeyFactory(user__email="=cmd@example.com")
    served(api_key, tokens=5, model="=HYPERLINK(1)")
    staff = User.objects.create_user(email="ops@example.com", password="x", is_staff=True)
    body = logged_in(staff).get("/dashboard/usage.csv?scope=all&group=model").content.decode()
    assert "'=HYPERLINK(1)" in body
    assert "\n=" not in body and ",=" not in body

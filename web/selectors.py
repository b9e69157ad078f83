"""Reads for the dashboards: bars, totals and tables over usage_by_day's rows (billing.selectors),
revenue, keys, workers."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from django.db.models import Count, Q, QuerySet, Sum
from django.db.models.functions import TruncDate
from django.utils import timezone

from billing.models import ApiKey, Payment, User
from billing.selectors import USAGE_FIELDS, UsageSlice, last_days
from inference.models import Worker
from web.charts import Bar

# What a usage table can be grouped by, and the usage row field that holds each.
GROUP_FIELDS: dict[str, str] = {
    "day": "day",
    "model": "model",
    "key": "api_key__prefix",
    "endpoint": "endpoint",
    "user": "api_key__user__email",
}


def usage_bars(
    *, rows: list[dict[str, Any]], field: str, usage_slice: UsageSlice | None = None
) -> list[Bar]:
    """One bar per day of the slice (zero where nothing happened) summing `field` over the rows."""
    totals: dict[date, float] = {}
    for row in rows:
        totals[row["day"]] = totals.get(row["day"], 0) + row[field]
    return [Bar(day=day, value=totals.get(day, 0)) for day in (usage_slice or last_days(30)).days]


def usage_totals(*, rows: list[dict[str, Any]], by: str) -> list[dict[str, Any]]:
    """Rows summed over the days, per `by` value, largest first, with an error rate."""
    totals: dict[Any, dict[str, Any]] = {}
    for row in rows:
        entry = totals.setdefault(row[by], {by: row[by], **dict.fromkeys(USAGE_FIELDS, 0)})
        for field in USAGE_FIELDS:
            entry[field] += row[field]
    result = sorted(totals.values(), key=lambda entry: -entry["charged_tokens"])
    for entry in result:
        entry["error_rate"] = entry["errors"] / entry["requests"] if entry["requests"] else 0.0
    return result


def usage_table(*, rows: list[dict[str, Any]], usage_slice: UsageSlice) -> list[dict[str, Any]]:
    """The slice's table, one entry per group with its `group` value (by day: every day of the
    range, oldest first, zero where nothing happened; otherwise largest first). The page's table
    and its CSV are both this list."""
    by = GROUP_FIELDS[usage_slice.group]
    totals = {entry[by]: entry for entry in usage_totals(rows=rows, by=by)}
    if usage_slice.group == "day":
        empty = {**dict.fromkeys(USAGE_FIELDS, 0), "error_rate": 0.0}
        return [{**totals.get(day, empty), "group": day} for day in usage_slice.days]
    return [{**entry, "group": value} for value, entry in totals.items()]


def revenue_by_day(*, usage_slice: UsageSlice | None = None) -> list[dict[str, Any]]:
    """Paid amounts per UTC day of the slice and currency (`amount` in minor units,
    `amount_major` in major ones), refunds not deducted."""
    usage_slice = usage_slice or last_days(30)
    start = datetime.combine(usage_slice.start, time.min, tzinfo=UTC)
    rows = (
        Payment.objects.filter(
            created_at__gte=start,
            created_at__lt=start + timedelta(days=len(usage_slice.days)),
            credited_tokens__gt=0,
        )
        .annotate(day=TruncDate("created_at", tzinfo=UTC))
        .values("day", "currency")
        .annotate(amount=Sum("amount"), payments=Count("id"))
        .order_by("day", "currency")
    )
    return [{**row, "amount_major": row["amount"] / 100} for row in rows]


def revenue_bars(
    *, rows: list[dict[str, Any]], currency: str, usage_slice: UsageSlice | None = None
) -> list[Bar]:
    """One bar per day of the slice, in major units of `currency`: a single day of payments
    spans the same days as the usage charts beside it."""
    amounts = {row["day"]: row["amount"] / 100 for row in rows if row["currency"] == currency}
    return [Bar(day=day, value=amounts.get(day, 0)) for day in (usage_slice or last_days(30)).days]


def key_activity() -> dict[str, int]:
    """Counts of keys: all, active ones, used in the last day and in the last 30 days."""
    now = timezone.now()
    keys = ApiKey.objects.all()
    return {
        "keys": keys.count(),
        "active": keys.filter(revoked_at__isnull=True, user__is_active=True).count(),
        "used_24h": keys.filter(last_used_at__gte=now - timedelta(days=1)).count(),
        "used_30d": keys.filter(last_used_at__gte=now - timedelta(days=30)).count(),
        "users": User.objects.filter(is_active=True, is_visitor=False).count(),
        "visitor_keys": keys.filter(user__is_visitor=True).count(),
    }


def workers_by_model() -> list[Worker]:
    """Every registered worker with its model and last health check."""
    return list(Worker.objects.select_related("model").order_by("model__name", "url"))


def key_search(*, query: str) -> QuerySet[ApiKey]:
    """Keys whose prefix, name or owner's e-mail contains the query (staff lookup)."""
    keys = ApiKey.objects.select_related("user").order_by("-created_at")
    if query:
        keys = keys.filter(
            Q(prefix__icontains=query) | Q(name__icontains=query) | Q(user__email__icontains=query)
        )
    return keys

"""Reads for the dashboards: usage per day (today counted live), revenue, keys, workers."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from django.db.models import Count, Q, QuerySet, Sum
from django.db.models.functions import TruncDate
from django.utils import timezone

from billing.models import ApiKey, Payment, UsageDaily, UsageRecord, User
from inference.models import Worker
from metering.usage import usage_sums
from web.charts import Bar

USAGE_FIELDS = ("requests", "errors", "text_tokens", "image_tokens", "charged_tokens")


def _live_today(records: QuerySet[UsageRecord], by: tuple[str, ...]) -> list[dict[str, Any]]:
    """Today's usage from the request rows themselves: a dashboard is exact the moment after a
    request, without waiting for the rollup."""
    start = datetime.combine(timezone.now().date(), time.min, tzinfo=UTC)
    return list(usage_sums(records.filter(created_at__gte=start), *by))


def usage_by_day(
    *,
    user: User | None = None,
    api_key: ApiKey | None = None,
    days: int = 30,
    by: tuple[str, ...] = (),
) -> list[dict[str, Any]]:
    """Usage per day for the last `days` days (and by e.g. "model", "api_key__prefix")."""
    today = timezone.now().date()
    rolled = UsageDaily.objects.filter(day__gte=today - timedelta(days=days - 1), day__lt=today)
    live = UsageRecord.objects.all()
    if user is not None:
        rolled, live = rolled.filter(api_key__user=user), live.filter(api_key__user=user)
    if api_key is not None:
        rolled, live = rolled.filter(api_key=api_key), live.filter(api_key=api_key)
    rows = list(rolled.values("day", *by).annotate(**{field: Sum(field) for field in USAGE_FIELDS}))
    rows += [{"day": today, **row} for row in _live_today(live, by)]
    for row in rows:
        for field in USAGE_FIELDS:
            row[field] = int(row[field] or 0)
    return sorted(rows, key=lambda row: (row["day"], *(str(row[name]) for name in by)))


def usage_bars(*, rows: list[dict[str, Any]], field: str, days: int = 30) -> list[Bar]:
    """One bar per day (zero where nothing happened) summing `field` over the rows."""
    today = timezone.now().date()
    totals: dict[date, float] = {}
    for row in rows:
        totals[row["day"]] = totals.get(row["day"], 0) + row[field]
    return [
        Bar(day=day, value=totals.get(day, 0))
        for day in (today - timedelta(days=offset) for offset in range(days - 1, -1, -1))
    ]


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


def revenue_by_day(*, days: int = 30) -> list[dict[str, Any]]:
    """Paid amounts per day and currency (minor units), refunds not deducted."""
    since = timezone.now() - timedelta(days=days)
    rows = (
        Payment.objects.filter(created_at__gte=since, credited_tokens__gt=0)
        .annotate(day=TruncDate("created_at"))
        .values("day", "currency")
        .annotate(amount=Sum("amount"), payments=Count("id"))
        .order_by("day")
    )
    return [dict(row) for row in rows]


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

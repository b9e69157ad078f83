"""Reads for accounts and keys, and usage per day: the one selector the dashboards and the key
box chart (the rollup before today, today from the request rows)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from django.db.models import QuerySet, Sum
from django.utils import timezone

from billing.models import ApiKey, LedgerEntry, UsageDaily, UsageRecord, User
from metering.usage import usage_sums


def api_key_list(*, user: User) -> QuerySet[ApiKey]:
    """A user's keys, newest first."""
    return ApiKey.objects.filter(user=user).order_by("-created_at")


def api_key_find(*, reference: str) -> ApiKey | None:
    """A key by its numeric id or its display prefix (as printed by the operator commands)."""
    if reference.isdigit():
        return ApiKey.objects.filter(pk=int(reference)).first()
    matches = list(ApiKey.objects.filter(prefix=reference)[:2])
    return matches[0] if len(matches) == 1 else None


def ledger_entries(*, api_key: ApiKey) -> QuerySet[LedgerEntry]:
    """A key's ledger, newest first."""
    return LedgerEntry.objects.filter(api_key=api_key).order_by("-created_at", "-id")


USAGE_FIELDS = ("requests", "errors", "text_tokens", "image_tokens", "charged_tokens")


def _live_today(records: QuerySet[UsageRecord], by: tuple[str, ...]) -> list[dict[str, Any]]:
    """Today's usage from the request rows themselves: a dashboard is exact the moment after a
    request, without waiting for the rollup."""
    start = datetime.combine(timezone.now().date(), time.min, tzinfo=UTC)
    return usage_sums(records.filter(created_at__gte=start), *by)


@dataclass(frozen=True)
class UsageSlice:
    """A range of UTC days (both ends included) and what its table is grouped by."""

    start: date
    end: date
    group: str = "day"

    @property
    def days(self) -> list[date]:
        """Every day of the range, oldest first."""
        return [self.start + timedelta(days=n) for n in range((self.end - self.start).days + 1)]


def last_days(days: int, *, group: str = "day") -> UsageSlice:
    """The `days` days that end today."""
    today = timezone.now().date()
    return UsageSlice(start=today - timedelta(days=days - 1), end=today, group=group)


def usage_by_day(
    *,
    user: User | None = None,
    api_key: ApiKey | None = None,
    usage_slice: UsageSlice | None = None,
    by: tuple[str, ...] = (),
) -> list[dict[str, Any]]:
    """Usage per day of the slice (the last 30 days by default), and by e.g. "model",
    "api_key__prefix"; days before today from the rollup, today from the request rows."""
    usage_slice = usage_slice or last_days(30)
    today = timezone.now().date()
    rolled = UsageDaily.objects.filter(
        day__gte=usage_slice.start, day__lte=min(usage_slice.end, today - timedelta(days=1))
    )
    live = UsageRecord.objects.all()
    if user is not None:
        rolled, live = rolled.filter(api_key__user=user), live.filter(api_key__user=user)
    if api_key is not None:
        rolled, live = rolled.filter(api_key=api_key), live.filter(api_key=api_key)
    rows = list(rolled.values("day", *by).annotate(**{field: Sum(field) for field in USAGE_FIELDS}))
    if usage_slice.start <= today <= usage_slice.end:
        rows += [{"day": today, **row} for row in _live_today(live, by)]
    for row in rows:
        for field in USAGE_FIELDS:
            row[field] = int(row[field] or 0)
    return sorted(rows, key=lambda row: (row["day"], *(str(row[name]) for name in by)))

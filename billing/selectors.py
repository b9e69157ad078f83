"""Reads for accounts and keys."""

from __future__ import annotations

from datetime import date
from typing import Any

from django.db.models import QuerySet, Sum

from billing.models import ApiKey, LedgerEntry, UsageDaily, UsageRecord, User


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


def usage_daily(
    *,
    user: User | None = None,
    api_key: ApiKey | None = None,
    since: date | None = None,
    group_by: tuple[str, ...] = ("day",),
) -> list[dict[str, Any]]:
    """Rolled-up usage, summed by any of day / model / api_key — what the dashboards chart."""
    rows = UsageDaily.objects.all()
    if user is not None:
        rows = rows.filter(api_key__user=user)
    if api_key is not None:
        rows = rows.filter(api_key=api_key)
    if since is not None:
        rows = rows.filter(day__gte=since)
    return list(
        rows.values(*group_by)
        .annotate(
            requests=Sum("requests"),
            errors=Sum("errors"),
            text_tokens=Sum("text_tokens"),
            image_tokens=Sum("image_tokens"),
            charged_tokens=Sum("charged_tokens"),
        )
        .order_by(*group_by)
    )


def usage_records(*, api_key: ApiKey, status: str | None = None) -> QuerySet[UsageRecord]:
    """A key's request log, newest first."""
    rows = UsageRecord.objects.filter(api_key=api_key)
    return rows.filter(status=status) if status else rows

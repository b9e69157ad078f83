"""Reads for accounts and keys."""

from __future__ import annotations

from datetime import date
from typing import Any

from django.conf import settings
from django.db.models import QuerySet, Sum

from billing.models import ApiKey, LedgerEntry, UsageDaily, UsageRecord, User
from embeddings_site.ttl_cache import TtlCache
from metering.keys import key_digest, key_is_well_formed

# Active keys by digest for KEY_CACHE_SECONDS, in this process: the hot path skips a query per
# request. A revoked key or suspended user is refused by every process within that many
# seconds, and at once by the process that made the change (api_key_cache_clear).
_key_cache: TtlCache[ApiKey] = TtlCache(max_entries=10_000)


def api_key_cache_clear() -> None:
    """Forget the cached keys of this process (after a revocation or suspension)."""
    _key_cache.clear()


def api_key_get_active(*, key: str) -> ApiKey | None:
    """The active key for a plaintext key, or None; malformed keys never reach the database."""
    if not key_is_well_formed(key):
        return None
    digest = key_digest(key)
    if settings.KEY_CACHE_SECONDS > 0:
        cached = _key_cache.get(digest)
        if cached is not None:
            return cached
    api_key = (
        ApiKey.objects.select_related("user", "auto_recharge")
        .filter(digest=digest, revoked_at__isnull=True, user__is_active=True)
        .first()
    )
    if api_key is not None and settings.KEY_CACHE_SECONDS > 0:
        _key_cache.put(digest, api_key, seconds=settings.KEY_CACHE_SECONDS)
    return api_key


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

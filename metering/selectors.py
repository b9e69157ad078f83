"""Reads of the hot path: the active key behind a bearer token."""

from __future__ import annotations

from django.conf import settings

from billing.models import ApiKey
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


def api_key_refusal_message(*, key: str) -> str:
    """Why a well-formed key that is not active is refused, for its holder (only on the refusal
    path: one query that the hot path never makes)."""
    if key_is_well_formed(key):
        row = (
            ApiKey.objects.filter(digest=key_digest(key))
            .values("revoked_at", "user__is_active")
            .first()
        )
        if row is not None and not row["user__is_active"]:
            return (
                "The account that owns this API key is suspended, so its keys are refused. "
                "Contact the site's operators to restore it."
            )
        if row is not None and row["revoked_at"] is not None:
            return "This API key was revoked. Create a new key in your dashboard."
    return "Invalid API key. Check the key, or create a new one in your dashboard."

"""Reads for accounts and keys."""

from __future__ import annotations

from django.db.models import QuerySet

from billing.keys import key_digest, key_is_well_formed
from billing.models import ApiKey, User


def api_key_get_active(*, key: str) -> ApiKey | None:
    """The active key for a plaintext key, or None; malformed keys never reach the database."""
    if not key_is_well_formed(key):
        return None
    return (
        ApiKey.objects.select_related("user")
        .filter(digest=key_digest(key), revoked_at__isnull=True, user__is_active=True)
        .first()
    )


def api_key_list(*, user: User) -> QuerySet[ApiKey]:
    """A user's keys, newest first."""
    return ApiKey.objects.filter(user=user).order_by("-created_at")


def api_key_find(*, reference: str) -> ApiKey | None:
    """A key by its numeric id or its display prefix (as printed by the operator commands)."""
    if reference.isdigit():
        return ApiKey.objects.filter(pk=int(reference)).first()
    matches = list(ApiKey.objects.filter(prefix=reference)[:2])
    return matches[0] if len(matches) == 1 else None

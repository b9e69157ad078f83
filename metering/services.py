"""Writes of the hot path: when a key was last used."""

from __future__ import annotations

from datetime import timedelta

from django.utils import timezone

from billing.models import ApiKey

# last_used_at is for people reading a dashboard; one write a minute per key is precise enough.
LAST_USED_RESOLUTION = timedelta(seconds=60)


def api_key_touch(*, api_key: ApiKey) -> None:
    """Record that a key was used, at most once per LAST_USED_RESOLUTION."""
    now = timezone.now()
    if api_key.last_used_at is not None and now - api_key.last_used_at < LAST_USED_RESOLUTION:
        return
    ApiKey.objects.filter(pk=api_key.pk).update(last_used_at=now)
    api_key.last_used_at = now

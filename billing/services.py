"""Writes for accounts and keys."""

from __future__ import annotations

from datetime import timedelta

from django.db import transaction
from django.utils import timezone

from billing.keys import key_digest, key_display_prefix, key_generate
from billing.models import ApiKey, User

# last_used_at is for people reading a dashboard; one write a minute per key is precise enough.
LAST_USED_RESOLUTION = timedelta(seconds=60)


@transaction.atomic
def user_get_or_create(*, email: str) -> tuple[User, bool]:
    """The user with this e-mail, created without a usable password when new."""
    email = User.objects.normalize_email(email).lower()
    user = User.objects.filter(email=email).first()
    if user is not None:
        return user, False
    return User.objects.create_user(email=email), True


@transaction.atomic
def api_key_create(*, user: User, name: str = "default") -> tuple[ApiKey, str]:
    """Issue a key; returns the row and the plaintext, which is never stored or shown again."""
    plaintext = key_generate()
    api_key = ApiKey.objects.create(
        user=user,
        name=name,
        prefix=key_display_prefix(plaintext),
        digest=key_digest(plaintext),
    )
    return api_key, plaintext


def api_key_revoke(*, api_key: ApiKey) -> ApiKey:
    """Revoke a key; every later request with it is refused."""
    if api_key.revoked_at is None:
        api_key.revoked_at = timezone.now()
        ApiKey.objects.filter(pk=api_key.pk, revoked_at__isnull=True).update(
            revoked_at=api_key.revoked_at
        )
    return api_key


def api_key_touch(*, api_key: ApiKey) -> None:
    """Record that a key was used, at most once per LAST_USED_RESOLUTION."""
    now = timezone.now()
    if api_key.last_used_at is not None and now - api_key.last_used_at < LAST_USED_RESOLUTION:
        return
    ApiKey.objects.filter(pk=api_key.pk).update(last_used_at=now)
    api_key.last_used_at = now

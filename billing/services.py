"""Writes for accounts and keys."""

from __future__ import annotations

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from billing.models import ApiKey, LedgerEntry, Tier, User
from metering.keys import key_digest, key_display_prefix, key_generate
from metering.ledger import balance_credit
from metering.selectors import api_key_cache_clear


@transaction.atomic
def user_get_or_create(*, email: str) -> tuple[User, bool]:
    """The user with this e-mail, created without a usable password when new."""
    email = User.objects.normalize_email(email).lower()
    user = User.objects.filter(email=email).first()
    if user is not None:
        return user, False
    return User.objects.create_user(email=email), True


@transaction.atomic
def user_sign_up(*, email: str, password: str) -> User:
    """A new account with a password (the sign-up form validated both)."""
    email = User.objects.normalize_email(email).lower()
    return User.objects.create_user(email=email, password=password)


def user_suspend(*, user: User, suspended: bool = True) -> User:
    """Suspend (or restore) a user: a suspended user cannot log in and their keys are refused."""
    user.is_active = not suspended
    user.save(update_fields=["is_active"])
    api_key_cache_clear()
    return user


@transaction.atomic
def visitor_trial_key_create() -> tuple[ApiKey, str]:
    """A key for a playground visitor without an account: an owner of its own that cannot log
    in, and VISITOR_TRIAL_TOKENS to try the API with."""
    owner = User.objects.create_user(
        email=f"visitor-{key_generate()[-16:].lower()}@visitors.invalid"
    )
    return api_key_create(user=owner, name="playground trial", tokens=settings.VISITOR_TRIAL_TOKENS)


@transaction.atomic
def api_key_create(
    *,
    user: User,
    name: str = "default",
    tokens: int | None = None,
    tier: str = Tier.STANDARD,
    rpm: int | None = None,
    tpm: int | None = None,
    concurrency: int | None = None,
) -> tuple[ApiKey, str]:
    """Issue a key; returns the row and the plaintext, which is never stored or shown again.

    `tokens` starts the key with exactly that many (an admin grant, no trial); otherwise the
    first key a user ever gets receives the trial grant (TRIAL_TOKENS).
    """
    first_key = not ApiKey.objects.filter(user=user).exists()
    plaintext = key_generate()
    api_key = ApiKey.objects.create(
        user=user,
        name=name,
        prefix=key_display_prefix(plaintext),
        digest=key_digest(plaintext),
        tier=tier,
        rpm_limit=rpm,
        tpm_limit=tpm,
        concurrency_limit=concurrency,
    )
    if tokens is not None:
        if tokens > 0:
            balance_credit(
                api_key=api_key,
                tokens=tokens,
                kind=LedgerEntry.Kind.ADMIN_GRANT,
                reference="issued with the key",
            )
    elif first_key and settings.TRIAL_TOKENS > 0:
        balance_credit(
            api_key=api_key, tokens=settings.TRIAL_TOKENS, kind=LedgerEntry.Kind.TRIAL_GRANT
        )
    api_key.refresh_from_db(fields=["balance"])
    return api_key, plaintext


def api_key_grant(*, api_key: ApiKey, tokens: int, note: str = "") -> LedgerEntry:
    """An operator's grant of tokens to a key."""
    return balance_credit(
        api_key=api_key, tokens=tokens, kind=LedgerEntry.Kind.ADMIN_GRANT, reference=note
    )


def api_key_set_limits(
    *,
    api_key: ApiKey,
    tier: str | None = None,
    rpm: int | None = None,
    tpm: int | None = None,
    concurrency: int | None = None,
) -> ApiKey:
    """Change a key's tier and per-key overrides (None leaves a value as it is)."""
    if tier is not None:
        api_key.tier = tier
    api_key.rpm_limit = rpm if rpm is not None else api_key.rpm_limit
    api_key.tpm_limit = tpm if tpm is not None else api_key.tpm_limit
    api_key.concurrency_limit = (
        concurrency if concurrency is not None else api_key.concurrency_limit
    )
    api_key.save(update_fields=["tier", "rpm_limit", "tpm_limit", "concurrency_limit"])
    return api_key


def api_key_revoke(*, api_key: ApiKey) -> ApiKey:
    """Revoke a key; every later request with it is refused."""
    if api_key.revoked_at is None:
        api_key.revoked_at = timezone.now()
        ApiKey.objects.filter(pk=api_key.pk, revoked_at__isnull=True).update(
            revoked_at=api_key.revoked_at
        )
    api_key_cache_clear()
    return api_key

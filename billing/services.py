"""Writes for accounts and keys."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from typing import Any

from django.conf import settings
from django.contrib.auth.hashers import make_password
from django.core.mail import send_mail
from django.core.signing import BadSignature, SignatureExpired, TimestampSigner
from django.db import IntegrityError, transaction
from django.db.models import F
from django.template.loader import render_to_string
from django.utils import timezone

from billing.models import ApiKey, LedgerEntry, Tier, User, VisitorTrialCount
from metering.keys import key_digest, key_display_prefix, key_generate
from metering.ledger import InsufficientBalance, TransferRefused, balance_credit, balance_transfer
from metering.selectors import api_key_cache_clear


@transaction.atomic
def user_get_or_create(*, email: str) -> tuple[User, bool]:
    """The user with this e-mail, created without a usable password when new (by an operator,
    who vouches for the address: it counts as verified, so the first key gets the trial)."""
    email = User.objects.normalize_email(email).lower()
    user = User.objects.filter(email=email).first()
    if user is not None:
        return user, False
    return User.objects.create_user(email=email, email_verified_at=timezone.now()), True


def user_sign_up(*, email: str, password: str) -> User | None:
    """A new account with a password (the sign-up form validated both), or None when the
    address already has one. Both take about as long (a password hash each), so neither the
    answer nor its timing tells a stranger which addresses have accounts."""
    email = User.objects.normalize_email(email).lower()
    if User.objects.filter(email__iexact=email).exists():
        make_password(password)
        return None
    try:
        with transaction.atomic():
            return User.objects.create_user(email=email, password=password)
    except IntegrityError:  # the same address signed up twice at once
        return None


def user_sign_up_repeated_send(*, email: str, login_url: str, reset_url: str) -> None:
    """Tell the owner of an address that already has an account that someone signed up with it
    (the only place the answer "this address has an account" goes: to the address itself)."""
    send_mail(
        subject="You already have an account",
        message=render_to_string(
            "registration/signup_repeated_email.txt",
            {"email": email, "login_url": login_url, "reset_url": reset_url},
        ),
        from_email=None,
        recipient_list=[email],
    )


# How long a link mailed at sign-up (or resent) verifies the address.
EMAIL_VERIFICATION_MAX_AGE = timedelta(days=3)
_EMAIL_VERIFICATION_SALT = "billing.user-email-verification"


class EmailVerificationError(Exception):
    """A verification link that is expired, tampered with or for an address no longer the user's."""

    def __init__(self, message: str, *, expired: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.expired = expired


@dataclass(frozen=True)
class EmailVerification:
    user: User
    newly_verified: bool
    # The key that received the trial just now, if one did.
    trial_key: ApiKey | None


def user_email_verification_token(*, user: User) -> str:
    """A signed, expiring token naming the user and the address it proves (URL-safe)."""
    return TimestampSigner(salt=_EMAIL_VERIFICATION_SALT).sign_object(
        {"user": user.pk, "email": user.email}
    )


def user_email_verification_send(*, user: User, verify_url: str) -> None:
    """Mail the user the link that verifies their address and unlocks the trial."""
    context = {"email": user.email, "verify_url": verify_url, "trial_tokens": settings.TRIAL_TOKENS}
    send_mail(
        subject="Verify your e-mail address",
        message=render_to_string("registration/verify_email_email.txt", context),
        from_email=None,
        recipient_list=[user.email],
    )


def _verification_claim(token: str) -> dict[str, Any]:
    signer = TimestampSigner(salt=_EMAIL_VERIFICATION_SALT)
    try:
        claim: dict[str, Any] = signer.unsign_object(token, max_age=EMAIL_VERIFICATION_MAX_AGE)
    except SignatureExpired as exc:
        raise EmailVerificationError(
            "This verification link has expired. Log in and ask for a new one.", expired=True
        ) from exc
    except BadSignature as exc:
        raise EmailVerificationError(
            "This verification link is not valid. Copy the whole link from the e-mail, "
            "or log in and ask for a new one."
        ) from exc
    return claim


def _verification_user(claim: dict[str, Any], *, lock: bool) -> User:
    users = User.objects.select_for_update() if lock else User.objects.all()
    user = users.filter(pk=int(claim.get("user") or 0)).first()
    if user is None or user.email != claim.get("email"):
        raise EmailVerificationError(
            "This verification link is for an address this account no longer has."
        )
    return user


def user_email_verification_user(*, token: str) -> User:
    """The user a verification link is for (EmailVerificationError when it is not valid);
    nothing is changed."""
    return _verification_user(_verification_claim(token), lock=False)


@transaction.atomic
def user_email_verify(*, token: str, new_password: str | None = None) -> EmailVerification:
    """Mark the token's user verified and grant the trial to their first key, exactly once.

    With `new_password` (the link was followed somewhere other than the browser that signed
    up), the one who holds the mailbox sets the account's password first. Whoever chose the
    sign-up password may not be them (someone can sign up with another's address before its
    owner does), so what that password made is not trusted: its sessions end (a new password
    changes the session hash) and its keys are revoked.
    """
    # The user row lock makes a link followed twice at once verify (and grant) only once.
    user = _verification_user(_verification_claim(token), lock=True)
    newly_verified = user.email_verified_at is None
    trial_key = None
    if newly_verified:
        if new_password is not None:
            user.set_password(new_password)
            for api_key in ApiKey.objects.filter(user=user, revoked_at__isnull=True):
                api_key_revoke(api_key=api_key)
        user.email_verified_at = timezone.now()
        user.save(update_fields=["email_verified_at", "password"])
        first_key = ApiKey.objects.filter(user=user, revoked_at__isnull=True).order_by("pk").first()
        if first_key is not None:
            trial_key = _trial_grant(user=user, api_key=first_key)
    return EmailVerification(user=user, newly_verified=newly_verified, trial_key=trial_key)


def _trial_grant(*, user: User, api_key: ApiKey) -> ApiKey | None:
    """TRIAL_TOKENS to `api_key` if the (locked, verified) user never had a trial; else None."""
    if settings.TRIAL_TOKENS <= 0 or user.email_verified_at is None:
        return None
    # Accounts from before verification existed got their trial at their first key.
    if LedgerEntry.objects.filter(api_key__user=user, kind=LedgerEntry.Kind.TRIAL_GRANT).exists():
        return None
    balance_credit(api_key=api_key, tokens=settings.TRIAL_TOKENS, kind=LedgerEntry.Kind.TRIAL_GRANT)
    return api_key


def user_suspend(*, user: User, suspended: bool = True) -> User:
    """Suspend (or restore) a user: a suspended user cannot log in and their keys are refused."""
    user.is_active = not suspended
    user.save(update_fields=["is_active"])
    api_key_cache_clear()
    return user


class VisitorTrialsExhausted(Exception):
    """This address or its network has had its visitor trial keys for today."""

    def __init__(self, retry_after: int) -> None:
        super().__init__("visitor trials exhausted")
        self.retry_after = retry_after


def visitor_trial_scopes(client_ip: str) -> list[tuple[str, int]]:
    """What one visitor trial counts against, with each cap: the address, and its /24 (IPv4)
    or /56 (IPv6), since one person easily holds many addresses of one network."""
    address = ipaddress.ip_address(client_ip)
    prefix = 24 if address.version == 4 else 56
    network = ipaddress.ip_network(f"{address}/{prefix}", strict=False)
    return [
        (f"ip:{address}", settings.VISITOR_TRIALS_PER_IP_PER_DAY),
        (f"net:{network}", settings.VISITOR_TRIALS_PER_NETWORK_PER_DAY),
    ]


@transaction.atomic
def visitor_trial_key_create(*, client_ip: str) -> tuple[ApiKey, str]:
    """A key for a playground visitor without an account: an owner of its own that cannot log
    in and is no user, and VISITOR_TRIAL_TOKENS to try the API with.

    At most VISITOR_TRIALS_PER_IP_PER_DAY per address and VISITOR_TRIALS_PER_NETWORK_PER_DAY
    per network, per UTC day; else VisitorTrialsExhausted (nothing is taken from either count).
    """
    now = timezone.now()
    today = now.date()
    VisitorTrialCount.objects.filter(day__lt=today - timedelta(days=1)).delete()
    for scope, cap in visitor_trial_scopes(client_ip):
        VisitorTrialCount.objects.bulk_create(
            [VisitorTrialCount(scope=scope, day=today)], ignore_conflicts=True
        )
        # One conditional UPDATE per scope: concurrent gateways cannot both take the last one.
        taken = VisitorTrialCount.objects.filter(scope=scope, day=today, count__lt=cap).update(
            count=F("count") + 1
        )
        if not taken:
            midnight = datetime.combine(today + timedelta(days=1), time.min, tzinfo=UTC)
            raise VisitorTrialsExhausted(retry_after=max(1, int((midnight - now).total_seconds())))
    owner = User.objects.create_user(
        email=f"visitor-{key_generate()[-16:].lower()}@visitors.invalid", is_visitor=True
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
    first key a user ever gets receives the trial grant (TRIAL_TOKENS) once the user's e-mail
    is verified: now if it already is, else when they follow the link (user_email_verify).
    """
    if tokens is None:
        # Locked so a verification at the same moment sees this key or grants before it exists.
        user = User.objects.select_for_update().get(pk=user.pk)
    # (Revoked keys do not count: a verification that reset the password revoked them all.)
    first_key = not ApiKey.objects.filter(user=user, revoked_at__isnull=True).exists()
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
    elif first_key:
        _trial_grant(user=user, api_key=api_key)
    api_key.refresh_from_db(fields=["balance"])
    return api_key, plaintext


def api_key_name_unique(*, user: User, name: str) -> str:
    """`name`, or "name 2", "name 3", … when the user already has a key of that name."""
    taken = set(
        ApiKey.objects.filter(user=user, name__startswith=name).values_list("name", flat=True)
    )
    if name not in taken:
        return name
    return next(f"{name} {n}" for n in range(2, len(taken) + 3) if f"{name} {n}" not in taken)


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


class TokensMoveRefused(Exception):
    """A move of tokens between keys that cannot happen, with a message for the owner."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def api_key_tokens_move(
    *, user: User, source: ApiKey, destination: ApiKey, tokens: int | None
) -> int:
    """Move tokens (all of them when None) from one of the user's keys to another active one, as
    one ledger transfer. Returns the tokens moved."""
    if source.user_id != user.pk or destination.user_id != user.pk:
        raise TokensMoveRefused("Choose two of your own keys.")
    try:
        return balance_transfer(source=source, destination=destination, tokens=tokens)
    except InsufficientBalance as exc:
        source.refresh_from_db(fields=["balance"])
        held = f"Key {source.prefix}… holds {source.balance:,} tokens"
        raise TokensMoveRefused(
            f"{held}; it cannot move {tokens:,}." if tokens else f"{held}: nothing to move."
        ) from exc
    except TransferRefused as exc:
        raise TokensMoveRefused(str(exc)) from exc


@transaction.atomic
def api_key_revoke_moving_tokens(*, user: User, api_key: ApiKey, destination: ApiKey) -> int:
    """Revoke a key and move everything it holds to another of the user's keys, together.

    Revoked first, then whatever the key holds at that moment moves (under its row lock). A
    request admitted just before, and refunded later, leaves its tokens on the revoked key,
    whose page can still move them.
    """
    api_key_revoke(api_key=api_key)
    balance = ApiKey.objects.values_list("balance", flat=True).get(pk=api_key.pk)
    if balance <= 0:
        return 0
    return api_key_tokens_move(user=user, source=api_key, destination=destination, tokens=None)


def api_key_revoke(*, api_key: ApiKey) -> ApiKey:
    """Revoke a key; every later request with it is refused."""
    if api_key.revoked_at is None:
        api_key.revoked_at = timezone.now()
        ApiKey.objects.filter(pk=api_key.pk, revoked_at__isnull=True).update(
            revoked_at=api_key.revoked_at
        )
    api_key_cache_clear()
    return api_key


@transaction.atomic
def api_key_settings_update(
    *,
    api_key: ApiKey,
    name: str,
    expires_at: datetime | None,
    allowed_models: list[str],
    low_balance_alert_tokens: int | None,
) -> ApiKey:
    """Rename a key and set (or clear) its expiry, allowed models and low-balance alert.

    Every process sees the change within KEY_CACHE_SECONDS, this one at once; an expiry itself is
    compared with the clock on each request, so it takes effect at its time.
    """
    locked = ApiKey.objects.select_for_update().get(pk=api_key.pk)
    if low_balance_alert_tokens != locked.low_balance_alert_tokens:
        # A new threshold is a new alert: it fires when a debit takes the balance below it.
        locked.low_balance_alerted_at = None
    locked.name = name.strip()[:100] or locked.name
    locked.expires_at = expires_at
    locked.allowed_models = sorted(set(allowed_models))
    locked.low_balance_alert_tokens = low_balance_alert_tokens
    locked.save(
        update_fields=[
            "name",
            "expires_at",
            "allowed_models",
            "low_balance_alert_tokens",
            "low_balance_alerted_at",
        ]
    )
    api_key_cache_clear()
    return locked

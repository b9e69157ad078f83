from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from django.contrib.auth.base_user import BaseUserManager
from django.contrib.auth.models import AbstractUser
from django.db import models
from django.utils import timezone


class UserManager(BaseUserManager["User"]):
    use_in_migrations = True

    def _create_user(self, email: str, password: str | None, **extra: Any) -> User:
        if not email:
            raise ValueError("An e-mail address is required")
        user = self.model(email=self.normalize_email(email).lower(), **extra)
        user.set_password(password)
        user.save(using=self._db)
        return user

    def create_user(self, email: str, password: str | None = None, **extra: Any) -> User:
        extra.setdefault("is_staff", False)
        extra.setdefault("is_superuser", False)
        return self._create_user(email, password, **extra)

    def create_superuser(self, email: str, password: str | None = None, **extra: Any) -> User:
        extra.setdefault("is_staff", True)
        extra.setdefault("is_superuser", True)
        return self._create_user(email, password, **extra)


class User(AbstractUser):
    """A person who signs in with an e-mail address and owns API keys."""

    username = None  # type: ignore[assignment]
    email = models.EmailField("e-mail address", unique=True)
    stripe_customer_id = models.CharField(max_length=255, blank=True)
    # The card saved for top-ups and auto-recharge (a Stripe PaymentMethod id) and its label.
    stripe_payment_method_id = models.CharField(max_length=255, blank=True)
    card_label = models.CharField(max_length=100, blank=True)
    # Set when the owner followed the signed link mailed at sign-up; the trial waits for it.
    email_verified_at = models.DateTimeField(null=True, blank=True)
    # The owner of a playground visitor's trial key: no password, no sign-in, not a user that
    # staff's counts include.
    is_visitor = models.BooleanField(default=False)

    USERNAME_FIELD = "email"
    REQUIRED_FIELDS = []

    objects = UserManager()  # type: ignore[misc,assignment]

    def __str__(self) -> str:
        return self.email


class Tier(models.TextChoices):
    STANDARD = "standard", "Standard"
    PREMIUM = "premium", "Premium"


class ApiKey(models.Model):
    """A bearer key. Only its SHA-256 digest is stored; the key itself is shown once."""

    user = models.ForeignKey(User, on_delete=models.CASCADE, related_name="api_keys")
    name = models.CharField(max_length=100)
    prefix = models.CharField(max_length=32, db_index=True, help_text="Shown to tell keys apart.")
    digest = models.CharField(max_length=64, unique=True)
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    # Tokens belong to a key (as in Jina's product). Only the ledger services change it, with a
    # conditional update; the constraint is the last line of defence against overspending.
    balance = models.BigIntegerField(default=0)
    tier = models.CharField(max_length=20, choices=Tier.choices, default=Tier.STANDARD)
    rpm_limit = models.PositiveIntegerField(null=True, blank=True, help_text="Overrides the tier.")
    tpm_limit = models.PositiveBigIntegerField(
        null=True, blank=True, help_text="Overrides the tier."
    )
    concurrency_limit = models.PositiveIntegerField(
        null=True, blank=True, help_text="Overrides the tier."
    )
    # After this moment the API refuses the key (AUTH_KEY_EXPIRED); checked on every request,
    # so it takes effect at its time even while the key sits in a process's key cache.
    expires_at = models.DateTimeField(null=True, blank=True)
    # Model names this key may use; empty: every model.
    allowed_models = models.JSONField(default=list, blank=True)
    # E-mail the owner once when a debit takes the balance below this; a top-up that lifts the
    # balance to it or above re-arms the alert (low_balance_alerted_at back to None).
    low_balance_alert_tokens = models.PositiveBigIntegerField(null=True, blank=True)
    low_balance_alerted_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        verbose_name = "API key"
        constraints = [
            models.CheckConstraint(
                condition=models.Q(balance__gte=0), name="apikey_balance_not_negative"
            )
        ]

    def __str__(self) -> str:
        return f"{self.prefix}… ({self.name})"

    @property
    def is_active(self) -> bool:
        return self.revoked_at is None

    def is_expired(self, *, at: datetime | None = None) -> bool:
        """Whether the key's expiry has passed (at `at`, default now)."""
        return self.expires_at is not None and self.expires_at <= (at or timezone.now())

    def allows_model(self, name: str) -> bool:
        """Whether the key may use the model of this (canonical) name."""
        return not self.allowed_models or name in self.allowed_models


class LedgerEntry(models.Model):
    """One append-only change to a key's balance; a key's balance is the sum of its entries."""

    class Kind(models.TextChoices):
        TRIAL_GRANT = "trial_grant", "Trial grant"
        TOPUP = "topup", "Top-up"
        ADMIN_GRANT = "admin_grant", "Admin grant"
        USAGE = "usage", "Usage debit"
        REFUND = "refund", "Refund"
        ADJUSTMENT = "adjustment", "Adjustment"
        PAYMENT_REFUND = "payment_refund", "Payment refunded"
        # The two halves of one move of tokens between two keys of one user, written together.
        TRANSFER_OUT = "transfer_out", "Moved to another key"
        TRANSFER_IN = "transfer_in", "Moved from another key"

    api_key = models.ForeignKey(ApiKey, on_delete=models.PROTECT, related_name="ledger_entries")
    kind = models.CharField(max_length=20, choices=Kind.choices)
    tokens = models.BigIntegerField(help_text="Positive credits, negative debits.")
    usage = models.ForeignKey(
        "UsageRecord",
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="ledger_entries",
    )
    reference = models.CharField(max_length=255, blank=True, help_text="Payment id, admin note, …")
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        verbose_name_plural = "ledger entries"
        constraints = [
            # A request is debited once and refunded at most once.
            models.UniqueConstraint(
                fields=["kind", "usage"],
                condition=models.Q(usage__isnull=False),
                name="ledger_one_entry_per_kind_per_request",
            )
        ]

    def __str__(self) -> str:
        return f"{self.kind} {self.tokens:+d} on {self.api_key_id}"


class UsageRecord(models.Model):
    """One /v1 request by a key: what it asked, what it cost, how it ended."""

    class Status(models.TextChoices):
        PENDING = "pending", "In flight (debited)"
        SUCCEEDED = "succeeded", "Served"
        FAILED = "failed", "Failed (refunded or never charged)"
        ABANDONED = "abandoned", "Gateway died mid-request (refunded by the sweeper)"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    api_key = models.ForeignKey(ApiKey, on_delete=models.PROTECT, related_name="usage_records")
    request_id = models.CharField(max_length=64, blank=True)
    endpoint = models.CharField(max_length=64, default="embeddings")
    model = models.CharField(max_length=100, blank=True)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.PENDING)
    http_status = models.PositiveSmallIntegerField(null=True, blank=True)
    error_code = models.CharField(max_length=64, blank=True)
    text_tokens = models.PositiveBigIntegerField(default=0)
    image_tokens = models.PositiveBigIntegerField(default=0)
    charged_tokens = models.PositiveBigIntegerField(default=0)
    latency_ms = models.FloatField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            models.Index(fields=["api_key", "created_at"]),
            models.Index(fields=["status", "created_at"]),
        ]

    def __str__(self) -> str:
        return f"{self.model} {self.status} {self.charged_tokens} tokens ({self.request_id})"

    @property
    def total_tokens(self) -> int:
        return self.text_tokens + self.image_tokens


class UsageDaily(models.Model):
    """Usage rolled up per key, endpoint, model and UTC day: what the dashboards read."""

    api_key = models.ForeignKey(ApiKey, on_delete=models.CASCADE, related_name="usage_days")
    endpoint = models.CharField(max_length=64, default="embeddings")
    model = models.CharField(max_length=100)
    day = models.DateField()
    requests = models.PositiveBigIntegerField(default=0)
    errors = models.PositiveBigIntegerField(default=0)
    text_tokens = models.PositiveBigIntegerField(default=0)
    image_tokens = models.PositiveBigIntegerField(default=0)
    charged_tokens = models.PositiveBigIntegerField(default=0)

    class Meta:
        ordering = ["-day", "model"]
        constraints = [
            models.UniqueConstraint(
                fields=["api_key", "endpoint", "model", "day"], name="usage_daily_unique"
            )
        ]

    def __str__(self) -> str:
        return (
            f"{self.day} {self.endpoint} {self.model}: "
            f"{self.requests} requests, {self.charged_tokens} tokens"
        )


class Payment(models.Model):
    """A purchase of a token pack for a key: a top-up on the page, or an auto-recharge."""

    class Kind(models.TextChoices):
        TOPUP = "topup", "Top-up"
        AUTO_RECHARGE = "auto_recharge", "Auto-recharge"

    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        REQUIRES_ACTION = "requires_action", "Needs authentication"
        SUCCEEDED = "succeeded", "Paid"
        FAILED = "failed", "Failed"
        REFUNDED = "refunded", "Refunded"
        PARTIALLY_REFUNDED = "partially_refunded", "Partially refunded"

    user = models.ForeignKey(User, on_delete=models.PROTECT, related_name="payments")
    api_key = models.ForeignKey(ApiKey, on_delete=models.PROTECT, related_name="payments")
    kind = models.CharField(max_length=20, choices=Kind.choices, default=Kind.TOPUP)
    pack_id = models.CharField(max_length=50)
    tokens = models.BigIntegerField()
    amount = models.PositiveIntegerField(help_text="In the currency's minor unit (cents).")
    currency = models.CharField(max_length=10)
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.PENDING)
    # Sent to Stripe with the charge: a retry of the same purchase can never charge twice.
    idempotency_key = models.CharField(max_length=100, unique=True)
    stripe_payment_intent_id = models.CharField(max_length=255, unique=True, null=True, blank=True)
    stripe_charge_id = models.CharField(max_length=255, blank=True)
    receipt_url = models.URLField(max_length=500, blank=True)
    credited_tokens = models.BigIntegerField(default=0)
    refunded_tokens = models.BigIntegerField(default=0, help_text="Taken back from the balance.")
    refund_shortfall_tokens = models.BigIntegerField(
        default=0, help_text="Refunded but already spent: could not be taken back."
    )
    failure_message = models.CharField(max_length=255, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.kind} {self.pack_id} {self.status} ({self.stripe_payment_intent_id})"


class AutoRecharge(models.Model):
    """A key's auto-recharge: when a debit takes the balance under the threshold, buy a pack."""

    api_key = models.OneToOneField(ApiKey, on_delete=models.CASCADE, related_name="auto_recharge")
    enabled = models.BooleanField(default=False)
    threshold_tokens = models.BigIntegerField(default=1_000_000)
    pack_id = models.CharField(
        max_length=50, blank=True, help_text="Default: the last top-up's pack."
    )
    monthly_cap_amount = models.PositiveIntegerField(
        default=100_000,
        help_text="At most this much (minor unit) auto-recharged per calendar month.",
    )
    # Increases each time a recharge settles; `ar:<key>:<generation>` is the idempotency key of
    # the next charge, so every trigger before it settles collapses into that one charge.
    generation = models.PositiveIntegerField(default=0)
    in_flight_since = models.DateTimeField(null=True, blank=True)

    class PauseCause(models.TextChoices):
        CONFIRM = "confirm", "The bank asks the buyer to confirm a payment"
        CARD = "card", "The card failed or there is none"
        CAP = "cap", "The monthly cap is reached"

    paused_reason = models.CharField(max_length=255, blank=True)
    # What the user can do about the pause: the banner's advice follows it.
    paused_cause = models.CharField(max_length=10, choices=PauseCause.choices, blank=True)
    paused_at = models.DateTimeField(null=True, blank=True)
    pending_payment = models.ForeignKey(
        Payment,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        help_text="A charge waiting for the user to authenticate.",
    )

    def __str__(self) -> str:
        return f"auto-recharge of {self.api_key_id} ({'on' if self.enabled else 'off'})"


class StripeEvent(models.Model):
    """Each webhook event received, once, with what became of it (audit and re-run)."""

    class Status(models.TextChoices):
        RECEIVED = "received", "Received"
        PROCESSED = "processed", "Processed"
        IGNORED = "ignored", "No handler"
        FAILED = "failed", "Handler failed"

    id = models.CharField(max_length=255, primary_key=True)
    type = models.CharField(max_length=100)
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.RECEIVED)
    payload = models.JSONField()
    error = models.TextField(blank=True)
    received_at = models.DateTimeField(auto_now_add=True)
    processed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-received_at"]

    def __str__(self) -> str:
        return f"{self.type} {self.id} ({self.status})"


class VisitorTrialCount(models.Model):
    """How many visitor trial keys one address or network took on one (UTC) day.

    `scope` is "ip:<address>" or "net:<network>" (/24 for IPv4, /56 for IPv6). A conditional
    increment of this row is the cap, exact across gateways; rows of past days are dropped.
    """

    scope = models.CharField(max_length=64)
    day = models.DateField()
    count = models.PositiveIntegerField(default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["scope", "day"], name="visitor_trial_count_scope_day")
        ]

    def __str__(self) -> str:
        return f"{self.scope} on {self.day}: {self.count}"

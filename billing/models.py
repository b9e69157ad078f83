from __future__ import annotations

import uuid
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


class LedgerEntry(models.Model):
    """One append-only change to a key's balance; a key's balance is the sum of its entries."""

    class Kind(models.TextChoices):
        TRIAL_GRANT = "trial_grant", "Trial grant"
        TOPUP = "topup", "Top-up"
        ADMIN_GRANT = "admin_grant", "Admin grant"
        USAGE = "usage", "Usage debit"
        REFUND = "refund", "Refund"
        ADJUSTMENT = "adjustment", "Adjustment"

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
    """Usage rolled up per key, model and UTC day: what the dashboards read."""

    api_key = models.ForeignKey(ApiKey, on_delete=models.CASCADE, related_name="usage_days")
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
            models.UniqueConstraint(fields=["api_key", "model", "day"], name="usage_daily_unique")
        ]

    def __str__(self) -> str:
        return f"{self.day} {self.model}: {self.requests} requests, {self.charged_tokens} tokens"

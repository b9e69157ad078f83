from django.contrib import admin
from django.contrib.auth.admin import UserAdmin as DjangoUserAdmin
from django.http import HttpRequest

from billing.models import (
    ApiKey,
    AutoRecharge,
    LedgerEntry,
    Payment,
    StripeEvent,
    UsageDaily,
    UsageRecord,
    User,
)
from billing.webhooks import stripe_event_process


@admin.register(User)
class UserAdmin(DjangoUserAdmin):
    ordering = ["email"]
    list_display = ["email", "is_staff", "is_active", "date_joined"]
    search_fields = ["email"]
    fieldsets = (
        (None, {"fields": ("email", "password")}),
        ("Permissions", {"fields": ("is_active", "is_staff", "is_superuser")}),
        ("Dates", {"fields": ("last_login", "date_joined")}),
    )
    add_fieldsets = ((None, {"classes": ("wide",), "fields": ("email", "password1", "password2")}),)


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin):
    list_display = [
        "prefix",
        "name",
        "user",
        "balance",
        "tier",
        "created_at",
        "last_used_at",
        "revoked_at",
    ]
    search_fields = ["prefix", "name", "user__email"]
    # The balance moves only through the ledger services (`manage.py grant`, payments, usage).
    readonly_fields = ["prefix", "digest", "balance", "created_at", "last_used_at"]
    list_filter = ["tier", "revoked_at"]

    def has_add_permission(self, request):  # type: ignore[no-untyped-def]
        # Keys are issued by the services (dashboard or `createkey`) so the plaintext is shown once.
        return False


class ReadOnlyAdmin(admin.ModelAdmin):
    """Append-only records: visible to staff, changed only by the services."""

    def has_add_permission(self, request):  # type: ignore[no-untyped-def]
        return False

    def has_change_permission(self, request, obj=None):  # type: ignore[no-untyped-def]
        return False

    def has_delete_permission(self, request, obj=None):  # type: ignore[no-untyped-def]
        return False


@admin.register(LedgerEntry)
class LedgerEntryAdmin(ReadOnlyAdmin):
    list_display = ["created_at", "api_key", "kind", "tokens", "reference"]
    list_filter = ["kind"]
    search_fields = ["api_key__prefix", "reference"]


@admin.register(UsageRecord)
class UsageRecordAdmin(ReadOnlyAdmin):
    list_display = [
        "created_at",
        "api_key",
        "model",
        "status",
        "http_status",
        "charged_tokens",
        "latency_ms",
    ]
    list_filter = ["status", "model"]
    search_fields = ["request_id", "api_key__prefix"]


@admin.register(UsageDaily)
class UsageDailyAdmin(ReadOnlyAdmin):
    list_display = ["day", "api_key", "endpoint", "model", "requests", "errors", "charged_tokens"]
    list_filter = ["endpoint", "model"]


@admin.register(Payment)
class PaymentAdmin(ReadOnlyAdmin):
    """Every purchase, for the operator: refunds are made in Stripe and arrive by webhook."""

    list_display = [
        "created_at",
        "user",
        "api_key",
        "kind",
        "pack_id",
        "amount",
        "currency",
        "status",
        "credited_tokens",
        "refunded_tokens",
        "refund_shortfall_tokens",
        "stripe_payment_intent_id",
    ]
    list_filter = ["status", "kind", "currency"]
    search_fields = ["user__email", "api_key__prefix", "stripe_payment_intent_id"]


@admin.register(AutoRecharge)
class AutoRechargeAdmin(admin.ModelAdmin):
    list_display = [
        "api_key",
        "enabled",
        "threshold_tokens",
        "pack_id",
        "paused_at",
        "paused_reason",
    ]
    list_filter = ["enabled"]
    readonly_fields = ["generation", "in_flight_since", "pending_payment"]


@admin.register(StripeEvent)
class StripeEventAdmin(ReadOnlyAdmin):
    list_display = ["id", "type", "status", "received_at", "processed_at"]
    list_filter = ["status", "type"]
    search_fields = ["id"]
    actions = ["rerun"]

    @admin.action(description="Run the handler again (safe to repeat)")
    def rerun(self, request: HttpRequest, queryset: object) -> None:
        for event in queryset:  # type: ignore[attr-defined]
            result = stripe_event_process(event=event)
            self.message_user(request, f"{event.id}: {result.detail}")

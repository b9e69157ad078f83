"""Balances on the ledger: grants, debits, refunds, the sweeper and ledger_check."""

from __future__ import annotations

import io

import pytest
from django.core.management import call_command
from django.db import IntegrityError, transaction

from billing.models import ApiKey, LedgerEntry, UsageRecord
from billing.services import api_key_create
from metering.ledger import (
    InsufficientBalance,
    ledger_mismatches,
    usage_admit,
    usage_refund,
    usage_succeed,
    usage_sweep_abandoned,
)
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db


def ledger_ok() -> bool:
    return ledger_mismatches() == []


def test_first_key_of_a_new_user_gets_the_trial_grant(settings) -> None:
    settings.TRIAL_TOKENS = 10_000_000
    user = UserFactory()
    first, _ = api_key_create(user=user)
    second, _ = api_key_create(user=user)
    assert first.balance == 10_000_000
    assert second.balance == 0
    assert list(first.ledger_entries.values_list("kind", "tokens")) == [("trial_grant", 10_000_000)]
    assert ledger_ok()


def test_tokens_start_a_key_with_exactly_that_and_no_trial() -> None:
    api_key, _ = api_key_create(user=UserFactory(), tokens=30)
    assert api_key.balance == 30
    assert list(api_key.ledger_entries.values_list("kind", "tokens")) == [("admin_grant", 30)]
    empty, _ = api_key_create(user=UserFactory(), tokens=0)
    assert empty.balance == 0 and not empty.ledger_entries.exists()


def test_debit_is_all_or_nothing() -> None:
    api_key, _ = api_key_create(user=UserFactory(), tokens=10)
    usage = usage_admit(api_key=api_key, model="m", text_tokens=7)
    api_key.refresh_from_db()
    assert api_key.balance == 3
    assert usage.status == UsageRecord.Status.PENDING and usage.charged_tokens == 7
    with pytest.raises(InsufficientBalance):
        usage_admit(api_key=api_key, model="m", text_tokens=4)
    api_key.refresh_from_db()
    assert api_key.balance == 3
    assert UsageRecord.objects.filter(api_key=api_key).count() == 1
    assert ledger_ok()


def test_refund_happens_once_and_not_after_success() -> None:
    api_key, _ = api_key_create(user=UserFactory(), tokens=10)
    failed = usage_admit(api_key=api_key, model="m", text_tokens=4)
    assert usage_refund(usage=failed, http_status=503, error_code="SERVICE_UNAVAILABLE")
    assert not usage_refund(usage=failed, http_status=503)
    served = usage_admit(api_key=api_key, model="m", text_tokens=5)
    assert usage_succeed(usage=served, latency_ms=3.0)
    assert not usage_refund(usage=served)
    api_key.refresh_from_db()
    assert api_key.balance == 5
    failed.refresh_from_db()
    assert failed.status == "failed" and failed.charged_tokens == 0
    assert LedgerEntry.objects.filter(usage=failed, kind="refund").count() == 1
    assert ledger_ok()


def test_sweeper_refunds_only_abandoned_requests() -> None:
    api_key, _ = api_key_create(user=UserFactory(), tokens=100)
    old = usage_admit(api_key=api_key, model="m", text_tokens=10)
    UsageRecord.objects.filter(pk=old.pk).update(
        created_at=old.created_at - __import__("datetime").timedelta(hours=1)
    )
    recent = usage_admit(api_key=api_key, model="m", text_tokens=20)
    assert usage_sweep_abandoned(older_than_seconds=600) == 1
    old.refresh_from_db()
    recent.refresh_from_db()
    assert old.status == "abandoned" and recent.status == "pending"
    api_key.refresh_from_db()
    assert api_key.balance == 80
    # The abandoned request's gateway cannot mark it served any more: it would be served free.
    assert not usage_succeed(usage=old, latency_ms=1.0)
    assert ledger_ok()


def test_balance_can_never_go_negative_in_the_database() -> None:
    api_key, _ = api_key_create(user=UserFactory(), tokens=5)
    with pytest.raises(IntegrityError), transaction.atomic():
        ApiKey.objects.filter(pk=api_key.pk).update(balance=-1)


def test_ledger_check_command_exits_non_zero_on_a_mismatch() -> None:
    api_key, _ = api_key_create(user=UserFactory(), tokens=50)
    out = io.StringIO()
    call_command("ledger_check", stdout=out)
    assert "ledger ok" in out.getvalue()
    ApiKey.objects.filter(pk=api_key.pk).update(balance=49)  # a write that skipped the ledger
    err = io.StringIO()
    with pytest.raises(SystemExit) as exit_info:
        call_command("ledger_check", stdout=io.StringIO(), stderr=err)
    assert exit_info.value.code == 1
    assert "balance 49 but ledger sums to 50" in err.getvalue()
    ApiKey.objects.filter(pk=api_key.pk).update(balance=50)


def test_grant_command_adds_an_admin_grant() -> None:
    api_key, _ = api_key_create(user=UserFactory(), tokens=0)
    call_command(
        "grant", api_key.prefix, "1500", "--note", "support ticket 12", stdout=io.StringIO()
    )
    call_command("grant", str(api_key.pk), "500", stdout=io.StringIO())
    api_key.refresh_from_db()
    assert api_key.balance == 2000
    assert set(api_key.ledger_entries.values_list("reference", flat=True)) == {
        "support ticket 12",
        "manage.py grant",
    }
    assert ledger_ok()


def test_createkey_options(settings) -> None:
    out = io.StringIO()
    call_command(
        "createkey",
        "--email",
        "limits@example.com",
        "--tokens",
        "123",
        "--tier",
        "premium",
        "--rpm",
        "7",
        "--tpm",
        "700",
        "--concurrency",
        "2",
        stdout=out,
        stderr=io.StringIO(),
    )
    api_key = ApiKey.objects.get(user__email="limits@example.com")
    assert (
        api_key.balance,
        api_key.tier,
        api_key.rpm_limit,
        api_key.tpm_limit,
        api_key.concurrency_limit,
    ) == (
        123,
        "premium",
        7,
        700,
        2,
    )
    from metering.lifecycle import limits_for

    assert limits_for(api_key).rpm == 7
    api_key.rpm_limit = None
    assert limits_for(api_key).rpm == settings.RATE_LIMIT_TIERS["premium"]["rpm"]

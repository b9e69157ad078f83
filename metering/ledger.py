"""Token balances on an append-only ledger. Every change to ApiKey.balance happens here, in the
same transaction as the ledger entry that explains it, so a balance always equals the sum of
its key's entries (`manage.py ledger_check`)."""

from __future__ import annotations

from datetime import timedelta

from django.db import transaction
from django.db.models import F, Sum
from django.utils import timezone

from billing.models import ApiKey, LedgerEntry, UsageRecord


class InsufficientBalance(Exception):
    """The key does not hold the tokens a request costs."""


@transaction.atomic
def balance_credit(*, api_key: ApiKey, tokens: int, kind: str, reference: str = "") -> LedgerEntry:
    """Add tokens to a key (trial, top-up, admin grant, positive adjustment)."""
    if tokens <= 0:
        raise ValueError("a credit must be positive")
    ApiKey.objects.filter(pk=api_key.pk).update(balance=F("balance") + tokens)
    return LedgerEntry.objects.create(
        api_key=api_key, kind=kind, tokens=tokens, reference=reference
    )


@transaction.atomic
def balance_take_back(*, api_key: ApiKey, tokens: int, reference: str = "") -> int:
    """Take up to `tokens` back from a key (its payment was refunded), never below zero.

    Returns the tokens taken; the rest was already spent and is the caller's to record.
    """
    if tokens <= 0:
        raise ValueError("tokens to take back must be positive")
    balance = (
        ApiKey.objects.select_for_update().values_list("balance", flat=True).get(pk=api_key.pk)
    )
    taken = min(tokens, balance)
    if taken <= 0:
        return 0
    ApiKey.objects.filter(pk=api_key.pk).update(balance=F("balance") - taken)
    LedgerEntry.objects.create(
        api_key=api_key, kind=LedgerEntry.Kind.PAYMENT_REFUND, tokens=-taken, reference=reference
    )
    return taken


class TransferRefused(Exception):
    """A move of tokens that cannot happen: the keys are one, of two users, or the destination
    is revoked."""


@transaction.atomic
def balance_transfer(
    *, source: ApiKey, destination: ApiKey, tokens: int | None, reference: str = ""
) -> int:
    """Move tokens from one key to another key of the same user; `None` moves all it holds.

    One transaction writes both entries (a debit on the source, a credit on the destination), so
    the ledger stays balanced. Both rows are locked in id order, so two moves in opposite
    directions cannot deadlock, and the debit is conditional: never more than the source holds.
    The source may be revoked (its tokens can still be rescued); the destination may not.
    Returns the tokens moved; raises InsufficientBalance or TransferRefused.
    """
    if tokens is not None and tokens <= 0:
        raise ValueError("tokens to move must be positive")
    if source.pk == destination.pk:
        raise TransferRefused("A key cannot move tokens to itself.")
    rows = {
        row.pk: row
        for row in ApiKey.objects.select_for_update()
        .filter(pk__in=[source.pk, destination.pk])
        .order_by("pk")
    }
    locked_source, locked_destination = rows.get(source.pk), rows.get(destination.pk)
    if locked_source is None or locked_destination is None:
        raise TransferRefused("Both keys must exist.")
    if locked_source.user_id != locked_destination.user_id:
        raise TransferRefused("Tokens move only between keys of one account.")
    if locked_destination.revoked_at is not None:
        raise TransferRefused("The destination key is revoked.")
    amount = locked_source.balance if tokens is None else tokens
    if amount <= 0:
        raise InsufficientBalance
    taken = ApiKey.objects.filter(pk=source.pk, balance__gte=amount).update(
        balance=F("balance") - amount
    )
    if not taken:
        raise InsufficientBalance
    ApiKey.objects.filter(pk=destination.pk).update(balance=F("balance") + amount)
    LedgerEntry.objects.bulk_create(
        [
            LedgerEntry(
                api_key=locked_source,
                kind=LedgerEntry.Kind.TRANSFER_OUT,
                tokens=-amount,
                reference=_with_note(f"to key {locked_destination.prefix}…", reference),
            ),
            LedgerEntry(
                api_key=locked_destination,
                kind=LedgerEntry.Kind.TRANSFER_IN,
                tokens=amount,
                reference=_with_note(f"from key {locked_source.prefix}…", reference),
            ),
        ]
    )
    return amount


def _with_note(reference: str, note: str) -> str:
    return (f"{reference} ({note})" if note else reference)[:255]


@transaction.atomic
def usage_admit(
    *,
    api_key: ApiKey,
    model: str,
    text_tokens: int,
    image_tokens: int = 0,
    request_id: str = "",
    endpoint: str = "embeddings",
) -> UsageRecord:
    """Debit a request's tokens at admission: the balance, a ledger entry and a pending usage row.

    The conditional update is the guarantee: it takes the tokens only if they are there, and
    the database serialises concurrent debits of one key on its row.
    """
    tokens = text_tokens + image_tokens
    taken = ApiKey.objects.filter(pk=api_key.pk, balance__gte=tokens).update(
        balance=F("balance") - tokens
    )
    if not taken:
        raise InsufficientBalance
    usage = UsageRecord.objects.create(
        api_key=api_key,
        request_id=request_id[:64],
        endpoint=endpoint,
        model=model,
        text_tokens=text_tokens,
        image_tokens=image_tokens,
        charged_tokens=tokens,
    )
    LedgerEntry.objects.create(
        api_key=api_key, kind=LedgerEntry.Kind.USAGE, tokens=-tokens, usage=usage
    )
    return usage


def usage_succeed(*, usage: UsageRecord, latency_ms: float) -> bool:
    """Mark a debited request served. False when the sweeper already refunded it."""
    return bool(
        UsageRecord.objects.filter(pk=usage.pk, status=UsageRecord.Status.PENDING).update(
            status=UsageRecord.Status.SUCCEEDED,
            http_status=200,
            latency_ms=latency_ms,
            finished_at=timezone.now(),
        )
    )


@transaction.atomic
def usage_refund(
    *,
    usage: UsageRecord,
    status: str = UsageRecord.Status.FAILED,
    http_status: int | None = None,
    error_code: str = "",
    latency_ms: float | None = None,
    even_if_served: bool = False,
) -> bool:
    """Give a debited request's tokens back (it failed, or its gateway died). At most once.

    `even_if_served`: the client was answered with an error although the row was marked
    served (the connection broke after that update committed), so it is refunded too.
    """
    from_statuses = [UsageRecord.Status.PENDING]
    if even_if_served:
        from_statuses.append(UsageRecord.Status.SUCCEEDED)
    settled = UsageRecord.objects.filter(pk=usage.pk, status__in=from_statuses).update(
        status=status,
        http_status=http_status,
        error_code=error_code[:64],
        latency_ms=latency_ms,
        charged_tokens=0,
        finished_at=timezone.now(),
    )
    if not settled:
        return False
    tokens = usage.text_tokens + usage.image_tokens
    ApiKey.objects.filter(pk=usage.api_key_id).update(balance=F("balance") + tokens)
    LedgerEntry.objects.create(
        api_key_id=usage.api_key_id, kind=LedgerEntry.Kind.REFUND, tokens=tokens, usage=usage
    )
    return True


def usage_sweep_abandoned(*, older_than_seconds: float) -> int:
    """Refund debits whose request never finished (its gateway process died). Returns the count."""
    cutoff = timezone.now() - timedelta(seconds=older_than_seconds)
    refunded = 0
    stale = UsageRecord.objects.filter(status=UsageRecord.Status.PENDING, created_at__lte=cutoff)
    for usage in stale.iterator():
        if usage_refund(
            usage=usage, status=UsageRecord.Status.ABANDONED, error_code="GATEWAY_DIED"
        ):
            refunded += 1
    return refunded


def ledger_mismatches() -> list[tuple[int, int, int]]:
    """Keys whose balance is not the sum of their entries: (key id, balance, ledger sum)."""
    sums = dict(
        LedgerEntry.objects.values("api_key")
        .annotate(total=Sum("tokens"))
        .values_list("api_key", "total")
    )
    mismatches = []
    for key_id, balance in ApiKey.objects.values_list("pk", "balance").iterator():
        total = int(sums.get(key_id) or 0)
        if total != balance or balance < 0:
            mismatches.append((key_id, balance, total))
    return mismatches

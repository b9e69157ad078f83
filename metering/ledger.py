"""Token balances on an append-only ledger. Every change to ApiKey.balance happens here, in the
same transaction as the ledger entry that explains it, so a balance always equals the sum of
its key's entries (`manage.py ledger_check`)."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import DataError, IntegrityError, connection, transaction
from django.db.models import F, Sum
from django.utils import timezone

from billing.models import ApiKey, LedgerEntry, UsageRecord
from embeddings_site.metrics import LEDGER_GROUP_WRITES
from metering.group_commit import GroupCommit


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


@dataclass(frozen=True)
class _Debit:
    api_key_id: int
    model: str
    text_tokens: int
    image_tokens: int
    request_id: str
    endpoint: str

    @property
    def tokens(self) -> int:
        return self.text_tokens + self.image_tokens


@dataclass(frozen=True)
class _Served:
    usage_id: Any
    latency_ms: float


def usage_admit(
    *,
    api_key: ApiKey,
    model: str,
    text_tokens: int,
    image_tokens: int = 0,
    request_id: str = "",
    endpoint: str = "embeddings",
) -> UsageRecord:
    """Debit a request's tokens at admission: the balance, a ledger entry and a pending usage row,
    committed (in a group with other requests' writes) before this returns.

    The conditional update is the guarantee: it takes the tokens only if they are there, and
    the database serialises concurrent debits of one key on its row. Raises InsufficientBalance.
    """
    debit = _Debit(
        api_key_id=api_key.pk,
        model=model,
        text_tokens=text_tokens,
        image_tokens=image_tokens,
        request_id=request_id[:64],
        endpoint=endpoint,
    )
    usage = _commit(debit, lane=api_key.pk)
    if not isinstance(usage, UsageRecord):
        raise TypeError(f"a debit wrote {usage!r}")
    return usage


def usage_succeed(*, usage: UsageRecord, latency_ms: float) -> bool:
    """Mark a debited request served, committed before this returns (in a group with other
    requests' writes). False when the sweeper already refunded it."""
    return bool(_commit(_Served(usage_id=usage.pk, latency_ms=latency_ms), lane=usage.api_key_id))


# --- group commit ----------------------------------------------------------------------------
# Concurrent requests' debits and served marks are written in one transaction (see
# metering.group_commit): the fixed cost of a transaction (on SQLite, the write lock and the
# commit) is paid once per group instead of once per request. Every request still returns only
# once its own write is committed, so what is served is charged, and the conditional update per
# key keeps the balance from going below zero. A key's writes always go to the same lane; on
# Postgres there are several lanes, so a hot key's row lock holds up only its own lane.

_lanes: list[GroupCommit[_Debit | _Served]] = []
_lanes_lock = threading.Lock()


def release_pooled_connection() -> None:
    """Give this thread's pooled connection back while it waits (for the model, for a group),
    so that a pool sized for the request threads is never held dry by waiting threads. Without
    a pool, keeping the connection is cheaper."""
    if connection.in_atomic_block or not connection.settings_dict.get("OPTIONS", {}).get("pool"):
        return
    connection.close()


def _commit(item: _Debit | _Served, *, lane: int) -> object:
    if connection.in_atomic_block or not settings.LEDGER_GROUP_COMMIT:
        # Inside the caller's transaction (a batch chunk, a test): written there, at once.
        (result,) = _write_group([item])
        if isinstance(result, BaseException):
            raise result
        return result
    # Threads queued behind a group must not hold the pool dry while the group's writer needs
    # a connection to write them.
    release_pooled_connection()
    lanes = _lanes or _make_lanes()
    return lanes[lane % len(lanes)].commit(item)


def _make_lanes() -> list[GroupCommit[_Debit | _Served]]:
    with _lanes_lock:
        if not _lanes:
            count = 1 if connection.vendor == "sqlite" else max(settings.LEDGER_GROUP_LANES, 1)
            _lanes.extend(
                GroupCommit(_write_group, max_group=settings.LEDGER_GROUP_MAX, isolate=_item_error)
                for _ in range(count)
            )
    return _lanes


def _item_error(exc: BaseException) -> bool:
    """An error one write may have caused (a constraint, a bad value), worth retrying the group
    item by item; a connection or timeout error would only fail again once per item."""
    return isinstance(exc, IntegrityError | DataError)


def ledger_group_stats() -> tuple[int, int]:
    """(groups written, items written) by this process's group commit, all lanes together."""
    return sum(lane.groups for lane in _lanes), sum(lane.items for lane in _lanes)


@transaction.atomic
def _write_group(items: Sequence[_Debit | _Served]) -> list[object]:
    """Write a group in one transaction: served marks first, then the debits, key by key in id
    order (so two processes' groups lock rows in one order and cannot deadlock)."""
    LEDGER_GROUP_WRITES.observe(len(items))
    results: dict[int, object] = {}
    served = [(i, item) for i, item in enumerate(items) if isinstance(item, _Served)]
    debits = [(i, item) for i, item in enumerate(items) if isinstance(item, _Debit)]
    if served:
        results.update(_write_served(served))
    if debits:
        results.update(_write_debits(debits))
    return [results[i] for i in range(len(items))]


def _write_served(served: list[tuple[int, _Served]]) -> dict[int, object]:
    # One conditional update per row, each telling whether the row was still pending (False:
    # the sweeper refunded it first). Plain SQL: compiling the ORM's update costs more than
    # running it, and these run once per request.
    table = _table(UsageRecord)
    pk = UsageRecord._meta.get_field("id")
    finished = _db_value(UsageRecord, "finished_at", timezone.now())
    sql = (
        f"UPDATE {table} SET status = %s, http_status = 200, latency_ms = %s, "  # noqa: S608
        "finished_at = %s WHERE id = %s AND status = %s"
    )
    results: dict[int, object] = {}
    with connection.cursor() as cursor:
        for index, item in served:
            cursor.execute(
                sql,
                [
                    UsageRecord.Status.SUCCEEDED,
                    item.latency_ms,
                    finished,
                    pk.get_db_prep_value(item.usage_id, connection),
                    UsageRecord.Status.PENDING,
                ],
            )
            results[index] = cursor.rowcount == 1
    return results


def _write_debits(debits: list[tuple[int, _Debit]]) -> dict[int, object]:
    results: dict[int, object] = {}
    by_key: dict[int, list[tuple[int, _Debit]]] = {}
    for index, debit in debits:
        by_key.setdefault(debit.api_key_id, []).append((index, debit))
    now = timezone.now()
    usages: list[UsageRecord] = []
    with connection.cursor() as cursor:
        for key_id in sorted(by_key):
            for index, debit in _affordable(cursor, key_id, by_key[key_id]):
                usage = UsageRecord(
                    id=uuid.uuid4(),
                    api_key_id=key_id,
                    request_id=debit.request_id,
                    endpoint=debit.endpoint,
                    model=debit.model,
                    text_tokens=debit.text_tokens,
                    image_tokens=debit.image_tokens,
                    charged_tokens=debit.tokens,
                    created_at=now,
                )
                usage._state.adding = False
                usages.append(usage)
                results[index] = usage
        if usages:
            _insert(cursor, UsageRecord, usages)
            _insert(
                cursor,
                LedgerEntry,
                [
                    LedgerEntry(
                        api_key_id=usage.api_key_id,
                        kind=LedgerEntry.Kind.USAGE,
                        tokens=-usage.charged_tokens,
                        usage_id=usage.pk,
                        created_at=now,
                    )
                    for usage in usages
                ],
            )
    for index, _ in debits:
        results.setdefault(index, InsufficientBalance())
    return results


def _affordable(
    cursor: Any, key_id: int, group: list[tuple[int, _Debit]]
) -> list[tuple[int, _Debit]]:
    """Take a key's debits from its balance: all in one conditional update when they fit
    together, else one by one in arrival order (each taken only if the balance holds it)."""
    total = sum(debit.tokens for _, debit in group)
    if _take(cursor, key_id, total):
        return group
    if len(group) == 1:
        return []
    return [(index, debit) for index, debit in group if _take(cursor, key_id, debit.tokens)]


def _take(cursor: Any, key_id: int, tokens: int) -> bool:
    cursor.execute(
        f"UPDATE {_table(ApiKey)} SET balance = balance - %s WHERE id = %s AND balance >= %s",  # noqa: S608
        [tokens, key_id, tokens],
    )
    return bool(cursor.rowcount == 1)


def _table(model: type[Any]) -> str:
    return str(connection.ops.quote_name(model._meta.db_table))


def _db_value(model: type[Any], field: str, value: Any) -> Any:
    return model._meta.get_field(field).get_db_prep_save(value, connection)


def _insert(cursor: Any, model: type[Any], rows: list[Any]) -> None:
    """INSERT rows whose every column is set (no database defaults), in one executemany."""
    fields = [f for f in model._meta.concrete_fields if not f.db_returning]  # not an auto id
    columns = ", ".join(connection.ops.quote_name(f.column) for f in fields)
    marks = ", ".join(["%s"] * len(fields))
    cursor.executemany(
        f"INSERT INTO {_table(model)} ({columns}) VALUES ({marks})",  # noqa: S608 - names from the model
        [[f.get_db_prep_save(getattr(row, f.attname), connection) for f in fields] for row in rows],
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

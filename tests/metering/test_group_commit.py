"""Group commit: concurrent requests' debits and served marks share transactions, and each
request still gets exactly its own outcome (served, refused for balance, or its own error)."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import pytest
from django.db import connection

from billing.models import ApiKey, LedgerEntry, UsageRecord
from billing.services import api_key_create
from metering import ledger
from metering.group_commit import GroupCommit
from metering.ledger import InsufficientBalance, ledger_mismatches, usage_admit, usage_succeed
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db(transaction=True)


def make_key(*, tokens: int) -> tuple[ApiKey, str]:
    return api_key_create(user=UserFactory(), tokens=tokens)


def wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    """Wait for another thread to reach a state (a bounded condition wait, not a clock)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("the condition never held")
        time.sleep(0.001)


class GatedApply:
    """An apply whose first group waits at a gate, so that the others queue behind it; then
    `then(items)` answers (or raises) for every group."""

    def __init__(self, then: Callable[[Sequence[int]], list[object]]) -> None:
        self.then = then
        self.gate = threading.Event()
        self.groups: list[list[int]] = []

    def __call__(self, items: Sequence[int]) -> list[object]:
        if not self.groups:
            self.gate.wait(10)
        self.groups.append(list(items))
        return self.then(items)


def behind_a_held_group(
    commit: GroupCommit[int], apply: GatedApply, first: int, rest: Sequence[int]
) -> dict[int, object]:
    """Commit `first` (its group held at the gate), queue `rest` behind it, open the gate; each
    item's result, or its exception's message."""
    outcomes: dict[int, object] = {}

    def submit(i: int) -> None:
        try:
            outcomes[i] = commit.commit(i)
        except Exception as exc:  # noqa: BLE001 - the outcome under test
            outcomes[i] = str(exc)

    with ThreadPoolExecutor(max_workers=len(rest) + 1) as pool:
        pool.submit(submit, first)
        wait_until(lambda: commit._writing and not commit._queue)
        for i in rest:
            pool.submit(submit, i)
        wait_until(lambda: len(commit._queue) == len(rest))
        apply.gate.set()
    return outcomes


def test_work_queued_behind_a_group_is_written_as_one_group_with_its_own_results() -> None:
    apply = GatedApply(lambda items: [ValueError(f"odd {i}") if i % 2 else i * 10 for i in items])
    commit: GroupCommit[int] = GroupCommit(apply)

    outcomes = behind_a_held_group(commit, apply, 0, range(1, 9))

    assert apply.groups == [[0], [1, 2, 3, 4, 5, 6, 7, 8]]
    assert outcomes == {i: (f"odd {i}" if i % 2 else i * 10) for i in range(9)}
    assert (commit.groups, commit.items) == (2, 9)


def test_a_group_that_fails_is_retried_item_by_item_so_only_the_bad_item_fails() -> None:
    def then(items: Sequence[int]) -> list[object]:
        if 13 in items:
            raise RuntimeError("constraint failed")
        return list(items)

    apply = GatedApply(then)
    outcomes = behind_a_held_group(GroupCommit(apply), apply, 1, (12, 13, 14))

    assert outcomes == {1: 1, 12: 12, 13: "constraint failed", 14: 14}
    assert apply.groups == [[1], [12, 13, 14], [12], [13], [14]]


def test_a_group_whose_database_is_gone_fails_at_once_without_retrying_each_item() -> None:
    def then(items: Sequence[int]) -> list[object]:
        if 1 not in items:
            raise ConnectionError("the pool has no connection")
        return list(items)

    apply = GatedApply(then)
    commit: GroupCommit[int] = GroupCommit(
        apply, isolate=lambda exc: not isinstance(exc, ConnectionError)
    )
    outcomes = behind_a_held_group(commit, apply, 1, (2, 3, 4))

    assert outcomes == {1: 1, **{i: "the pool has no connection" for i in (2, 3, 4)}}
    assert apply.groups == [[1], [2, 3, 4]]  # no retry per item: each would wait for the pool


class BusyDatabase:
    """Another connection holding SQLite's write lock: the ledger's writers queue behind it,
    as they do behind a long transaction, until `release()`."""

    def __init__(self) -> None:
        if connection.vendor != "sqlite":
            pytest.fail("this test runs on the SQLite test database")
        self.blocker = sqlite3.connect(
            connection.settings_dict["NAME"], timeout=30, isolation_level=None
        )
        self.blocker.execute("BEGIN IMMEDIATE")

    def release(self) -> None:
        self.blocker.execute("COMMIT")
        self.blocker.close()


def test_concurrent_debits_are_committed_in_groups_and_never_overspend() -> None:
    cost, affordable, requests = 7, 8, 24
    api_key, _ = make_key(tokens=cost * affordable)
    groups_before, items_before = ledger.ledger_group_stats()
    outcomes: list[str] = []
    lock = threading.Lock()

    def debit_then_serve(i: int) -> None:
        try:
            usage = usage_admit(api_key=api_key, model="m", text_tokens=cost, request_id=f"r{i}")
        except InsufficientBalance:
            outcome = "refused"
        else:
            outcome = "served" if usage_succeed(usage=usage, latency_ms=1.0) else "late"
        finally:
            connection.close()
        with lock:
            outcomes.append(outcome)

    busy = BusyDatabase()
    with ThreadPoolExecutor(max_workers=requests) as pool:
        futures = [pool.submit(debit_then_serve, i) for i in range(requests)]
        # Everyone is queued behind the busy database (one leader waiting on the lock).
        wait_until(lambda: len(ledger._lanes) == 1 and len(ledger._lanes[0]._queue) == requests - 1)
        busy.release()
        for future in futures:
            future.result()

    assert sorted(outcomes) == ["refused"] * (requests - affordable) + ["served"] * affordable
    assert ApiKey.objects.get(pk=api_key.pk).balance == 0
    served = UsageRecord.objects.filter(api_key=api_key, status="succeeded")
    assert served.count() == affordable and {u.charged_tokens for u in served} == {cost}
    assert LedgerEntry.objects.filter(api_key=api_key, kind="usage").count() == affordable
    assert ledger_mismatches() == []
    groups, items = ledger.ledger_group_stats()
    # 24 debits and 8 served marks, written in far fewer transactions than one each.
    assert items - items_before == requests + affordable
    assert groups - groups_before < (requests + affordable) / 2


def test_a_key_that_cannot_pay_for_the_group_is_charged_request_by_request() -> None:
    api_key, _ = make_key(tokens=10)
    other, _ = make_key(tokens=100)
    results = ledger._write_group(
        [
            ledger._Debit(api_key.pk, "m", 6, 0, "a", "embeddings"),
            ledger._Debit(other.pk, "m", 50, 0, "b", "embeddings"),
            ledger._Debit(api_key.pk, "m", 6, 0, "c", "embeddings"),
            ledger._Debit(api_key.pk, "m", 4, 0, "d", "embeddings"),
        ]
    )
    assert [type(r).__name__ for r in results] == [
        "UsageRecord", "UsageRecord", "InsufficientBalance", "UsageRecord"
    ]  # fmt: skip
    assert ApiKey.objects.get(pk=api_key.pk).balance == 0
    assert ApiKey.objects.get(pk=other.pk).balance == 50
    assert ledger_mismatches() == []


def test_a_served_mark_after_the_sweeper_refunded_reports_it(settings) -> None:
    api_key, _ = make_key(tokens=100)
    usage = usage_admit(api_key=api_key, model="m", text_tokens=5)
    assert ledger.usage_sweep_abandoned(older_than_seconds=-1) == 1
    assert usage_succeed(usage=usage, latency_ms=1.0) is False
    assert ApiKey.objects.get(pk=api_key.pk).balance == 100
    assert ledger_mismatches() == []

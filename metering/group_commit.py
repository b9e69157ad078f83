"""Group commit: many threads' small writes committed together, one transaction per group.

A thread that submits work while no group is being written leads: it writes its own work at
once, with whatever else is queued, in its own thread (so a request alone pays no hand-off).
Threads that submit while a group is being written queue; when that group commits, the first
of them leads the next group, taking everything queued by then (at most `max_group`). Each
caller returns only when its own work is committed, with its own result or exception.

This module knows nothing of what is written: `apply(items)` does it (the ledger's debits and
settlements), returning one result or exception per item. A group whose `apply` raises an
error that `isolate` says one item may have caused is retried item by item, so one bad item
fails only itself; any other error (the database is gone) fails the whole group at once.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

from embeddings_site.log_context import log_scope_detached

Item = TypeVar("Item")

Apply = Callable[[Sequence[Item]], Sequence[object]]


class _Slot(Generic[Item]):
    __slots__ = ("item", "result", "error", "done", "lead")

    def __init__(self, item: Item) -> None:
        self.item = item
        self.result: object = None
        self.error: BaseException | None = None
        self.done = threading.Event()
        self.lead = False  # woken to lead the next group rather than because it is written


class GroupCommit(Generic[Item]):
    """Leader/follower group commit over one `apply` (one lane)."""

    def __init__(
        self,
        apply: Apply[Item],
        *,
        max_group: int = 128,
        isolate: Callable[[BaseException], bool] = lambda exc: True,
    ) -> None:
        self._apply = apply
        self._isolate = isolate
        self._max_group = max(max_group, 1)
        self._lock = threading.Lock()
        self._queue: list[_Slot[Item]] = []
        self._writing = False
        self.groups = 0  # groups written (for tests and the benchmark)
        self.items = 0

    def commit(self, item: Item) -> object:
        """Write `item` (in a group) and return its result, or raise its exception."""
        slot = _Slot(item)
        with self._lock:
            self._queue.append(slot)
            lead = not self._writing
            self._writing = True
        if not lead:
            slot.done.wait()
            lead = slot.lead
        if lead:
            self._lead()
        if slot.error is not None:
            raise slot.error
        return slot.result

    def _lead(self) -> None:
        """Write one group (the queue's head), then hand the lead to the next waiter."""
        with self._lock:
            group, self._queue = self._queue[: self._max_group], self._queue[self._max_group :]
        try:
            self._write(group)
        finally:
            successor: _Slot[Item] | None = None
            with self._lock:
                if self._queue:
                    successor = self._queue[0]
                    successor.lead = True
                else:
                    self._writing = False
            for slot in group:
                slot.done.set()
            if successor is not None:
                successor.done.set()

    def _write(self, group: list[_Slot[Item]]) -> None:
        self.groups += 1
        self.items += len(group)
        if len(group) == 1:
            self._write_group(group)
            return
        # The leader writes others' work too: what is logged meanwhile is no one request's.
        with log_scope_detached():
            self._write_group(group)

    def _write_group(self, group: list[_Slot[Item]]) -> None:
        try:
            results = self._apply([slot.item for slot in group])
        except BaseException as exc:  # noqa: BLE001 - handed to the caller it belongs to
            if len(group) == 1 or not self._isolate(exc):
                for slot in group:
                    slot.error = exc
                return
            for slot in group:  # isolate: one bad item must not fail the others
                self._write_alone(slot)
            return
        for slot, result in zip(group, results, strict=True):
            if isinstance(result, BaseException):
                slot.error = result
            else:
                slot.result = result

    def _write_alone(self, slot: _Slot[Item]) -> None:
        try:
            (result,) = self._apply([slot.item])
        except BaseException as exc:  # noqa: BLE001 - handed to the caller it belongs to
            slot.error = exc
            return
        if isinstance(result, BaseException):
            slot.error = result
        else:
            slot.result = result

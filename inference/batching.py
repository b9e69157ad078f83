"""Dynamic batching for in-process backends: requests arriving together share forward passes.

Each request's items go into a queue. One runner thread takes what is queued — waiting at
most `max_wait` after the first arrival for more, and never more than `max_batch_tokens` of
padded tokens per pass — sorts the items by length (less padding), runs the passes and hands
every request its own rows back. One thread also means one forward pass at a time, which is
what a CPU wants: torch already spreads a pass over every core.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np

from inference.backends.base import BackendError, EmbedItem

logger = logging.getLogger(__name__)

# Runs one pass over items that fit the token budget; returns one row per output row.
ForwardPass = Callable[[list[EmbedItem]], list[np.ndarray]]


def token_budget_passes(items: Sequence[EmbedItem], max_batch_tokens: int) -> list[list[int]]:
    """Item indexes in length-sorted groups whose padded size stays within max_batch_tokens.
    Late-chunking items run alone: their spans index into their own sequence."""
    order = sorted(range(len(items)), key=lambda i: len(items[i].token_ids))
    groups: list[list[int]] = []
    current: list[int] = []
    for index in order:
        alone = items[index].spans is not None
        if current and (
            alone or (len(current) + 1) * len(items[index].token_ids) > max_batch_tokens
        ):
            groups.append(current)
            current = []
        current.append(index)
        if alone:
            groups.append(current)
            current = []
    if current:
        groups.append(current)
    return groups


@dataclass
class _Request:
    items: Sequence[EmbedItem]
    future: Future[np.ndarray] = field(default_factory=Future)
    rows: list[np.ndarray | None] = field(default_factory=list)


@dataclass(frozen=True)
class BatchStats:
    """What the batcher has done so far (for /metrics and the benchmarks)."""

    passes: int
    items: int
    requests: int


class DynamicBatcher:
    """Coalesce concurrent `embed` calls into token-budgeted, length-sorted forward passes."""

    def __init__(
        self,
        forward: ForwardPass,
        *,
        max_batch_tokens: int = 2048,
        max_wait: float = 0.002,
        name: str = "batcher",
        on_pass: Callable[[int], None] | None = None,
    ) -> None:
        self._forward = forward
        self._on_pass = on_pass
        self.max_batch_tokens = max_batch_tokens
        self.max_wait = max_wait
        self._queue: deque[_Request] = deque()
        self._ready = threading.Condition()
        self._passes = self._items = self._requests = 0
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    @property
    def stats(self) -> BatchStats:
        return BatchStats(passes=self._passes, items=self._items, requests=self._requests)

    def embed(self, items: Sequence[EmbedItem], timeout: float | None = None) -> np.ndarray:
        """Queue the items and wait for their vectors (rows in input order)."""
        if not items:
            raise BackendError("nothing to embed")
        request = _Request(items=items, rows=[None] * len(items))
        with self._ready:
            self._queue.append(request)
            self._ready.notify()
        return request.future.result(timeout=timeout)

    def _take(self) -> list[_Request]:
        """Block for the first request, then gather what arrives within max_wait."""
        with self._ready:
            while not self._queue:
                self._ready.wait()
            deadline = time.monotonic() + self.max_wait
            taken = [self._queue.popleft()]
            tokens = sum(len(item.token_ids) for item in taken[0].items)
            while tokens < self.max_batch_tokens:
                if not self._queue:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0 or not self._ready.wait(remaining) or not self._queue:
                        break
                    continue
                request = self._queue.popleft()
                taken.append(request)
                tokens += sum(len(item.token_ids) for item in request.items)
            return taken

    def _run(self) -> None:
        while True:
            requests = self._take()
            work = [(request, index) for request in requests for index in range(len(request.items))]
            failed: dict[int, BaseException] = {}
            groups = token_budget_passes(
                [request.items[index] for request, index in work], self.max_batch_tokens
            )
            for group in groups:
                live = [work[position] for position in group if id(work[position][0]) not in failed]
                if not live:
                    continue
                try:
                    rows = self._forward([request.items[index] for request, index in live])
                except BaseException as exc:  # noqa: BLE001 - handed to the waiting callers
                    for request, _ in live:
                        failed[id(request)] = exc
                    continue
                self._passes += 1
                if self._on_pass is not None:
                    self._on_pass(len(live))
                for (request, index), row in zip(live, rows, strict=True):
                    request.rows[index] = row
            self._items += len(work)
            self._requests += len(requests)
            for request in requests:
                if id(request) in failed:
                    request.future.set_exception(failed[id(request)])
                else:
                    request.future.set_result(
                        np.concatenate([row for row in request.rows if row is not None])
                    )

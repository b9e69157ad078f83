"""Dynamic batching for in-process backends: requests arriving together share forward passes.

Each request's items wait in a queue, per tenant (the API key the request bills). One runner
thread fills each forward pass round-robin — a tenant at a time, and within a tenant a request
at a time, one item each turn — until the pass holds `max_batch_tokens` padded tokens, then runs
it with its items sorted by length (less padding). A big request is spread over as many passes
as it needs, so a small request that arrives meanwhile rides in one of the next passes instead
of waiting for the big one to finish. One thread also means one forward pass at a time, which is
what a CPU wants: torch already spreads a pass over every core.

The queue is bounded (`max_queued_tokens`: a request that would overfill it is shed at once with
BackendOverloaded and a Retry-After estimate), callers wait at most until their request's
deadline (then its remaining items are dropped, never run), and nothing a forward pass does
can stop the runner: a failing pass fails only the requests it held.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np

from embeddings_site.deadlines import Deadline, current_deadline, current_tenant
from inference.backends.base import BackendError, BackendOverloaded, BackendTimeout, EmbedItem

logger = logging.getLogger(__name__)

# Runs one pass over items that fit the token budget; returns one row per output row.
ForwardPass = Callable[[list[EmbedItem]], list[np.ndarray]]

# Weight of the newest pass in the running throughput estimate behind Retry-After.
_THROUGHPUT_SMOOTHING = 0.2


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


def checked_rows(batch: Sequence[EmbedItem], rows: Sequence[np.ndarray]) -> Sequence[np.ndarray]:
    """A forward pass's rows, after checking there is one 2-D block per item with the rows it
    owes (one, or one per late-chunking span); BackendError otherwise."""
    if len(rows) != len(batch):
        raise BackendError(f"forward pass returned {len(rows)} results for {len(batch)} inputs")
    for item, row in zip(batch, rows, strict=True):
        if np.ndim(row) != 2 or len(row) != item.output_rows:
            raise BackendError(
                f"forward pass returned shape {np.shape(row)} for an input that needs "
                f"{item.output_rows} row(s)"
            )
    return rows


@dataclass(eq=False)
class _Request:
    items: Sequence[EmbedItem]
    tenant: str
    deadline: Deadline | None
    # Indexes of the items not yet taken into a pass, shortest first.
    pending: deque[int]
    rows: list[np.ndarray | None]
    future: Future[np.ndarray] = field(default_factory=Future)
    done_items: int = 0
    finished: bool = False

    @property
    def pending_tokens(self) -> int:
        return sum(len(self.items[index].token_ids) for index in self.pending)


class PendingEmbedding:
    """A request queued in a DynamicBatcher: wait for its vectors, or give up on it."""

    def __init__(self, batcher: DynamicBatcher, request: _Request) -> None:
        self._batcher = batcher
        self._request = request

    def done(self) -> bool:
        """Whether the request has its answer (vectors or an error)."""
        return self._request.future.done()

    def result(self, timeout: float | None = None) -> np.ndarray:
        """The vectors, rows in input order. Waits at most `timeout` seconds and no longer than
        the request's deadline; past that the request is cancelled and BackendTimeout raised."""
        request = self._request
        if request.deadline is not None:
            remaining = request.deadline.remaining()
            timeout = remaining if timeout is None else min(timeout, remaining)
        try:
            return request.future.result(timeout=timeout)
        except TimeoutError:
            pass
        self._batcher._finish(
            request,
            error=BackendTimeout(
                f"no vectors within the deadline ({request.done_items} of "
                f"{len(request.items)} inputs embedded)"
            ),
        )
        return request.future.result(timeout=0)  # the vectors, if they won the race

    def cancel(self) -> None:
        """Drop the request: its items not yet run never will be; result() raises BackendTimeout."""
        self._batcher._finish(self._request, error=BackendTimeout("request cancelled"))


@dataclass(frozen=True)
class BatchStats:
    """What the batcher has done so far (for /metrics and the benchmarks)."""

    passes: int
    items: int
    requests: int


class DynamicBatcher:
    """Coalesce concurrent `embed` calls into token-budgeted, length-sorted forward passes,
    shared fairly between tenants and bounded in what they may queue."""

    def __init__(
        self,
        forward: ForwardPass,
        *,
        max_batch_tokens: int = 2048,
        max_wait: float = 0.002,
        max_queued_tokens: int | None = None,
        fair: bool = True,
        name: str = "batcher",
        on_pass: Callable[[int], None] | None = None,
    ) -> None:
        self._forward = forward
        self._on_pass = on_pass
        self.max_batch_tokens = max_batch_tokens
        self.max_wait = max_wait
        # None: unbounded. A request bigger than the bound still runs when the queue is empty.
        self.max_queued_tokens = max_queued_tokens
        # False: first come, first served (a request's items all go before the next request's),
        # the behaviour before fair scheduling; kept for bench/fairness.py.
        self.fair = fair
        # Tenant -> its requests with items still to take, in the order their turns come.
        self._queue: OrderedDict[str, deque[_Request]] = OrderedDict()
        self._queued_tokens = 0
        self._queued_since = 0.0  # when the queue last went from empty to not empty
        self._tokens_per_second: float | None = None
        self._ready = threading.Condition()
        self._closed = False
        self._stopped = False  # the runner has exited; nothing queued will run
        self._unanswered: set[_Request] = set()  # queued or running, not yet answered
        self._passes = self._items = self._requests = 0
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    @property
    def stats(self) -> BatchStats:
        return BatchStats(passes=self._passes, items=self._items, requests=self._requests)

    @property
    def alive(self) -> bool:
        """Whether the runner thread is running (if not, nothing submitted will be answered)."""
        return self._thread.is_alive() and not self._stopped

    @property
    def queued_tokens(self) -> int:
        """Tokens of the items queued and not yet taken into a pass."""
        return self._queued_tokens

    def embed(self, items: Sequence[EmbedItem], timeout: float | None = None) -> np.ndarray:
        """Queue the items and wait for their vectors (rows in input order), at most until the
        current request's deadline."""
        return self.submit(items).result(timeout=timeout)

    def submit(self, items: Sequence[EmbedItem]) -> PendingEmbedding:
        """Queue the items for the current tenant, under the current deadline, without waiting.
        Raises BackendOverloaded when the queue is full, BackendError when the runner is gone."""
        if not items:
            raise BackendError("nothing to embed")
        order = sorted(range(len(items)), key=lambda i: len(items[i].token_ids))
        request = _Request(
            items=items,
            tenant=current_tenant() if self.fair else "",
            deadline=current_deadline(),
            pending=deque(order),
            rows=[None] * len(items),
        )
        tokens = request.pending_tokens
        with self._ready:
            if self._stopped or self._closed or not self._thread.is_alive():
                raise BackendError("the batcher's runner thread is not running")
            bound = self.max_queued_tokens
            if bound is not None and self._queued_tokens and self._queued_tokens + tokens > bound:
                raise BackendOverloaded(
                    f"{self._queued_tokens} tokens already queued; {tokens} more would pass "
                    f"the bound of {bound}",
                    retry_after=self._retry_after(tokens, bound),
                )
            if not self._queued_tokens:
                self._queued_since = time.monotonic()
            self._queue.setdefault(request.tenant, deque()).append(request)
            self._queued_tokens += tokens
            self._unanswered.add(request)
            self._ready.notify()
        return PendingEmbedding(self, request)

    def full_retry_after(self) -> float | None:
        """When the queue already holds its bound: seconds until it has room; else None."""
        bound = self.max_queued_tokens
        with self._ready:
            if bound is None or not self._queued_tokens or self._queued_tokens < bound:
                return None
            return self._retry_after(1, bound)

    def close(self) -> None:
        """Stop the runner after its current pass; queued requests fail with BackendError."""
        with self._ready:
            self._closed = True
            self._ready.notify()
        if threading.current_thread() is not self._thread:
            self._thread.join()

    def _retry_after(self, tokens: int, bound: int) -> float:
        """Seconds until enough of the queue has run for `tokens` more to fit (at least 1)."""
        if self._tokens_per_second is None:
            return 1.0
        to_drain = min(self._queued_tokens, self._queued_tokens + tokens - bound)
        return float(max(1, math.ceil(to_drain / self._tokens_per_second)))

    def _finish(
        self,
        request: _Request,
        *,
        error: BaseException | None = None,
        vectors: np.ndarray | None = None,
    ) -> None:
        """Answer a request once, dropping whatever of it is still queued. Caller may hold the
        lock (it is re-entrant)."""
        with self._ready:
            if request.finished:
                return
            request.finished = True
            self._unanswered.discard(request)
            if request.pending:
                self._queued_tokens -= request.pending_tokens
                request.pending.clear()
                waiting = self._queue.get(request.tenant)
                if waiting is not None:
                    waiting.remove(request)
                    if not waiting:
                        del self._queue[request.tenant]
            self._requests += 1
            if error is not None:
                request.future.set_exception(error)
            else:
                request.future.set_result(vectors)  # type: ignore[arg-type]

    def _run(self) -> None:
        try:
            while True:
                work = self._next_pass()
                if work is None:
                    return
                try:
                    self._run_pass(work)
                except BaseException as exc:  # noqa: BLE001 - the runner must outlive any pass
                    logger.exception("%s: a forward pass failed", self._thread.name)
                    error = (
                        exc
                        if isinstance(exc, BackendError)
                        else BackendError(f"forward pass failed: {type(exc).__name__}: {exc}")
                    )
                    for request in {id(request): request for request, _ in work}.values():
                        self._finish(request, error=error)
        finally:
            with self._ready:
                self._stopped = True
                for request in list(self._unanswered):
                    self._finish(request, error=BackendError("the batcher stopped"))
            if not self._closed:
                logger.error("%s: the runner thread died", self._thread.name)

    def _next_pass(self) -> list[tuple[_Request, int]] | None:
        """Block until there is work, then fill one pass (None once closed)."""
        with self._ready:
            while True:
                while not self._queue and not self._closed:
                    self._ready.wait()
                if self._closed:
                    return None
                # Give concurrent requests up to max_wait (from the first queued) to join.
                until = self._queued_since + self.max_wait
                while (
                    self._queue
                    and not self._closed
                    and self._queued_tokens < self.max_batch_tokens
                    and time.monotonic() < until
                ):
                    self._ready.wait(until - time.monotonic())
                work = self._fill()
                if work:
                    return work

    def _fill(self) -> list[tuple[_Request, int]]:
        """Take items round-robin over tenants, then over each tenant's requests, one at a time,
        until the next would overfill the pass. Runs under the lock."""
        for waiting in list(self._queue.values()):
            for request in list(waiting):
                if request.deadline is not None and request.deadline.expired:
                    self._finish(request, error=BackendTimeout("the deadline passed in the queue"))
        work: list[tuple[_Request, int]] = []
        longest = 0
        while self._queue:
            tenant, waiting = next(iter(self._queue.items()))
            request = waiting[0]
            index = request.pending[0]
            item = request.items[index]
            length = len(item.token_ids)
            alone = item.spans is not None  # late chunking: spans index into its own sequence
            if work and (alone or (len(work) + 1) * max(longest, length) > self.max_batch_tokens):
                break  # this item heads the next pass
            work.append((request, index))
            longest = max(longest, length)
            request.pending.popleft()
            self._queued_tokens -= length
            if self.fair or not request.pending:
                waiting.popleft()
                if request.pending:
                    waiting.append(request)
            if not waiting:
                del self._queue[tenant]
            else:
                self._queue.move_to_end(tenant)
            if alone:
                break
        return work

    def _run_pass(self, work: list[tuple[_Request, int]]) -> None:
        work.sort(key=lambda taken: len(taken[0].items[taken[1]].token_ids))
        batch = [request.items[index] for request, index in work]
        started = time.monotonic()
        rows = checked_rows(batch, self._forward(batch))
        elapsed = time.monotonic() - started
        tokens = sum(len(item.token_ids) for item in batch)
        if self._on_pass is not None:  # before the answers, so a caller's next look sees it
            try:
                self._on_pass(len(batch))
            except Exception:
                logger.exception("%s: the pass callback failed", self._thread.name)
        with self._ready:
            self._passes += 1
            self._items += len(batch)
            if elapsed > 0:
                rate = tokens / elapsed
                previous = self._tokens_per_second
                self._tokens_per_second = (
                    rate
                    if previous is None
                    else previous + _THROUGHPUT_SMOOTHING * (rate - previous)
                )
            for (request, index), row in zip(work, rows, strict=True):
                if request.finished:  # cancelled, expired or failed while this pass ran
                    continue
                request.rows[index] = row
                request.done_items += 1
                if request.done_items == len(request.items):
                    self._complete(request)

    def _complete(self, request: _Request) -> None:
        try:
            vectors = np.concatenate([row for row in request.rows if row is not None], axis=0)
        except ValueError as exc:
            self._finish(request, error=BackendError(f"rows do not fit together: {exc}"))
            return
        self._finish(request, vectors=vectors)

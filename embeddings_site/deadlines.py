"""Every request has a deadline, counted from its arrival, and a tenant (the key it bills).

The request lifecycle opens a scope for the work it runs; code below it (backends, the dynamic
batcher, outbound fetches) reads the scope instead of having a deadline passed through every
call. Work past its deadline is abandoned: waiting stops, queued work is dropped, and what is
produced late is not charged.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

from django.conf import settings


def clock() -> float:
    """The clock deadlines are measured on (monotonic; tests may move it forward)."""
    return time.monotonic()


class DeadlineExceeded(Exception):
    """The request's deadline passed before its work finished."""


@dataclass(frozen=True)
class Deadline:
    """A point on the monotonic clock by which a request must be answered."""

    started: float  # clock() at the request's arrival
    expires: float

    @classmethod
    def after(cls, seconds: float | None = None, *, started: float | None = None) -> Deadline:
        """A deadline `seconds` (REQUEST_TIMEOUT_SECONDS by default) after `started` (now)."""
        start = clock() if started is None else started
        budget = float(settings.REQUEST_TIMEOUT_SECONDS if seconds is None else seconds)
        return cls(started=start, expires=start + budget)

    def remaining(self) -> float:
        """Seconds left, never negative."""
        return max(self.expires - clock(), 0.0)

    @property
    def expired(self) -> bool:
        return clock() >= self.expires

    def check(self) -> None:
        """Raise DeadlineExceeded when the deadline has passed."""
        if self.expired:
            raise DeadlineExceeded

    @property
    def elapsed_ms(self) -> float:
        """Milliseconds since arrival (queueing included)."""
        return (clock() - self.started) * 1000


_deadline: ContextVar[Deadline | None] = ContextVar("deadline", default=None)
_tenant: ContextVar[str] = ContextVar("tenant", default="")


def current_deadline() -> Deadline | None:
    """The deadline of the work running in this context (None outside any request)."""
    return _deadline.get()


def current_tenant() -> str:
    """Who the work running in this context is for (the API key's id), for fair scheduling."""
    return _tenant.get()


@contextmanager
def deadline_scope(*, deadline: Deadline | None, tenant: str = "") -> Iterator[None]:
    """Run a block of work under a deadline, for a tenant."""
    deadline_token = _deadline.set(deadline)
    tenant_token = _tenant.set(tenant)
    try:
        yield
    finally:
        _tenant.reset(tenant_token)
        _deadline.reset(deadline_token)

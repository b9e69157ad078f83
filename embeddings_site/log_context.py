"""What every log record of a unit of work carries: its request id, key prefix, endpoint,
model, status, code and latency (a batch task's: its batch id and the id of the request that
created the job), and the trace id when a span is active.

A unit of work opens a scope (`log_scope`); code below it adds fields as it learns them
(`log_context_update`: the key after authentication, the model after parsing, the outcome at
the end) and `LogContextFilter`, on every handler, copies them onto each record. The fields
live in a context variable, so each request thread sees its own; a thread the process starts
(the usage flusher, the sweeper, a model's batcher) starts with none, and a group commit
leader writing other requests' work writes it outside its own request's scope
(`log_scope_detached`).

The field names are stable: operators search by them.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from embeddings_site.tracing import current_trace_ids

# The fields a unit of work may carry, in the order a JSON line shows them.
FIELDS = (
    "request_id",
    "key_prefix",
    "endpoint",
    "path",
    "model",
    "tokens",
    "status",
    "code",
    "latency_ms",
    "batch_id",
    "task_id",
    "task_name",
)
# What a task or a worker call carries over from the request that caused it.
CARRIED = ("request_id", "key_prefix", "batch_id")

_fields: ContextVar[dict[str, Any] | None] = ContextVar("log_fields", default=None)


@contextmanager
def log_scope(**fields: Any) -> Iterator[dict[str, Any]]:
    """Run a unit of work with its own fields (nothing of an enclosing scope's is kept)."""
    own = {name: value for name, value in fields.items() if value not in (None, "")}
    token = _fields.set(own)
    try:
        yield own
    finally:
        _fields.reset(token)


@contextmanager
def log_scope_detached() -> Iterator[None]:
    """Run work done for others (a group commit written by its leader) under no request's id."""
    token = _fields.set(None)
    try:
        yield
    finally:
        _fields.reset(token)


def log_context_update(**fields: Any) -> None:
    """Add what the unit of work has just learned; a no-op outside any scope."""
    current = _fields.get()
    if current is not None:
        current.update((name, value) for name, value in fields.items() if value is not None)


def log_context() -> Mapping[str, Any]:
    """The fields of the unit of work running in this context (empty outside any)."""
    return _fields.get() or {}


def log_context_carried() -> dict[str, str]:
    """The fields a task or an outbound call takes along (request id, key prefix, batch id)."""
    current = _fields.get() or {}
    return {name: str(current[name]) for name in CARRIED if current.get(name)}


def current_request_id() -> str:
    """The request id of the work running in this context ("" outside any)."""
    return str((_fields.get() or {}).get("request_id", ""))


class LogContextFilter(logging.Filter):
    """Puts the running unit of work's fields (and the active span's trace id) on each record.

    A field the record already has (passed with `extra=`) is kept as it is.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        current = _fields.get()
        if current:
            for name, value in current.items():
                if not hasattr(record, name):
                    setattr(record, name, value)
        ids = current_trace_ids()
        if ids is not None and not hasattr(record, "trace_id"):
            record.trace_id, record.span_id = ids
        return True

"""Celery's side of logs and traces: a task carries the request that sent it.

Publishing a task adds the sender's request id, key prefix and batch id (and its W3C
`traceparent`) to the message headers; the worker runs the task under a log scope with those
fields plus its own task id and name, inside a span that continues the sender's trace. Workers
log through Django's LOGGING (JSON lines with LOG_FORMAT=json) rather than Celery's own root
handler, and install the trace exporter once per process when one is configured.

Imported by embeddings_site.celery, so that every process using the Celery app connects these.
"""

from __future__ import annotations

import logging.config
from contextlib import ExitStack
from typing import Any

from celery.signals import (
    before_task_publish,
    setup_logging,
    task_postrun,
    task_prerun,
    worker_init,
    worker_process_init,
)
from opentelemetry.trace import SpanKind

from embeddings_site.log_context import log_context_carried, log_scope
from embeddings_site.tracing import span, trace_headers_inject, tracing_start

# The message header holding the sender's log fields.
CONTEXT_HEADER = "embeddings_log"

# Open scopes by task id: task_prerun enters one, task_postrun (same thread) leaves it.
_scopes: dict[str, ExitStack] = {}


@setup_logging.connect
def _use_django_logging(**kwargs: Any) -> None:
    # Connecting this signal stops Celery from configuring logging itself (its root handler
    # and text format); the worker logs like every other process.
    from django.conf import settings

    logging.config.dictConfig(settings.LOGGING)


@worker_init.connect
@worker_process_init.connect
def _start_tracing(**kwargs: Any) -> None:
    tracing_start(role="celery")


@before_task_publish.connect
def _carry_context(headers: dict[str, Any] | None = None, **kwargs: Any) -> None:
    if headers is None:
        return
    carried = log_context_carried()
    if carried:
        headers[CONTEXT_HEADER] = carried
    trace_headers_inject(headers)


def _header(task: Any, name: str) -> Any:
    request = task.request
    value = getattr(request, name, None)
    if value is None:
        value = (getattr(request, "headers", None) or {}).get(name)
    return value


@task_prerun.connect
def _enter_scope(task_id: str = "", task: Any = None, **kwargs: Any) -> None:
    if task is None:
        return
    carried = _header(task, CONTEXT_HEADER)
    fields = (
        {k: v for k, v in carried.items() if isinstance(v, str)}
        if isinstance(carried, dict)
        else {}
    )
    traceparent = _header(task, "traceparent")
    stack = ExitStack()
    stack.enter_context(log_scope(**fields, task_id=task_id, task_name=task.name))
    stack.enter_context(
        span(
            f"task {task.name}",
            kind=SpanKind.CONSUMER,
            attributes={"messaging.system": "celery", "messaging.message.id": task_id},
            carrier={"traceparent": traceparent} if isinstance(traceparent, str) else None,
        )
    )
    _scopes[task_id] = stack


@task_postrun.connect
def _leave_scope(task_id: str = "", **kwargs: Any) -> None:
    stack = _scopes.pop(task_id, None)
    if stack is not None:
        stack.close()

"""Background work: one way to run a task later and one way to run a job every so often.

A task goes to Celery when a broker is configured (CELERY_BROKER_URL), else to a small thread
pool in this process (the embedded default). Pools are named so that long work (a batch job
may run for hours) never holds up short work (an auto-recharge charge). Periodic jobs run on a
thread of their own in every process that starts them: each is written to be safe when several
processes run it at once.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from django.conf import settings
from django.db import close_old_connections
from django.utils.module_loading import import_string

from embeddings_site.log_context import log_context_carried, log_scope

logger = logging.getLogger(__name__)

# Threads per local pool; "batch" follows BATCH_LOCAL_WORKERS.
_POOL_SIZES = {"default": 2}

_pools: dict[str, ThreadPoolExecutor] = {}
_pending: set[Future[Any]] = set()
_lock = threading.Lock()


def _pool(name: str) -> ThreadPoolExecutor:
    with _lock:
        pool = _pools.get(name)
        if pool is None:
            size = settings.BATCH_LOCAL_WORKERS if name == "batch" else _POOL_SIZES[name]
            pool = _pools[name] = ThreadPoolExecutor(
                max_workers=size, thread_name_prefix=f"task-{name}"
            )
        return pool


def _run_local(task: Callable[..., Any], args: tuple[Any, ...], carried: dict[str, str]) -> None:
    # Like a Celery task: under the sending request's id, not whatever ran on this thread last.
    name = str(getattr(task, "name", task))
    with log_scope(**carried, task_name=name):
        try:
            task(*args)
        except Exception:
            logger.exception("Background task %s failed", name)
        finally:
            close_old_connections()


def task_enqueue(task: Any, *args: Any, pool: str = "default") -> None:
    """Run a Celery task later: on Celery when a broker is configured, else on a local pool."""
    if settings.CELERY_BROKER_URL:
        task.delay(*args)
        return
    future = _pool(pool).submit(_run_local, task, args, log_context_carried())
    with _lock:
        _pending.add(future)
    future.add_done_callback(_forget)


def task_enqueue_named(name: str, *args: Any, pool: str = "default") -> None:
    """`task_enqueue` for a task named by its dotted path: lets a service schedule a task
    whose module imports that service (no import cycle)."""
    if settings.CELERY_BROKER_URL:
        from celery import current_app

        current_app.send_task(name, args=args)
        return
    task_enqueue(import_string(name), *args, pool=pool)


def _forget(future: Future[Any]) -> None:
    with _lock:
        _pending.discard(future)


def local_tasks_wait(timeout: float = 30) -> None:
    """Wait until this process has no local task queued or running (tests and shutdown),
    including tasks that the awaited ones enqueue (a batch chunk's debit enqueues a charge)."""
    deadline = time.monotonic() + timeout
    while True:
        with _lock:
            pending = list(_pending)
        if not pending:
            return
        for future in pending:
            future.result(timeout=max(deadline - time.monotonic(), 0.001))


def periodic_start(
    job: Callable[[], Any], *, name: str, interval: float, first_run_now: bool = False
) -> threading.Thread:
    """Run `job` every `interval` seconds on a daemon thread of this process, for ever.

    A failure is logged and the next run goes on; the thread's database connection is closed
    after each run so that a dropped connection never outlives it.
    """
    stop = threading.Event()

    def loop() -> None:
        if not first_run_now:
            stop.wait(interval)
        while True:
            try:
                job()
            except Exception:
                logger.exception("Periodic job %s failed; it runs again in %ss", name, interval)
            finally:
                close_old_connections()
            stop.wait(interval)

    thread = threading.Thread(target=loop, name=name, daemon=True)
    thread.start()
    return thread

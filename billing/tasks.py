"""Periodic maintenance: Celery tasks when a broker is configured, a gateway thread otherwise."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import timedelta
from typing import Any

from celery import shared_task
from django.conf import settings
from django.db import close_old_connections
from django.utils import timezone

from billing.ledger import usage_sweep_abandoned
from billing.payments import auto_recharge_run
from billing.usage import usage_rollup_day

logger = logging.getLogger(__name__)

MAINTENANCE_INTERVAL_SECONDS = 60


@shared_task
def sweep_abandoned_usage() -> int:
    """Refund debits left pending by a gateway process that died."""
    return usage_sweep_abandoned(older_than_seconds=settings.USAGE_ABANDONED_AFTER_SECONDS)


@shared_task
def rollup_recent_usage() -> None:
    """Recompute today's and yesterday's daily rollups."""
    today = timezone.now().date()
    for day in (today - timedelta(days=1), today):
        usage_rollup_day(day=day)


@shared_task(ignore_result=True)
def auto_recharge(api_key_id: int) -> None:
    """Top a key up off-session if it is still under its auto-recharge threshold."""
    auto_recharge_run(api_key_id=api_key_id)


# The embedded default has no broker: tasks run on a small pool of threads in this process, so a
# request that triggers one does not wait for it (Celery's eager mode would run it inline).
_local_pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="billing-task")
_local_pending: set[Future[Any]] = set()
_local_lock = threading.Lock()


def _run_local(task: Callable[..., Any], args: tuple[Any, ...]) -> None:
    try:
        task(*args)
    except Exception:
        logger.exception("Background task %s failed", getattr(task, "name", task))
    finally:
        close_old_connections()


def task_enqueue(task: Any, *args: Any) -> None:
    """Send a task to Celery when a broker is configured, else to this process's thread pool."""
    if settings.CELERY_BROKER_URL:
        task.delay(*args)
        return
    future = _local_pool.submit(_run_local, task, args)
    with _local_lock:
        _local_pending.add(future)
    future.add_done_callback(lambda done: _local_pending.discard(done))


def local_tasks_wait(timeout: float = 30) -> None:
    """Wait for this process's background tasks (tests and shutdown)."""
    with _local_lock:
        pending = list(_local_pending)
    for future in pending:
        future.result(timeout=timeout)


def start_maintenance_thread() -> threading.Thread | None:
    """The embedded default's scheduler: sweep and roll up once a minute in this process."""
    if not settings.BACKGROUND_MAINTENANCE or settings.CELERY_BROKER_URL:
        return None

    def loop() -> None:
        while True:
            threading.Event().wait(MAINTENANCE_INTERVAL_SECONDS)
            try:
                sweep_abandoned_usage()
                rollup_recent_usage()
            except Exception:
                logger.exception("Usage maintenance failed; retrying in a minute")
            finally:
                close_old_connections()

    thread = threading.Thread(target=loop, name="usage-maintenance", daemon=True)
    thread.start()
    return thread

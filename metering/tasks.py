"""Metering's periodic work: the sweeper of abandoned debits, and the daily usage rollups.

The sweeper runs in every gateway and worker process (`maintenance_start`), not only where
beat runs, so a dead process's debits come back within about one deadline whatever the shape
of the deployment. It is safe to run in many processes at once: a refund is a conditional
update of a pending row, which only one of them wins.
"""

from __future__ import annotations

import threading
from datetime import timedelta

from celery import shared_task
from celery.signals import worker_ready
from django.conf import settings
from django.utils import timezone

from embeddings_site.background import periodic_start
from metering.ledger import usage_sweep_abandoned
from metering.usage import usage_rollup_day

ROLLUP_INTERVAL_SECONDS = 300


@shared_task
def sweep_abandoned_usage() -> int:
    """Refund debits left pending past their deadline (their process died)."""
    return usage_sweep_abandoned(older_than_seconds=settings.USAGE_ABANDONED_AFTER_SECONDS)


@shared_task
def rollup_recent_usage() -> None:
    """Recompute today's and yesterday's daily rollups."""
    today = timezone.now().date()
    for day in (today - timedelta(days=1), today):
        usage_rollup_day(day=day)


def maintenance_start() -> list[threading.Thread]:
    """Start this process's sweeper, and the rollups where no beat schedules them."""
    if not settings.BACKGROUND_MAINTENANCE:
        return []
    threads = [
        periodic_start(
            sweep_abandoned_usage,
            name="usage-sweeper",
            interval=settings.USAGE_SWEEP_INTERVAL_SECONDS,
        )
    ]
    if not settings.CELERY_BROKER_URL:
        threads.append(
            periodic_start(
                rollup_recent_usage, name="usage-rollup", interval=ROLLUP_INTERVAL_SECONDS
            )
        )
    return threads


@worker_ready.connect
def _sweep_in_workers(**kwargs: object) -> None:
    # Celery workers sweep too, so that the shape with no beat still gets its refunds.
    if settings.BACKGROUND_MAINTENANCE:
        periodic_start(
            sweep_abandoned_usage,
            name="usage-sweeper",
            interval=settings.USAGE_SWEEP_INTERVAL_SECONDS,
        )

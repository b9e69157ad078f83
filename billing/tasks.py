"""Periodic maintenance: Celery tasks when a broker is configured, a gateway thread otherwise."""

from __future__ import annotations

import logging
import threading
from datetime import timedelta

from celery import shared_task
from django.conf import settings
from django.db import close_old_connections
from django.utils import timezone

from billing.ledger import usage_sweep_abandoned
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

"""Batch work on Celery workers when a broker is configured, on threads of the gateway otherwise
(the embedded default) — the same functions either way.

`batch_maintenance` resumes jobs whose runner died (its lease ran out), expires jobs and
files, and retries webhooks. Celery beat runs it every BATCH_MAINTENANCE_INTERVAL_SECONDS, a
starting worker once as soon as a dead worker's lease can have run out, and the embedded
default from a thread of each gateway process.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from celery import shared_task
from celery.signals import worker_ready
from django.conf import settings
from django.utils import timezone

from batch.formats import jina_batch_status
from batch.outbound import OutboundError, webhook_post
from batch.processing import batch_job_process
from batch.selectors import batch_jobs_to_expire, batch_jobs_to_resume, batch_webhooks_due
from batch.services import (
    batch_files_expire,
    batch_job_expire,
    batch_job_mark_enqueued,
    batch_webhook_claim,
    batch_webhook_record,
)
from embeddings_site.background import periodic_start, task_enqueue
from embeddings_site.json import dumps

logger = logging.getLogger(__name__)


@shared_task(ignore_result=True)
def batch_job_run(job_id: str) -> None:
    """Run a batch job from where it stands (a no-op when another runner holds it)."""
    batch_job_process(job_id=job_id)


@shared_task(ignore_result=True)
def batch_webhook_send(job_id: str) -> None:
    """Deliver the job's webhook, if an attempt is due."""
    job = batch_webhook_claim(job_id=job_id)
    if job is None:
        return
    body = dumps(jina_batch_status(job, base_url=settings.SITE_URL, secret=False))
    try:
        webhook_post(url=job.webhook_url, secret=job.webhook_secret, job_id=job.id, body=body)
    except OutboundError as exc:
        logger.warning(
            "Webhook of batch %s failed (attempt %s): %s", job.id, job.webhook_attempts, exc
        )
        batch_webhook_record(job=job, delivered=False, error=str(exc))
        return
    batch_webhook_record(job=job, delivered=True)


@shared_task(ignore_result=True)
def batch_maintenance() -> None:
    """Resume stalled jobs, expire old jobs and files, retry due webhooks."""
    now = timezone.now()
    for job_id in batch_jobs_to_expire(now=now):
        batch_job_expire(job_id=job_id)
    batch_files_expire()
    for job_id in batch_jobs_to_resume(now=now):
        batch_job_mark_enqueued(job_id=job_id)
        batch_enqueue(batch_job_run, job_id)
    for job_id in batch_webhooks_due(now=now):
        batch_enqueue(batch_webhook_send, job_id)


@worker_ready.connect
def _resume_after_worker_start(**kwargs: Any) -> None:
    # A worker that starts after one was killed picks that one's jobs up as soon as their lease
    # can have run out, without waiting for beat.
    batch_maintenance.apply_async(countdown=settings.BATCH_LEASE_SECONDS + 1)


def batch_enqueue(task: Any, *args: Any) -> None:
    """Send a batch task to Celery, or to this process's batch pool (not the default pool: a
    job may run for hours and must not hold up auto-recharge charges)."""
    task_enqueue(task, *args, pool="batch")


def start_batch_maintenance_thread() -> threading.Thread | None:
    """The embedded default's scheduler for `batch_maintenance` (first run at once: it picks up
    the jobs a previous run of the server left unfinished)."""
    if not settings.BACKGROUND_MAINTENANCE or settings.CELERY_BROKER_URL:
        return None
    return periodic_start(
        batch_maintenance,
        name="batch-maintenance",
        interval=settings.BATCH_MAINTENANCE_INTERVAL_SECONDS,
        first_run_now=True,
    )

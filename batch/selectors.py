"""Reads for batch jobs and files. Every read a client can make is scoped to its key: another
key's job or file is simply not found (ADVERSARIAL 3)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import datetime, timedelta

from django.conf import settings
from django.db.models import Count, Q, QuerySet, Sum

from batch.formats import ERRORS_FILE_SUFFIX, OUTPUT_FILE_SUFFIX
from batch.models import BatchChunk, BatchFile, BatchJob
from billing.models import ApiKey

RESULT_KINDS = ("output", "errors")
_RESULT_FILE = re.compile(
    rf"^file-(?P<job>batch_[0-9a-f]+)(?P<suffix>{OUTPUT_FILE_SUFFIX}|{ERRORS_FILE_SUFFIX})$"
)
_CHUNKS_PER_QUERY = 20


def batch_job_get(*, api_key: ApiKey, job_id: str) -> BatchJob | None:
    """A job of this key by id, or None (also for other keys' jobs)."""
    return BatchJob.objects.filter(pk=job_id, api_key=api_key).first()


def batch_job_list(
    *, api_key: ApiKey, limit: int | None = None, after: str | None = None
) -> QuerySet[BatchJob]:
    """A key's jobs, newest first, with their progress (`completed_lines`, `failed_lines`,
    `total_lines`, `total_tokens`, `progress`); `after` a job id continues a previous page."""
    jobs = BatchJob.objects.filter(api_key=api_key).order_by("-created_at", "-id")
    if after:
        anchor = BatchJob.objects.filter(pk=after, api_key=api_key).first()
        if anchor is not None:
            jobs = jobs.filter(
                Q(created_at__lt=anchor.created_at)
                | Q(created_at=anchor.created_at, id__lt=anchor.id)
            )
    return jobs[:limit] if limit else jobs


def batch_file_get(*, api_key: ApiKey, file_id: str) -> BatchFile | None:
    """A file of this key by id (uploads and jobs' inputs), or None."""
    return BatchFile.objects.filter(pk=file_id, api_key=api_key).first()


def batch_file_list(*, api_key: ApiKey, limit: int, after: str | None = None) -> list[BatchFile]:
    """A key's uploaded files, newest first."""
    files = BatchFile.objects.filter(api_key=api_key, origin=BatchFile.Origin.UPLOAD).order_by(
        "-created_at", "-id"
    )
    if after:
        anchor = files.filter(pk=after).first()
        if anchor is not None:
            files = files.filter(
                Q(created_at__lt=anchor.created_at)
                | Q(created_at=anchor.created_at, id__lt=anchor.id)
            )
    return list(files.defer("content")[:limit])


def batch_result_file_get(*, api_key: ApiKey, file_id: str) -> tuple[BatchJob, str] | None:
    """The job and kind ("output" or "errors") an OpenAI result file id names, for this key."""
    match = _RESULT_FILE.match(file_id)
    if match is None:
        return None
    job = batch_job_get(api_key=api_key, job_id=match["job"])
    if job is None:
        return None
    return job, "output" if match["suffix"] == OUTPUT_FILE_SUFFIX else "errors"


def batch_result_size(*, job: BatchJob, kind: str) -> int:
    """Bytes in a job's output or errors file."""
    field = "output_size" if kind == "output" else "errors_size"
    return int(BatchChunk.objects.filter(job=job).aggregate(total=Sum(field))["total"] or 0)


def batch_result_stream(*, job: BatchJob, kind: str) -> Iterator[bytes]:
    """A job's output or errors file as JSONL, chunk by chunk in line order, a few chunks per
    query so that a large file is never held in memory at once."""
    if kind not in RESULT_KINDS:
        raise ValueError(kind)
    next_index = 0
    while True:
        rows = list(
            BatchChunk.objects.filter(job=job, index__gte=next_index)
            .order_by("index")
            .values_list("index", kind)[:_CHUNKS_PER_QUERY]
        )
        if not rows:
            return
        for index, data in rows:
            if data:
                yield bytes(data)
            next_index = index + 1


def batch_jobs_to_resume(*, now: datetime) -> list[str]:
    """Active jobs no runner holds: one whose runner died (its lease ran out) or stopped on an
    error, and pending ones whose queued run never started."""
    free = Q(lease_expires_at__isnull=True) | Q(lease_expires_at__lt=now)
    waited = now - timedelta(seconds=settings.BATCH_REQUEUE_PENDING_AFTER_SECONDS)
    jobs = BatchJob.objects.filter(free).filter(
        Q(status=BatchJob.Status.PROCESSING)
        | Q(status=BatchJob.Status.PENDING, enqueued_at__lt=waited)
    )
    return list(jobs.values_list("id", flat=True)[:500])


def batch_jobs_to_expire(*, now: datetime) -> list[str]:
    """Jobs past their expiry that still hold outputs or still run."""
    jobs = BatchJob.objects.filter(expires_at__lte=now).exclude(status=BatchJob.Status.EXPIRED)
    return list(jobs.values_list("id", flat=True)[:500])


def batch_webhooks_due(*, now: datetime) -> list[str]:
    """Jobs whose webhook has an attempt due."""
    jobs = BatchJob.objects.filter(
        webhook_status=BatchJob.Webhook.PENDING, webhook_next_attempt_at__lte=now
    )
    return list(jobs.values_list("id", flat=True)[:500])


def batch_key_active_jobs(*, api_key: ApiKey) -> tuple[int, int]:
    """A key's active (pending or processing) jobs and the sum of their `total_lines` (an
    input_url job's lines count once its file is fetched)."""
    totals = BatchJob.objects.filter(api_key=api_key, status__in=BatchJob.ACTIVE).aggregate(
        jobs=Count("pk"), lines=Sum("total_lines")
    )
    return int(totals["jobs"]), int(totals["lines"] or 0)


def batch_key_stored_upload_bytes(*, api_key: ApiKey, now: datetime) -> int:
    """Bytes in a key's uploaded files that have not expired."""
    files = BatchFile.objects.filter(api_key=api_key, origin=BatchFile.Origin.UPLOAD).filter(
        Q(expires_at__isnull=True) | Q(expires_at__gt=now)
    )
    return int(files.aggregate(total=Sum("size"))["total"] or 0)


def batch_key_url_jobs_since(*, api_key: ApiKey, since: datetime) -> list[datetime]:
    """When a key created its input_url jobs since `since`, oldest first (any status)."""
    jobs = BatchJob.objects.filter(api_key=api_key, created_at__gte=since).exclude(input_url="")
    return list(jobs.order_by("created_at").values_list("created_at", flat=True))

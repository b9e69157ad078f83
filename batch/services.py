"""Writes for batch jobs: files, creation, the runner's lease, chunk commits (each with its
debit), the end of a job (completed, failed, cancelled, expired) and its webhook's state.

Charging exactly once: a chunk's debit, its output and the job's resume point are written in
one transaction, under the job's row lock, and only if the resume point still stands where the
runner started the chunk. A runner that dies before the commit leaves nothing (the chunk is
run again, uncharged so far); one that dies after it leaves the resume point past the chunk;
two runners on one chunk (a lease that ran out) commit it once — the second finds the resume
point moved and its work is dropped, uncharged.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import timedelta
from enum import Enum
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import F, Q
from django.utils import timezone

from batch.lines import EMBEDDINGS_ENDPOINT, BatchLine, batch_lines_from_jsonl, batch_lines_to_jsonl
from batch.models import BatchChunk, BatchFile, BatchJob
from batch.selectors import (
    batch_key_active_jobs,
    batch_key_stored_upload_bytes,
    batch_key_url_jobs_since,
)
from billing.models import ApiKey
from embeddings_site.background import task_enqueue_named
from embeddings_site.errors import ApiError, ErrorCode
from embeddings_site.log_context import current_request_id, log_context_update
from embeddings_site.public_http import PublicUrlError, check_public_url
from inference.models import EmbeddingModel
from inference.services import embedding_model_resolve
from metering.authentication import api_key_model_check
from metering.lifecycle import Cost, charge_served

COMPLETION_WINDOW = "24h"


def _new_id(prefix: str) -> str:
    return f"{prefix}{secrets.token_hex(12)}"


def _enqueue_on_commit(task_name: str, job_id: str) -> None:
    # By name: batch.tasks imports the runner, which imports these services.
    transaction.on_commit(
        lambda: task_enqueue_named(f"batch.tasks.{task_name}", job_id, pool="batch")
    )


# --- Files -----------------------------------------------------------------------------------


def _check_size(size: int) -> None:
    limit = settings.BATCH_MAX_FILE_BYTES
    if size > limit:
        raise ApiError(
            ErrorCode.INPUT_BODY_TOO_LARGE,
            f"The file has {size:,} bytes; batch files may have at most {limit:,}.",
            param="file",
        )


def batch_lines_model(*, lines: list[BatchLine], model: str | None) -> EmbeddingModel:
    """The one model a batch runs on: the job's, or the lines' own; every line must agree."""
    named: set[str] = set()
    for line in lines:
        value = line.body.get("model")
        if value is None:
            continue
        if not isinstance(value, str):
            raise ApiError(
                ErrorCode.INPUT_VALIDATION_ERROR,
                f"Line {line.index + 1} ({line.custom_id!r}): body.model must be a string.",
                param="model",
            )
        named.add(value)
    chosen = embedding_model_resolve(name=model or (sorted(named)[0] if named else None))
    for name in named:
        if embedding_model_resolve(name=name).pk != chosen.pk:
            raise ApiError(
                ErrorCode.INPUT_VALIDATION_ERROR,
                f"All lines of a batch use one model; found {chosen.name!r} and {name!r}.",
                param="model",
            )
    return chosen


@transaction.atomic
def batch_file_create(*, api_key: ApiKey, filename: str, content: bytes) -> BatchFile:
    """Store an uploaded JSONL file of request lines after checking every line's shape, the
    key's balance and its storage quota."""
    _check_size(len(content))
    lines = batch_lines_from_jsonl(content)
    batch_lines_model(lines=lines, model=None)
    _lock_key(api_key)
    _check_balance(api_key)
    _check_storage_quota(api_key, size=len(content))
    return BatchFile.objects.create(
        id=_new_id("file-"),
        api_key=api_key,
        origin=BatchFile.Origin.UPLOAD,
        filename=(filename or "batch.jsonl")[:255],
        size=len(content),
        lines=len(lines),
        content=content,
        expires_at=timezone.now() + timedelta(seconds=settings.BATCH_FILE_EXPIRES_AFTER_SECONDS),
    )


@transaction.atomic
def batch_file_delete(*, file: BatchFile) -> None:
    """Delete an uploaded file, unless a job still has to read it."""
    if file.jobs.filter(status__in=BatchJob.ACTIVE).exists():
        raise ApiError(
            ErrorCode.RESOURCE_CONFLICT,
            f"File {file.id} is the input of a job that is still running; cancel it first.",
        )
    file.delete()


# --- Quotas ----------------------------------------------------------------------------------
# Checked after a request's own validation, in the creating transaction under the key's row
# lock, before anything is stored: one key's concurrent creations queue behind each other
# (Postgres) and each counts the others' rows; SQLite's IMMEDIATE transactions already
# serialise writers. The lock is the one a debit takes (metering.ledger), held only briefly.


def _lock_key(api_key: ApiKey) -> None:
    list(ApiKey.objects.select_for_update().filter(pk=api_key.pk).values_list("pk", flat=True))


def _quota_exceeded(message: str, *, retry_after: int | None = None) -> ApiError:
    headers = {"Retry-After": str(max(retry_after, 1))} if retry_after is not None else None
    return ApiError(ErrorCode.RATE_BATCH_QUOTA_EXCEEDED, message, headers=headers)


def _check_job_quota(api_key: ApiKey, *, lines: int, input_url: bool) -> None:
    """Refuse a new job that would pass the key's quotas of active jobs, of lines in them, or
    of input_url jobs an hour."""
    jobs, active_lines = batch_key_active_jobs(api_key=api_key)
    max_jobs = settings.BATCH_MAX_ACTIVE_JOBS_PER_KEY
    if max_jobs and jobs >= max_jobs:
        raise _quota_exceeded(
            f"This key has {jobs} batch jobs pending or running, its quota; wait for one to "
            "finish or cancel one."
        )
    max_lines = settings.BATCH_MAX_ACTIVE_LINES_PER_KEY
    if max_lines and active_lines + lines > max_lines:
        raise _quota_exceeded(
            f"This job's {lines:,} lines and the {active_lines:,} of this key's pending or "
            f"running jobs would pass its quota of {max_lines:,} lines in flight; wait for a "
            "job to finish."
        )
    max_url_jobs = settings.BATCH_MAX_URL_JOBS_PER_HOUR_PER_KEY
    if input_url and max_url_jobs:
        now = timezone.now()
        created = batch_key_url_jobs_since(api_key=api_key, since=now - timedelta(hours=1))
        if len(created) >= max_url_jobs:
            # The hour's window frees a place when the oldest of the last max_url_jobs leaves it.
            frees_at = created[len(created) - max_url_jobs] + timedelta(hours=1)
            raise _quota_exceeded(
                f"This key created {len(created)} input_url jobs in the last hour, its quota of "
                f"{max_url_jobs}; retry after the Retry-After seconds.",
                retry_after=int((frees_at - now).total_seconds() + 0.999),
            )


def _check_storage_quota(api_key: ApiKey, *, size: int) -> None:
    limit = settings.BATCH_MAX_STORED_BYTES_PER_KEY
    if not limit:
        return
    stored = batch_key_stored_upload_bytes(api_key=api_key, now=timezone.now())
    if stored + size > limit:
        raise ApiError(
            ErrorCode.RATE_FILE_STORAGE_QUOTA_EXCEEDED,
            f"This file's {size:,} bytes and the {stored:,} of this key's stored uploads would "
            f"pass its quota of {limit:,} bytes; delete files you no longer need "
            "(DELETE /v1/files/{file_id}).",
            param="file",
        )


# --- Creating jobs ---------------------------------------------------------------------------


def _check_balance(api_key: ApiKey) -> None:
    balance = ApiKey.objects.values_list("balance", flat=True).get(pk=api_key.pk)
    if balance <= 0:
        raise ApiError(
            ErrorCode.AUTHZ_INSUFFICIENT_BALANCE,
            "Insufficient balance: this key has no tokens left. Top up this key in your dashboard.",
        )


def _check_task(model: EmbeddingModel, task: str | None) -> None:
    if task and task not in model.tasks:
        supported = ", ".join(sorted(model.tasks)) or "none"
        raise ApiError(
            ErrorCode.INPUT_UNSUPPORTED_TASK,
            f"Task '{task}' is not supported by {model.name}. Supported tasks: {supported}.",
            param="task",
        )


def _check_url(url: str, *, param: str, label: str) -> None:
    try:
        check_public_url(url, allowed_hosts=settings.BATCH_URL_ALLOWED_HOSTS, label=label)
    except PublicUrlError as exc:
        raise ApiError(ErrorCode.INPUT_VALIDATION_ERROR, f"{param}: {exc}", param=param) from exc


def _job_create(*, api_key: ApiKey, fmt: str, model: EmbeddingModel, **fields: Any) -> BatchJob:
    now = timezone.now()
    job = BatchJob.objects.create(
        id=_new_id("batch_"),
        api_key=api_key,
        format=fmt,
        model=model.name,
        expires_at=now + timedelta(seconds=settings.BATCH_EXPIRES_AFTER_SECONDS),
        enqueued_at=now,
        request_id=current_request_id()[:64],
        **fields,
    )
    # The creating request's records (and the task it sends) carry the job's id from here on.
    log_context_update(batch_id=job.id, model=model.name)
    _enqueue_on_commit("batch_job_run", job.id)
    return job


@transaction.atomic
def batch_job_create_jina(
    *,
    api_key: ApiKey,
    model: str | None,
    options: dict[str, Any],
    lines: list[BatchLine] | None,
    input_url: str = "",
    webhook_url: str = "",
    webhook_secret: str = "",
) -> BatchJob:
    """A job from Jina's BatchEmbeddingRequest: inline lines, or an input_url fetched later."""
    embedding_model = batch_lines_model(lines=lines or [], model=model)
    api_key_model_check(api_key=api_key, model=embedding_model.name)
    _check_task(embedding_model, options.get("task"))
    if input_url:
        _check_url(input_url, param="input_url", label="input")
    if webhook_url:
        _check_url(webhook_url, param="webhook_url", label="webhook")
    _lock_key(api_key)
    _check_balance(api_key)
    _check_job_quota(api_key, lines=len(lines or []), input_url=bool(input_url))
    input_file = None
    if lines is not None:
        content = batch_lines_to_jsonl(lines)
        _check_size(len(content))
        input_file = BatchFile.objects.create(
            id=_new_id("file-"),
            api_key=api_key,
            origin=BatchFile.Origin.INLINE,
            filename="input.jsonl",
            size=len(content),
            lines=len(lines),
            content=content,
        )
    return _job_create(
        api_key=api_key,
        fmt=BatchJob.Format.JINA,
        model=embedding_model,
        options=options,
        input_file=input_file,
        input_url=input_url,
        total_lines=len(lines) if lines is not None else 0,
        webhook_url=webhook_url,
        webhook_secret=(webhook_secret or f"whsec_{secrets.token_urlsafe(24)}")
        if webhook_url
        else "",
    )


@transaction.atomic
def batch_job_create_openai(
    *,
    api_key: ApiKey,
    input_file_id: str,
    endpoint: str,
    completion_window: str,
    metadata: dict[str, str] | None,
) -> BatchJob:
    """A job from OpenAI's batch create: an uploaded file's lines, all for /v1/embeddings."""
    if endpoint != EMBEDDINGS_ENDPOINT:
        raise ApiError(
            ErrorCode.INPUT_VALIDATION_ERROR,
            f"endpoint must be {EMBEDDINGS_ENDPOINT}: this server runs embedding batches only.",
            param="endpoint",
        )
    if completion_window != COMPLETION_WINDOW:
        raise ApiError(
            ErrorCode.INPUT_VALIDATION_ERROR,
            f"completion_window must be {COMPLETION_WINDOW!r}.",
            param="completion_window",
        )
    file = BatchFile.objects.filter(
        pk=input_file_id, api_key=api_key, origin=BatchFile.Origin.UPLOAD
    ).first()
    if file is None or (file.expires_at is not None and file.expires_at <= timezone.now()):
        raise ApiError(
            ErrorCode.RESOURCE_NOT_FOUND,
            f"No file {input_file_id[:100]!r}; upload one with purpose 'batch' first.",
            param="input_file_id",
        )
    if file.purpose != "batch":
        raise ApiError(
            ErrorCode.INPUT_VALIDATION_ERROR,
            f"File {file.id} was not uploaded with purpose 'batch'.",
            param="input_file_id",
        )
    lines = batch_lines_from_jsonl(bytes(file.content))
    embedding_model = batch_lines_model(lines=lines, model=None)
    api_key_model_check(api_key=api_key, model=embedding_model.name)
    _lock_key(api_key)
    _check_balance(api_key)
    _check_job_quota(api_key, lines=len(lines), input_url=False)
    return _job_create(
        api_key=api_key,
        fmt=BatchJob.Format.OPENAI,
        model=embedding_model,
        input_file=file,
        total_lines=len(lines),
        endpoint=endpoint,
        completion_window=completion_window,
        metadata=metadata,
    )


# --- The runner's lease ----------------------------------------------------------------------


def _lease_until() -> Any:
    return timezone.now() + timedelta(seconds=settings.BATCH_LEASE_SECONDS)


def batch_job_lease_take(*, job_id: str) -> str | None:
    """Take an active job whose lease is free or ran out; the lease token, or None."""
    token = secrets.token_hex(16)
    taken = (
        BatchJob.objects.filter(pk=job_id, status__in=BatchJob.ACTIVE)
        .filter(Q(lease_expires_at__isnull=True) | Q(lease_expires_at__lt=timezone.now()))
        .update(lease_token=token, lease_expires_at=_lease_until(), runs=F("runs") + 1)
    )
    return token if taken else None


def batch_job_lease_renew(*, job_id: str, token: str) -> bool:
    """Extend the lease; False when it was lost to another runner."""
    return bool(
        BatchJob.objects.filter(pk=job_id, lease_token=token).update(
            lease_expires_at=_lease_until()
        )
    )


def batch_job_lease_release(*, job_id: str, token: str) -> None:
    """Give the lease back (the job finished, or this runner stops)."""
    BatchJob.objects.filter(pk=job_id, lease_token=token).update(
        lease_token="", lease_expires_at=None
    )


def batch_job_mark_enqueued(*, job_id: str) -> None:
    """Note that a run of the job was just sent to the queue."""
    BatchJob.objects.filter(pk=job_id).update(enqueued_at=timezone.now())


def _locked(job_id: str, token: str) -> BatchJob | None:
    """The job under its row lock, if it is active and this runner still holds its lease."""
    job = BatchJob.objects.select_for_update().filter(pk=job_id).first()
    if job is None or job.status not in BatchJob.ACTIVE or job.lease_token != token:
        return None
    return job


@transaction.atomic
def batch_job_start(
    *, job_id: str, token: str, fetched: bytes | None = None, lines: int | None = None
) -> bool:
    """Move the job to processing; for an input_url job, store the fetched file first."""
    job = _locked(job_id, token)
    if job is None:
        return False
    fields: dict[str, Any] = {"status": BatchJob.Status.PROCESSING}
    if job.started_at is None:
        fields["started_at"] = timezone.now()
    if fetched is not None and lines is not None:
        fields["input_file"] = BatchFile.objects.create(
            id=_new_id("file-"),
            api_key_id=job.api_key_id,
            origin=BatchFile.Origin.URL,
            filename=(job.input_url.rsplit("/", 1)[-1] or "input.jsonl")[:255],
            size=len(fetched),
            lines=lines,
            content=fetched,
        )
        fields["total_lines"] = lines
    BatchJob.objects.filter(pk=job.pk).update(**fields)
    return True


# --- Chunks ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ChunkResult:
    """What a runner computed for lines [first_line, end_line) of a job, not yet committed."""

    index: int
    first_line: int
    end_line: int
    output: bytes
    errors: bytes
    completed: int
    failed: int
    text_tokens: int
    image_tokens: int
    latency_ms: float

    @property
    def tokens(self) -> int:
        return self.text_tokens + self.image_tokens


class ChunkCommit(Enum):
    COMMITTED = "committed"
    STALE = "stale"  # another runner committed these lines, or the job stopped: dropped


@transaction.atomic
def batch_chunk_commit(*, job_id: str, token: str, result: ChunkResult) -> ChunkCommit:
    """Charge a chunk's completed lines, store its output and move the resume point past it —
    all at once or not at all. Raises InsufficientBalance (nothing written) when the key cannot
    pay for it."""
    job = _locked(job_id, token)
    if job is None or job.next_line != result.first_line or job.next_chunk != result.index:
        return ChunkCommit.STALE
    usage = None
    if result.tokens:
        usage = charge_served(
            api_key=job.api_key,
            model=job.model,
            cost=Cost(text_tokens=result.text_tokens, image_tokens=result.image_tokens),
            request_id=f"{job.id}:{result.index}",
            endpoint="batch",
            latency_ms=result.latency_ms,
        )
    BatchChunk.objects.create(
        job=job,
        index=result.index,
        first_line=result.first_line,
        end_line=result.end_line,
        completed=result.completed,
        failed=result.failed,
        tokens=result.tokens,
        output=result.output,
        output_size=len(result.output),
        errors=result.errors,
        errors_size=len(result.errors),
        usage=usage,
    )
    BatchJob.objects.filter(pk=job.pk).update(
        next_line=result.end_line,
        next_chunk=result.index + 1,
        completed_lines=F("completed_lines") + result.completed,
        failed_lines=F("failed_lines") + result.failed,
        total_tokens=F("total_tokens") + result.tokens,
        lease_expires_at=_lease_until(),
    )
    return ChunkCommit.COMMITTED


# --- The end of a job ------------------------------------------------------------------------


def _webhook_due(job: BatchJob) -> dict[str, Any]:
    """Fields that schedule the job's webhook (when it has one), sent after the commit."""
    if not job.webhook_url or job.webhook_status:
        return {}
    _enqueue_on_commit("batch_webhook_send", job.id)
    return {
        "webhook_status": BatchJob.Webhook.PENDING,
        "webhook_next_attempt_at": timezone.now(),
    }


@transaction.atomic
def batch_job_complete(*, job_id: str, token: str) -> bool:
    """Every line is committed: the job is completed."""
    job = _locked(job_id, token)
    if job is None or job.next_line < job.total_lines:
        return False
    BatchJob.objects.filter(pk=job.pk).update(
        status=BatchJob.Status.COMPLETED,
        completed_at=timezone.now(),
        error_code="",
        error_message="",
        lease_token="",
        lease_expires_at=None,
        **_webhook_due(job),
    )
    return True


@transaction.atomic
def batch_job_fail(
    *, job_id: str, token: str, error: ApiError, error_lines: bytes = b"", failed: int = 0
) -> bool:
    """Stop the job as failed; the lines it will not run go to its errors file with `error_lines`."""
    job = _locked(job_id, token)
    if job is None:
        return False
    if error_lines:
        BatchChunk.objects.create(
            job=job,
            index=job.next_chunk,
            first_line=job.next_line,
            end_line=job.total_lines,
            failed=failed,
            errors=error_lines,
            errors_size=len(error_lines),
        )
    BatchJob.objects.filter(pk=job.pk).update(
        status=BatchJob.Status.FAILED,
        failed_at=timezone.now(),
        failed_lines=F("failed_lines") + failed,
        next_line=job.total_lines if error_lines else job.next_line,
        next_chunk=job.next_chunk + (1 if error_lines else 0),
        error_code=error.code.value,
        error_message=error.message,
        lease_token="",
        lease_expires_at=None,
        **_webhook_due(job),
    )
    return True


@transaction.atomic
def batch_job_cancel(*, job: BatchJob) -> BatchJob:
    """Cancel a pending or running job: no chunk commits after this, so only the lines already
    committed are charged. Cancelling a cancelled job changes nothing."""
    locked = BatchJob.objects.select_for_update().get(pk=job.pk)
    if locked.status == BatchJob.Status.CANCELLED:
        return locked
    if locked.status not in BatchJob.ACTIVE:
        raise ApiError(
            ErrorCode.RESOURCE_CONFLICT,
            f"Batch {locked.id} is already {locked.status}; only pending or processing jobs "
            "can be cancelled.",
        )
    BatchJob.objects.filter(pk=locked.pk).update(
        status=BatchJob.Status.CANCELLED, cancelled_at=timezone.now(), **_webhook_due(locked)
    )
    return BatchJob.objects.get(pk=locked.pk)


@transaction.atomic
def batch_job_expire(*, job_id: str) -> bool:
    """The job's time is up: stop it if it runs, and delete its outputs and inline input."""
    job = BatchJob.objects.select_for_update().filter(pk=job_id).first()
    if job is None or job.status == BatchJob.Status.EXPIRED:
        return False
    fields: dict[str, Any] = {"status": BatchJob.Status.EXPIRED, "expired_at": timezone.now()}
    if job.is_active:
        fields.update(_webhook_due(job))
    BatchJob.objects.filter(pk=job.pk).update(**fields)
    BatchChunk.objects.filter(job=job).delete()
    BatchFile.objects.filter(pk=job.input_file_id).exclude(origin=BatchFile.Origin.UPLOAD).delete()
    return True


def batch_files_expire() -> int:
    """Delete uploaded files past their expiry that no running job reads. Returns the count."""
    expired = BatchFile.objects.filter(expires_at__lte=timezone.now()).exclude(
        jobs__status__in=BatchJob.ACTIVE
    )
    count, _ = expired.delete()
    return count


# --- Webhooks --------------------------------------------------------------------------------


def batch_webhook_claim(*, job_id: str) -> BatchJob | None:
    """Take the next delivery attempt of a job's webhook, if one is due; None otherwise.

    The conditional update makes concurrent senders (the runner, the maintenance task) send
    each attempt once; the next attempt is scheduled before this one is tried.
    """
    job = BatchJob.objects.filter(pk=job_id, webhook_status=BatchJob.Webhook.PENDING).first()
    now = timezone.now()
    if job is None or (job.webhook_next_attempt_at and job.webhook_next_attempt_at > now):
        return None
    backoff = settings.BATCH_WEBHOOK_RETRY_SECONDS * (2**job.webhook_attempts)
    claimed = BatchJob.objects.filter(
        pk=job.pk,
        webhook_status=BatchJob.Webhook.PENDING,
        webhook_attempts=job.webhook_attempts,
    ).update(
        webhook_attempts=F("webhook_attempts") + 1,
        webhook_next_attempt_at=now + timedelta(seconds=backoff),
    )
    if not claimed:
        return None
    job.refresh_from_db()
    return job


def batch_webhook_record(*, job: BatchJob, delivered: bool, error: str = "") -> None:
    """The outcome of a delivery attempt; after the last failed attempt, give up."""
    if delivered:
        status = BatchJob.Webhook.DELIVERED
    elif job.webhook_attempts >= settings.BATCH_WEBHOOK_MAX_ATTEMPTS:
        status = BatchJob.Webhook.FAILED
    else:
        status = BatchJob.Webhook.PENDING
    BatchJob.objects.filter(pk=job.pk, webhook_status=BatchJob.Webhook.PENDING).update(
        webhook_status=status, webhook_last_error=error[:255]
    )

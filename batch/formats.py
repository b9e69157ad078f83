"""The two wire formats of a job and its files: Jina's BatchStatus and OpenAI's Batch and File
objects (shared/reference/jina-openapi.json; the OpenAI API reference, "Batch", "File")."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from batch.models import BatchFile, BatchJob

# Jina's status vocabulary is the job's own; OpenAI names the same states differently.
OPENAI_STATUS = {
    BatchJob.Status.PENDING: "validating",
    BatchJob.Status.PROCESSING: "in_progress",
    BatchJob.Status.COMPLETED: "completed",
    BatchJob.Status.FAILED: "failed",
    BatchJob.Status.CANCELLED: "cancelled",
    BatchJob.Status.EXPIRED: "expired",
}

OUTPUT_FILE_SUFFIX = "-output"
ERRORS_FILE_SUFFIX = "-errors"


def _iso(moment: datetime | None) -> str | None:
    if moment is None:
        return None
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _unix(moment: datetime | None) -> int | None:
    return int(moment.timestamp()) if moment is not None else None


def output_file_id(job: BatchJob) -> str | None:
    """The OpenAI file id of a job's output (a view of its chunks, not a copy)."""
    return f"file-{job.id}{OUTPUT_FILE_SUFFIX}" if job.outputs_available else None


def errors_file_id(job: BatchJob) -> str | None:
    """The OpenAI file id of a job's errors, when some lines failed."""
    if not job.outputs_available or not job.failed_lines:
        return None
    return f"file-{job.id}{ERRORS_FILE_SUFFIX}"


def _stats(job: BatchJob) -> dict[str, int]:
    return {
        "total": job.total_lines,
        "completed": job.completed_lines,
        "failed": job.failed_lines,
        "total_tokens": job.total_tokens,
    }


def _jina_urls(job: BatchJob, base_url: str) -> dict[str, str | None]:
    output = f"{base_url}/v1/batch/{job.id}/output" if job.outputs_available else None
    errors = f"{base_url}/v1/batch/{job.id}/errors" if errors_file_id(job) else None
    return {"output_url": output, "error_file_url": errors}


def jina_batch_status(job: BatchJob, *, base_url: str, secret: bool = True) -> dict[str, Any]:
    """Jina's BatchStatus, plus what this server adds (input, webhook, error code)."""
    status: dict[str, Any] = {
        "batch_id": job.id,
        "status": job.status,
        "model": job.model,
        "created_at": _iso(job.created_at),
        "started_at": _iso(job.started_at),
        "completed_at": _iso(job.finished_at),
        "expires_at": _iso(job.expires_at),
        **_jina_urls(job, base_url),
        "error": job.error_message or None,
        "error_code": job.error_code or None,
        "stats": _stats(job),
        "input_file_id": job.input_file_id,
        "input_url": job.input_url or None,
        "webhook_url": job.webhook_url or None,
    }
    if secret and job.webhook_secret:
        status["webhook_secret"] = job.webhook_secret
    return status


def openai_batch(job: BatchJob, *, base_url: str) -> dict[str, Any]:
    """OpenAI's Batch object, with Jina's names for the same facts alongside (batch_id, stats,
    output_url, error_file_url), so one list serves both client families."""
    errors = None
    if job.error_code:
        errors = {
            "object": "list",
            "data": [
                {"code": job.error_code, "message": job.error_message, "line": None, "param": None}
            ],
        }
    return {
        "id": job.id,
        "object": "batch",
        "endpoint": job.endpoint,
        "model": job.model,
        "errors": errors,
        "input_file_id": job.input_file_id or "",
        "completion_window": job.completion_window,
        "status": OPENAI_STATUS[BatchJob.Status(job.status)],
        "output_file_id": output_file_id(job),
        "error_file_id": errors_file_id(job),
        "created_at": _unix(job.created_at),
        "in_progress_at": _unix(job.started_at),
        "expires_at": _unix(job.expires_at),
        "finalizing_at": _unix(job.completed_at),
        "completed_at": _unix(job.completed_at),
        "failed_at": _unix(job.failed_at),
        "expired_at": _unix(job.expired_at),
        "cancelling_at": _unix(job.cancelled_at),
        "cancelled_at": _unix(job.cancelled_at),
        "request_counts": {
            "total": job.total_lines,
            "completed": job.completed_lines,
            "failed": job.failed_lines,
        },
        "usage": {
            "input_tokens": job.total_tokens,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": 0,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": job.total_tokens,
        },
        "metadata": job.metadata,
        "batch_id": job.id,
        "stats": _stats(job),
        **_jina_urls(job, base_url),
    }


def openai_file(file: BatchFile) -> dict[str, Any]:
    """OpenAI's File object for an uploaded (or a job's input) file."""
    return {
        "id": file.id,
        "object": "file",
        "bytes": file.size,
        "created_at": _unix(file.created_at),
        "expires_at": _unix(file.expires_at),
        "filename": file.filename,
        "purpose": file.purpose,
        "status": "processed",
        "status_details": None,
    }


def openai_result_file(job: BatchJob, *, kind: str, size: int) -> dict[str, Any]:
    """OpenAI's File object for a job's output or errors (purpose `batch_output`)."""
    suffix = OUTPUT_FILE_SUFFIX if kind == "output" else ERRORS_FILE_SUFFIX
    return {
        "id": f"file-{job.id}{suffix}",
        "object": "file",
        "bytes": size,
        "created_at": _unix(job.finished_at or job.created_at),
        "expires_at": _unix(job.expires_at),
        "filename": f"{job.id}_{kind}.jsonl",
        "purpose": "batch_output",
        "status": "processed",
        "status_details": None,
    }

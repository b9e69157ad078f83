"""Batch jobs: an input file of request lines, the job that embeds them, and its committed chunks.

Everything a job produces lives in the database, beside the ledger: a chunk's output is written
in the same transaction as its debit, so a line has output exactly when it was charged, and the
gateways and workers that serve and run jobs share nothing but the database and the broker.
"""

from __future__ import annotations

from datetime import datetime

from django.db import models

from billing.models import ApiKey, UsageRecord


class BatchFile(models.Model):
    """A JSONL file of request lines owned by a key: an upload (OpenAI's /v1/files), or the
    inline lines or fetched `input_url` of a Jina-format job."""

    class Origin(models.TextChoices):
        UPLOAD = "upload", "Uploaded (/v1/files)"
        INLINE = "inline", "Inline lines of a job"
        URL = "url", "Fetched from a job's input_url"

    id = models.CharField(primary_key=True, max_length=40, editable=False)
    api_key = models.ForeignKey(ApiKey, on_delete=models.CASCADE, related_name="batch_files")
    origin = models.CharField(max_length=10, choices=Origin.choices, default=Origin.UPLOAD)
    purpose = models.CharField(max_length=20, default="batch")
    filename = models.CharField(max_length=255)
    size = models.PositiveBigIntegerField(default=0, help_text="Bytes.")
    lines = models.PositiveIntegerField(default=0, help_text="Request lines in the file.")
    content = models.BinaryField(default=b"")
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField(null=True, blank=True, db_index=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["api_key", "origin", "created_at"])]

    def __str__(self) -> str:
        return f"{self.id} ({self.filename}, {self.lines} lines)"


class BatchJob(models.Model):
    """One batch embedding job: its options, progress, lease and outcome."""

    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        PROCESSING = "processing", "Processing"
        COMPLETED = "completed", "Completed"
        FAILED = "failed", "Failed"
        CANCELLED = "cancelled", "Cancelled"
        EXPIRED = "expired", "Expired"

    class Format(models.TextChoices):
        JINA = "jina", "Jina (/v1/batch/embeddings)"
        OPENAI = "openai", "OpenAI (/v1/files + /v1/batches)"

    class Webhook(models.TextChoices):
        NONE = "", "No webhook"
        PENDING = "pending", "To be sent"
        DELIVERED = "delivered", "Delivered"
        FAILED = "failed", "Gave up"

    ACTIVE = (Status.PENDING, Status.PROCESSING)

    id = models.CharField(primary_key=True, max_length=40, editable=False)
    api_key = models.ForeignKey(ApiKey, on_delete=models.PROTECT, related_name="batch_jobs")
    format = models.CharField(max_length=10, choices=Format.choices)
    model = models.CharField(max_length=100)
    # Request fields applied to every line (a line's own body overrides them).
    options = models.JSONField(default=dict, blank=True)
    input_file = models.ForeignKey(
        BatchFile, null=True, blank=True, on_delete=models.SET_NULL, related_name="jobs"
    )
    input_url = models.CharField(max_length=2000, blank=True)
    endpoint = models.CharField(max_length=50, default="/v1/embeddings")
    completion_window = models.CharField(max_length=10, default="24h")
    metadata = models.JSONField(null=True, blank=True)
    # The id of the request that created the job: every record of its runs carries it, a run
    # resumed after a runner died included (README, "Logs and traces").
    request_id = models.CharField(max_length=64, blank=True, default="")

    status = models.CharField(
        max_length=12, choices=Status.choices, default=Status.PENDING, db_index=True
    )
    total_lines = models.PositiveIntegerField(default=0)
    completed_lines = models.PositiveIntegerField(default=0)
    failed_lines = models.PositiveIntegerField(default=0)
    total_tokens = models.PositiveBigIntegerField(default=0)
    # The resume point: lines [0, next_line) are committed in chunks [0, next_chunk).
    next_line = models.PositiveIntegerField(default=0)
    next_chunk = models.PositiveIntegerField(default=0)
    error_code = models.CharField(max_length=64, blank=True)
    error_message = models.TextField(blank=True)

    # One runner at a time: whoever holds an unexpired lease; a dead runner's lease runs out.
    lease_token = models.CharField(max_length=32, blank=True)
    lease_expires_at = models.DateTimeField(null=True, blank=True)
    runs = models.PositiveIntegerField(default=0, help_text="Times a runner took the job.")
    enqueued_at = models.DateTimeField(null=True, blank=True)

    webhook_url = models.CharField(max_length=2000, blank=True)
    webhook_secret = models.CharField(max_length=100, blank=True)
    webhook_status = models.CharField(
        max_length=10, choices=Webhook.choices, default=Webhook.NONE, blank=True
    )
    webhook_attempts = models.PositiveSmallIntegerField(default=0)
    webhook_next_attempt_at = models.DateTimeField(null=True, blank=True)
    webhook_last_error = models.CharField(max_length=255, blank=True)

    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    completed_at = models.DateTimeField(null=True, blank=True)
    failed_at = models.DateTimeField(null=True, blank=True)
    cancelled_at = models.DateTimeField(null=True, blank=True)
    expires_at = models.DateTimeField(db_index=True)
    expired_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [
            models.Index(fields=["api_key", "created_at"]),
            models.Index(fields=["status", "lease_expires_at"]),
            models.Index(fields=["webhook_status", "webhook_next_attempt_at"]),
        ]

    def __str__(self) -> str:
        return f"{self.id} {self.status} ({self.completed_lines}/{self.total_lines})"

    @property
    def is_active(self) -> bool:
        return self.status in self.ACTIVE

    @property
    def finished_at(self) -> datetime | None:
        """When the job stopped: completed, failed or cancelled (None while it runs)."""
        return self.completed_at or self.failed_at or self.cancelled_at or self.expired_at

    @property
    def processed_lines(self) -> int:
        return self.completed_lines + self.failed_lines

    @property
    def progress(self) -> float:
        """Share of the lines processed, 0.0 to 1.0 (for progress bars)."""
        if not self.total_lines:
            return 1.0 if not self.is_active else 0.0
        return min(self.processed_lines / self.total_lines, 1.0)

    @property
    def outputs_available(self) -> bool:
        """Output and error files can be downloaded: the job stopped and has not expired."""
        return self.status in (self.Status.COMPLETED, self.Status.FAILED, self.Status.CANCELLED)


class BatchChunk(models.Model):
    """A committed chunk of a job: its lines' output and error lines, charged once.

    Written in one transaction with the ledger debit and the job's resume point; the unique
    (job, index) and (job, first_line) pairs make a second commit of the same lines impossible.
    """

    job = models.ForeignKey(BatchJob, on_delete=models.CASCADE, related_name="chunks")
    index = models.PositiveIntegerField()
    first_line = models.PositiveIntegerField()
    end_line = models.PositiveIntegerField()
    completed = models.PositiveIntegerField(default=0)
    failed = models.PositiveIntegerField(default=0)
    tokens = models.PositiveBigIntegerField(default=0)
    output = models.BinaryField(default=b"")
    output_size = models.PositiveBigIntegerField(default=0)
    errors = models.BinaryField(default=b"")
    errors_size = models.PositiveBigIntegerField(default=0)
    usage = models.OneToOneField(
        UsageRecord,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="batch_chunk",
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["job", "index"]
        constraints = [
            models.UniqueConstraint(fields=["job", "index"], name="batch_chunk_unique_index"),
            models.UniqueConstraint(
                fields=["job", "first_line"], name="batch_chunk_unique_first_line"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.job_id} chunk {self.index} (lines {self.first_line}-{self.end_line})"

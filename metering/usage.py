"""Usage rows that cost nothing (requests refused before admission) and the daily rollups."""

from __future__ import annotations

import atexit
import logging
import queue
import threading
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from django.conf import settings
from django.db import close_old_connections, transaction
from django.db.models import Count, Q, QuerySet, Sum
from django.utils import timezone

from billing.models import UsageDaily, UsageRecord

logger = logging.getLogger(__name__)


class UsageWriter:
    """Writes never-charged usage rows in batches from a background thread.

    Charged requests write their row inside the debit transaction (money must be durable);
    refused ones (400, 403, 429) only feed the dashboards, so they wait for the next batch.
    """

    def __init__(self, *, batch_size: int = 500) -> None:
        self.batch_size = batch_size
        self._queue: queue.SimpleQueue[UsageRecord] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    @property
    def interval(self) -> float:
        return float(settings.USAGE_FLUSH_INTERVAL_SECONDS)

    def add(self, record: UsageRecord) -> None:
        if self.interval <= 0:
            UsageRecord.objects.bulk_create([record])
            return
        self._queue.put(record)
        if self._thread is None:
            self._start()

    def _start(self) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="usage-writer", daemon=True)
                self._thread.start()
                atexit.register(self.flush)

    def _run(self) -> None:
        while True:
            threading.Event().wait(self.interval)
            try:
                self.flush()
            except Exception:
                logger.exception("Writing usage rows failed; they are retried in the next batch")
            finally:
                close_old_connections()

    def flush(self) -> int:
        """Write everything queued so far; returns the number of rows."""
        batch: list[UsageRecord] = []
        while True:
            try:
                batch.append(self._queue.get_nowait())
            except queue.Empty:
                break
        for start in range(0, len(batch), self.batch_size):
            try:
                UsageRecord.objects.bulk_create(batch[start : start + self.batch_size])
            except Exception:
                for record in batch[start:]:
                    self._queue.put(record)
                raise
        return len(batch)


usage_writer = UsageWriter()


def usage_record_refused(
    *,
    api_key_id: int,
    request_id: str,
    model: str,
    http_status: int,
    error_code: str,
    endpoint: str = "embeddings",
    text_tokens: int = 0,
    image_tokens: int = 0,
    latency_ms: float | None = None,
) -> None:
    """Record a request that was answered with an error before anything was charged."""
    now = timezone.now()
    usage_writer.add(
        UsageRecord(
            api_key_id=api_key_id,
            request_id=request_id[:64],
            endpoint=endpoint[:64],
            model=model[:100],
            status=UsageRecord.Status.FAILED,
            http_status=http_status,
            error_code=error_code[:64],
            text_tokens=text_tokens,
            image_tokens=image_tokens,
            charged_tokens=0,
            latency_ms=latency_ms,
            created_at=now,
            finished_at=now,
        )
    )


def _sums() -> dict[str, Any]:
    return {
        "requests": Count("id"),
        "errors": Count("id", filter=~Q(status=UsageRecord.Status.SUCCEEDED)),
        "text_tokens": Sum("text_tokens", filter=Q(status=UsageRecord.Status.SUCCEEDED)),
        "image_tokens": Sum("image_tokens", filter=Q(status=UsageRecord.Status.SUCCEEDED)),
        "charged_tokens": Sum("charged_tokens"),
    }


def usage_sums(records: QuerySet[UsageRecord], *by: str) -> list[dict[str, Any]]:
    """Finished requests summed per `by` fields (over all of them when none is named):
    requests, errors, tokens of served requests and charged tokens — the figures of a
    UsageDaily row. No rows, no sums."""
    finished = records.exclude(status=UsageRecord.Status.PENDING)
    if not by:
        # values() with no fields would group by every column: one "sum" per request.
        total = finished.aggregate(**_sums())
        return [total] if total["requests"] else []
    return list(finished.values(*by).annotate(**_sums()))


@transaction.atomic
def usage_rollup_day(*, day: date) -> int:
    """Recompute the UsageDaily rows of one UTC day from the usage records (idempotent)."""
    start = datetime.combine(day, time.min, tzinfo=UTC)
    day_records = UsageRecord.objects.filter(
        created_at__gte=start, created_at__lt=start + timedelta(days=1)
    )
    rows = usage_sums(day_records, "api_key_id", "endpoint", "model")
    UsageDaily.objects.filter(day=day).delete()
    UsageDaily.objects.bulk_create(
        UsageDaily(
            api_key_id=row["api_key_id"],
            endpoint=row["endpoint"],
            model=row["model"],
            day=day,
            requests=row["requests"],
            errors=row["errors"],
            text_tokens=row["text_tokens"] or 0,
            image_tokens=row["image_tokens"] or 0,
            charged_tokens=row["charged_tokens"] or 0,
        )
        for row in rows
    )
    return len(rows)

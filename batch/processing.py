"""Running a batch job: its lines are counted one after another into chunks of about
BATCH_CHUNK_TOKENS tokens; each chunk is embedded in one backend call and committed with its
debit (`services.batch_chunk_commit`), so a job resumes from its last committed chunk.

A line is the body of a /v1/embeddings request, with the job's options as defaults; its output
line holds exactly what /v1/embeddings would answer (the vectors and the line's `usage`), and
a line /v1/embeddings would refuse goes to the errors file with the same error envelope.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from django.conf import settings

from batch.lines import BatchLine, batch_lines_from_jsonl
from batch.models import BatchJob
from batch.outbound import OutboundError, input_url_fetch
from batch.services import (
    ChunkCommit,
    ChunkResult,
    batch_chunk_commit,
    batch_job_complete,
    batch_job_fail,
    batch_job_lease_release,
    batch_job_lease_renew,
    batch_job_lease_take,
    batch_job_start,
    batch_lines_model,
)
from billing.models import ApiKey
from embeddings_site.errors import ApiError, ErrorCode, api_error_from_exception, error_body
from embeddings_site.json import dumps
from embeddings_site.log_context import log_context_update
from embeddings_site.tracing import span, span_set
from inference.backends.base import EmbedItem
from inference.protocol import EmbeddingRequest, EmbeddingRequestSerializer
from inference.services import (
    CountedRequest,
    embedding_request_count,
    embeddings_body,
    embeddings_vectors,
)
from metering.authentication import api_key_model_check
from metering.ledger import InsufficientBalance

logger = logging.getLogger(__name__)

# The job's embedding type applies unless a line names its own, under any of the three names.
_TYPE_KEYS = ("embedding_type", "encoding_type", "encoding_format")


@dataclass(frozen=True)
class CountedLine:
    """A line parsed and counted, ready to embed."""

    line: BatchLine
    request: EmbeddingRequest
    counted: CountedRequest

    @property
    def tokens(self) -> int:
        return self.counted.total_tokens


@dataclass(frozen=True)
class FailedLine:
    """A line /v1/embeddings would refuse, with the error it would answer."""

    line: BatchLine
    error: ApiError
    tokens: int = 0


PreparedLine = CountedLine | FailedLine


def _request_data(job: BatchJob, line: BatchLine) -> dict[str, Any]:
    options = dict(job.options)
    if any(key in line.body for key in _TYPE_KEYS):
        for key in _TYPE_KEYS:
            options.pop(key, None)
    return {**options, **line.body, "model": job.model}


def line_prepare(job: BatchJob, line: BatchLine) -> PreparedLine:
    """Parse and count one line as /v1/embeddings would; a 4xx becomes the line's error.

    A 5xx (the model cannot be loaded) is the job's problem, not the line's: it propagates.
    """
    serializer = EmbeddingRequestSerializer(data=_request_data(job, line))
    try:
        serializer.is_valid(raise_exception=True)
        request = serializer.to_request()
        counted = embedding_request_count(request=request)
    except Exception as exc:
        error = api_error_from_exception(exc)
        if error is None or error.status >= 500:
            raise
        return FailedLine(line=line, error=error)
    return CountedLine(line=line, request=request, counted=counted)


def _line_id(job: BatchJob, line: BatchLine) -> str:
    return f"batch_req_{job.id.removeprefix('batch_')}_{line.index}"


def output_line(job: BatchJob, line: BatchLine, body: dict[str, Any]) -> bytes:
    """A line of the output file (Jina's shape, with OpenAI's `id` and `error` beside it)."""
    line_id = _line_id(job, line)
    return (
        dumps(
            {
                "id": line_id,
                "custom_id": line.custom_id,
                "response": {"status_code": 200, "request_id": line_id, "body": body},
                "error": None,
            }
        )
        + b"\n"
    )


def error_line(job: BatchJob, line: BatchLine, error: ApiError) -> bytes:
    """A line of the errors file: the status and envelope /v1/embeddings would answer."""
    line_id = _line_id(job, line)
    return (
        dumps(
            {
                "id": line_id,
                "custom_id": line.custom_id,
                "response": {
                    "status_code": error.status,
                    "request_id": line_id,
                    "body": error_body(error, line_id),
                },
                "error": {"code": error.code.value, "message": error.message},
            }
        )
        + b"\n"
    )


def _merged(lines: list[CountedLine]) -> CountedRequest:
    """The counted lines of a chunk as one request, for one backend call."""
    items: list[EmbedItem] = []
    images = {}
    for line in lines:
        offset = len(items)
        items.extend(line.counted.items)
        images.update({offset + index: header for index, header in line.counted.images.items()})
    first = lines[0].counted
    return CountedRequest(
        model=first.model,
        runtime=first.runtime,
        items=items,
        text_tokens=sum(line.counted.text_tokens for line in lines),
        image_tokens=sum(line.counted.image_tokens for line in lines),
        images=images,
    )


class _Runner:
    """Runs one job from its resume point while it holds the job's lease."""

    def __init__(self, job_id: str, token: str) -> None:
        self.job_id = job_id
        self.token = token
        self.lookahead: dict[int, PreparedLine] = {}

    def run(self) -> None:
        job = BatchJob.objects.select_related("api_key", "input_file").get(pk=self.job_id)
        # A resumed run (sent by the maintenance task) names the creating request too.
        log_context_update(request_id=job.request_id or None, key_prefix=job.api_key.prefix)
        if job.runs > settings.BATCH_MAX_RUNS:
            self._give_up(job)
            return
        lines = self._lines(job)
        if lines is None:
            return
        while True:
            job.refresh_from_db(fields=["status", "next_line", "next_chunk", "total_lines"])
            if job.status != BatchJob.Status.PROCESSING:
                return
            if job.next_line >= len(lines):
                batch_job_complete(job_id=job.id, token=self.token)
                return
            chunk = self._chunk(job, lines)
            if not self._affordable(job, chunk):
                self._fail_unpaid(job, lines, chunk)
                return
            batch_job_lease_renew(job_id=job.id, token=self.token)
            with span(
                "batch.chunk",
                attributes={
                    "embeddings.batch_id": job.id,
                    "embeddings.model": job.model,
                    "embeddings.chunk": job.next_chunk,
                    "embeddings.first_line": job.next_line,
                    "embeddings.lines": len(chunk),
                },
            ) as current:
                result = self._compute(job, chunk)
                span_set(current, tokens=result.tokens, failed=result.failed)
                try:
                    outcome = batch_chunk_commit(job_id=job.id, token=self.token, result=result)
                except InsufficientBalance:
                    self._fail_unpaid(job, lines, chunk)
                    return
            logger.info(
                "Batch %s: chunk %s, lines %s to %s, %s tokens (%s)",
                job.id,
                result.index,
                result.first_line,
                result.end_line,
                result.tokens,
                outcome.name.lower(),
            )
            if outcome is ChunkCommit.STALE:
                return

    def _lines(self, job: BatchJob) -> list[BatchLine] | None:
        """The job's lines; a pending job starts here (its input_url fetched first)."""
        try:
            if job.status == BatchJob.Status.PENDING:
                # The key's allowed models may have narrowed since the job was created.
                api_key_model_check(api_key=job.api_key, model=job.model)
                fetched, count = None, None
                if job.input_url and job.input_file_id is None:
                    fetched = input_url_fetch(job.input_url)
                    fetched_lines = batch_lines_from_jsonl(fetched)
                    batch_lines_model(lines=fetched_lines, model=job.model)
                    count = len(fetched_lines)
                if not batch_job_start(
                    job_id=job.id, token=self.token, fetched=fetched, lines=count
                ):
                    return None
                job.refresh_from_db()
            if job.input_file is None:
                raise ApiError(
                    ErrorCode.RESOURCE_NOT_FOUND, "The job's input file no longer exists."
                )
            return batch_lines_from_jsonl(bytes(job.input_file.content))
        except OutboundError as exc:
            error = ApiError(
                ErrorCode.INPUT_VALIDATION_ERROR, f"input_url: {exc}", param="input_url"
            )
        except ApiError as exc:
            error = exc
        batch_job_fail(job_id=job.id, token=self.token, error=error)
        return None

    def _chunk(self, job: BatchJob, lines: list[BatchLine]) -> list[PreparedLine]:
        """The next lines from the resume point, up to BATCH_CHUNK_TOKENS (one line at least)."""
        chunk: list[PreparedLine] = []
        tokens = 0
        index = job.next_line
        while index < len(lines) and len(chunk) < settings.EMBEDDINGS_MAX_INPUTS:
            prepared = self.lookahead.pop(index, None) or line_prepare(job, lines[index])
            if (
                prepared.tokens
                and tokens
                and tokens + prepared.tokens > settings.BATCH_CHUNK_TOKENS
            ):
                self.lookahead = {index: prepared}
                break
            chunk.append(prepared)
            tokens += prepared.tokens
            index += 1
        return chunk

    def _affordable(self, job: BatchJob, chunk: list[PreparedLine]) -> bool:
        # A cheap look before the work; the debit at commit is what decides.
        balance = ApiKey.objects.values_list("balance", flat=True).get(pk=job.api_key_id)
        return balance >= sum(line.tokens for line in chunk)

    def _compute(self, job: BatchJob, chunk: list[PreparedLine]) -> ChunkResult:
        started = time.perf_counter()
        counted = [line for line in chunk if isinstance(line, CountedLine)]
        outputs: dict[int, bytes] = {}
        failures = {line.line.index: line.error for line in chunk if isinstance(line, FailedLine)}
        for line, body in self._embed(counted, failures):
            outputs[line.line.index] = output_line(job, line.line, body)
        done = [line for line in counted if line.line.index in outputs]
        return ChunkResult(
            index=job.next_chunk,
            first_line=job.next_line,
            end_line=job.next_line + len(chunk),
            output=b"".join(outputs[line.line.index] for line in done),
            errors=b"".join(
                error_line(job, line.line, failures[line.line.index])
                for line in chunk
                if line.line.index in failures
            ),
            completed=len(done),
            failed=len(chunk) - len(done),
            text_tokens=sum(line.counted.text_tokens for line in done),
            image_tokens=sum(line.counted.image_tokens for line in done),
            latency_ms=(time.perf_counter() - started) * 1000,
        )

    def _embed(
        self, counted: list[CountedLine], failures: dict[int, ApiError]
    ) -> list[tuple[CountedLine, dict[str, Any]]]:
        """Response bodies for the counted lines: one backend call for all of them; should a
        line's image fail to decode, each line on its own so that only that line fails."""
        if not counted:
            return []
        try:
            vectors = embeddings_vectors(counted=_merged(counted))
        except ApiError as exc:
            if exc.status >= 500:
                raise
            if len(counted) == 1:
                failures[counted[0].line.index] = exc
                return []
            return [result for line in counted for result in self._embed([line], failures)]
        results = []
        row = 0
        for line in counted:
            rows = sum(item.output_rows for item in line.counted.items)
            body = embeddings_body(
                counted=line.counted, request=line.request, vectors=vectors[row : row + rows]
            )
            results.append((line, body))
            row += rows
        return results

    def _fail_lines(
        self, job: BatchJob, lines: list[BatchLine], chunk: list[PreparedLine], error: ApiError
    ) -> None:
        """Stop the job: this chunk's lines and all after it go to the errors file."""
        parts = [
            error_line(job, line.line, line.error if isinstance(line, FailedLine) else error)
            for line in chunk
        ]
        parts.extend(error_line(job, line, error) for line in lines[job.next_line + len(chunk) :])
        batch_job_fail(
            job_id=job.id,
            token=self.token,
            error=error,
            error_lines=b"".join(parts),
            failed=len(lines) - job.next_line,
        )

    def _fail_unpaid(
        self, job: BatchJob, lines: list[BatchLine], chunk: list[PreparedLine]
    ) -> None:
        error = ApiError(
            ErrorCode.AUTHZ_INSUFFICIENT_BALANCE,
            f"Insufficient balance: the key ran out of tokens after {job.next_line:,} of "
            f"{len(lines):,} lines. The lines in the errors file with this code were not run "
            "and not charged; top up and submit them again.",
        )
        self._fail_lines(job, lines, chunk, error)

    def _give_up(self, job: BatchJob) -> None:
        error = ApiError(
            ErrorCode(job.error_code)
            if job.error_code in ErrorCode.__members__
            else ErrorCode.INTERNAL_ERROR,
            f"The job stopped {settings.BATCH_MAX_RUNS} times without finishing"
            + (f" (last: {job.error_message})" if job.error_message else "")
            + ". The lines not run are in the errors file, uncharged.",
        )
        lines: list[BatchLine] = []
        if job.input_file is not None:
            lines = batch_lines_from_jsonl(bytes(job.input_file.content))
        self._fail_lines(job, lines, [], error)


def batch_job_process(*, job_id: str) -> None:
    """Run a job from its resume point to its end, unless another runner holds it.

    On an unexpected error the lease is kept until it runs out, so the maintenance task tries
    the job again later (at most BATCH_MAX_RUNS runs in all).
    """
    # Every record of the run carries the job's id (and, from the task's headers, the id of
    # the request that created it).
    log_context_update(batch_id=job_id)
    with span("batch.run", attributes={"embeddings.batch_id": job_id}):
        _process(job_id)


def _process(job_id: str) -> None:
    token = batch_job_lease_take(job_id=job_id)
    if token is None:
        logger.info("Batch %s is held by another runner", job_id)
        return
    try:
        _Runner(job_id, token).run()
    except Exception as exc:
        error = api_error_from_exception(exc)
        if error is None:
            logger.exception("Batch job %s stopped on an error; it will be retried", job_id)
            error = ApiError(ErrorCode.INTERNAL_ERROR, "An unexpected error stopped the job.")
        else:
            logger.warning("Batch job %s stopped (%s); it will be retried", job_id, error.message)
        BatchJob.objects.filter(pk=job_id, lease_token=token).update(
            error_code=error.code.value, error_message=error.message
        )
        return
    batch_job_lease_release(job_id=job_id, token=token)

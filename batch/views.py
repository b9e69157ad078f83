"""The batch API: Jina's /v1/batch/* and OpenAI's /v1/files and /v1/batches, one view per
operation (a route that serves two operations, such as GET and DELETE /v1/batch/{id}, has one
view with a method for each)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from django.http import StreamingHttpResponse
from django.utils.http import content_disposition_header
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import (
    extend_schema,
    extend_schema_field,
    extend_schema_serializer,
    extend_schema_view,
)
from rest_framework import serializers
from rest_framework.negotiation import DefaultContentNegotiation
from rest_framework.parsers import MultiPartParser
from rest_framework.renderers import BaseRenderer
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from batch.api_schema import (
    MAX_METADATA_KEY_CHARS,
    MAX_METADATA_KEYS,
    MAX_METADATA_VALUE_CHARS,
    BatchList,
    JinaBatchStatus,
    MetadataInputField,
    OpenAIBatch,
    OpenAIFile,
    OpenAIFileDeleted,
    OpenAIFileList,
)
from batch.formats import jina_batch_status, openai_batch, openai_file, openai_result_file
from batch.lines import EMBEDDINGS_ENDPOINT, MAX_CUSTOM_ID_LENGTH, batch_lines_from_list
from batch.models import BatchFile, BatchJob
from batch.selectors import (
    batch_file_get,
    batch_file_list,
    batch_job_get,
    batch_job_list,
    batch_result_file_get,
    batch_result_size,
    batch_result_stream,
)
from batch.services import (
    COMPLETION_WINDOW,
    batch_file_create,
    batch_file_delete,
    batch_job_cancel,
    batch_job_create_jina,
    batch_job_create_openai,
)
from billing.models import ApiKey
from embeddings_site.api_schema import ERRORS, ErrorResponse
from embeddings_site.errors import ApiError, ErrorCode
from inference.protocol import (
    EmbeddingTypeField,
    StrictBooleanField,
    StrictCharField,
    StrictPositiveIntegerField,
)
from metering.authentication import ApiKeyAuthentication

# Besides the API's own: a job or file that is not the key's (404), a job in the wrong state for
# what was asked (409: cancel a finished one, fetch a running one's output), expired outputs (410).
BATCH_ERRORS = {**ERRORS, 404: ErrorResponse, 409: ErrorResponse, 410: ErrorResponse}

MAX_PAGE = 100
DEFAULT_PAGE = 20


class AnyAcceptNegotiation(DefaultContentNegotiation):
    """JSON (or the JSONL stream a view returns) whatever the Accept header asks: the OpenAI SDK
    downloads files with `Accept: application/binary`, curl sends `*/*`."""

    def select_renderer(
        self,
        request: Request,
        renderers: Iterable[BaseRenderer],
        format_suffix: str | None = None,
    ) -> tuple[BaseRenderer, str]:
        renderer = next(iter(renderers))
        return renderer, renderer.media_type


class BatchApiView(APIView):
    """A batch endpoint: the caller's bearer key owns what it creates and sees only that."""

    authentication_classes = [ApiKeyAuthentication]
    content_negotiation_class = AnyAcceptNegotiation

    @property
    def api_key(self) -> ApiKey:
        return self.request.auth  # type: ignore[return-value]

    def base_url(self) -> str:
        return self.request.build_absolute_uri("/").rstrip("/")

    def job_or_404(self, job_id: str) -> BatchJob:
        job = batch_job_get(api_key=self.api_key, job_id=job_id)
        if job is None:
            raise ApiError(
                ErrorCode.RESOURCE_NOT_FOUND, f"No batch {job_id[:100]!r}.", param="batch_id"
            )
        return job


class PageSerializer(serializers.Serializer):
    """`limit` and `after` (OpenAI's cursor) of a list request, plus `shape` for /v1/batches
    (not `format`: DRF reads that one for content negotiation)."""

    limit = serializers.IntegerField(min_value=1, max_value=MAX_PAGE, default=DEFAULT_PAGE)
    after = serializers.CharField(required=False, max_length=100)
    shape = serializers.ChoiceField(choices=["openai", "jina"], default="openai")


def _page(request: Request) -> dict[str, Any]:
    serializer = PageSerializer(data=request.query_params)
    serializer.is_valid(raise_exception=True)
    return dict(serializer.validated_data)


def _result_response(job: BatchJob, kind: str) -> StreamingHttpResponse:
    if job.status == BatchJob.Status.EXPIRED:
        raise ApiError(
            ErrorCode.RESOURCE_EXPIRED,
            f"The outputs of batch {job.id} expired at {job.expires_at:%Y-%m-%d %H:%M} UTC.",
        )
    if not job.outputs_available:
        raise ApiError(
            ErrorCode.RESOURCE_CONFLICT,
            f"Batch {job.id} is still {job.status}; its files are ready when it stops.",
        )
    response = StreamingHttpResponse(
        batch_result_stream(job=job, kind=kind), content_type="application/jsonl"
    )
    response["Content-Disposition"] = f'attachment; filename="{job.id}_{kind}.jsonl"'
    return response


# --- Jina format ------------------------------------------------------------------------------


_BATCH_LINE_SCHEMA = {
    "type": "object",
    "required": ["custom_id", "body"],
    "properties": {
        "custom_id": {"type": "string", "minLength": 1, "maxLength": MAX_CUSTOM_ID_LENGTH},
        "body": {"type": "object", "description": "An embeddings request."},
        "method": {"type": "string", "enum": ["POST"]},
        "url": {"type": "string", "enum": [EMBEDDINGS_ENDPOINT]},
    },
}


@extend_schema_field(
    {
        "type": "array",
        "minItems": 1,
        "items": _BATCH_LINE_SCHEMA,
        "description": "The request lines; each line's custom_id must be its own.",
    }
)
class BatchLinesField(serializers.ListField):
    """Inline request lines (checked, with each line's position, by batch.lines)."""

    child = serializers.JSONField()


class BatchEmbeddingCreateApi(BatchApiView):
    """POST /v1/batch/embeddings — Jina's BatchEmbeddingRequest (inline lines or input_url)."""

    @extend_schema_serializer(component_name="JinaBatchRequest")
    class InputSerializer(serializers.Serializer):
        input = BatchLinesField(required=False)
        input_url = serializers.URLField(
            required=False, max_length=2000, help_text="An http(s) URL of a JSONL file of lines."
        )
        model = StrictCharField(
            required=False,
            allow_null=True,
            max_length=200,
            help_text="The model for every line (default: EMBEDDINGS_DEFAULT_MODEL).",
        )
        task = StrictCharField(
            required=False,
            allow_null=True,
            max_length=100,
            help_text="Every line's `task`, unless the line names its own.",
        )
        dimensions = StrictPositiveIntegerField(
            required=False, allow_null=True, help_text="Every line's `dimensions`."
        )
        normalized = StrictBooleanField(
            required=False, allow_null=True, help_text="Every line's `normalized`."
        )
        embedding_type = EmbeddingTypeField(
            required=False, allow_null=True, help_text="Every line's `embedding_type`."
        )
        encoding_type = EmbeddingTypeField(
            required=False, allow_null=True, help_text="Older Jina clients' `embedding_type`."
        )
        encoding_format = EmbeddingTypeField(
            required=False, allow_null=True, help_text="OpenAI's `embedding_type`."
        )
        truncate = StrictBooleanField(
            required=False, allow_null=True, help_text="Every line's `truncate`."
        )
        late_chunking = StrictBooleanField(
            required=False, allow_null=True, help_text="Every line's `late_chunking`."
        )
        # Taken as sent (StrictCharField): a secret with its spaces trimmed would sign with
        # another secret.
        webhook_url = StrictCharField(
            required=False,
            allow_null=True,
            allow_blank=True,
            max_length=2000,
            help_text="Called with the job's BatchStatus when it stops.",
        )
        webhook_secret = StrictCharField(
            required=False,
            allow_null=True,
            allow_blank=True,
            min_length=16,
            max_length=100,
            help_text="Signs each webhook call (HMAC-SHA256), so the receiver can check it.",
        )

        def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
            if ("input" in attrs) == ("input_url" in attrs):
                raise ApiError(
                    ErrorCode.INPUT_VALIDATION_ERROR,
                    "Give either input (the lines inline) or input_url (a JSONL file), not both.",
                    param="input",
                )
            return attrs

    OPTION_FIELDS = (
        "task",
        "dimensions",
        "normalized",
        "embedding_type",
        "encoding_type",
        "encoding_format",
        "truncate",
        "late_chunking",
    )

    @extend_schema(
        operation_id="batch_embeddings_create",
        summary="Create a batch job (Jina format)",
        request=InputSerializer,
        responses={200: JinaBatchStatus, **BATCH_ERRORS},
    )
    def post(self, request: Request) -> Response:
        serializer = self.InputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        lines, input_url = data.get("input"), data.get("input_url") or ""
        options = {name: data[name] for name in self.OPTION_FIELDS if data.get(name) is not None}
        job = batch_job_create_jina(
            api_key=self.api_key,
            model=data.get("model") or None,
            options=options,
            lines=batch_lines_from_list(lines) if lines is not None else None,
            input_url=input_url,
            webhook_url=data.get("webhook_url") or "",
            webhook_secret=data.get("webhook_secret") or "",
        )
        return Response(jina_batch_status(job, base_url=self.base_url()))


class BatchJobApi(BatchApiView):
    """GET /v1/batch/{id} — Jina's BatchStatus; DELETE — cancel the job."""

    @extend_schema(
        operation_id="batch_retrieve",
        summary="A batch job (Jina BatchStatus)",
        responses={200: JinaBatchStatus, **BATCH_ERRORS},
    )
    def get(self, request: Request, batch_id: str) -> Response:
        job = self.job_or_404(batch_id)
        return Response(jina_batch_status(job, base_url=self.base_url()))

    @extend_schema(
        operation_id="batch_cancel",
        summary="Cancel a batch job (Jina format)",
        responses={200: JinaBatchStatus, **BATCH_ERRORS},
    )
    def delete(self, request: Request, batch_id: str) -> Response:
        job = batch_job_cancel(job=self.job_or_404(batch_id))
        return Response(jina_batch_status(job, base_url=self.base_url()))


class BatchResultApi(BatchApiView):
    """GET /v1/batch/{id}/output and /errors — the job's JSONL files, streamed."""

    kind = "output"

    @extend_schema(
        operation_id="batch_results",
        summary="Output or errors of a batch job, as JSONL",
        responses={(200, "application/jsonl"): OpenApiTypes.STR, **BATCH_ERRORS},
    )
    def get(self, request: Request, batch_id: str) -> StreamingHttpResponse:
        return _result_response(self.job_or_404(batch_id), self.kind)


# --- OpenAI format and the shared list ------------------------------------------------------


@extend_schema_view(get=extend_schema(operation_id="batch_output"))
class BatchOutputApi(BatchResultApi):
    """GET /v1/batch/{id}/output."""

    kind = "output"


@extend_schema_view(get=extend_schema(operation_id="batch_errors"))
class BatchErrorsApi(BatchResultApi):
    """GET /v1/batch/{id}/errors."""

    kind = "errors"


class BatchesApi(BatchApiView):
    """GET /v1/batches — the key's jobs (both formats); POST — OpenAI's batch create."""

    @extend_schema_serializer(component_name="OpenAIBatchRequest")
    class InputSerializer(serializers.Serializer):
        input_file_id = StrictCharField(
            max_length=100, help_text="The `id` of a JSONL file uploaded to POST /v1/files."
        )
        endpoint = serializers.ChoiceField(
            choices=[EMBEDDINGS_ENDPOINT], help_text="What each line calls."
        )
        completion_window = serializers.ChoiceField(
            choices=[COMPLETION_WINDOW], help_text="OpenAI's; the one window served."
        )
        metadata = MetadataInputField(
            child=StrictCharField(max_length=MAX_METADATA_VALUE_CHARS, allow_blank=True),
            required=False,
            allow_null=True,
            help_text=f"Up to {MAX_METADATA_KEYS} string pairs kept with the batch.",
        )

        def validate_metadata(self, value: dict[str, str] | None) -> dict[str, str] | None:
            if value and (
                len(value) > MAX_METADATA_KEYS
                or any(len(key) > MAX_METADATA_KEY_CHARS for key in value)
            ):
                raise serializers.ValidationError(
                    f"At most {MAX_METADATA_KEYS} keys of up to {MAX_METADATA_KEY_CHARS} characters."
                )
            return value

    @extend_schema(
        operation_id="batches_list",
        summary="List batch jobs (OpenAI list; ?shape=jina for BatchStatus)",
        responses={200: BatchList, **BATCH_ERRORS},
    )
    def get(self, request: Request) -> Response:
        page = _page(request)
        jobs = list(
            batch_job_list(api_key=self.api_key, limit=page["limit"] + 1, after=page.get("after"))
        )
        has_more = len(jobs) > page["limit"]
        jobs = jobs[: page["limit"]]
        base_url = self.base_url()
        if page["shape"] == "jina":  # Jina's list: a bare array of BatchStatus
            return Response([jina_batch_status(job, base_url=base_url) for job in jobs])
        return Response(
            {
                "object": "list",
                "data": [openai_batch(job, base_url=base_url) for job in jobs],
                "first_id": jobs[0].id if jobs else None,
                "last_id": jobs[-1].id if jobs else None,
                "has_more": has_more,
            }
        )

    @extend_schema(
        operation_id="batches_create",
        summary="Create a batch (OpenAI format)",
        request=InputSerializer,
        responses={200: OpenAIBatch, **BATCH_ERRORS},
    )
    def post(self, request: Request) -> Response:
        serializer = self.InputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        job = batch_job_create_openai(
            api_key=self.api_key,
            input_file_id=data["input_file_id"],
            endpoint=data["endpoint"],
            completion_window=data["completion_window"],
            metadata=data.get("metadata"),
        )
        return Response(openai_batch(job, base_url=self.base_url()))


class BatchDetailApi(BatchApiView):
    """GET /v1/batches/{id} — OpenAI's Batch object."""

    @extend_schema(
        operation_id="batches_retrieve",
        summary="A batch (OpenAI Batch object)",
        responses={200: OpenAIBatch, **BATCH_ERRORS},
    )
    def get(self, request: Request, batch_id: str) -> Response:
        return Response(openai_batch(self.job_or_404(batch_id), base_url=self.base_url()))


class BatchCancelApi(BatchApiView):
    """POST /v1/batches/{id}/cancel — OpenAI's cancel."""

    @extend_schema(
        operation_id="batches_cancel",
        summary="Cancel a batch (OpenAI format)",
        request=None,
        responses={200: OpenAIBatch, **BATCH_ERRORS},
    )
    def post(self, request: Request, batch_id: str) -> Response:
        job = batch_job_cancel(job=self.job_or_404(batch_id))
        return Response(openai_batch(job, base_url=self.base_url()))


class FilesApi(BatchApiView):
    """POST /v1/files — upload a JSONL batch file (multipart); GET — the key's uploads."""

    # multipart only: a file cannot be sent as a url-encoded form
    parser_classes = [MultiPartParser]

    @extend_schema_serializer(component_name="FileUploadRequest")
    class InputSerializer(serializers.Serializer):
        file = serializers.FileField(
            allow_empty_file=True, help_text="JSONL: one request line per line."
        )
        purpose = serializers.ChoiceField(
            choices=["batch"],
            help_text="What the file is for: batch jobs only.",
            error_messages={
                "invalid_choice": "This server keeps files for batch jobs only; purpose must "
                "be 'batch', not {input!r}."
            },
        )

    @extend_schema(
        operation_id="files_create",
        summary="Upload a JSONL batch input file (OpenAI format)",
        request=InputSerializer,
        responses={200: OpenAIFile, **BATCH_ERRORS},
    )
    def post(self, request: Request) -> Response:
        serializer = self.InputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        upload = serializer.validated_data["file"]
        file = batch_file_create(
            api_key=self.api_key, filename=upload.name or "", content=upload.read()
        )
        return Response(openai_file(file))

    @extend_schema(
        operation_id="files_list",
        summary="List files",
        responses={200: OpenAIFileList, **BATCH_ERRORS},
    )
    def get(self, request: Request) -> Response:
        page = _page(request)
        files = batch_file_list(
            api_key=self.api_key, limit=page["limit"] + 1, after=page.get("after")
        )
        has_more = len(files) > page["limit"]
        files = files[: page["limit"]]
        return Response(
            {
                "object": "list",
                "data": [openai_file(file) for file in files],
                "first_id": files[0].id if files else None,
                "last_id": files[-1].id if files else None,
                "has_more": has_more,
            }
        )


class FileDetailApi(BatchApiView):
    """GET /v1/files/{id} — OpenAI's File object (uploads, and jobs' output and error files);
    DELETE — delete an upload."""

    @extend_schema(
        operation_id="files_retrieve",
        summary="A file",
        responses={200: OpenAIFile, **BATCH_ERRORS},
    )
    def get(self, request: Request, file_id: str) -> Response:
        result = batch_result_file_get(api_key=self.api_key, file_id=file_id)
        if result is not None and result[0].outputs_available:
            job, kind = result
            size = batch_result_size(job=job, kind=kind)
            return Response(openai_result_file(job, kind=kind, size=size))
        return Response(openai_file(self._upload_or_404(file_id)))

    @extend_schema(
        operation_id="files_delete",
        summary="Delete a file",
        responses={200: OpenAIFileDeleted, **BATCH_ERRORS},
    )
    def delete(self, request: Request, file_id: str) -> Response:
        file = self._upload_or_404(file_id)
        batch_file_delete(file=file)
        return Response({"id": file_id, "object": "file", "deleted": True})

    def _upload_or_404(self, file_id: str) -> BatchFile:
        file = batch_file_get(api_key=self.api_key, file_id=file_id)
        if file is None:
            raise ApiError(
                ErrorCode.RESOURCE_NOT_FOUND, f"No file {file_id[:100]!r}.", param="file_id"
            )
        return file


class FileContentApi(BatchApiView):
    """GET /v1/files/{id}/content — a file's bytes: an upload, or a job's output or errors."""

    @extend_schema(
        operation_id="files_content",
        summary="A file's content (JSONL)",
        responses={(200, "application/jsonl"): OpenApiTypes.STR, **BATCH_ERRORS},
    )
    def get(self, request: Request, file_id: str) -> Any:
        result = batch_result_file_get(api_key=self.api_key, file_id=file_id)
        if result is not None:
            return _result_response(*result)
        file = batch_file_get(api_key=self.api_key, file_id=file_id)
        if file is None:
            raise ApiError(
                ErrorCode.RESOURCE_NOT_FOUND, f"No file {file_id[:100]!r}.", param="file_id"
            )
        response = StreamingHttpResponse(
            iter([bytes(file.content)]), content_type="application/jsonl"
        )
        # RFC 6266: a non-ASCII name goes in filename*=utf-8''..., not RFC 2047 words.
        response["Content-Disposition"] = content_disposition_header(True, file.filename)
        return response

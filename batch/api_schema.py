"""The OpenAPI shapes of the batch API's answers, as batch.formats builds them: Jina's
BatchStatus and OpenAI's Batch and File objects, and their lists. Documentation only: the
views answer with batch.formats' dicts, and tests/site/test_schema_fuzz.py checks that every
answer fits these."""

from __future__ import annotations

from drf_spectacular.utils import (
    PolymorphicProxySerializer,
    extend_schema_field,
    inline_serializer,
)
from rest_framework import serializers

# A batch's metadata, as OpenAI bounds it: string pairs, at most this many keys of at most this
# many characters, values of at most this many.
MAX_METADATA_KEYS = 16
MAX_METADATA_KEY_CHARS = 64
MAX_METADATA_VALUE_CHARS = 512


@extend_schema_field(
    {
        "type": "object",
        "additionalProperties": {"type": "string"},
        "maxProperties": MAX_METADATA_KEYS,
        "example": {"project": "nightly-index"},
    }
)
class MetadataField(serializers.DictField):
    """A batch's metadata: up to MAX_METADATA_KEYS string pairs (sampled with an example, not `property1`)."""


@extend_schema_field(
    {
        "type": "object",
        "additionalProperties": {"type": "string", "maxLength": MAX_METADATA_VALUE_CHARS},
        "propertyNames": {"maxLength": MAX_METADATA_KEY_CHARS},
        "maxProperties": MAX_METADATA_KEYS,
        "example": {"project": "nightly-index"},
    }
)
class MetadataInputField(serializers.DictField):
    """POST /v1/batches' metadata, as MetadataField (the view checks key count and lengths)."""


def _time(help_text: str) -> serializers.CharField:
    return serializers.CharField(allow_null=True, help_text=f"{help_text} (ISO 8601, UTC).")


def _unix(help_text: str, *, nullable: bool = True) -> serializers.IntegerField:
    return serializers.IntegerField(allow_null=nullable, help_text=f"{help_text} (Unix seconds).")


_STATS = inline_serializer(
    "BatchStats",
    {
        "total": serializers.IntegerField(help_text="Request lines in the job."),
        "completed": serializers.IntegerField(help_text="Lines embedded."),
        "failed": serializers.IntegerField(help_text="Lines that failed (never charged)."),
        "total_tokens": serializers.IntegerField(help_text="Tokens charged so far."),
    },
)


def _jina_urls() -> dict[str, serializers.Field]:
    return {
        "output_url": serializers.CharField(
            allow_null=True, help_text="The output JSONL, once the job has stopped."
        ),
        "error_file_url": serializers.CharField(
            allow_null=True, help_text="The failed lines as JSONL, when some failed."
        ),
    }


JinaBatchStatus = inline_serializer(
    "JinaBatchStatus",
    {
        "batch_id": serializers.CharField(),
        "status": serializers.CharField(
            help_text="pending, processing, completed, failed, cancelled or expired."
        ),
        "model": serializers.CharField(),
        "created_at": _time("When the job was created"),
        "started_at": _time("When a runner first took it"),
        "completed_at": _time("When it stopped"),
        "expires_at": _time("When its outputs are deleted"),
        **_jina_urls(),
        "error": serializers.CharField(allow_null=True, help_text="Why the job failed."),
        "error_code": serializers.CharField(allow_null=True),
        "stats": _STATS.__class__(),
        "input_file_id": serializers.CharField(
            allow_null=True, help_text="The uploaded file the lines came from."
        ),
        "input_url": serializers.CharField(allow_null=True),
        "webhook_url": serializers.CharField(allow_null=True),
        "webhook_secret": serializers.CharField(
            required=False, help_text="Signs the webhook's calls; shown to the job's key."
        ),
    },
)

_OPENAI_ERROR = inline_serializer(
    "OpenAIBatchError",
    {
        "code": serializers.CharField(),
        "message": serializers.CharField(),
        "line": serializers.IntegerField(allow_null=True),
        "param": serializers.CharField(allow_null=True),
    },
)
OpenAIBatch = inline_serializer(
    "OpenAIBatch",
    {
        "id": serializers.CharField(),
        "object": serializers.CharField(help_text="`batch`."),
        "endpoint": serializers.CharField(),
        "model": serializers.CharField(),
        "errors": inline_serializer(
            "OpenAIBatchErrors",
            {
                "object": serializers.CharField(help_text="`list`."),
                "data": _OPENAI_ERROR.__class__(many=True),
            },
            allow_null=True,
        ),
        "input_file_id": serializers.CharField(help_text="Empty for a Jina-format job."),
        "completion_window": serializers.CharField(),
        "status": serializers.CharField(
            help_text="validating, in_progress, completed, failed, cancelled or expired."
        ),
        "output_file_id": serializers.CharField(allow_null=True),
        "error_file_id": serializers.CharField(allow_null=True),
        "created_at": _unix("When the batch was created", nullable=False),
        "in_progress_at": _unix("When a runner first took it"),
        "expires_at": _unix("When its outputs are deleted"),
        "finalizing_at": _unix("When it finished"),
        "completed_at": _unix("When it completed"),
        "failed_at": _unix("When it failed"),
        "expired_at": _unix("When its outputs expired"),
        "cancelling_at": _unix("When it was cancelled"),
        "cancelled_at": _unix("When it was cancelled"),
        "request_counts": inline_serializer(
            "OpenAIBatchRequestCounts",
            {
                "total": serializers.IntegerField(),
                "completed": serializers.IntegerField(),
                "failed": serializers.IntegerField(),
            },
        ),
        "usage": inline_serializer(
            "OpenAIBatchUsage",
            {
                "input_tokens": serializers.IntegerField(),
                "input_tokens_details": inline_serializer(
                    "OpenAIInputTokensDetails", {"cached_tokens": serializers.IntegerField()}
                ),
                "output_tokens": serializers.IntegerField(),
                "output_tokens_details": inline_serializer(
                    "OpenAIOutputTokensDetails", {"reasoning_tokens": serializers.IntegerField()}
                ),
                "total_tokens": serializers.IntegerField(),
            },
        ),
        "metadata": MetadataField(allow_null=True, help_text="As sent to POST /v1/batches."),
        "batch_id": serializers.CharField(help_text="Jina's name for `id`."),
        "stats": _STATS.__class__(),
        **_jina_urls(),
    },
)


def _list(name: str, item: serializers.Serializer) -> serializers.Serializer:
    return inline_serializer(
        name,
        {
            "object": serializers.CharField(help_text="`list`."),
            "data": item.__class__(many=True),
            "first_id": serializers.CharField(allow_null=True),
            "last_id": serializers.CharField(allow_null=True),
            "has_more": serializers.BooleanField(),
        },
    )


OpenAIBatchList = _list("OpenAIBatchList", OpenAIBatch)
BatchList = PolymorphicProxySerializer(
    component_name="BatchList",
    serializers=[OpenAIBatchList, JinaBatchStatus.__class__(many=True)],
    resource_type_field_name=None,
    many=False,  # the sub-serializers say which is a list (drf-spectacular's pattern)
)

OpenAIFile = inline_serializer(
    "OpenAIFile",
    {
        "id": serializers.CharField(),
        "object": serializers.CharField(help_text="`file`."),
        "bytes": serializers.IntegerField(),
        "created_at": _unix("When it was uploaded (a job's output: when the job stopped)"),
        "expires_at": _unix("When it is deleted"),
        "filename": serializers.CharField(),
        "purpose": serializers.CharField(help_text="batch (an upload) or batch_output."),
        "status": serializers.CharField(help_text="`processed`."),
        "status_details": serializers.CharField(allow_null=True),
    },
)
OpenAIFileList = _list("OpenAIFileList", OpenAIFile)
OpenAIFileDeleted = inline_serializer(
    "OpenAIFileDeleted",
    {
        "id": serializers.CharField(),
        "object": serializers.CharField(help_text="`file`."),
        "deleted": serializers.BooleanField(),
    },
)

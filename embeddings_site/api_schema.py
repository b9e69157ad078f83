"""The OpenAPI description of the public API (drf-spectacular): the /v1 routes only, Bearer
keys, and documentation serializers for shapes the views build by hand."""

from __future__ import annotations

from typing import Any

from drf_spectacular.extensions import OpenApiAuthenticationExtension
from drf_spectacular.utils import OpenApiExample, inline_serializer
from rest_framework import serializers


def only_public_api(
    endpoints: list[tuple[str, str, str, Any]], **kwargs: Any
) -> list[tuple[str, str, str, Any]]:
    """Preprocessing hook: drop internal routes such as /internal/workers."""
    return [endpoint for endpoint in endpoints if endpoint[0].startswith("/v1/")]


class ApiKeyScheme(OpenApiAuthenticationExtension):  # type: ignore[no-untyped-call]
    """`Authorization: Bearer <key>`."""

    target_class = "metering.authentication.ApiKeyAuthentication"
    name = "ApiKey"

    def get_security_definition(self, auto_schema: Any) -> dict[str, str]:
        return {"type": "http", "scheme": "bearer", "description": "Your API key: `jina_…`."}


# A text, a TextDoc/ImageDoc object, token ids, or a list mixing them (see the Jina spec).
INPUT_SCHEMA: dict[str, Any] = {
    "oneOf": [
        {"type": "string"},
        {"type": "array", "items": {"type": "integer"}},
        {
            "type": "array",
            "maxItems": 2048,
            "items": {
                "oneOf": [
                    {"type": "string"},
                    {"type": "object", "properties": {"text": {"type": "string"}}},
                    {"type": "object", "properties": {"image": {"type": "string"}}},
                    {"type": "array", "items": {"type": "integer"}},
                ]
            },
        },
        {"type": "object", "properties": {"text": {"type": "string"}}},
        {"type": "object", "properties": {"image": {"type": "string"}}},
    ],
    "description": 'Texts, images ({"image": URL | base64}) or token ids; at most 2048 items.',
}
EMBEDDING_TYPE_SCHEMA: dict[str, Any] = {
    "oneOf": [
        {"type": "string", "enum": ["float", "base64", "binary", "ubinary"]},
        {
            "type": "array",
            "items": {"type": "string", "enum": ["float", "base64", "binary", "ubinary"]},
        },
    ],
    "default": "float",
}

Usage = inline_serializer(
    "Usage",
    {
        "total_tokens": serializers.IntegerField(),
        "prompt_tokens": serializers.IntegerField(),
        "image_tokens": serializers.IntegerField(required=False),
    },
)
EmbeddingResponse = inline_serializer(
    "EmbeddingResponse",
    {
        "object": serializers.CharField(default="list"),
        "model": serializers.CharField(),
        "data": inline_serializer(
            "Embedding",
            {
                "object": serializers.CharField(default="embedding"),
                "index": serializers.IntegerField(),
                "embedding": serializers.JSONField(
                    help_text="Floats, a base64 string of little-endian float32, or packed bits."
                ),
            },
            many=True,
        ),
        "usage": Usage,
    },
)
ErrorResponse = inline_serializer(
    "ErrorResponse",
    {
        "detail": serializers.CharField(),
        "code": serializers.CharField(
            help_text="e.g. INPUT_VALIDATION_ERROR, AUTH_INVALID_API_KEY"
        ),
        "request_id": serializers.CharField(),
        "error": inline_serializer(
            "OpenAIError",
            {
                "message": serializers.CharField(),
                "type": serializers.CharField(),
                "param": serializers.CharField(allow_null=True),
                "code": serializers.CharField(),
            },
        ),
    },
)
Model = inline_serializer(
    "Model",
    {
        "id": serializers.CharField(),
        "object": serializers.CharField(default="model"),
        "created": serializers.IntegerField(),
        "owned_by": serializers.CharField(),
        "name": serializers.CharField(),
        "hugging_face_id": serializers.CharField(),
        "input_modalities": serializers.ListField(child=serializers.CharField()),
        "context_length": serializers.IntegerField(),
        "max_output_length": serializers.IntegerField(),
        "pricing": serializers.DictField(child=serializers.CharField()),
    },
)
ModelList = inline_serializer(
    "ModelList",
    {"object": serializers.CharField(default="list"), "data": Model.__class__(many=True)},
)
ERRORS = {
    400: ErrorResponse,
    401: ErrorResponse,
    403: ErrorResponse,
    429: ErrorResponse,
    503: ErrorResponse,
}
EMBEDDING_EXAMPLES = [
    OpenApiExample(
        "Jina",
        value={
            "model": "all-MiniLM-L6-v2",
            "input": ["Hello, world!", {"text": "A TextDoc"}],
            "normalized": True,
            "embedding_type": "float",
        },
        request_only=True,
    ),
    OpenApiExample(
        "OpenAI",
        value={"model": "all-MiniLM-L6-v2", "input": "Hello", "encoding_format": "base64"},
        request_only=True,
    ),
]


def without_trailing_slash(result: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
    """Postprocessing hook: /v1 routes take an optional slash; document them without it."""
    result["paths"] = {path.rstrip("/"): item for path, item in result.get("paths", {}).items()}
    return result

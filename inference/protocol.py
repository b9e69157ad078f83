"""One normalised embeddings request from both wire formats (Jina and OpenAI).

Jina: EmbeddingsV3Request / TextDoc / ImageDoc in the Jina OpenAPI spec, plus the older
`encoding_type` and `{"url"}` / `{"bytes"}` shapes that LlamaIndex and LangChain still send.
OpenAI: `input` as strings or token-id arrays, `encoding_format`, `dimensions`, `user`.
Unknown keys are ignored, so newer clients keep working; known keys must have the right type.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from embeddings_site.api_schema import EMBEDDING_TYPE_SCHEMA, INPUT_SCHEMA, NON_BLANK_PATTERN
from embeddings_site.errors import ErrorCode
from inference.encodings import EMBEDDING_TYPES


@dataclass(frozen=True)
class TextInput:
    text: str


@dataclass(frozen=True)
class TokenInput:
    """Token ids in the model's own vocabulary (OpenAI's array input), used as they are."""

    ids: list[int]


@dataclass(frozen=True)
class ImageInput:
    """An image by URL, base64 or data URI (Jina ImageDoc, or the older url/bytes objects)."""

    source: str


EmbeddingInput = TextInput | TokenInput | ImageInput


@dataclass(frozen=True)
class EmbeddingRequest:
    inputs: list[EmbeddingInput]
    model: str | None = None
    task: str | None = None
    dimensions: int | None = None
    normalized: bool = True
    embedding_types: list[str] = field(default_factory=lambda: ["float"])
    truncate: bool = False
    late_chunking: bool = False


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@extend_schema_field(OpenApiTypes.BOOL)
class StrictBooleanField(serializers.Field):
    """JSON true/false only: "yes", 1 or "false" are mistakes worth a 400, not a guess."""

    default_error_messages = {"invalid": "Must be true or false."}

    def to_internal_value(self, data: Any) -> bool:
        if not isinstance(data, bool):
            self.fail("invalid")
        return data

    def to_representation(self, value: Any) -> Any:
        return value


class StrictCharField(serializers.CharField):
    """A JSON string, taken as sent: DRF's CharField would turn 0 or true into text and trim
    spaces, so that "\n" would pass for blank and the schema's lengths would not hold."""

    default_error_messages = {"invalid": "Must be a string."}

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("trim_whitespace", False)
        super().__init__(**kwargs)

    def to_internal_value(self, data: Any) -> str:
        if not isinstance(data, str):
            self.fail("invalid")
        return super().to_internal_value(data)


@extend_schema_field({"type": "integer", "minimum": 1})
class StrictPositiveIntegerField(serializers.Field):
    default_error_messages = {"invalid": "Must be a positive integer."}

    def to_internal_value(self, data: Any) -> int:
        if not _is_int(data) or data <= 0:
            self.fail("invalid")
        return int(data)

    def to_representation(self, value: Any) -> Any:
        return value


@extend_schema_field(EMBEDDING_TYPE_SCHEMA)
class EmbeddingTypeField(serializers.Field):
    """`float | base64 | binary | ubinary`, or a list of them (Jina's embedding_type)."""

    def to_internal_value(self, data: Any) -> list[str]:
        kinds = [data] if isinstance(data, str) else data
        if not isinstance(kinds, list) or not kinds:
            raise serializers.ValidationError(
                f"Must be one of {', '.join(EMBEDDING_TYPES)} or a list of them."
            )
        result: list[str] = []
        for kind in kinds:
            if kind not in EMBEDDING_TYPES:
                raise serializers.ValidationError(
                    f"Unknown embedding type {str(kind)[:40]!r}; use one of {', '.join(EMBEDDING_TYPES)}."
                )
            if kind not in result:
                result.append(kind)
        return result

    def to_representation(self, value: Any) -> Any:
        return value


_NON_BLANK = re.compile(NON_BLANK_PATTERN)


def _is_blank(text: str) -> bool:
    """Nothing but whitespace and control or format characters (NUL, zero-width space...):
    the schema's own pattern, so what it calls blank is what is refused."""
    return _NON_BLANK.search(text) is None


def _input_item(item: Any, index: int) -> EmbeddingInput:
    if isinstance(item, str):
        if _is_blank(item):
            raise serializers.ValidationError(
                {str(index): f"input[{index}] has no text; every input needs some."},
                code=ErrorCode.INPUT_EMPTY,
            )
        return TextInput(item)
    if isinstance(item, dict):
        for key in ("text", "image", "url", "bytes"):
            if key in item:
                value = item[key]
                if not isinstance(value, str):
                    raise serializers.ValidationError(
                        {str(index): f"input[{index}].{key} must be a string."}
                    )
                if not value or (key == "text" and _is_blank(value)):
                    raise serializers.ValidationError(
                        {str(index): f"input[{index}].{key} is empty."}, code=ErrorCode.INPUT_EMPTY
                    )
                return TextInput(value) if key == "text" else ImageInput(value)
        raise serializers.ValidationError(
            {str(index): f'input[{index}] must be a string, {{"text": ...}} or {{"image": ...}}.'}
        )
    if isinstance(item, list):
        if not item:
            raise serializers.ValidationError(
                {str(index): f"input[{index}] is an empty token array."}, code=ErrorCode.INPUT_EMPTY
            )
        if not all(_is_int(token) and token >= 0 for token in item):
            raise serializers.ValidationError(
                {str(index): f"input[{index}] must be a list of non-negative integer token ids."}
            )
        return TokenInput(item)
    raise serializers.ValidationError(
        {
            str(
                index
            ): f"input[{index}] must be a string, a text object or a token array, not {type(item).__name__}."
        }
    )


@extend_schema_field(INPUT_SCHEMA)
class EmbeddingInputField(serializers.Field):
    """A string, a TextDoc/ImageDoc, a token array, or a list mixing strings, docs and token arrays."""

    def to_internal_value(self, data: Any) -> list[EmbeddingInput]:
        if isinstance(data, str | dict):
            return [_input_item(data, 0)]
        if not isinstance(data, list):
            raise serializers.ValidationError("Must be a string, an object or a list of them.")
        if not data:
            raise serializers.ValidationError(
                "The input list is empty.", code=ErrorCode.INPUT_EMPTY
            )
        limit = settings.EMBEDDINGS_MAX_INPUTS
        if len(data) > limit:
            raise serializers.ValidationError(
                f"{len(data)} inputs in one request; the limit is {limit}.",
                code=ErrorCode.INPUT_TOO_MANY_ITEMS,
            )
        if _is_int(data[0]):  # OpenAI: one input given as a flat list of token ids
            return [_input_item(data, 0)]
        return [_input_item(item, index) for index, item in enumerate(data)]

    def to_representation(self, value: Any) -> Any:
        return value


class EmbeddingRequestSerializer(serializers.Serializer):
    """The body of POST /v1/embeddings in either wire format."""

    input = EmbeddingInputField()
    model = StrictCharField(required=False, allow_null=True, max_length=200)
    task = StrictCharField(required=False, allow_null=True, max_length=100)
    dimensions = StrictPositiveIntegerField(required=False, allow_null=True)
    normalized = StrictBooleanField(required=False, allow_null=True)
    embedding_type = EmbeddingTypeField(required=False, allow_null=True)
    encoding_type = EmbeddingTypeField(required=False, allow_null=True)  # older Jina clients
    encoding_format = EmbeddingTypeField(required=False, allow_null=True)  # OpenAI
    truncate = StrictBooleanField(required=False, allow_null=True)
    late_chunking = StrictBooleanField(required=False, allow_null=True)
    user = StrictCharField(required=False, allow_null=True, allow_blank=True, max_length=500)

    def to_request(self) -> EmbeddingRequest:
        data = self.validated_data
        types = (
            data.get("embedding_type") or data.get("encoding_type") or data.get("encoding_format")
        )
        normalized = data.get("normalized")
        return EmbeddingRequest(
            inputs=data["input"],
            model=data.get("model") or None,
            task=data.get("task") or None,
            dimensions=data.get("dimensions"),
            normalized=True if normalized is None else normalized,
            embedding_types=types or ["float"],
            truncate=bool(data.get("truncate")),
            late_chunking=bool(data.get("late_chunking")),
        )

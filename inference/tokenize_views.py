"""POST /v1/tokenize — vLLM's, TEI's and Jina's segmenter's request fields, keyed, not charged."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from drf_spectacular.utils import (
    OpenApiExample,
    OpenApiResponse,
    extend_schema,
    extend_schema_field,
)
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response

from embeddings_site.api_schema import ERRORS, TOKENIZE_RESPONSE_SCHEMA
from embeddings_site.errors import ErrorCode
from embeddings_site.validation import serializer_for
from inference.protocol import StrictBooleanField, StrictCharField
from inference.tokenize_services import TokenizeRequest, TokenizeShape, tokenize_create
from metering.api import MeteredApiView

# The field that carries the text names the client, and so the response's shape.
_SHAPES: dict[str, TokenizeShape] = {"prompt": "vllm", "inputs": "tei", "content": "jina"}


@extend_schema_field(
    {
        "anyOf": [
            {"type": "string"},
            {"type": "array", "minItems": 1, "items": {"type": "string"}},
        ],
        "description": "TEI's: a text or a list of texts (one token list each in the answer).",
    }
)
class TextsField(serializers.Field):
    """A string or a non-empty list of strings."""

    def to_internal_value(self, data: Any) -> list[str]:
        texts = [data] if isinstance(data, str) else data
        if not isinstance(texts, list) or not texts:
            raise serializers.ValidationError("Must be a string or a non-empty list of strings.")
        if not all(isinstance(text, str) for text in texts):
            raise serializers.ValidationError("Every input must be a string.")
        limit = settings.EMBEDDINGS_MAX_INPUTS
        if len(texts) > limit:
            raise serializers.ValidationError(
                f"{len(texts)} inputs in one request; the limit is {limit}.",
                code=ErrorCode.INPUT_TOO_MANY_ITEMS,
            )
        return texts

    def to_representation(self, value: Any) -> Any:
        return value


class TokenizeRequestSerializer(serializers.Serializer):
    """Exactly one of `prompt` (vLLM), `inputs` (TEI) or `content` (Jina's segmenter)."""

    model = StrictCharField(
        required=False,
        allow_null=True,
        max_length=200,
        help_text="Whose tokenizer (default: EMBEDDINGS_DEFAULT_MODEL).",
    )
    prompt = StrictCharField(required=False, allow_blank=True, help_text="vLLM's: the text.")
    inputs = TextsField(required=False)
    content = StrictCharField(
        required=False, allow_blank=True, help_text="Jina segmenter's: the text."
    )
    add_special_tokens = StrictBooleanField(
        required=False, allow_null=True, help_text="Add the model's special tokens (default)."
    )
    return_token_strs = StrictBooleanField(
        required=False, allow_null=True, help_text="vLLM's: the tokens' strings beside the ids."
    )
    return_tokens = StrictBooleanField(
        required=False, allow_null=True, help_text="Jina segmenter's: the tokens and their ids."
    )

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        given = [name for name in _SHAPES if name in attrs]
        if len(given) != 1:
            raise serializers.ValidationError(
                {"input": "Send exactly one of prompt (vLLM), inputs (TEI) or content (Jina)."}
            )
        return attrs

    def to_request(self) -> TokenizeRequest:
        data = self.validated_data
        (field,) = [name for name in _SHAPES if name in data]
        texts = data[field] if field == "inputs" else [data[field]]
        special = data.get("add_special_tokens")
        return TokenizeRequest(
            texts=texts,
            shape=_SHAPES[field],
            model=data.get("model") or None,
            add_special_tokens=True if special is None else special,
            return_tokens=bool(data.get("return_token_strs") or data.get("return_tokens")),
        )


class TokenizeCreateApi(MeteredApiView):
    """POST /v1/tokenize — the model's tokenizer; rate-limited like every call, never charged."""

    InputSerializer = TokenizeRequestSerializer
    endpoint = "tokenize"

    @extend_schema(
        operation_id="tokenize_create",
        summary="Tokenize text",
        description=(
            "The token ids (and tokens) the model reads for a text, in the shape of the "
            "client's own API: vLLM's `/tokenize` (`prompt`), TEI's `/tokenize` (`inputs`) or "
            "Jina's segmenter (`content`). Counts toward the key's request and concurrency "
            "limits; charges nothing."
        ),
        request=TokenizeRequestSerializer,
        responses={
            200: OpenApiResponse(response=TOKENIZE_RESPONSE_SCHEMA),
            **ERRORS,
        },
        examples=[
            OpenApiExample("vLLM", value={"prompt": "Hello, world!"}, request_only=True),
            OpenApiExample("TEI", value={"inputs": ["Hello", "world"]}, request_only=True),
            OpenApiExample(
                "Jina segmenter",
                value={"content": "Hello", "return_tokens": True},
                request_only=True,
            ),
        ],
    )
    def post(self, request: Request) -> Response:
        serializer = serializer_for(self.InputSerializer, data=request.data)
        serializer.is_valid(raise_exception=True)
        body = tokenize_create(work=request.work, request=serializer.to_request())  # type: ignore[attr-defined]
        return Response(body)

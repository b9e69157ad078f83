"""POST /v1/rerank (Jina's RerankAPIInput → RerankingResponse) and POST /v2/rerank (Cohere's v2
rerank, as the `cohere` SDK's ClientV2.rerank posts and parses it).

Unknown keys are ignored, so newer clients keep working; known keys must have the right type,
and an option this server cannot honour is refused with a 400 naming it, never ignored.
"""

from __future__ import annotations

import math
import re
import uuid
from typing import Any

from django.conf import settings
from drf_spectacular.utils import OpenApiExample, extend_schema, extend_schema_field
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response

from embeddings_site.api_schema import ERRORS, NON_BLANK_PATTERN
from embeddings_site.errors import ErrorCode
from embeddings_site.validation import serializer_for
from inference.protocol import StrictBooleanField, StrictCharField, StrictPositiveIntegerField
from inference.rerank import RerankRequest, RerankResult, rerank_create
from metering.api import MeteredApiView

# Cohere's documented default for `max_tokens_per_doc`.
COHERE_MAX_TOKENS_PER_DOC = 4096
# Cohere bills a search unit per query of up to 100 documents; reported for comparison only.
COHERE_DOCUMENTS_PER_SEARCH_UNIT = 100

_NON_BLANK = re.compile(NON_BLANK_PATTERN)
_TEXT: dict[str, Any] = {"type": "string", "pattern": NON_BLANK_PATTERN}
_TEXT_DOC: dict[str, Any] = {
    "type": "object",
    "title": "TextDoc",
    "required": ["text"],
    "properties": {"text": _TEXT},
}
MAX_DOCUMENTS_DOC = "at most RERANK_MAX_DOCUMENTS (1,000 by default) documents"


def _text(value: Any, where: str) -> str:
    """A non-blank string, or a TextDoc's text."""
    if isinstance(value, dict):
        if "text" not in value:
            raise serializers.ValidationError(f'{where} must be a string or {{"text": ...}}.')
        value = value["text"]
    if not isinstance(value, str):
        raise serializers.ValidationError(f"{where} must be a string.")
    if _NON_BLANK.search(value) is None:
        raise serializers.ValidationError(f"{where} has no text.", code=ErrorCode.INPUT_EMPTY)
    return value


@extend_schema_field({"anyOf": [_TEXT, _TEXT_DOC]})
class RerankQueryField(serializers.Field):
    """The query: a string or a TextDoc."""

    def to_internal_value(self, data: Any) -> str:
        return _text(data, "query")

    def to_representation(self, value: Any) -> Any:
        return value


@extend_schema_field(
    {
        "type": "array",
        "minItems": 1,
        "maxItems": 1000,
        "items": {"anyOf": [_TEXT, _TEXT_DOC]},
        "description": f"Documents to rank: strings or TextDoc objects, {MAX_DOCUMENTS_DOC}.",
    }
)
class RerankDocumentsField(serializers.Field):
    """Documents: strings or TextDocs, at most RERANK_MAX_DOCUMENTS of them."""

    def to_internal_value(self, data: Any) -> list[str]:
        if not isinstance(data, list):
            raise serializers.ValidationError("Must be a list of strings or text objects.")
        if not data:
            raise serializers.ValidationError("No documents to rank.", code=ErrorCode.INPUT_EMPTY)
        limit = settings.RERANK_MAX_DOCUMENTS
        if len(data) > limit:
            raise serializers.ValidationError(
                f"{len(data)} documents in one request; the limit is {limit}.",
                code=ErrorCode.INPUT_TOO_MANY_ITEMS,
            )
        return [_text(item, f"documents[{index}]") for index, item in enumerate(data)]

    def to_representation(self, value: Any) -> Any:
        return value


@extend_schema_field({"type": "boolean", "enum": [False]})
class RefusedWhenTrueField(StrictBooleanField):
    """An option this server does not offer: false (or absent) only."""

    def to_internal_value(self, data: Any) -> bool:
        value = super().to_internal_value(data)
        if value:
            raise serializers.ValidationError(
                "Not available on this server; send false or omit it."
            )
        return value


class JinaRerankRequestSerializer(serializers.Serializer):
    """The body of POST /v1/rerank (Jina's TextRerankerRequest / RerankerV3Request)."""

    model = StrictCharField(
        required=False,
        allow_null=True,
        max_length=200,
        help_text="A reranker, or any embedding model (cosine). Default: RERANK_DEFAULT_MODEL.",
    )
    query = RerankQueryField(help_text="What the documents are ranked against.")
    documents = RerankDocumentsField()
    top_n = StrictPositiveIntegerField(
        required=False, allow_null=True, help_text="Return the best N (default: all)."
    )
    return_documents = StrictBooleanField(
        required=False, allow_null=True, help_text="Include each document's text (default true)."
    )
    truncation = StrictBooleanField(
        required=False,
        allow_null=True,
        help_text="Cut documents that do not fit the model with the query (default false: 400).",
    )
    truncate = StrictBooleanField(
        required=False, allow_null=True, help_text="The same as `truncation`."
    )
    max_doc_length = StrictPositiveIntegerField(
        required=False, allow_null=True, help_text="Cut each document to this many tokens."
    )
    return_embeddings = RefusedWhenTrueField(
        required=False, allow_null=True, help_text="Not served: false or omitted."
    )

    def to_request(self) -> RerankRequest:
        data = self.validated_data
        return_documents = data.get("return_documents")
        return RerankRequest(
            query=data["query"],
            documents=data["documents"],
            model=data.get("model") or None,
            top_n=data.get("top_n"),
            return_documents=True if return_documents is None else return_documents,
            truncate=bool(data.get("truncation") or data.get("truncate")),
            max_tokens_per_doc=data.get("max_doc_length"),
        )


@extend_schema_field(
    {
        "type": "object",
        "properties": {"mode": {"type": "string", "enum": ["disabled"]}},
        "description": "Cohere's relevant spans: not available here (mode disabled only).",
    }
)
class RelevantSpansField(serializers.Field):
    def to_internal_value(self, data: Any) -> dict[str, Any]:
        if not isinstance(data, dict):
            raise serializers.ValidationError("Must be an object.")
        if data.get("mode", "disabled") != "disabled":
            raise serializers.ValidationError(
                "Relevant spans are not available on this server; send mode disabled or omit it."
            )
        return data

    def to_representation(self, value: Any) -> Any:
        return value


@extend_schema_field({"type": "integer", "minimum": 0})
class PriorityField(serializers.Field):
    """Cohere's priority: accepted; requests are served in arrival order, within each key's limits."""

    def to_internal_value(self, data: Any) -> int:
        if not isinstance(data, int) or isinstance(data, bool) or data < 0:
            raise serializers.ValidationError("Must be a non-negative integer.")
        return data

    def to_representation(self, value: Any) -> Any:
        return value


class CohereRerankRequestSerializer(serializers.Serializer):
    """The body of POST /v2/rerank (Cohere's v2 rerank)."""

    model = StrictCharField(
        required=False,
        allow_null=True,
        max_length=200,
        help_text="A reranker, or any embedding model (cosine). Default: RERANK_DEFAULT_MODEL.",
    )
    query = RerankQueryField(help_text="What the documents are ranked against.")
    documents = RerankDocumentsField()
    top_n = StrictPositiveIntegerField(
        required=False, allow_null=True, help_text="Return the best N (default: all)."
    )
    max_tokens_per_doc = StrictPositiveIntegerField(
        required=False,
        allow_null=True,
        help_text=f"Cut each document to this many tokens (default {COHERE_MAX_TOKENS_PER_DOC}).",
    )
    relevant_spans = RelevantSpansField(required=False, allow_null=True)
    priority = PriorityField(
        required=False,
        allow_null=True,
        help_text="Cohere's: accepted; requests are served in arrival order.",
    )

    def to_request(self) -> RerankRequest:
        data = self.validated_data
        # Cohere truncates long documents, silently and always.
        return RerankRequest(
            query=data["query"],
            documents=data["documents"],
            model=data.get("model") or None,
            top_n=data.get("top_n"),
            return_documents=False,
            truncate=True,
            max_tokens_per_doc=data.get("max_tokens_per_doc") or COHERE_MAX_TOKENS_PER_DOC,
        )


class RerankDocumentSerializer(serializers.Serializer):
    text = serializers.CharField()


class JinaRerankResultSerializer(serializers.Serializer):
    index = serializers.IntegerField(help_text="Position of the document in the input list.")
    relevance_score = serializers.FloatField(
        help_text="Higher is more relevant: a cross-encoder's sigmoid, or a bi-encoder's cosine."
    )
    document = RerankDocumentSerializer(required=False, help_text="When return_documents is true.")


class RerankUsageSerializer(serializers.Serializer):
    total_tokens = serializers.IntegerField(help_text="Exactly what is charged.")


class JinaRerankResponseSerializer(serializers.Serializer):
    """Jina's RerankingResponse."""

    model = serializers.CharField()
    object = serializers.CharField(default="list")
    results = JinaRerankResultSerializer(
        many=True, help_text="Sorted by relevance_score, descending."
    )
    usage = RerankUsageSerializer()


class CohereRerankResultSerializer(serializers.Serializer):
    index = serializers.IntegerField()
    relevance_score = serializers.FloatField()


class CohereBilledUnitsSerializer(serializers.Serializer):
    input_tokens = serializers.IntegerField(help_text="Exactly what is charged.")
    search_units = serializers.IntegerField(
        help_text="Cohere's unit (a query of up to 100 documents), for comparison; not billed."
    )


class CohereTokensSerializer(serializers.Serializer):
    input_tokens = serializers.IntegerField()
    output_tokens = serializers.IntegerField()


class CohereApiVersionSerializer(serializers.Serializer):
    version = serializers.CharField()


class CohereMetaSerializer(serializers.Serializer):
    api_version = CohereApiVersionSerializer()
    billed_units = CohereBilledUnitsSerializer()
    tokens = CohereTokensSerializer()


class CohereRerankResponseSerializer(serializers.Serializer):
    """Cohere's V2RerankResponse."""

    id = serializers.CharField()
    results = CohereRerankResultSerializer(many=True)
    meta = CohereMetaSerializer()


def jina_rerank_body(*, result: RerankResult, request: RerankRequest) -> dict[str, Any]:
    """Jina's RerankingResponse for a result."""
    results: list[dict[str, Any]] = []
    for index, score in result.ranked(request.top_n):
        item: dict[str, Any] = {"index": index, "relevance_score": score}
        if request.return_documents:
            item["document"] = {"text": request.documents[index]}
        results.append(item)
    return {
        "model": result.model.name,
        "object": "list",
        "results": results,
        "usage": {"total_tokens": result.total_tokens},
    }


def cohere_rerank_body(
    *, result: RerankResult, request: RerankRequest, request_id: str
) -> dict[str, Any]:
    """Cohere's V2RerankResponse for a result."""
    search_units = math.ceil(len(request.documents) / COHERE_DOCUMENTS_PER_SEARCH_UNIT)
    return {
        "id": request_id or str(uuid.uuid4()),
        "results": [
            {"index": index, "relevance_score": score}
            for index, score in result.ranked(request.top_n)
        ],
        "meta": {
            "api_version": {"version": "2"},
            "billed_units": {"input_tokens": result.total_tokens, "search_units": search_units},
            "tokens": {"input_tokens": result.total_tokens, "output_tokens": 0},
        },
    }


_DOCUMENTS = [
    "Paris is the capital and largest city of France.",
    "The mitochondria is the powerhouse of the cell.",
    "Berlin is the capital of Germany.",
]


class RerankCreateApi(MeteredApiView):
    """POST /v1/rerank — Jina's rerank."""

    endpoint = "rerank"
    InputSerializer = JinaRerankRequestSerializer
    OutputSerializer = JinaRerankResponseSerializer

    @extend_schema(
        operation_id="rerank_create",
        summary="Rerank documents",
        description=(
            "Score documents against a query, best first. A reranker model (a cross-encoder) "
            "reads each (query, document) pair; an embedding model scores by cosine "
            "(`/v1/models` says which: `rerank_method`). `usage` is exactly what is charged: "
            "the tokens the model reads. " + MAX_DOCUMENTS_DOC.capitalize() + " per request."
        ),
        request=JinaRerankRequestSerializer,
        responses={200: JinaRerankResponseSerializer, **ERRORS},
        examples=[
            OpenApiExample(
                "Jina",
                value={
                    "model": "all-MiniLM-L6-v2",
                    "query": "What is the capital of France?",
                    "documents": _DOCUMENTS,
                    "top_n": 2,
                },
                request_only=True,
            )
        ],
    )
    def post(self, request: Request) -> Response:
        serializer = serializer_for(self.InputSerializer, data=request.data)
        serializer.is_valid(raise_exception=True)
        rerank_request = serializer.to_request()
        result = rerank_create(work=request.work, request=rerank_request)  # type: ignore[attr-defined]
        return Response(jina_rerank_body(result=result, request=rerank_request))


class CohereRerankCreateApi(MeteredApiView):
    """POST /v2/rerank — Cohere's v2 rerank (the `cohere` SDK's ClientV2.rerank)."""

    endpoint = "rerank"
    InputSerializer = CohereRerankRequestSerializer
    OutputSerializer = CohereRerankResponseSerializer

    @extend_schema(
        operation_id="rerank_create_cohere",
        summary="Rerank documents (Cohere v2)",
        description=(
            "Cohere's v2 rerank: documents longer than `max_tokens_per_doc` (or than the "
            "model's window with the query) are cut, as Cohere does. Billing is by tokens: "
            "`meta.billed_units.input_tokens` is exactly what is charged."
        ),
        request=CohereRerankRequestSerializer,
        responses={200: CohereRerankResponseSerializer, **ERRORS},
        examples=[
            OpenApiExample(
                "Cohere",
                value={
                    "model": "all-MiniLM-L6-v2",
                    "query": "What is the capital of France?",
                    "documents": _DOCUMENTS,
                    "top_n": 2,
                },
                request_only=True,
            )
        ],
    )
    def post(self, request: Request) -> Response:
        serializer = serializer_for(self.InputSerializer, data=request.data)
        serializer.is_valid(raise_exception=True)
        rerank_request = serializer.to_request()
        result = rerank_create(work=request.work, request=rerank_request)  # type: ignore[attr-defined]
        body = cohere_rerank_body(
            result=result,
            request=rerank_request,
            request_id=getattr(request, "request_id", ""),
        )
        return Response(body)

"""The /v1 inference API: one view per operation."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.utils.decorators import method_decorator
from django_ratelimit.decorators import ratelimit
from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from embeddings_site.api_schema import (
    EMBEDDING_EXAMPLES,
    ERRORS,
    EmbeddingResponse,
    ErrorResponse,
    Model,
    ModelList,
)
from embeddings_site.errors import ApiError, ErrorCode
from embeddings_site.validation import serializer_for
from inference.models import EmbeddingModel
from inference.protocol import EmbeddingRequestSerializer
from inference.rerank import rerank_method
from inference.selectors import embedding_model_get, embedding_model_list
from inference.services import embeddings_create
from metering.api import MeteredApiView


class EmbeddingCreateApi(MeteredApiView):
    """POST /v1/embeddings — Jina and OpenAI request shapes, one response shape."""

    InputSerializer = EmbeddingRequestSerializer

    @extend_schema(
        operation_id="embeddings_create",
        summary="Create embeddings",
        description="Embed texts, images or token ids. `usage` is exactly what is charged.",
        request=EmbeddingRequestSerializer,
        responses={200: EmbeddingResponse, **ERRORS},
        examples=EMBEDDING_EXAMPLES,
    )
    def post(self, request: Request) -> Response:
        serializer = serializer_for(self.InputSerializer, data=request.data)
        serializer.is_valid(raise_exception=True)
        body = embeddings_create(work=request.work, request=serializer.to_request())  # type: ignore[attr-defined]
        return Response(body)


class ModelOutputSerializer(serializers.Serializer):
    """A model as OpenAI's `model` object and Jina's ModelInfo at once, plus what requests may use."""

    def to_representation(self, model: EmbeddingModel) -> dict[str, Any]:
        created = int(model.created_at.timestamp())
        per_token = model.price_per_million_tokens / 1_000_000
        if model.is_reranker:
            features = ["truncate", "top_n", "return_documents", "max_tokens_per_doc"]
        else:
            features = ["truncate", "late_chunking", "dimensions", "embedding_type"]
        if model.tasks and not model.is_reranker:
            features.append("task")
        return {
            "id": model.name,
            "object": "model",
            "created": created,
            "owned_by": "self-hosted",
            "name": model.name,
            "hugging_face_id": model.hugging_face_id,
            "description": model.description,
            "input_modalities": list(model.modalities),
            "output_modalities": ["scores"] if model.is_reranker else ["embeddings"],
            "quantization": "",
            "context_length": model.max_tokens,
            "max_output_length": model.dimensions,
            "pricing": {
                "prompt": f"{per_token:.12f}".rstrip("0").rstrip(".") or "0",
                "completion": "0",
                "image": "0",
                "request": "0",
                "input_cache_read": "0",
                "input_cache_write": "0",
            },
            "supported_sampling_parameters": [],
            "supported_features": features,
            "datacenters": [],
            "dimensions": model.dimensions,
            "max_tokens": model.max_tokens,
            "matryoshka": model.matryoshka,
            "tasks": sorted(model.tasks),
            "default_task": model.default_task or None,
            "backend": model.backend,
            "kind": model.kind,
            "operations": model.operations,
            # A reranker reads each (query, document) pair; an embedding model ranks by the
            # cosine of the query's and each document's embedding.
            "rerank_method": rerank_method(model),
        }


# Anonymous endpoints are limited per client IP (django-ratelimit, on the Django cache).
_per_ip = method_decorator(
    ratelimit(
        group="v1-anonymous",
        key="ip",
        rate=lambda group, request: settings.IP_RATE_LIMIT_ANONYMOUS,
        block=True,
    ),
    name="get",
)


@_per_ip
class ModelListApi(APIView):
    """GET /v1/models — the enabled models."""

    OutputSerializer = ModelOutputSerializer

    @extend_schema(
        operation_id="models_list",
        summary="List models",
        responses={200: ModelList, 429: ErrorResponse},
    )
    def get(self, request: Request) -> Response:
        models = self.OutputSerializer(embedding_model_list(), many=True).data
        return Response({"object": "list", "data": models})


@_per_ip
class ModelDetailApi(APIView):
    """GET /v1/models/{id} — by name or Hugging Face id."""

    OutputSerializer = ModelOutputSerializer

    @extend_schema(
        operation_id="models_retrieve",
        summary="Retrieve a model",
        description="By name or Hugging Face id.",
        responses={200: Model, 404: ErrorResponse, 429: ErrorResponse},
    )
    def get(self, request: Request, model_id: str) -> Response:
        model = embedding_model_get(name=model_id)
        if model is None:
            raise ApiError(
                ErrorCode.RESOURCE_NOT_FOUND, f"Model '{model_id}' not found.", param="model"
            )
        return Response(self.OutputSerializer(model).data)

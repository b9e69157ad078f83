"""/internal/workers: the launcher registers, heartbeats and leaves with the worker token."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from rest_framework import serializers
from rest_framework.authentication import BaseAuthentication
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from embeddings_site.errors import ApiError, ErrorCode
from embeddings_site.metrics import bearer_token_matches
from inference.workers import UnknownModel, worker_deregister, worker_heartbeat


class WorkerTokenAuthentication(BaseAuthentication):
    """`Authorization: Bearer <WORKER_TOKEN>`; no token configured means no worker may register."""

    def authenticate(self, request: Request) -> tuple[None, str]:
        header = request.META.get("HTTP_AUTHORIZATION", "")
        if not bearer_token_matches(header, settings.WORKER_TOKEN):
            raise ApiError(ErrorCode.AUTH_INVALID_API_KEY, "Invalid worker token.")
        return None, header.partition(" ")[2].strip()


class WorkerHeartbeatApi(APIView):
    """POST registers or refreshes a worker; DELETE takes it out."""

    authentication_classes = [WorkerTokenAuthentication]

    class InputSerializer(serializers.Serializer):
        model = serializers.CharField(max_length=100)
        url = serializers.URLField(max_length=500)
        served_model_name = serializers.CharField(
            max_length=200, required=False, allow_blank=True, default=""
        )
        accepts_token_ids = serializers.BooleanField(required=False, default=True)

    def post(self, request: Request) -> Response:
        data = self._validated(request)
        try:
            worker = worker_heartbeat(
                model_name=data["model"],
                url=data["url"],
                served_model_name=data["served_model_name"],
                accepts_token_ids=data["accepts_token_ids"],
            )
        except UnknownModel as exc:
            raise ApiError(
                ErrorCode.INPUT_MODEL_NOT_FOUND,
                f"Model '{exc}' is not in the registry.",
                param="model",
            ) from exc
        return Response({"id": worker.pk, "model": worker.model.name, "url": worker.url})

    def delete(self, request: Request) -> Response:
        data = self._validated(request)
        return Response({"removed": worker_deregister(model_name=data["model"], url=data["url"])})

    def _validated(self, request: Request) -> dict[str, Any]:
        serializer = self.InputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        return dict(serializer.validated_data)

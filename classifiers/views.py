"""/v1/classify, /v1/train and /v1/classifiers in Jina's wire format: one view per operation
(a route serving two operations, GET and DELETE /v1/classifiers/{id}, has a method for each)."""

from __future__ import annotations

import uuid
from typing import Any

from drf_spectacular.utils import OpenApiExample, extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from billing.models import ApiKey
from classifiers.api_schema import (
    CLASSIFICATION_RESPONSE,
    CLASSIFIER_DELETED,
    CLASSIFIER_LIST,
    CLASSIFIER_SUMMARY,
    TRAINING_RESPONSE,
)
from classifiers.models import Classifier
from classifiers.protocol import (
    CLASSIFY_REQUEST_SCHEMA,
    TRAIN_REQUEST_SCHEMA,
    ClassifyRequestSerializer,
    TrainRequestSerializer,
)
from classifiers.selectors import classifier_get_owned, classifier_list
from classifiers.services import classifier_delete, classifier_train_create, classify_create
from embeddings_site.api_schema import ERRORS, ErrorResponse
from embeddings_site.errors import ApiError, ErrorCode
from embeddings_site.validation import serializer_for
from metering.api import MeteredApiView
from metering.authentication import ApiKeyAuthentication

# Besides the API's own: a classifier that is not the caller's to use (404), and one whose
# model's dimensions changed since it was trained (409).
CLASSIFY_ERRORS = {**ERRORS, 404: ErrorResponse, 409: ErrorResponse}
KEYED_ERRORS = {401: ErrorResponse, 404: ErrorResponse, 503: ErrorResponse}
TAGS = ["Classification"]

# Jina's ClassifierSummary gives the owner as a UUID; users here have integer keys, so each is
# named by a UUID derived from it (stable, and shown only to that user).
_USER_NAMESPACE = uuid.UUID("5b0c6f9e-3f7a-4c52-9a59-2f3f3b6c9e11")


class ClassifyApi(MeteredApiView):
    """POST /v1/classify — zero-shot with `labels`, few-shot with a trained `classifier_id`."""

    endpoint = "classify"
    InputSerializer = ClassifyRequestSerializer

    @extend_schema(
        operation_id="classify",
        summary="Classify texts or images",
        description=(
            "Zero-shot with `labels`: each input's scores are a softmax of its cosine "
            "similarities to the labels (of each group), divided by a temperature of 0.05 "
            "(CLASSIFY_TEMPERATURE). Few-shot with the `classifier_id` of a classifier from "
            "POST /v1/train (yours, or a public one). `usage` is exactly what is charged: the "
            "inputs' tokens, plus the labels' on zero-shot."
        ),
        request={"application/json": CLASSIFY_REQUEST_SCHEMA},
        responses={200: CLASSIFICATION_RESPONSE, **CLASSIFY_ERRORS},
        tags=TAGS,
        examples=[
            OpenApiExample(
                "Zero-shot",
                value={
                    "model": "all-MiniLM-L6-v2",
                    "input": ["The striker scored twice.", {"text": "Whisk the eggs."}],
                    "labels": ["sports", "cooking", "astronomy"],
                },
                request_only=True,
            ),
            OpenApiExample(
                "Few-shot",
                value={
                    "classifier_id": "00000000-0000-0000-0000-000000000000",
                    "input": ["The striker scored twice."],
                },
                request_only=True,
            ),
        ],
    )
    def post(self, request: Request) -> Response:
        serializer = serializer_for(self.InputSerializer, data=request.data)
        serializer.is_valid(raise_exception=True)
        api_key: ApiKey = request.auth  # type: ignore[assignment]
        body = classify_create(
            work=request.work,  # type: ignore[attr-defined]
            request=serializer.to_request(),
            user_id=api_key.user_id,
        )
        return Response(body)


class TrainApi(MeteredApiView):
    """POST /v1/train — create a few-shot classifier, or update one of yours."""

    endpoint = "train"
    InputSerializer = TrainRequestSerializer

    @extend_schema(
        operation_id="train",
        summary="Train or update a few-shot classifier",
        description=(
            "Fits a multinomial logistic regression on the model's normalized embeddings of "
            "the examples (with the classifier's earlier examples, on an update). Charged as "
            "Jina charges it: the examples' tokens × `num_iters`, which `usage` reports. "
            "Classifiers are private to your account unless `access` is public."
        ),
        request={"application/json": TRAIN_REQUEST_SCHEMA},
        responses={200: TRAINING_RESPONSE, **CLASSIFY_ERRORS},
        tags=TAGS,
        examples=[
            OpenApiExample(
                "Create",
                value={
                    "model": "all-MiniLM-L6-v2",
                    "access": "private",
                    "num_iters": 10,
                    "input": [
                        {"text": "The striker scored twice.", "label": "sports"},
                        {"text": "Whisk the eggs with sugar.", "label": "cooking"},
                    ],
                },
                request_only=True,
            )
        ],
    )
    def post(self, request: Request) -> Response:
        serializer = serializer_for(self.InputSerializer, data=request.data)
        serializer.is_valid(raise_exception=True)
        api_key: ApiKey = request.auth  # type: ignore[assignment]
        body = classifier_train_create(
            work=request.work,  # type: ignore[attr-defined]
            request=serializer.to_request(),
            owner_id=api_key.user_id,
        )
        return Response(body)


class ClassifierOutputSerializer(serializers.Serializer):
    """Jina's ClassifierSummary."""

    def to_representation(self, classifier: Classifier) -> dict[str, Any]:
        return {
            "classifier_id": str(classifier.id),
            "user_id": str(uuid.uuid5(_USER_NAMESPACE, str(classifier.owner_id))),
            "model": classifier.model,
            "labels": list(classifier.labels),
            "access": classifier.access,
            "is_active": True,
            "is_latest": True,
            "metadata_": {"num_samples": classifier.num_samples},
            "updated_number": classifier.updated_number,
            "used_number": classifier.used_number,
            "used_at": classifier.used_at.isoformat() if classifier.used_at else None,
            "created_at": classifier.created_at.isoformat(),
            "updated_at": classifier.updated_at.isoformat(),
        }


class ClassifierApiView(APIView):
    """A keyed, uncharged view of the caller's own classifiers."""

    authentication_classes = [ApiKeyAuthentication]

    @property
    def owner_id(self) -> int:
        api_key: ApiKey = self.request.auth  # type: ignore[assignment]
        return api_key.user_id


class ClassifierListApi(ClassifierApiView):
    """GET (or POST, as Jina also serves it) /v1/classifiers — the caller's classifiers."""

    OutputSerializer = ClassifierOutputSerializer

    @extend_schema(
        operation_id="classifiers_list",
        summary="List your classifiers",
        description="Your account's classifiers, newest first; others' public ones are not listed.",
        responses={200: CLASSIFIER_LIST, **KEYED_ERRORS},
        tags=TAGS,
    )
    def get(self, request: Request) -> Response:
        classifiers = classifier_list(owner_id=self.owner_id)
        return Response(self.OutputSerializer(classifiers, many=True).data)

    @extend_schema(
        operation_id="classifiers_list_post",
        summary="List your classifiers (Jina's POST form)",
        request=None,
        responses={200: CLASSIFIER_LIST, **KEYED_ERRORS},
        tags=TAGS,
    )
    def post(self, request: Request) -> Response:
        return self.get(request)


class ClassifierDetailApi(ClassifierApiView):
    """GET /v1/classifiers/{id} — one of your classifiers; DELETE — delete it."""

    OutputSerializer = ClassifierOutputSerializer

    def _not_found(self, classifier_id: str) -> ApiError:
        return ApiError(
            ErrorCode.RESOURCE_NOT_FOUND,
            f"No classifier {classifier_id[:100]!r}.",
            param="classifier_id",
        )

    @extend_schema(
        operation_id="classifiers_retrieve",
        summary="Retrieve one of your classifiers",
        responses={200: CLASSIFIER_SUMMARY, **KEYED_ERRORS},
        tags=TAGS,
    )
    def get(self, request: Request, classifier_id: str) -> Response:
        classifier = classifier_get_owned(owner_id=self.owner_id, classifier_id=classifier_id)
        if classifier is None:
            raise self._not_found(classifier_id)
        return Response(self.OutputSerializer(classifier).data)

    @extend_schema(
        operation_id="classifiers_delete",
        summary="Delete one of your classifiers",
        responses={200: CLASSIFIER_DELETED, **KEYED_ERRORS},
        tags=TAGS,
    )
    def delete(self, request: Request, classifier_id: str) -> Response:
        if not classifier_delete(owner_id=self.owner_id, classifier_id=classifier_id):
            raise self._not_found(classifier_id)
        return Response({"classifier_id": classifier_id, "deleted": True})

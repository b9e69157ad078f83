"""The OpenAPI description of the classification responses: Jina's ClassificationResponse,
TrainingResponse and ClassifierSummary, as this server sends them."""

from __future__ import annotations

from typing import Any

_USAGE: dict[str, Any] = {
    "type": "object",
    "required": ["total_tokens"],
    "properties": {"total_tokens": {"type": "integer", "minimum": 0}},
    "description": "Exactly the tokens charged.",
}
_LABEL_SCORE: dict[str, Any] = {
    "type": "object",
    "required": ["label", "score"],
    "properties": {"label": {"type": "string"}, "score": {"type": "number"}},
}
_LABEL_SCORES: dict[str, Any] = {"type": "array", "items": _LABEL_SCORE}


def _per_group(schema: dict[str, Any]) -> dict[str, Any]:
    return {"type": "object", "additionalProperties": schema}


CLASSIFICATION_RESPONSE: dict[str, Any] = {
    "type": "object",
    "required": ["data", "usage"],
    "properties": {
        "data": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["object", "index", "prediction", "score", "predictions"],
                "properties": {
                    "object": {"type": "string", "enum": ["classification"]},
                    "index": {"type": "integer", "minimum": 0},
                    "prediction": {
                        "anyOf": [{"type": "string"}, _per_group({"type": "string"})],
                        "description": "The best label, or the best label of each group.",
                    },
                    "score": {
                        "anyOf": [{"type": "number"}, _per_group({"type": "number"})],
                        "description": "The best label's probability (of each group).",
                    },
                    "predictions": {
                        "anyOf": [_LABEL_SCORES, _per_group(_LABEL_SCORES)],
                        "description": "Every label with its probability, in the labels' order.",
                    },
                },
            },
        },
        "usage": _USAGE,
    },
}
TRAINING_RESPONSE: dict[str, Any] = {
    "type": "object",
    "required": ["classifier_id", "num_samples", "usage"],
    "properties": {
        "classifier_id": {"type": "string", "format": "uuid"},
        "num_samples": {
            "type": "integer",
            "minimum": 1,
            "description": "Examples in this request.",
        },
        "usage": {**_USAGE, "description": "The examples' tokens × num_iters, charged."},
    },
}
_DATE_TIME: dict[str, Any] = {"type": "string", "format": "date-time"}
CLASSIFIER_SUMMARY: dict[str, Any] = {
    "type": "object",
    "required": [
        "classifier_id",
        "user_id",
        "model",
        "labels",
        "access",
        "updated_number",
        "used_number",
        "created_at",
        "updated_at",
    ],
    "properties": {
        "classifier_id": {"type": "string", "format": "uuid"},
        "user_id": {"type": "string", "format": "uuid"},
        "model": {"type": "string"},
        "labels": {"type": "array", "items": {"type": "string"}},
        "access": {"type": "string", "enum": ["private", "public"]},
        "is_active": {"type": "boolean"},
        "is_latest": {"type": "boolean"},
        "metadata_": {"type": "object", "additionalProperties": True},
        "updated_number": {"type": "integer", "minimum": 0},
        "used_number": {"type": "integer", "minimum": 0},
        "used_at": {**_DATE_TIME, "nullable": True},
        "created_at": _DATE_TIME,
        "updated_at": _DATE_TIME,
    },
}
CLASSIFIER_LIST: dict[str, Any] = {"type": "array", "items": CLASSIFIER_SUMMARY}
CLASSIFIER_DELETED: dict[str, Any] = {
    "type": "object",
    "required": ["classifier_id", "deleted"],
    "properties": {"classifier_id": {"type": "string"}, "deleted": {"type": "boolean"}},
}

"""The bodies of /v1/classify and /v1/train in Jina's wire format, parsed and bounded.

Jina: EmbeddingsV3ZeroShotClassificationRequest / ClipZeroShotClassificationRequest /
FewShotClassificationRequest (`input`, `labels` or `classifier_id`), and
EmbeddingsV3CreateTrainingRequest / UpdateTrainingRequest (`input` of TextTrainingItem or
ImageTrainingItem, `access`, `num_iters`). Unknown keys are ignored; known keys must have the
right type. The JSON schemas below are what the OpenAPI reference publishes, and the fields
check exactly what they say (the bounds are the settings' defaults; a smaller setting answers
400 with INPUT_TOO_MANY_ITEMS).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from embeddings_site.api_schema import NON_BLANK_PATTERN, setting_bound
from embeddings_site.errors import ErrorCode
from inference.protocol import ImageInput, StrictBooleanField, StrictCharField, TextInput

MAX_ITERS = 100
DEFAULT_ITERS = 10
MAX_ID_CHARS = 100

ClassifyInput = TextInput | ImageInput

_NON_BLANK = re.compile(NON_BLANK_PATTERN)

_TEXT: dict[str, Any] = {"type": "string", "pattern": NON_BLANK_PATTERN}
_TEXT_DOC: dict[str, Any] = {"type": "object", "required": ["text"], "properties": {"text": _TEXT}}
_IMAGE: dict[str, Any] = {
    "type": "string",
    "minLength": 1,
    "description": "An image: an http(s) URL, base64 bytes or a data URI (image models only).",
}
_IMAGE_DOC: dict[str, Any] = {
    "type": "object",
    "required": ["image"],
    "properties": {"image": _IMAGE},
}
_ITEM: dict[str, Any] = {"anyOf": [_TEXT, _TEXT_DOC, _IMAGE_DOC]}
INPUT_SCHEMA: dict[str, Any] = {
    "anyOf": [
        _TEXT,
        _TEXT_DOC,
        _IMAGE_DOC,
        {
            "type": "array",
            "minItems": 1,
            **setting_bound(maxItems="CLASSIFY_MAX_INPUTS"),
            "items": _ITEM,
        },
    ],
    "description": (
        'What to classify: a text, a TextDoc, an ImageDoc ({"image": ...}, on image models) '
        "or a list of up to {CLASSIFY_MAX_INPUTS} of them."
    ),
}
_LABEL: dict[str, Any] = {
    "type": "string",
    "pattern": NON_BLANK_PATTERN,
    **setting_bound(maxLength="CLASSIFY_MAX_LABEL_CHARS"),
}
LABELS_SCHEMA: dict[str, Any] = {
    "anyOf": [
        {
            "type": "array",
            "minItems": 1,
            **setting_bound(maxItems="CLASSIFY_MAX_LABELS"),
            "uniqueItems": True,
            "items": _LABEL,
        },
        {
            "type": "object",
            "minProperties": 1,
            **setting_bound(maxProperties="CLASSIFY_MAX_LABEL_GROUPS"),
            "additionalProperties": {
                "type": "array",
                "minItems": 1,
                **setting_bound(maxItems="CLASSIFY_MAX_LABELS_PER_GROUP"),
                "uniqueItems": True,
                "items": _LABEL,
            },
        },
    ],
    "description": (
        "Candidate labels: a list of up to {CLASSIFY_MAX_LABELS} distinct labels, or up to "
        "{CLASSIFY_MAX_LABEL_GROUPS} named groups of up to {CLASSIFY_MAX_LABELS_PER_GROUP} (each "
        "group is "
        "scored on its own)."
    ),
}
_TRAINING_ITEM: dict[str, Any] = {
    "type": "object",
    "required": ["label"],
    "properties": {"text": _TEXT, "image": _IMAGE, "label": _LABEL},
    "anyOf": [{"required": ["text"]}, {"required": ["image"]}],
    "description": "A TextTrainingItem or an ImageTrainingItem: the example and its label.",
}
TRAINING_INPUT_SCHEMA: dict[str, Any] = {
    "anyOf": [
        _TRAINING_ITEM,
        {
            "type": "array",
            "minItems": 1,
            **setting_bound(maxItems="TRAIN_MAX_EXAMPLES"),
            "items": _TRAINING_ITEM,
        },
    ],
    "description": (
        "Labelled examples, up to {TRAIN_MAX_EXAMPLES}; a new classifier needs two distinct labels."
    ),
}
_MODEL: dict[str, Any] = {
    "type": "string",
    "minLength": 1,
    "maxLength": 200,
    "description": "An embedding model (the default model when omitted).",
}
_CLASSIFIER_ID: dict[str, Any] = {
    "type": "string",
    "minLength": 1,
    "maxLength": MAX_ID_CHARS,
    "description": "A classifier from POST /v1/train.",
}
_TRUNCATE: dict[str, Any] = {
    "type": "boolean",
    "default": False,
    "description": "Cut inputs over the model's token limit to it, instead of a 400.",
}
CLASSIFY_REQUEST_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["input"],
    "properties": {
        "model": _MODEL,
        "input": INPUT_SCHEMA,
        "labels": LABELS_SCHEMA,
        "classifier_id": _CLASSIFIER_ID,
        "truncate": _TRUNCATE,
    },
    # Zero-shot (labels) or few-shot (a trained classifier): exactly one of them.
    "oneOf": [{"required": ["labels"]}, {"required": ["classifier_id"]}],
}
TRAIN_REQUEST_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["input"],
    "properties": {
        "model": _MODEL,
        "classifier_id": {**_CLASSIFIER_ID, "description": "A classifier of yours to update."},
        "input": TRAINING_INPUT_SCHEMA,
        "access": {
            "type": "string",
            "enum": ["private", "public"],
            "default": "private",
            "description": "private: your keys only; public: any key may classify with it.",
        },
        "num_iters": {
            "type": "integer",
            "minimum": 1,
            "maximum": MAX_ITERS,
            "default": DEFAULT_ITERS,
            "description": "Training passes over the examples; charged tokens × num_iters.",
        },
        "truncate": _TRUNCATE,
    },
}


@dataclass(frozen=True)
class LabelGroup:
    """Labels classified together; `name` is None for a plain list of labels."""

    name: str | None
    labels: list[str]


@dataclass(frozen=True)
class ClassifyRequest:
    inputs: list[ClassifyInput]
    model: str | None = None
    groups: list[LabelGroup] | None = None
    classifier_id: str | None = None
    truncate: bool = False


@dataclass(frozen=True)
class TrainingExample:
    item: ClassifyInput
    label: str


@dataclass(frozen=True)
class TrainRequest:
    examples: list[TrainingExample]
    model: str | None = None
    classifier_id: str | None = None
    access: str | None = None
    num_iters: int = DEFAULT_ITERS
    truncate: bool = False


def _is_blank(text: str) -> bool:
    return _NON_BLANK.search(text) is None


def _too_many(what: str, count: int, limit: int) -> serializers.ValidationError:
    return serializers.ValidationError(
        f"{count} {what} in one request; the limit is {limit}.", code=ErrorCode.INPUT_TOO_MANY_ITEMS
    )


def _text(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise serializers.ValidationError(f"{where} must be a string.")
    if _is_blank(value):
        raise serializers.ValidationError(f"{where} has no text.", code=ErrorCode.INPUT_EMPTY)
    return value


def _image(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise serializers.ValidationError(f"{where} must be a string.")
    if not value:
        raise serializers.ValidationError(f"{where} is empty.", code=ErrorCode.INPUT_EMPTY)
    return value


def _input_item(item: Any, where: str) -> ClassifyInput:
    if isinstance(item, str):
        return TextInput(_text(item, where))
    if isinstance(item, dict):
        if "text" in item:
            return TextInput(_text(item["text"], f"{where}.text"))
        if "image" in item:
            return ImageInput(_image(item["image"], f"{where}.image"))
    raise serializers.ValidationError(
        f'{where} must be a string, {{"text": ...}} or {{"image": ...}}.'
    )


@extend_schema_field(INPUT_SCHEMA)
class ClassifyInputField(serializers.Field):
    """A text, a TextDoc or ImageDoc, or a list of them."""

    def to_internal_value(self, data: Any) -> list[ClassifyInput]:
        if isinstance(data, str | dict):
            return [_input_item(data, "input")]
        if not isinstance(data, list):
            raise serializers.ValidationError("Must be a string, an object or a list of them.")
        if not data:
            raise serializers.ValidationError(
                "The input list is empty.", code=ErrorCode.INPUT_EMPTY
            )
        if len(data) > settings.CLASSIFY_MAX_INPUTS:
            raise _too_many("inputs", len(data), settings.CLASSIFY_MAX_INPUTS)
        return [_input_item(item, f"input[{index}]") for index, item in enumerate(data)]

    def to_representation(self, value: Any) -> Any:
        return value


def _label(value: Any, where: str) -> str:
    label = _text(value, where)
    if len(label) > settings.CLASSIFY_MAX_LABEL_CHARS:
        raise serializers.ValidationError(
            f"{where} has {len(label)} characters; a label has at most "
            f"{settings.CLASSIFY_MAX_LABEL_CHARS}."
        )
    return label


def _label_list(data: Any, where: str, limit: int) -> list[str]:
    if not isinstance(data, list):
        raise serializers.ValidationError(f"{where} must be a list of strings.")
    if not data:
        raise serializers.ValidationError(f"{where} is empty.", code=ErrorCode.INPUT_EMPTY)
    if len(data) > limit:
        raise _too_many(f"labels in {where}", len(data), limit)
    labels = [_label(value, f"{where}[{index}]") for index, value in enumerate(data)]
    if len(set(labels)) != len(labels):
        duplicate = next(label for label in labels if labels.count(label) > 1)
        raise serializers.ValidationError(f"{where} has {duplicate[:60]!r} more than once.")
    return labels


@extend_schema_field(LABELS_SCHEMA)
class LabelsField(serializers.Field):
    """A list of labels, or a dict of named label groups."""

    def to_internal_value(self, data: Any) -> list[LabelGroup]:
        if isinstance(data, list):
            return [LabelGroup(None, _label_list(data, "labels", settings.CLASSIFY_MAX_LABELS))]
        if not isinstance(data, dict):
            raise serializers.ValidationError(
                "Must be a list of labels or an object of label groups: "
                '["sports", "cooking"] or {"topic": ["sports", "cooking"]}.'
            )
        if not data:
            raise serializers.ValidationError("labels has no groups.", code=ErrorCode.INPUT_EMPTY)
        if len(data) > settings.CLASSIFY_MAX_LABEL_GROUPS:
            raise _too_many("label groups", len(data), settings.CLASSIFY_MAX_LABEL_GROUPS)
        groups = []
        for name, labels in data.items():
            where = f"labels[{name[:40]!r}]"
            limit = settings.CLASSIFY_MAX_LABELS_PER_GROUP
            groups.append(LabelGroup(name, _label_list(labels, where, limit)))
        return groups

    def to_representation(self, value: Any) -> Any:
        return value


def _training_example(item: Any, where: str) -> TrainingExample:
    if not isinstance(item, dict) or "label" not in item:
        raise serializers.ValidationError(f'{where} must be {{"text": ..., "label": ...}}.')
    if "text" not in item and "image" not in item:
        raise serializers.ValidationError(f'{where} needs a "text" or an "image".')
    label = _label(item["label"], f"{where}.label")
    return TrainingExample(item=_input_item(item, where), label=label)


@extend_schema_field(TRAINING_INPUT_SCHEMA)
class TrainingInputField(serializers.Field):
    """One labelled example or a list of them."""

    def to_internal_value(self, data: Any) -> list[TrainingExample]:
        if isinstance(data, dict):
            return [_training_example(data, "input")]
        if not isinstance(data, list):
            raise serializers.ValidationError('Must be {"text": ..., "label": ...} or a list.')
        if not data:
            raise serializers.ValidationError(
                "The input list is empty.", code=ErrorCode.INPUT_EMPTY
            )
        if len(data) > settings.TRAIN_MAX_EXAMPLES:
            raise _too_many("training examples", len(data), settings.TRAIN_MAX_EXAMPLES)
        return [_training_example(item, f"input[{index}]") for index, item in enumerate(data)]

    def to_representation(self, value: Any) -> Any:
        return value


@extend_schema_field({"type": "integer", "minimum": 1, "maximum": MAX_ITERS})
class NumItersField(serializers.Field):
    default_error_messages = {"invalid": "Must be a positive integer."}

    def to_internal_value(self, data: Any) -> int:
        if not isinstance(data, int) or isinstance(data, bool) or data <= 0:
            self.fail("invalid")
        if data > settings.TRAIN_MAX_ITERS:
            raise serializers.ValidationError(
                f"num_iters is at most {settings.TRAIN_MAX_ITERS}.",
                code=ErrorCode.INPUT_VALIDATION_ERROR,
            )
        return int(data)

    def to_representation(self, value: Any) -> Any:
        return value


class ClassifyRequestSerializer(serializers.Serializer):
    """The body of POST /v1/classify: zero-shot with `labels`, few-shot with `classifier_id`."""

    model = StrictCharField(required=False, max_length=200)
    input = ClassifyInputField()
    labels = LabelsField(required=False)
    classifier_id = StrictCharField(required=False, max_length=MAX_ID_CHARS)
    truncate = StrictBooleanField(required=False)

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if ("labels" in attrs) == ("classifier_id" in attrs):
            raise serializers.ValidationError(
                {
                    "labels": "Send labels (zero-shot) or a classifier_id (few-shot), "
                    "exactly one of them."
                }
            )
        return attrs

    def to_request(self) -> ClassifyRequest:
        data = self.validated_data
        return ClassifyRequest(
            inputs=data["input"],
            model=data.get("model") or None,
            groups=data.get("labels"),
            classifier_id=data.get("classifier_id"),
            truncate=bool(data.get("truncate")),
        )


class TrainRequestSerializer(serializers.Serializer):
    """The body of POST /v1/train: a new classifier on `model`, or an update of `classifier_id`."""

    model = StrictCharField(required=False, max_length=200)
    classifier_id = StrictCharField(required=False, max_length=MAX_ID_CHARS)
    input = TrainingInputField()
    access = serializers.ChoiceField(choices=["private", "public"], required=False)
    num_iters = NumItersField(required=False)
    truncate = StrictBooleanField(required=False)

    def to_request(self) -> TrainRequest:
        data = self.validated_data
        return TrainRequest(
            examples=data["input"],
            model=data.get("model") or None,
            classifier_id=data.get("classifier_id"),
            access=data.get("access"),
            num_iters=data.get("num_iters") or settings.TRAIN_DEFAULT_ITERS,
            truncate=bool(data.get("truncate")),
        )

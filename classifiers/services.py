"""Zero-shot and few-shot classification as metered operations, and classifier writes.

Every embedding here goes through the embeddings path (`inference.services`): the same model
resolution, task prefix, tokenizer, token limits, image sizing and backend, so a classify or
train request is charged exactly the tokens an embeddings request of the same texts would be.

- Zero-shot (`labels`): the inputs and every label are embedded; each input's scores are a
  softmax of its cosine similarities to the labels of a group, divided by
  CLASSIFY_TEMPERATURE. Charged: the inputs' tokens plus the labels' tokens.
- Few-shot (`classifier_id`): the inputs are embedded and scored by the classifier's softmax
  regression. Charged: the inputs' tokens.
- Training: the examples are embedded and a softmax regression is fitted on them (with the
  classifier's earlier examples, on an update). Charged as Jina charges it: the examples'
  tokens times num_iters.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np
from django.conf import settings
from django.db import transaction
from django.db.models import F
from django.utils import timezone

from classifiers.logistic import SoftmaxRegression, softmax, softmax_regression_fit, unit_rows
from classifiers.models import Classifier
from classifiers.protocol import ClassifyInput, ClassifyRequest, LabelGroup, TrainRequest
from classifiers.selectors import classifier_get_owned, classifier_get_usable
from embeddings_site.deadlines import current_deadline
from embeddings_site.errors import ApiError, ErrorCode
from inference.models import EmbeddingModel
from inference.protocol import EmbeddingRequest, TextInput
from inference.services import (
    CountedRequest,
    embedding_model_resolve,
    embedding_model_shed,
    embedding_request_count,
    embeddings_vectors,
)
from metering.lifecycle import Cost, MeteredWork, metered_run

_INPUT_INDEX = re.compile(r"input\[(\d+)\]")


def _not_found(classifier_id: str) -> ApiError:
    return ApiError(
        ErrorCode.RESOURCE_NOT_FOUND,
        f"No classifier {classifier_id[:100]!r}.",
        param="classifier_id",
    )


def _task(model: EmbeddingModel) -> str | None:
    """Jina's `classification` task where the model has one, else the model's default."""
    return "classification" if "classification" in model.tasks else None


def _count(
    model: EmbeddingModel, inputs: list[ClassifyInput], *, truncate: bool = False
) -> CountedRequest:
    request = EmbeddingRequest(
        inputs=list(inputs), model=model.name, task=_task(model), truncate=truncate
    )
    return embedding_request_count(request=request)


def _unit_vectors(counted: CountedRequest) -> np.ndarray:
    return unit_rows(np.asarray(embeddings_vectors(counted=counted), dtype=np.float32))


def _model_for(classifier: Classifier, requested: str | None) -> EmbeddingModel:
    """The classifier's model, still registered with the dimensions it was trained on."""
    if requested and requested != classifier.model:
        raise ApiError(
            ErrorCode.INPUT_VALIDATION_ERROR,
            f"Classifier {classifier.id} works on {classifier.model}, not {requested[:100]}; "
            "omit model, or send that one.",
            param="model",
        )
    model = embedding_model_resolve(name=classifier.model)
    if model.dimensions != classifier.dimensions:
        raise ApiError(
            ErrorCode.RESOURCE_CONFLICT,
            f"{model.name} now gives {model.dimensions}-dimensional embeddings; classifier "
            f"{classifier.id} was trained on {classifier.dimensions}. Train a new one.",
            param="classifier_id",
        )
    return model


def _label_path(groups: list[LabelGroup], flat_index: int) -> str:
    for group in groups:
        if flat_index < len(group.labels):
            return (
                f"labels[{group.name!r}][{flat_index}]"
                if group.name is not None
                else f"labels[{flat_index}]"
            )
        flat_index -= len(group.labels)
    return "labels"


def _count_labels(model: EmbeddingModel, groups: list[LabelGroup]) -> CountedRequest:
    """The labels, counted as texts; a label's error names the label, not an input."""
    labels: list[ClassifyInput] = [TextInput(label) for group in groups for label in group.labels]
    try:
        return _count(model, labels)
    except ApiError as exc:
        if exc.code not in (ErrorCode.INPUT_TOKEN_LIMIT_EXCEEDED, ErrorCode.INPUT_EMPTY):
            raise
        match = _INPUT_INDEX.search(exc.message)
        where = _label_path(groups, int(match.group(1))) if match else "A label"
        reason = (
            f"has more tokens than {model.name}'s limit of {model.max_tokens}"
            if exc.code == ErrorCode.INPUT_TOKEN_LIMIT_EXCEEDED
            else "has no tokens to embed"
        )
        raise ApiError(exc.code, f"{where} {reason}; shorten it.", param="labels") from exc


def _scores(probabilities: np.ndarray, labels: list[str]) -> list[dict[str, Any]]:
    return [
        {"label": label, "score": float(score)}
        for label, score in zip(labels, probabilities, strict=True)
    ]


def _prediction(index: int, by_group: list[tuple[LabelGroup, np.ndarray]]) -> dict[str, Any]:
    """Jina's ClassificationPrediction: a plain list answers plain values, groups answer dicts."""
    results = {}
    for group, probabilities in by_group:
        best = int(np.argmax(probabilities))
        results[group.name] = (
            group.labels[best],
            float(probabilities[best]),
            _scores(probabilities, group.labels),
        )
    if None in results:
        prediction, score, predictions = results[None]
        return {
            "object": "classification",
            "index": index,
            "prediction": prediction,
            "score": score,
            "predictions": predictions,
        }
    return {
        "object": "classification",
        "index": index,
        "prediction": {name: value[0] for name, value in results.items()},
        "score": {name: value[1] for name, value in results.items()},
        "predictions": {name: value[2] for name, value in results.items()},
    }


class ClassifyOperation:
    """POST /v1/classify as a metered operation (see `metering.lifecycle`)."""

    def __init__(self, request: ClassifyRequest, *, user_id: int) -> None:
        self.request = request
        self.user_id = user_id
        self.model: EmbeddingModel | None = None
        self.classifier: Classifier | None = None
        self.inputs: CountedRequest | None = None
        self.labels: CountedRequest | None = None

    def model_name(self) -> str:
        classifier_id = self.request.classifier_id
        if classifier_id is not None:
            self.classifier = classifier_get_usable(
                user_id=self.user_id, classifier_id=classifier_id
            )
            if self.classifier is None:
                raise _not_found(classifier_id)
            self.model = _model_for(self.classifier, self.request.model)
        else:
            self.model = embedding_model_resolve(name=self.request.model)
        return self.model.name

    def shed(self) -> None:
        if self.model is not None:
            embedding_model_shed(model=self.model)

    def min_tokens(self) -> int:
        labels = sum(len(group.labels) for group in self.request.groups or [])
        return len(self.request.inputs) + labels

    def count_is_cheap(self) -> bool:
        """Counting embeds every label too: after admission."""
        return False

    def count(self) -> Cost:
        if self.model is None:
            raise RuntimeError("count() before model_name()")
        self.inputs = _count(self.model, self.request.inputs, truncate=self.request.truncate)
        text, images = self.inputs.text_tokens, self.inputs.image_tokens
        if self.request.groups is not None:
            self.labels = _count_labels(self.model, self.request.groups)
            text += self.labels.text_tokens
        return Cost(text_tokens=text, image_tokens=images)

    def run(self) -> dict[str, Any]:
        if self.inputs is None:
            raise RuntimeError("run() before count()")
        x = _unit_vectors(self.inputs)
        by_group: list[tuple[LabelGroup, np.ndarray]] = []
        if self.classifier is not None:
            group = LabelGroup(None, list(self.classifier.labels))
            probabilities = self.classifier.regression.probabilities(x)
            by_group.append((group, probabilities))
            classifier_mark_used(classifier=self.classifier)
        elif self.labels is not None and self.request.groups is not None:
            label_vectors = _unit_vectors(self.labels)
            start = 0
            for group in self.request.groups:
                vectors = label_vectors[start : start + len(group.labels)]
                start += len(group.labels)
                by_group.append((group, softmax((x @ vectors.T) / settings.CLASSIFY_TEMPERATURE)))
        tokens = self.inputs.total_tokens + (self.labels.total_tokens if self.labels else 0)
        return {
            "data": [
                _prediction(index, [(group, p[index]) for group, p in by_group])
                for index in range(len(self.request.inputs))
            ],
            "usage": {"total_tokens": tokens},
        }


def classify_create(
    *, work: MeteredWork[dict[str, Any]], request: ClassifyRequest, user_id: int
) -> dict[str, Any]:
    """Admit, count, debit, embed, score, settle: the response body of one classify request."""
    return metered_run(work=work, operation=ClassifyOperation(request, user_id=user_id))


def classifier_mark_used(*, classifier: Classifier) -> None:
    """Count one more classify request served by this classifier."""
    Classifier.objects.filter(pk=classifier.pk).update(
        used_number=F("used_number") + 1, used_at=timezone.now()
    )


class TrainOperation:
    """POST /v1/train as a metered operation: embed the examples, then fit and store."""

    def __init__(self, request: TrainRequest, *, owner_id: int) -> None:
        self.request = request
        self.owner_id = owner_id
        self.model: EmbeddingModel | None = None
        self.classifier: Classifier | None = None
        self.counted: CountedRequest | None = None

    def model_name(self) -> str:
        request = self.request
        if request.classifier_id is not None:
            self.classifier = classifier_get_owned(
                owner_id=self.owner_id, classifier_id=request.classifier_id
            )
            if self.classifier is None:
                raise _not_found(request.classifier_id)
            self.model = _model_for(self.classifier, request.model)
            _check_capacity(self.classifier, request)
        else:
            self.model = embedding_model_resolve(name=request.model)
            _check_capacity(None, request)
        return self.model.name

    def shed(self) -> None:
        if self.model is not None:
            embedding_model_shed(model=self.model)

    def min_tokens(self) -> int:
        return len(self.request.examples) * self.request.num_iters

    def count_is_cheap(self) -> bool:
        """Counting tokenizes every example: after admission."""
        return False

    def count(self) -> Cost:
        if self.model is None:
            raise RuntimeError("count() before model_name()")
        items = [example.item for example in self.request.examples]
        self.counted = _count(self.model, items, truncate=self.request.truncate)
        iterations = self.request.num_iters
        return Cost(
            text_tokens=self.counted.text_tokens * iterations,
            image_tokens=self.counted.image_tokens * iterations,
        )

    def run(self) -> dict[str, Any]:
        if self.counted is None or self.model is None:
            raise RuntimeError("run() before count()")
        vectors = _unit_vectors(self.counted)
        classifier = classifier_train(
            owner_id=self.owner_id,
            model=self.model,
            classifier=self.classifier,
            request=self.request,
            vectors=vectors,
        )
        return {
            "classifier_id": str(classifier.id),
            "num_samples": len(self.request.examples),
            "usage": {"total_tokens": self.counted.total_tokens * self.request.num_iters},
        }


def classifier_train_create(
    *, work: MeteredWork[dict[str, Any]], request: TrainRequest, owner_id: int
) -> dict[str, Any]:
    """Admit, count, debit, embed, fit, store, settle: the response body of one train request."""
    return metered_run(work=work, operation=TrainOperation(request, owner_id=owner_id))


def _check_capacity(classifier: Classifier | None, request: TrainRequest) -> None:
    """Refuse, before anything is charged, what the classifier could not hold."""
    labels = {example.label for example in request.examples}
    if classifier is None and len(labels) < 2:
        raise ApiError(
            ErrorCode.INPUT_VALIDATION_ERROR,
            "A new classifier needs examples of at least two distinct labels.",
            param="input",
        )
    known = set(classifier.labels) if classifier is not None else set()
    if len(known | labels) > settings.CLASSIFIER_MAX_LABELS:
        raise ApiError(
            ErrorCode.INPUT_TOO_MANY_ITEMS,
            f"A classifier has at most {settings.CLASSIFIER_MAX_LABELS} labels; this would "
            f"give it {len(known | labels)}.",
            param="input",
        )
    held = classifier.num_samples if classifier is not None else 0
    if held + len(request.examples) > settings.CLASSIFIER_MAX_SAMPLES:
        raise ApiError(
            ErrorCode.INPUT_TOO_MANY_ITEMS,
            f"A classifier holds at most {settings.CLASSIFIER_MAX_SAMPLES} examples; it has "
            f"{held}, and this request adds {len(request.examples)}. Train a new classifier.",
            param="input",
        )


def _store(classifier: Classifier, fitted: SoftmaxRegression, x: np.ndarray, y: np.ndarray) -> None:
    classifier.weights = fitted.weights.astype("<f4").tobytes()
    classifier.bias = fitted.bias.astype("<f4").tobytes()
    classifier.examples = x.astype("<f4").tobytes()
    classifier.example_labels = y.astype("<i4").tobytes()
    classifier.num_samples = len(y)


@transaction.atomic
def classifier_train(
    *,
    owner_id: int,
    model: EmbeddingModel,
    classifier: Classifier | None,
    request: TrainRequest,
    vectors: np.ndarray,
) -> Classifier:
    """Fit a new classifier on the examples' unit vectors, or refit one with its earlier
    examples and these, from its weights (labels it has not seen are added)."""
    new_labels = list(dict.fromkeys(example.label for example in request.examples))
    if classifier is None:
        target = Classifier(
            owner_id=owner_id,
            model=model.name,
            dimensions=model.dimensions,
            access=request.access or Classifier.Access.PRIVATE,
        )
        labels = new_labels
        held_x, held_y = np.zeros((0, model.dimensions), np.float32), np.zeros(0, np.int32)
        start = None
    else:
        # Concurrent updates of one classifier apply one after the other.
        target = Classifier.objects.select_for_update().get(pk=classifier.pk)
        _check_capacity(target, request)
        labels = list(target.labels)
        labels += [label for label in new_labels if label not in labels]
        held_x, held_y = target.training_set
        start = target.regression
        target.updated_number += 1
        if request.access:
            target.access = request.access
    index = {label: position for position, label in enumerate(labels)}
    y = np.concatenate(
        [held_y, np.array([index[example.label] for example in request.examples], np.int32)]
    )
    x = np.vstack([held_x, vectors])
    fitted = softmax_regression_fit(
        x=x, y=y, classes=len(labels), iterations=request.num_iters, start=start
    )
    deadline = current_deadline()
    if deadline is not None and deadline.expired:  # answered 504 and refunded: keep nothing
        raise ApiError(
            ErrorCode.SERVICE_TIMEOUT,
            "Training passed the request's deadline and was cancelled; it was not charged.",
        )
    target.labels = labels
    _store(target, fitted, x, y)
    target.save()
    return target


@transaction.atomic
def classifier_delete(*, owner_id: int, classifier_id: str) -> bool:
    """Delete the owner's classifier; False when they have none with this id."""
    classifier = classifier_get_owned(owner_id=owner_id, classifier_id=classifier_id)
    if classifier is None:
        return False
    classifier.delete()
    return True

"""Bad classify and train requests: a coded 400 or 404, never a 500, and nothing charged."""

from __future__ import annotations

import pytest

from billing.models import UsageRecord
from tests.classifiers.topics import training_items
from tests.jina_spec import assert_error_envelope

LABELS = ["sports", "cooking"]
PNG = "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="


def assert_refused(call, api_key, path: str, body, status: int, code: str, **kwargs):
    api_key.refresh_from_db()
    before = api_key.balance
    response = call("post", path, body, **kwargs)
    assert response.status_code == status, response.content
    assert_error_envelope(response.json(), code)
    api_key.refresh_from_db()
    assert api_key.balance == before
    # Refused, and recorded as a refusal of this endpoint with nothing charged.
    row = UsageRecord.objects.filter(api_key=api_key).latest("created_at")
    assert (row.endpoint, row.status, row.http_status, row.error_code, row.charged_tokens) == (
        path.removeprefix("/v1/"),
        UsageRecord.Status.FAILED,
        status,
        code,
        0,
    )
    return response.json()


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"input": "x", "labels": "sports"}, "INPUT_VALIDATION_ERROR"),
        ({"input": "x", "labels": []}, "INPUT_EMPTY"),
        ({"input": "x", "labels": {}}, "INPUT_EMPTY"),
        ({"input": "x", "labels": {"topic": []}}, "INPUT_EMPTY"),
        ({"input": "x", "labels": {"topic": "sports"}}, "INPUT_VALIDATION_ERROR"),
        ({"input": "x", "labels": [1, 2]}, "INPUT_VALIDATION_ERROR"),
        ({"input": "x", "labels": ["sports", "sports"]}, "INPUT_VALIDATION_ERROR"),
        ({"input": "x", "labels": ["sports", " \u200b "]}, "INPUT_EMPTY"),
        ({"input": "x", "labels": ["s" * 257]}, "INPUT_VALIDATION_ERROR"),
        ({"input": "x", "labels": [f"label {i}" for i in range(513)]}, "INPUT_TOO_MANY_ITEMS"),
        ({"input": "x", "labels": {f"g{i}": LABELS for i in range(9)}}, "INPUT_TOO_MANY_ITEMS"),
        ({"input": "x", "labels": {"g": [f"l{i}" for i in range(65)]}}, "INPUT_TOO_MANY_ITEMS"),
        ({"input": "x", "labels": None}, "INPUT_VALIDATION_ERROR"),
        ({"input": "x"}, "INPUT_VALIDATION_ERROR"),
        ({"input": "x", "labels": LABELS, "classifier_id": "abc"}, "INPUT_VALIDATION_ERROR"),
        ({"input": [], "labels": LABELS}, "INPUT_EMPTY"),
        ({"input": 5, "labels": LABELS}, "INPUT_VALIDATION_ERROR"),
        ({"input": [[1, 2]], "labels": LABELS}, "INPUT_VALIDATION_ERROR"),
        ({"input": ["x"] * 513, "labels": LABELS}, "INPUT_TOO_MANY_ITEMS"),
        ({"input": [{"image": PNG}], "labels": LABELS}, "INPUT_UNSUPPORTED_MODALITY"),
        ({"input": "x", "labels": LABELS, "model": "no-such-model"}, "INPUT_MODEL_NOT_FOUND"),
        ({"input": "word " * 300, "labels": LABELS}, "INPUT_TOKEN_LIMIT_EXCEEDED"),
        ([{"input": "x", "labels": LABELS}], "INPUT_VALIDATION_ERROR"),
    ],
)
def test_bad_classify_requests(call, api_key, body, code) -> None:
    assert_refused(call, api_key, "/v1/classify", body, 400, code)


def test_a_label_over_the_models_token_limit_is_named(call, api_key, settings) -> None:
    settings.CLASSIFY_MAX_LABEL_CHARS = 10_000
    body = {"input": "x", "labels": {"topic": ["sports", "word " * 300]}}
    error = assert_refused(call, api_key, "/v1/classify", body, 400, "INPUT_TOKEN_LIMIT_EXCEEDED")
    assert error["error"]["param"] == "labels"
    assert "labels['topic'][1]" in error["detail"]


@pytest.mark.parametrize("classifier_id", ["00000000-0000-4000-8000-000000000000", "not-a-uuid"])
def test_an_unknown_classifier_is_404(call, api_key, classifier_id) -> None:
    body = {"input": "x", "classifier_id": classifier_id}
    assert_refused(call, api_key, "/v1/classify", body, 404, "RESOURCE_NOT_FOUND")
    body = {"classifier_id": classifier_id, "input": training_items()[:2]}
    assert_refused(call, api_key, "/v1/train", body, 404, "RESOURCE_NOT_FOUND")
    for method in ("get", "delete"):
        response = call(method, f"/v1/classifiers/{classifier_id}")
        assert response.status_code == 404
        assert_error_envelope(response.json(), "RESOURCE_NOT_FOUND")


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (
            {"input": [{"text": "a", "label": "x"}, {"text": "b", "label": "x"}]},
            "INPUT_VALIDATION_ERROR",
        ),
        ({"input": [{"text": "a"}]}, "INPUT_VALIDATION_ERROR"),
        ({"input": [{"label": "x"}]}, "INPUT_VALIDATION_ERROR"),
        ({"input": [{"text": "a", "label": ""}]}, "INPUT_EMPTY"),
        ({"input": [{"text": "", "label": "x"}]}, "INPUT_EMPTY"),
        ({"input": "some text"}, "INPUT_VALIDATION_ERROR"),
        ({"input": []}, "INPUT_EMPTY"),
        ({"input": training_items()[:2], "num_iters": 0}, "INPUT_VALIDATION_ERROR"),
        ({"input": training_items()[:2], "num_iters": 101}, "INPUT_VALIDATION_ERROR"),
        ({"input": training_items()[:2], "num_iters": "5"}, "INPUT_VALIDATION_ERROR"),
        ({"input": training_items()[:2], "num_iters": True}, "INPUT_VALIDATION_ERROR"),
        ({"input": training_items()[:2], "num_iters": 2.5}, "INPUT_VALIDATION_ERROR"),
        ({"input": training_items()[:2], "access": "secret"}, "INPUT_VALIDATION_ERROR"),
        ({"input": training_items()[:2], "model": "no-such-model"}, "INPUT_MODEL_NOT_FOUND"),
        (
            {"input": [{"text": "x", "label": f"l{i % 2}"} for i in range(513)]},
            "INPUT_TOO_MANY_ITEMS",
        ),
        (
            {"input": [{"image": PNG, "label": "a"}, {"text": "b", "label": "c"}]},
            "INPUT_UNSUPPORTED_MODALITY",
        ),
    ],
)
def test_bad_train_requests(call, api_key, body, code) -> None:
    assert_refused(call, api_key, "/v1/train", body, 400, code)


def test_too_many_examples_by_setting(call, api_key, settings) -> None:
    settings.TRAIN_MAX_EXAMPLES = 4
    body = {"input": training_items()[:5]}
    assert_refused(call, api_key, "/v1/train", body, 400, "INPUT_TOO_MANY_ITEMS")


@pytest.mark.slow
def test_a_classifier_holds_a_bounded_number_of_examples(call, api_key, settings) -> None:
    settings.CLASSIFIER_MAX_SAMPLES = 8
    response = call("post", "/v1/train", {"input": training_items()[:6], "num_iters": 1})
    assert response.status_code == 200, response.content
    body = {"classifier_id": response.json()["classifier_id"], "input": training_items()[6:9]}
    error = assert_refused(call, api_key, "/v1/train", body, 400, "INPUT_TOO_MANY_ITEMS")
    assert "at most 8 examples" in error["detail"]


@pytest.mark.slow
def test_another_model_than_the_classifiers_is_refused(call, api_key) -> None:
    created = call("post", "/v1/train", {"input": training_items()[:4], "num_iters": 1}).json()
    body = {"classifier_id": created["classifier_id"], "input": "x", "model": "other-model"}
    assert_refused(call, api_key, "/v1/classify", body, 400, "INPUT_VALIDATION_ERROR")


@pytest.mark.parametrize("path", ["/v1/classify", "/v1/train", "/v1/classifiers"])
def test_no_key_is_401(client, path) -> None:
    response = client.post(path, data="{}", content_type="application/json")
    assert response.status_code == 401
    assert_error_envelope(response.json(), "AUTH_MISSING_API_KEY")

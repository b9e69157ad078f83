"""POST /v1/classify with labels: Jina's response shape, the right labels, exact charges."""

from __future__ import annotations

import pytest

from billing.models import UsageRecord
from tests.jina_spec import assert_valid

LABELS = ["sports", "cooking", "astronomy"]
INPUTS = [
    "The striker scored a goal in the last minute of the match.",
    {"text": "Whisk the eggs with sugar, then fold in the flour."},
    "The telescope photographed a distant galaxy full of stars.",
]


def embedding_tokens(call, texts: list[str]) -> int:
    """What /v1/embeddings charges for the same texts."""
    response = call("post", "/v1/embeddings", {"input": texts})
    assert response.status_code == 200, response.content
    return response.json()["usage"]["total_tokens"]


@pytest.mark.slow
def test_zero_shot_picks_the_obvious_label_and_charges_inputs_plus_labels(call, api_key) -> None:
    texts = [item if isinstance(item, str) else item["text"] for item in INPUTS]
    expected_tokens = embedding_tokens(call, texts + LABELS)
    api_key.refresh_from_db()
    before = api_key.balance

    response = call(
        "post", "/v1/classify", {"model": "all-MiniLM-L6-v2", "input": INPUTS, "labels": LABELS}
    )

    assert response.status_code == 200, response.content
    body = response.json()
    assert_valid(body, "ClassificationResponse")
    assert [item["prediction"] for item in body["data"]] == LABELS
    for index, item in enumerate(body["data"]):
        assert item["object"] == "classification"
        assert item["index"] == index
        assert [p["label"] for p in item["predictions"]] == LABELS
        assert sum(p["score"] for p in item["predictions"]) == pytest.approx(1.0, abs=1e-5)
        assert item["score"] == max(p["score"] for p in item["predictions"])
        assert item["score"] > 0.5
    assert body["usage"] == {"total_tokens": expected_tokens}
    api_key.refresh_from_db()
    assert before - api_key.balance == expected_tokens
    row = UsageRecord.objects.get(api_key=api_key, endpoint="classify")
    assert row.status == UsageRecord.Status.SUCCEEDED
    assert row.charged_tokens == expected_tokens


@pytest.mark.slow
def test_label_groups_are_scored_each_on_its_own(call) -> None:
    labels = {"topic": LABELS, "mood": ["happy and joyful", "sad and gloomy"]}
    response = call(
        "post",
        "/v1/classify",
        {"input": ["We won the championship, what a wonderful day!"], "labels": labels},
    )

    assert response.status_code == 200, response.content
    body = response.json()
    assert_valid(body, "ClassificationResponse")
    (item,) = body["data"]
    assert item["prediction"] == {"topic": "sports", "mood": "happy and joyful"}
    assert set(item["score"]) == {"topic", "mood"}
    for group, group_labels in labels.items():
        scores = item["predictions"][group]
        assert [p["label"] for p in scores] == group_labels
        assert sum(p["score"] for p in scores) == pytest.approx(1.0, abs=1e-5)
        assert item["score"][group] == max(p["score"] for p in scores)


@pytest.mark.slow
def test_one_string_input_and_the_default_model(call) -> None:
    response = call("post", "/v1/classify/", {"input": "Bake the bread", "labels": LABELS})

    assert response.status_code == 200, response.content
    (item,) = response.json()["data"]
    assert item["prediction"] == "cooking"


@pytest.mark.slow
def test_truncate_cuts_a_long_input_to_the_models_limit(call) -> None:
    long_text = "the match ended in a draw " * 100
    refused = call("post", "/v1/classify", {"input": long_text, "labels": LABELS})
    assert refused.status_code == 400
    assert refused.json()["code"] == "INPUT_TOKEN_LIMIT_EXCEEDED"

    response = call(
        "post", "/v1/classify", {"input": long_text, "labels": LABELS, "truncate": True}
    )

    assert response.status_code == 200, response.content
    body = response.json()
    assert body["data"][0]["prediction"] == "sports"
    assert body["usage"]["total_tokens"] == 256 + embedding_tokens(call, LABELS)

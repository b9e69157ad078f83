"""Existing clients work unchanged when pointed at the server: the OpenAI SDK, and the Jina
integrations of LangChain, LlamaIndex and Haystack, each as published on PyPI, over real HTTP."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import numpy as np
import pytest

from tests.factories import ApiKeyFactory, EmbeddingModelFactory

if TYPE_CHECKING:
    import openai

os.environ.setdefault("HAYSTACK_TELEMETRY_ENABLED", "False")
os.environ.setdefault("LANGCHAIN_TRACING_V2", "false")

TEXTS = ["The cat sits on the mat.", "A dog plays in the park.", "Quantum computers use qubits."]
MODEL = "all-MiniLM-L6-v2"

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def server(live_server):
    """The live test server with the default model and a key; yields (base URL, key)."""
    EmbeddingModelFactory()
    key = ApiKeyFactory().plaintext
    return live_server.url, key


@pytest.fixture
def oai(server) -> openai.OpenAI:
    import openai  # here: collecting the other layers need not load the SDK

    url, key = server
    return openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0)


def reference_vectors(oai: openai.OpenAI, texts: list[str]) -> np.ndarray:
    response = oai.embeddings.create(model=MODEL, input=texts, encoding_format="float")
    return np.array([d.embedding for d in response.data], dtype=np.float32)


def test_openai_sdk_base64_default_equals_float(oai) -> None:
    default = oai.embeddings.create(model=MODEL, input=TEXTS)  # the SDK asks for base64
    floats = oai.embeddings.create(model=MODEL, input=TEXTS, encoding_format="float")
    a = np.array([d.embedding for d in default.data], dtype=np.float32)
    b = np.array([d.embedding for d in floats.data], dtype=np.float32)
    assert a.shape == (3, 384)
    np.testing.assert_array_equal(a, b)
    assert default.usage.prompt_tokens == floats.usage.prompt_tokens == default.usage.total_tokens
    assert default.model == MODEL
    assert [d.index for d in default.data] == [0, 1, 2]


def test_openai_sdk_usage_is_the_tokenizer_count(oai, reference_model) -> None:
    response = oai.embeddings.create(model=MODEL, input=TEXTS)
    expected = int(reference_model.tokenize(TEXTS)["attention_mask"].sum())
    assert response.usage.prompt_tokens == expected
    assert response.usage.total_tokens == expected


def test_openai_sdk_dimensions(oai) -> None:
    full = reference_vectors(oai, TEXTS)
    response = oai.embeddings.create(model=MODEL, input=TEXTS, dimensions=128)
    short = np.array([d.embedding for d in response.data], dtype=np.float32)
    assert short.shape == (3, 128)
    expected = full[:, :128] / np.linalg.norm(full[:, :128], axis=1, keepdims=True)
    np.testing.assert_allclose(short, expected, atol=1e-5)


def test_openai_sdk_token_array_input(oai) -> None:
    response = oai.embeddings.create(model=MODEL, input=[[101, 7592, 2088, 102]])
    assert response.usage.prompt_tokens == 4
    text = reference_vectors(oai, ["hello world"])
    np.testing.assert_allclose(
        np.array(response.data[0].embedding, dtype=np.float32), text[0], atol=1e-6
    )


def test_openai_sdk_reads_the_error_object(server) -> None:
    import openai  # here: collecting the other layers need not load the SDK

    url, key = server
    bad_key = openai.OpenAI(base_url=f"{url}/v1", api_key="jina_wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as auth:
        bad_key.embeddings.create(model=MODEL, input="hi")
    assert auth.value.code == "AUTH_INVALID_API_KEY"
    assert auth.value.request_id
    client = openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0)
    with pytest.raises(openai.BadRequestError) as bad:
        client.embeddings.create(model="text-embedding-3-large", input="hi")
    assert bad.value.code == "INPUT_MODEL_NOT_FOUND"
    assert "all-MiniLM-L6-v2" in bad.value.message
    assert bad.value.type == "invalid_request_error"


def test_openai_sdk_lists_models(oai) -> None:
    models = oai.models.list()
    assert [m.id for m in models.data] == [MODEL]
    assert oai.models.retrieve(MODEL).id == MODEL


def test_langchain_jina_embeddings(server, oai, monkeypatch) -> None:
    from langchain_community.embeddings import jina

    url, key = server
    monkeypatch.setattr(jina, "JINA_API_URL", f"{url}/v1/embeddings")  # the class hard-codes it
    embeddings = jina.JinaEmbeddings(jina_api_key=key, model_name=MODEL)
    documents = np.array(embeddings.embed_documents(TEXTS), dtype=np.float32)
    query = np.array(embeddings.embed_query(TEXTS[0]), dtype=np.float32)
    reference = reference_vectors(oai, TEXTS)
    np.testing.assert_allclose(documents, reference, atol=1e-6)
    np.testing.assert_allclose(query, reference[0], atol=1e-6)


def test_langchain_jina_error_surfaces_the_detail(server, monkeypatch) -> None:
    from langchain_community.embeddings import jina

    url, key = server
    monkeypatch.setattr(jina, "JINA_API_URL", f"{url}/v1/embeddings")
    embeddings = jina.JinaEmbeddings(jina_api_key=key, model_name="jina-embeddings-v2-base-en")
    with pytest.raises(RuntimeError, match="all-MiniLM-L6-v2"):
        embeddings.embed_documents(TEXTS)


def test_langchain_openai_embeddings(server, oai) -> None:
    from langchain_openai import OpenAIEmbeddings

    url, key = server
    # tiktoken ids would be another tokenizer's; strings are what this server should be sent.
    embeddings = OpenAIEmbeddings(
        model=MODEL, base_url=f"{url}/v1", api_key=key, check_embedding_ctx_length=False
    )
    documents = np.array(embeddings.embed_documents(TEXTS), dtype=np.float32)
    np.testing.assert_array_equal(documents, reference_vectors(oai, TEXTS))


@pytest.mark.parametrize("encoding", ["float", "ubinary", "binary"])
def test_llama_index_jina_embedding(server, oai, encoding) -> None:
    from llama_index.embeddings.jinaai import JinaEmbedding
    from llama_index.embeddings.jinaai.base import _JinaAPICaller

    url, key = server
    embedding = JinaEmbedding(
        api_key=key,
        model=MODEL,
        task="retrieval.passage",
        encoding_documents=encoding,
        encoding_queries=encoding,
    )
    # JinaEmbedding does not pass base_url on; the caller it wraps takes one.
    embedding._api = _JinaAPICaller(model=MODEL, api_key=key, base_url=f"{url}/v1")
    documents = np.array(embedding.get_text_embedding_batch(TEXTS), dtype=np.float32)
    reference = reference_vectors(oai, TEXTS)
    if encoding == "float":
        np.testing.assert_allclose(documents, reference, atol=1e-6)
    else:  # LlamaIndex unpacks the sign bits into a 0/1 vector
        np.testing.assert_array_equal(documents, (reference > 0).astype(np.float32))


def test_haystack_jina_embedders(server, oai) -> None:
    from haystack import Document
    from haystack.utils import Secret
    from haystack_integrations.components.embedders.jina import (
        JinaDocumentEmbedder,
        JinaTextEmbedder,
    )

    url, key = server
    reference = reference_vectors(oai, TEXTS)
    text_embedder = JinaTextEmbedder(
        api_key=Secret.from_token(key),
        model=MODEL,
        task="retrieval.query",
        base_url=f"{url}/v1/embeddings",
    )
    result = text_embedder.run(text=TEXTS[0])
    np.testing.assert_allclose(
        np.array(result["embedding"], dtype=np.float32), reference[0], atol=1e-6
    )
    assert result["meta"]["model"] == MODEL
    assert result["meta"]["usage"]["total_tokens"] > 0

    document_embedder = JinaDocumentEmbedder(
        api_key=Secret.from_token(key),
        model=MODEL,
        batch_size=2,
        progress_bar=False,
        dimensions=64,
        base_url=f"{url}/v1/embeddings",
    )
    documents = document_embedder.run(documents=[Document(content=t) for t in TEXTS])["documents"]
    assert [len(d.embedding) for d in documents] == [64, 64, 64]

"""The rerank operation: score documents against a query, run by the metering lifecycle.

Two ways to score, chosen by the registry entry:

- a **cross-encoder** (`kind = reranker`): the model reads each (query, document) pair as one
  sequence and gives one logit; the score is its sigmoid (sentence-transformers' CrossEncoder).
  Usage is the tokens of every pair, special tokens included.
- a **bi-encoder** (any embedding model): the query and each document are embedded through the
  embeddings path and the score is their cosine. Usage is the query's and the documents'
  tokens as embedded (each with its own special tokens).

Truncation follows `truncate`: off, a document that does not fit the model's window with the
query is refused with its index; on, it is cut to fit. A document limit (Cohere's
`max_tokens_per_doc`, Jina's `max_doc_length`) always cuts documents to that many tokens.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from django.conf import settings

from embeddings_site.errors import ApiError, ErrorCode
from inference.backends.base import Capability
from inference.backends.scoring import PairItem
from inference.models import EmbeddingModel
from inference.pair_tokens import DocumentTooLong, QueryTooLong
from inference.protocol import EmbeddingRequest, TextInput, TokenInput
from inference.selectors import embedding_model_get, embedding_model_list
from inference.services import (
    CountedRequest,
    backend_errors,
    embedding_model_shed,
    embedding_request_count,
    embeddings_vectors,
    model_runtime,
)
from metering.lifecycle import Cost, MeteredWork, metered_run

logger = logging.getLogger(__name__)

# Jina's task names: the query and the documents are embedded as what they are, on a model
# that has instructions for them.
QUERY_TASK = "retrieval.query"
DOCUMENT_TASK = "retrieval.passage"

CROSS_ENCODER = "cross-encoder"
BI_ENCODER = "bi-encoder"


@dataclass(frozen=True)
class RerankRequest:
    """One rerank request from either wire format (Jina's /v1/rerank, Cohere's /v2/rerank)."""

    query: str
    documents: list[str]
    model: str | None = None
    top_n: int | None = None
    return_documents: bool = True
    truncate: bool = False
    max_tokens_per_doc: int | None = None


@dataclass(frozen=True)
class RerankResult:
    """Every document's score, in input order, and the tokens the model read for them."""

    model: EmbeddingModel
    scores: list[float]
    total_tokens: int

    def ranked(self, top_n: int | None) -> list[tuple[int, float]]:
        """(index, score) by score, highest first (ties keep input order); at most top_n."""
        order = sorted(range(len(self.scores)), key=lambda i: -self.scores[i])
        return [(index, self.scores[index]) for index in order[: top_n or None]]


def rerank_method(model: EmbeddingModel) -> str:
    """How a model scores documents: its own cross-encoder head, or cosine of embeddings."""
    return CROSS_ENCODER if model.is_reranker else BI_ENCODER


def rerank_model_resolve(*, name: str | None) -> EmbeddingModel:
    """The registry entry a rerank request names (RERANK_DEFAULT_MODEL when it names none)."""
    wanted = name or settings.RERANK_DEFAULT_MODEL or settings.EMBEDDINGS_DEFAULT_MODEL
    model = embedding_model_get(name=wanted)
    if model is None:
        available = ", ".join(m.name for m in embedding_model_list()) or "none"
        raise ApiError(
            ErrorCode.INPUT_MODEL_NOT_FOUND,
            f"Model '{wanted}' not found. Available models: {available}.",
            param="model",
        )
    return model


# --- cross-encoder ---------------------------------------------------------------------------


def rerank_pairs_count(*, model: EmbeddingModel, request: RerankRequest) -> list[PairItem]:
    """The (query, document) pairs the cross-encoder will read, truncated as asked."""
    runtime = model_runtime(model)
    if runtime.pairs is None:
        raise ApiError(ErrorCode.SERVICE_UNAVAILABLE, f"{model.name} has no pair tokenizer.")
    try:
        return runtime.pairs.encode_pairs(
            request.query,
            request.documents,
            max_tokens=model.max_tokens,
            truncate=request.truncate,
            max_document_tokens=request.max_tokens_per_doc,
        )
    except QueryTooLong as exc:
        count = f"{exc.count}" if exc.exact else f"at least {exc.count}"
        raise ApiError(
            ErrorCode.INPUT_TOKEN_LIMIT_EXCEEDED,
            f"The query has {count} tokens with the pair's special tokens, which leaves no room "
            f"for a document in {model.name}'s limit of {exc.limit}. Shorten the query.",
            param="query",
        ) from exc
    except DocumentTooLong as exc:
        count = f"{exc.count}" if exc.exact else f"at least {exc.count}"
        raise ApiError(
            ErrorCode.INPUT_TOKEN_LIMIT_EXCEEDED,
            f"documents[{exc.index}] with the query makes a pair of {count} tokens, over "
            f"{model.name}'s limit of {exc.limit}. Shorten it, or send truncate: true.",
            param="documents",
        ) from exc


def rerank_pairs_score(*, model: EmbeddingModel, pairs: list[PairItem]) -> list[float]:
    """The cross-encoder's score of each pair."""
    backend = model_runtime(model).backend
    if not backend.can(Capability.SCORE_PAIRS):
        raise ApiError(
            ErrorCode.SERVICE_UNAVAILABLE, f"The backend of {model.name} cannot score pairs."
        )
    with backend_errors(model=model, param="documents"):
        scores = backend.score(pairs)
    return [float(score) for score in scores]


# --- bi-encoder ------------------------------------------------------------------------------


@dataclass(frozen=True)
class BiEncoderCount:
    query: CountedRequest
    documents: CountedRequest

    @property
    def cost(self) -> Cost:
        return Cost(
            text_tokens=self.query.text_tokens + self.documents.text_tokens,
            image_tokens=self.query.image_tokens + self.documents.image_tokens,
        )


def _task(model: EmbeddingModel, task: str) -> str | None:
    return task if task in (model.tasks or {}) else None


def rerank_embeddings_count(*, model: EmbeddingModel, request: RerankRequest) -> BiEncoderCount:
    """The query and the documents as the embeddings path counts them."""
    query = _embedding_count(
        EmbeddingRequest(
            inputs=[TextInput(request.query)], model=model.name, task=_task(model, QUERY_TASK)
        ),
        param="query",
    )
    document_task = _task(model, DOCUMENT_TASK)
    inputs: list[TextInput | TokenInput] = [TextInput(text) for text in request.documents]
    truncate = request.truncate
    cap = request.max_tokens_per_doc
    tokenizer = model_runtime(model).tokenizer
    if cap is not None and cap + tokenizer.special_tokens < model.max_tokens:
        # A document limit (of the document's own tokens, as for a cross-encoder) below the
        # model's: cut each (prefixed) document to it here, and let the embeddings path read
        # the ids as they are.
        prefix = str((model.tasks or {}).get(document_task or model.default_task or "", ""))
        ids = tokenizer.encode(
            [prefix + text for text in request.documents],
            max_tokens=cap + tokenizer.special_tokens,
            truncate=True,
        )
        inputs, document_task, truncate = [TokenInput(row) for row in ids], None, False
    documents = _embedding_count(
        EmbeddingRequest(
            inputs=list(inputs), model=model.name, task=document_task, truncate=truncate
        ),
        param="documents",
    )
    return BiEncoderCount(query=query, documents=documents)


def _embedding_count(request: EmbeddingRequest, *, param: str) -> CountedRequest:
    """embedding_request_count, its errors naming the rerank request's fields."""
    try:
        return embedding_request_count(request=request)
    except ApiError as exc:
        if exc.param != "input":
            raise
        if param == "query":
            message = exc.message.replace("input[0]", "the query").replace(
                ", or send truncate: true", ""
            )
        else:
            message = exc.message.replace("input[", "documents[")
        raise ApiError(exc.code, message, param=param, headers=exc.headers) from exc


def rerank_embeddings_score(*, count: BiEncoderCount) -> list[float]:
    """Cosine of the query's embedding with each document's."""
    query = _unit(embeddings_vectors(counted=count.query))[0]
    documents = _unit(embeddings_vectors(counted=count.documents))
    return [float(score) for score in documents @ query]


def _unit(vectors: np.ndarray) -> np.ndarray:
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)


# --- the operation ---------------------------------------------------------------------------


class RerankOperation:
    """POST /v1/rerank and /v2/rerank as a metered operation (see `metering.lifecycle`)."""

    def __init__(self, request: RerankRequest) -> None:
        self.request = request
        self.model: EmbeddingModel | None = None
        self.pairs: list[PairItem] | None = None
        self.embedded: BiEncoderCount | None = None

    def _model(self) -> EmbeddingModel:
        if self.model is None:
            raise RuntimeError("model_name() first")
        return self.model

    def model_name(self) -> str:
        self.model = rerank_model_resolve(name=self.request.model)
        return self.model.name

    def shed(self) -> None:
        embedding_model_shed(model=self._model())

    def min_tokens(self) -> int:
        # Every document costs at least one token and the query at least one more.
        return len(self.request.documents) + 1

    def count_is_cheap(self) -> bool:
        """Counting reads every document: after admission."""
        return False

    def count(self) -> Cost:
        model = self._model()
        if model.is_reranker:
            self.pairs = rerank_pairs_count(model=model, request=self.request)
            return Cost(text_tokens=sum(len(pair.token_ids) for pair in self.pairs))
        self.embedded = rerank_embeddings_count(model=model, request=self.request)
        return self.embedded.cost

    def run(self) -> RerankResult:
        model = self._model()
        if self.pairs is not None:
            scores = rerank_pairs_score(model=model, pairs=self.pairs)
            tokens = sum(len(pair.token_ids) for pair in self.pairs)
        elif self.embedded is not None:
            scores = rerank_embeddings_score(count=self.embedded)
            tokens = self.embedded.cost.tokens
        else:
            raise RuntimeError("run() before count()")
        return RerankResult(model=model, scores=scores, total_tokens=tokens)


def rerank_create(*, work: MeteredWork[RerankResult], request: RerankRequest) -> RerankResult:
    """Admit, count, debit, score, settle: every document's score and the tokens charged."""
    return metered_run(work=work, operation=RerankOperation(request))

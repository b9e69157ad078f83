"""POST /v1/tokenize: texts into the model's own tokens, in the shape the request's fields name.

Three clients' fields: vLLM's `/tokenize` (`prompt` → `count`, `max_model_len`, `tokens`),
TEI's `/tokenize` (`inputs` → one list of token objects per input) and Jina's segmenter
(`content` → `num_tokens`, `tokens` with `return_tokens`). Keyed and rate-limited through the
metering lifecycle, but never charged (a cost of 0 tokens), as Jina's segmenter is free.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from django.conf import settings

from embeddings_site.errors import ApiError, ErrorCode
from inference.models import EmbeddingModel
from inference.services import embedding_model_resolve, model_runtime
from inference.tokens import TextTokenizer
from metering.lifecycle import Cost, MeteredWork, metered_run

TokenizeShape = Literal["vllm", "tei", "jina"]


@dataclass(frozen=True)
class TokenizeRequest:
    """Texts to tokenize and the wire format to answer in."""

    texts: list[str]
    shape: TokenizeShape
    model: str | None = None
    add_special_tokens: bool = True
    return_tokens: bool = False  # vLLM's return_token_strs, Jina's return_tokens


def tokenize_request_check(*, request: TokenizeRequest) -> None:
    """Refuse a request over the size bound, before anything is read."""
    limit = settings.TOKENIZE_MAX_CHARACTERS
    characters = sum(len(text) for text in request.texts)
    if characters > limit:
        raise ApiError(
            ErrorCode.INPUT_VALIDATION_ERROR,
            f"{characters:,} characters to tokenize in one request; the limit is {limit:,}.",
            param="input",
        )


def tokenize_body(
    *, model: EmbeddingModel, tokenizer: TextTokenizer, request: TokenizeRequest
) -> Any:
    """The response in the request's shape."""
    encodings = [
        tokenizer.tokenize(text, add_special_tokens=request.add_special_tokens)
        for text in request.texts
    ]
    if request.shape == "vllm":
        (encoding,) = encodings
        return {
            "count": len(encoding.ids),
            "max_model_len": model.max_tokens,
            "tokens": encoding.ids,
            "token_strs": encoding.tokens if request.return_tokens else None,
        }
    if request.shape == "tei":
        return [
            [
                {"id": token_id, "text": token, "special": True, "start": None, "stop": None}
                if special
                else {
                    "id": token_id,
                    "text": text[start:stop],
                    "special": False,
                    "start": start,
                    "stop": stop,
                }
                for token_id, token, special, (start, stop) in zip(
                    encoding.ids,
                    encoding.tokens,
                    encoding.special_tokens_mask,
                    encoding.offsets,
                    strict=True,
                )
            ]
            for text, encoding in zip(request.texts, encodings, strict=True)
        ]
    (encoding,) = encodings
    body: dict[str, Any] = {
        "num_tokens": len(encoding.ids),
        "tokenizer": model.name,
        "usage": {"tokens": 0},
    }
    if request.return_tokens:
        body["tokens"] = [
            [token, [token_id]]
            for token, token_id in zip(encoding.tokens, encoding.ids, strict=True)
        ]
    return body


class TokenizeOperation:
    """POST /v1/tokenize as a metered operation: admitted and counted toward RPM and
    concurrency, charged nothing."""

    def __init__(self, request: TokenizeRequest) -> None:
        self.request = request
        self.model: EmbeddingModel | None = None

    def model_name(self) -> str:
        self.model = embedding_model_resolve(name=self.request.model)
        return self.model.name

    def shed(self) -> None:
        """Tokenizing never queues behind the model's forward passes."""

    def min_tokens(self) -> int:
        return 0

    def count_is_cheap(self) -> bool:
        """Tokenizing up to TOKENIZE_MAX_CHARACTERS is the work itself: after admission."""
        return False

    def count(self) -> Cost:
        tokenize_request_check(request=self.request)
        return Cost(text_tokens=0)

    def run(self) -> Any:
        if self.model is None:
            raise RuntimeError("run() before model_name()")
        runtime = model_runtime(self.model)
        return tokenize_body(model=self.model, tokenizer=runtime.tokenizer, request=self.request)


def tokenize_create(*, work: MeteredWork[Any], request: TokenizeRequest) -> Any:
    """Admit (RPM, concurrency), tokenize, settle: the response body; charges nothing."""
    return metered_run(work=work, operation=TokenizeOperation(request))

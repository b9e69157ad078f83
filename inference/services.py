"""The embeddings operation: resolve the model, bound, count, infer, encode — run by the
metering lifecycle (`metering.lifecycle.metered_run`), which admits, debits and settles."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import numpy as np
from django.conf import settings
from django.db import transaction

from embeddings_site.deadlines import current_deadline
from embeddings_site.errors import ApiError, ErrorCode
from inference import encodings
from inference.backends.base import (
    BackendError,
    BackendInputError,
    BackendOverloaded,
    BackendTimeout,
    Capability,
    EmbedItem,
)
from inference.catalog import DEFAULT_MODELS
from inference.image_tiles import (
    ImageHeader,
    ImageInputError,
    decode_rgb,
    images_load,
    is_data_uri,
    read_header,
    tile_tokens,
)
from inference.models import EmbeddingModel
from inference.protocol import EmbeddingInput, EmbeddingRequest, ImageInput, TextInput, TokenInput
from inference.registry import ModelRuntime, runtimes
from inference.selectors import embedding_model_get, embedding_model_list
from inference.tokens import EmptyInput, InputTooLong
from metering.lifecycle import Cost, MeteredWork, metered_run

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CountedRequest:
    """A request turned into model inputs, with the tokens it will cost.

    Image items hold no pixels yet: their headers (size, format) are in `images`, by item
    index, and are decoded only after the request is admitted and charged.
    """

    model: EmbeddingModel
    runtime: ModelRuntime
    items: list[EmbedItem]
    text_tokens: int
    image_tokens: int = 0
    images: dict[int, ImageHeader] = field(default_factory=dict)

    @property
    def total_tokens(self) -> int:
        return self.text_tokens + self.image_tokens


def embedding_model_resolve(*, name: str | None) -> EmbeddingModel:
    """The registry entry a request names (the default model when it names none)."""
    model = embedding_model_get(name=name or settings.EMBEDDINGS_DEFAULT_MODEL)
    if model is None:
        available = ", ".join(m.name for m in embedding_model_list()) or "none"
        raise ApiError(
            ErrorCode.INPUT_MODEL_NOT_FOUND,
            f"Model '{name}' not found. Available models: {available}.",
            param="model",
        )
    if model.is_reranker:
        raise ApiError(
            ErrorCode.INPUT_VALIDATION_ERROR,
            f"{model.name} is a reranker (a cross-encoder): it scores (query, document) pairs "
            "at /v1/rerank and makes no embeddings. Choose an embedding model.",
            param="model",
        )
    return model


def _task_prefix(model: EmbeddingModel, task: str | None) -> str:
    task = task or model.default_task or None
    if task is None:
        return ""
    if task not in model.tasks:
        supported = ", ".join(sorted(model.tasks)) or "none"
        raise ApiError(
            ErrorCode.INPUT_UNSUPPORTED_TASK,
            f"Task '{task}' is not supported by {model.name}. Supported tasks: {supported}.",
            param="task",
        )
    return str(model.tasks[task])


def _token_limit_error(
    model: EmbeddingModel, exc: InputTooLong, *, late_chunking: bool
) -> ApiError:
    if late_chunking:
        message = (
            f"With late_chunking the inputs are read as one sequence of {exc.count} tokens, "
            f"over {model.name}'s limit of {exc.limit}. Send fewer or shorter inputs."
        )
    else:
        count = f"{exc.count}" if exc.exact else f"at least {exc.count}"
        message = (
            f"input[{exc.index}] has {count} tokens, over {model.name}'s limit of {exc.limit} "
            "tokens. Shorten it, or send truncate: true."
        )
    return ApiError(ErrorCode.INPUT_TOKEN_LIMIT_EXCEEDED, message, param="input")


def embedding_request_count(*, request: EmbeddingRequest) -> CountedRequest:
    """Resolve the model, tokenize texts and size images: the exact tokens to be charged."""
    model = embedding_model_resolve(name=request.model)
    inputs = _with_modalities(request, model)
    prefix = _task_prefix(model, request.task)
    runtime = model_runtime(model)
    if request.late_chunking and not runtime.backend.can(Capability.HIDDEN_STATES):
        raise ApiError(
            ErrorCode.INPUT_VALIDATION_ERROR,
            f"late_chunking is not available for {model.name}: its backend gives no token-level output.",
            param="late_chunking",
        )
    _check_vllm_options(request, model)
    if request.multivector:
        _check_multivector(request, model, runtime, inputs)
    try:
        if request.late_chunking:
            items = _late_chunk_items(request, model, runtime, prefix)
        else:
            items = _items(replace(request, inputs=inputs), model, runtime, prefix)
    except InputTooLong as exc:
        raise _token_limit_error(model, exc, late_chunking=request.late_chunking) from exc
    except EmptyInput as exc:
        raise ApiError(
            ErrorCode.INPUT_EMPTY, f"input[{exc.index}] has no tokens to embed.", param="input"
        ) from exc
    if request.multivector:
        _check_multivector_size(items)
    images = (
        {}
        if request.late_chunking
        else _image_headers(
            {index: item for index, item in enumerate(inputs) if isinstance(item, ImageInput)}
        )
    )
    image_tokens = sum(
        tile_tokens(
            width=header.width,
            height=header.height,
            tile_size=model.image_tile_size or 1,
            tokens_per_tile=model.tokens_per_tile or 0,
        )
        for header in images.values()
    )
    return CountedRequest(
        model=model,
        runtime=runtime,
        items=items,
        text_tokens=sum(len(item.token_ids) for item in items),
        image_tokens=image_tokens,
        images=images,
    )


def _check_vllm_options(request: EmbeddingRequest, model: EmbeddingModel) -> None:
    keep = request.truncate_prompt_tokens
    if keep is None:
        return
    if keep > model.max_tokens:
        raise ApiError(
            ErrorCode.INPUT_VALIDATION_ERROR,
            f"truncate_prompt_tokens is {keep}, over {model.name}'s limit of {model.max_tokens} "
            "tokens. Send at most that, or -1 for the model's limit.",
            param="truncate_prompt_tokens",
        )
    if request.late_chunking:
        raise ApiError(
            ErrorCode.INPUT_VALIDATION_ERROR,
            "truncate_prompt_tokens cannot be used with late_chunking: the inputs are read as "
            "one sequence.",
            param="truncate_prompt_tokens",
        )


def _check_multivector(
    request: EmbeddingRequest,
    model: EmbeddingModel,
    runtime: ModelRuntime,
    inputs: list[EmbeddingInput],
) -> None:
    """Jina's return_multivector: refused where one vector per token cannot be given."""
    problem = None
    if request.dimensions is not None:  # as Jina's API: "Cannot be used with dimensions"
        problem = ("dimensions", "return_multivector cannot be used with dimensions.")
    elif request.late_chunking:
        problem = ("late_chunking", "return_multivector cannot be used with late_chunking.")
    elif len(request.embedding_types) > 1:
        problem = (
            "embedding_type",
            "return_multivector takes one embedding_type: each token's vector is encoded so.",
        )
    elif not runtime.backend.can(Capability.HIDDEN_STATES):
        problem = (
            "return_multivector",
            f"return_multivector is not available for {model.name}: its backend gives no "
            "token-level output.",
        )
    elif any(isinstance(item, ImageInput) for item in inputs):
        problem = ("input", "return_multivector works on text and token inputs only.")
    if problem is not None:
        raise ApiError(ErrorCode.INPUT_VALIDATION_ERROR, problem[1], param=problem[0])


def _check_multivector_size(items: list[EmbedItem]) -> None:
    """A vector per token makes a big answer: bounded, and refused (uncharged) above it."""
    tokens = sum(len(item.token_ids) for item in items)
    limit = settings.EMBEDDINGS_MULTIVECTOR_MAX_TOKENS
    if tokens > limit:
        raise ApiError(
            ErrorCode.INPUT_TOKEN_LIMIT_EXCEEDED,
            f"return_multivector answers a vector per token: this request has {tokens:,} "
            f"tokens, over the limit of {limit:,} per request. Send fewer or shorter inputs.",
            param="input",
        )


def _with_modalities(request: EmbeddingRequest, model: EmbeddingModel) -> list[EmbeddingInput]:
    """Check images against the model; on an image model a bare data-URI string is an image
    (Haystack's image embedder sends them so)."""
    if not model.accepts_images:
        if any(isinstance(item, ImageInput) for item in request.inputs):
            raise ApiError(
                ErrorCode.INPUT_UNSUPPORTED_MODALITY,
                f"{model.name} embeds text only; send image inputs to an image model.",
                param="input",
            )
        return request.inputs
    return [
        ImageInput(item.text) if isinstance(item, TextInput) and is_data_uri(item.text) else item
        for item in request.inputs
    ]


def _image_headers(images: dict[int, ImageInput]) -> dict[int, ImageHeader]:
    """Headers of a request's images by input index: inline ones decoded, URLs fetched
    together under one per-request budget (only now: the request is already pre-admitted)."""
    if not images:
        return {}
    indexes = list(images)
    deadline = current_deadline()
    try:
        blobs = images_load([images[index].source for index in indexes])
    except ImageInputError as exc:
        if deadline is not None and deadline.expired:
            raise ApiError(
                ErrorCode.SERVICE_TIMEOUT,
                "The request passed its deadline while fetching its images; it was not charged.",
            ) from exc
        position = getattr(exc, "index", None)
        where = f"input[{indexes[position]}]: " if position is not None else ""
        raise ApiError(ErrorCode.INPUT_INVALID_IMAGE, f"{where}{exc}", param="input") from exc
    headers = {}
    for index, blob in zip(indexes, blobs, strict=True):
        try:
            headers[index] = read_header(blob)
        except ImageInputError as exc:
            raise ApiError(
                ErrorCode.INPUT_INVALID_IMAGE, f"input[{index}]: {exc}", param="input"
            ) from exc
    return headers


def _items(
    request: EmbeddingRequest, model: EmbeddingModel, runtime: ModelRuntime, prefix: str
) -> list[EmbedItem]:
    texts = [
        (i, prefix + item.text)
        for i, item in enumerate(request.inputs)
        if isinstance(item, TextInput)
    ]
    keep = _kept_tokens(request, model)
    encoded: list[list[int]] = []
    if texts and keep is not None:
        side = _truncation_side(request)
        encoded = runtime.tokenizer.encode_keeping(
            [text for _, text in texts], keep=keep, side=side
        )
    elif texts:
        encoded = runtime.tokenizer.encode(
            [text for _, text in texts], max_tokens=model.max_tokens, truncate=request.truncate
        )
    by_index = {index: (ids, text) for (index, text), ids in zip(texts, encoded, strict=True)}
    per_token = request.multivector
    items: list[EmbedItem] = []
    for index, item in enumerate(request.inputs):
        if isinstance(item, ImageInput):
            items.append(EmbedItem(token_ids=[]))
        elif isinstance(item, TokenInput):
            ids = _checked_token_ids(item, index, model, runtime, request)
            if keep is not None and len(ids) > keep:
                side = _truncation_side(request) or runtime.tokenizer.truncation_side
                ids = ids[-keep:] if side == "left" else ids[:keep]
            items.append(EmbedItem(token_ids=ids, per_token=per_token))
        else:
            ids, text = by_index[index]
            # A worker that tokenizes itself would read the whole text: truncated, it gets ids.
            items.append(
                EmbedItem(token_ids=ids, text=text if keep is None else None, per_token=per_token)
            )
    return items


def _kept_tokens(request: EmbeddingRequest, model: EmbeddingModel) -> int | None:
    """vLLM's truncate_prompt_tokens as a number of tokens (-1: the model's limit)."""
    keep = request.truncate_prompt_tokens
    if keep is None:
        return None
    return model.max_tokens if keep == -1 else keep


def _truncation_side(request: EmbeddingRequest) -> Literal["left", "right"] | None:
    side = request.truncation_side
    return side if side in ("left", "right") else None  # type: ignore[return-value]


def _checked_token_ids(
    item: TokenInput,
    index: int,
    model: EmbeddingModel,
    runtime: ModelRuntime,
    request: EmbeddingRequest,
) -> list[int]:
    vocab = runtime.tokenizer.vocab_size
    if max(item.ids) >= vocab:
        raise ApiError(
            ErrorCode.INPUT_VALIDATION_ERROR,
            f"input[{index}] has token id {max(item.ids)}, outside {model.name}'s vocabulary of "
            f"{vocab}. Token arrays are read as ids of the model's own tokenizer.",
            param="input",
        )
    if len(item.ids) > model.max_tokens:
        if request.truncate_prompt_tokens is not None:
            return item.ids  # cut by the caller to what truncate_prompt_tokens keeps
        if not request.truncate:
            raise _token_limit_error(
                model, InputTooLong(index, len(item.ids), model.max_tokens), late_chunking=False
            )
        return item.ids[: model.max_tokens]
    return item.ids


def _late_chunk_items(
    request: EmbeddingRequest, model: EmbeddingModel, runtime: ModelRuntime, prefix: str
) -> list[EmbedItem]:
    if not all(isinstance(item, TextInput) for item in request.inputs):
        raise ApiError(
            ErrorCode.INPUT_VALIDATION_ERROR,
            "late_chunking works on text inputs only.",
            param="late_chunking",
        )
    texts = [item.text for item in request.inputs if isinstance(item, TextInput)]
    if prefix:
        texts[0] = prefix + texts[0]
    sequence = runtime.tokenizer.encode_late_chunks(texts, max_tokens=model.max_tokens)
    return [EmbedItem(token_ids=sequence.ids, spans=sequence.spans)]


def model_runtime(model: EmbeddingModel) -> ModelRuntime:
    """The model's loaded runtime; a model that cannot load is a coded 503."""
    try:
        return runtimes.get(model)
    except Exception as exc:
        raise ApiError(
            ErrorCode.SERVICE_UNAVAILABLE,
            f"Model {model.name} is not available right now. Please retry with exponential backoff.",
        ) from exc


def _with_pixels(counted: CountedRequest) -> list[EmbedItem]:
    items = list(counted.items)
    for index, header in counted.images.items():
        try:
            items[index] = replace(items[index], image=decode_rgb(header))
        except ImageInputError as exc:
            raise ApiError(
                ErrorCode.INPUT_INVALID_IMAGE, f"input[{index}]: {exc}", param="input"
            ) from exc
    return items


def embeddings_vectors(*, counted: CountedRequest) -> np.ndarray:
    """Run the backend on a counted request: raw vectors, one row per item (per span)."""
    items = _with_pixels(counted)
    with backend_errors(model=counted.model, param="input"):
        return counted.runtime.backend.embed(items)


@contextmanager
def backend_errors(*, model: EmbeddingModel, param: str) -> Iterator[None]:
    """A backend's failure as the API's coded error: a timeout 504, a full queue 503 with
    Retry-After, a refused input 400 naming `param`, anything else 503 (all uncharged)."""
    try:
        yield
    except BackendTimeout as exc:
        raise ApiError(
            ErrorCode.SERVICE_TIMEOUT,
            f"The model did not answer before the request's deadline ({exc}); it was not charged.",
        ) from exc
    except BackendOverloaded as exc:
        raise ApiError(
            ErrorCode.SERVICE_OVERLOADED,
            f"{model.name} has more work queued than it can take now; "
            "nothing was charged. Retry after the Retry-After seconds.",
            headers={"Retry-After": str(max(int(exc.retry_after + 0.999), 1))},
        ) from exc
    except BackendInputError as exc:
        raise ApiError(
            ErrorCode.INPUT_VALIDATION_ERROR,
            f"The model refused this input: {exc}",
            param=param,
        ) from exc
    except BackendError as exc:
        logger.warning("Backend for %s failed: %s", model.name, exc)
        raise ApiError(
            ErrorCode.SERVICE_UNAVAILABLE,
            "The model backend is temporarily unavailable. Please retry with exponential backoff.",
        ) from exc


def embeddings_body(
    *, counted: CountedRequest, request: EmbeddingRequest, vectors: np.ndarray
) -> dict[str, Any]:
    """The response body for a request's raw vectors (Matryoshka, normalisation, encodings)."""
    model = counted.model
    vectors = encodings.matryoshka(
        vectors, dimensions=request.dimensions, normalized=request.normalized
    )
    options = {"embed_dtype": request.embed_dtype, "endianness": request.endianness}
    usage: dict[str, int] = {
        "prompt_tokens": counted.total_tokens,
        "total_tokens": counted.total_tokens,
    }
    if model.accepts_images:
        usage["image_tokens"] = counted.image_tokens
    if request.multivector:
        data = _multivector_data(counted, request, vectors, options)
    else:
        encoded = encodings.encode_all(vectors, request.embedding_types, **options)
        data = [
            {"object": "embedding", "index": index, "embedding": embedding}
            for index, embedding in enumerate(encoded)
        ]
    return {"object": "list", "model": model.name, "data": data, "usage": usage}


def _multivector_data(
    counted: CountedRequest,
    request: EmbeddingRequest,
    vectors: np.ndarray,
    options: dict[str, str],
) -> list[dict[str, Any]]:
    """Jina's MultiEmbeddingData: each input's token vectors (normalised one by one)."""
    data = []
    row = 0
    for index, item in enumerate(counted.items):
        rows = vectors[row : row + item.output_rows]
        row += item.output_rows
        entry: dict[str, Any] = {
            "object": "embeddings",
            "index": index,
            "embeddings": encodings.encode_all(rows, request.embedding_types, **options),
        }
        if request.tokenized_input:
            entry["tokenized_input"] = counted.runtime.tokenizer.token_strings(item.token_ids)
        data.append(entry)
    return data


def embeddings_infer(*, counted: CountedRequest, request: EmbeddingRequest) -> dict[str, Any]:
    """Run the backend and build the response body (vectors encoded as asked)."""
    vectors = embeddings_vectors(counted=counted)
    return embeddings_body(counted=counted, request=request, vectors=vectors)


def embedding_model_shed(*, model: EmbeddingModel) -> None:
    """Refuse at once, before admission, when the model's queue in this process is full."""
    backend = runtimes.loaded_backend(model)
    retry_after = backend.shed_retry_after() if backend is not None else None
    if retry_after is not None:
        raise ApiError(
            ErrorCode.SERVICE_OVERLOADED,
            f"{model.name} has more work queued than it can take now; nothing was charged. "
            "Retry after the Retry-After seconds.",
            headers={"Retry-After": str(max(int(retry_after + 0.999), 1))},
        )


def embedding_min_tokens(*, request: EmbeddingRequest) -> int:
    """A lower bound of a request's tokens from its parsed shape alone: every input costs at
    least one token. Cheap whatever the request's size (no tokenizing, no fetching)."""
    return len(request.inputs)


def embedding_count_is_cheap(*, request: EmbeddingRequest) -> bool:
    """Texts and token ids only, at most PREADMIT_COUNT_MAX_CHARACTERS characters (or ids) in
    all: counting that costs less than a limiter call, so it may run before admission."""
    budget = settings.PREADMIT_COUNT_MAX_CHARACTERS
    for item in request.inputs:
        if isinstance(item, TextInput):
            budget -= len(item.text)
        elif isinstance(item, TokenInput):
            budget -= len(item.ids)
        else:
            return False
        if budget < 0:
            return False
    return True


class EmbeddingsOperation:
    """POST /v1/embeddings as a metered operation (see `metering.lifecycle`)."""

    def __init__(self, request: EmbeddingRequest) -> None:
        self.request = request
        self.model: EmbeddingModel | None = None
        self.counted: CountedRequest | None = None

    def model_name(self) -> str:
        self.model = embedding_model_resolve(name=self.request.model)
        return self.model.name

    def shed(self) -> None:
        if self.model is not None:
            embedding_model_shed(model=self.model)

    def min_tokens(self) -> int:
        return embedding_min_tokens(request=self.request)

    def count_is_cheap(self) -> bool:
        return embedding_count_is_cheap(request=self.request)

    def count(self) -> Cost:
        self.counted = embedding_request_count(request=self.request)
        return Cost(text_tokens=self.counted.text_tokens, image_tokens=self.counted.image_tokens)

    def run(self) -> dict[str, Any]:
        if self.counted is None:
            raise RuntimeError("run() before count()")
        return embeddings_infer(counted=self.counted, request=self.request)


def embeddings_create(
    *, work: MeteredWork[dict[str, Any]], request: EmbeddingRequest
) -> dict[str, Any]:
    """Admit, count, debit, embed, settle: the response body of one request."""
    return metered_run(work=work, operation=EmbeddingsOperation(request))


def embedding_model_register_defaults() -> list[EmbeddingModel]:
    """Register the catalog's models that are missing; existing entries are left as edited."""
    created = []
    for spec in DEFAULT_MODELS:
        model, was_created = EmbeddingModel.objects.get_or_create(name=spec["name"], defaults=spec)
        if was_created:
            created.append(model)
    return created


@transaction.atomic
def embedding_model_register(*, name: str, fields: dict[str, Any]) -> tuple[EmbeddingModel, bool]:
    """Create or update a registry entry, validated as the admin would validate it."""
    model = EmbeddingModel.objects.filter(name=name).first()
    created = model is None
    if model is None:
        model = EmbeddingModel(name=name)
    for field_name, value in fields.items():
        setattr(model, field_name, value)
    model.full_clean()
    model.save()
    return model, created

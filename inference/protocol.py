"""One normalised embeddings request from both wire formats (Jina and OpenAI).

Jina: EmbeddingsV3Request / TextDoc / ImageDoc in the Jina OpenAPI spec, plus the older
`encoding_type` and `{"url"}` / `{"bytes"}` shapes that LlamaIndex and LangChain still send.
OpenAI: `input` as strings or token-id arrays, `encoding_format`, `dimensions`, `user`.
vLLM (its /v1/embeddings extras): `embed_dtype`, `endianness`, `normalize` / `use_activation`,
`truncate_prompt_tokens` with `truncation_side`; fields of vLLM's or TEI's that would change the
result and are not served here (chat `messages`, `padding: max_length`, ...) are refused with a
400 naming them, never ignored. Other unknown keys are ignored, so newer clients keep working;
known keys must have the right type.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from embeddings_site.api_schema import (
    EMBEDDING_TYPE_SCHEMA,
    INPUT_SCHEMA,
    NON_BLANK_PATTERN,
    TRUNCATE_PROMPT_TOKENS_SCHEMA,
)
from embeddings_site.errors import ErrorCode
from inference.encodings import EMBED_DTYPES, EMBEDDING_TYPES, ENDIANNESS


@dataclass(frozen=True)
class TextInput:
    text: str


@dataclass(frozen=True)
class TokenInput:
    """Token ids in the model's own vocabulary (OpenAI's array input), used as they are."""

    ids: list[int]


@dataclass(frozen=True)
class ImageInput:
    """An image by URL, base64 or data URI (Jina ImageDoc, or the older url/bytes objects)."""

    source: str


EmbeddingInput = TextInput | TokenInput | ImageInput


@dataclass(frozen=True)
class EmbeddingRequest:
    inputs: list[EmbeddingInput]
    model: str | None = None
    task: str | None = None
    dimensions: int | None = None
    normalized: bool = True
    embedding_types: list[str] = field(default_factory=lambda: ["float"])
    truncate: bool = False
    late_chunking: bool = False
    multivector: bool = False  # Jina's return_multivector: one vector per token
    tokenized_input: bool = False  # Jina's return_tokenized_input
    embed_dtype: str = "float32"  # vLLM's: the precision of the values (and base64's bytes)
    endianness: str = "little"  # vLLM's: byte order of base64 output
    # vLLM's truncate_prompt_tokens: keep this many tokens (-1: the model's limit), on
    # `truncation_side` (None: the tokenizer's own side).
    truncate_prompt_tokens: int | None = None
    truncation_side: str | None = None


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@extend_schema_field(OpenApiTypes.BOOL)
class StrictBooleanField(serializers.Field):
    """JSON true/false only: "yes", 1 or "false" are mistakes worth a 400, not a guess."""

    default_error_messages = {"invalid": "Must be true or false."}

    def to_internal_value(self, data: Any) -> bool:
        if not isinstance(data, bool):
            self.fail("invalid")
        return data

    def to_representation(self, value: Any) -> Any:
        return value


class StrictCharField(serializers.CharField):
    """A JSON string, taken as sent: DRF's CharField would turn 0 or true into text and trim
    spaces, so that "\n" would pass for blank and the schema's lengths would not hold."""

    default_error_messages = {"invalid": "Must be a string."}

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("trim_whitespace", False)
        super().__init__(**kwargs)

    def to_internal_value(self, data: Any) -> str:
        if not isinstance(data, str):
            self.fail("invalid")
        return super().to_internal_value(data)


@extend_schema_field({"type": "integer", "minimum": 1})
class StrictPositiveIntegerField(serializers.Field):
    default_error_messages = {"invalid": "Must be a positive integer."}

    def to_internal_value(self, data: Any) -> int:
        if not _is_int(data) or data <= 0:
            self.fail("invalid")
        return int(data)

    def to_representation(self, value: Any) -> Any:
        return value


class StrictChoiceField(serializers.ChoiceField):
    """One of the choices, as a JSON string (DRF's ChoiceField would take 1 for "1")."""

    def to_internal_value(self, data: Any) -> Any:
        if not isinstance(data, str):
            self.fail("invalid_choice", input=str(data)[:40])
        return super().to_internal_value(data)


@extend_schema_field({"type": "boolean", "enum": [True]})
class SpecialTokensField(StrictBooleanField):
    """vLLM's add_special_tokens: the model always reads its special tokens here (true)."""

    default_error_messages = {
        "invalid": "Only true is supported: the model reads its special tokens."
    }

    def to_internal_value(self, data: Any) -> bool:
        if data is not True:
            self.fail("invalid")
        return True


@extend_schema_field(TRUNCATE_PROMPT_TOKENS_SCHEMA)
class TruncatePromptTokensField(serializers.Field):
    """vLLM's truncate_prompt_tokens: -1 (the model's limit) or a positive number of tokens."""

    default_error_messages = {
        "invalid": "Must be -1 (the model's limit) or a positive number of tokens to keep."
    }

    def to_internal_value(self, data: Any) -> int:
        if not _is_int(data) or (data != -1 and data <= 0):
            self.fail("invalid")
        return int(data)

    def to_representation(self, value: Any) -> Any:
        return value


@extend_schema_field(EMBEDDING_TYPE_SCHEMA)
class EmbeddingTypeField(serializers.Field):
    """`float | base64 | binary | ubinary`, or a list of them (Jina's embedding_type)."""

    def to_internal_value(self, data: Any) -> list[str]:
        kinds = [data] if isinstance(data, str) else data
        if not isinstance(kinds, list) or not kinds:
            raise serializers.ValidationError(
                f"Must be one of {', '.join(EMBEDDING_TYPES)} or a list of them."
            )
        result: list[str] = []
        for kind in kinds:
            if kind not in EMBEDDING_TYPES:
                raise serializers.ValidationError(
                    f"Unknown embedding type {str(kind)[:40]!r}; use one of {', '.join(EMBEDDING_TYPES)}."
                )
            if kind not in result:
                result.append(kind)
        return result

    def to_representation(self, value: Any) -> Any:
        return value


_NON_BLANK = re.compile(NON_BLANK_PATTERN)


def _is_blank(text: str) -> bool:
    """Nothing but whitespace and control or format characters (NUL, zero-width space...):
    the schema's own pattern, so what it calls blank is what is refused."""
    return _NON_BLANK.search(text) is None


def _input_item(item: Any, index: int) -> EmbeddingInput:
    if isinstance(item, str):
        if _is_blank(item):
            raise serializers.ValidationError(
                {str(index): f"input[{index}] has no text; every input needs some."},
                code=ErrorCode.INPUT_EMPTY,
            )
        return TextInput(item)
    if isinstance(item, dict):
        for key in ("text", "image", "url", "bytes"):
            if key in item:
                value = item[key]
                if not isinstance(value, str):
                    raise serializers.ValidationError(
                        {str(index): f"input[{index}].{key} must be a string."}
                    )
                if not value or (key == "text" and _is_blank(value)):
                    raise serializers.ValidationError(
                        {str(index): f"input[{index}].{key} is empty."}, code=ErrorCode.INPUT_EMPTY
                    )
                return TextInput(value) if key == "text" else ImageInput(value)
        raise serializers.ValidationError(
            {str(index): f'input[{index}] must be a string, {{"text": ...}} or {{"image": ...}}.'}
        )
    if isinstance(item, list):
        if not item:
            raise serializers.ValidationError(
                {str(index): f"input[{index}] is an empty token array."}, code=ErrorCode.INPUT_EMPTY
            )
        if not all(_is_int(token) and token >= 0 for token in item):
            raise serializers.ValidationError(
                {str(index): f"input[{index}] must be a list of non-negative integer token ids."}
            )
        return TokenInput(item)
    raise serializers.ValidationError(
        {
            str(
                index
            ): f"input[{index}] must be a string, a text object or a token array, not {type(item).__name__}."
        }
    )


@extend_schema_field(INPUT_SCHEMA)
class EmbeddingInputField(serializers.Field):
    """A string, a TextDoc/ImageDoc, a token array, or a list mixing strings, docs and token arrays."""

    def to_internal_value(self, data: Any) -> list[EmbeddingInput]:
        if isinstance(data, str | dict):
            return [_input_item(data, 0)]
        if not isinstance(data, list):
            raise serializers.ValidationError("Must be a string, an object or a list of them.")
        if not data:
            raise serializers.ValidationError(
                "The input list is empty.", code=ErrorCode.INPUT_EMPTY
            )
        limit = settings.EMBEDDINGS_MAX_INPUTS
        if len(data) > limit:
            raise serializers.ValidationError(
                f"{len(data)} inputs in one request; the limit is {limit}.",
                code=ErrorCode.INPUT_TOO_MANY_ITEMS,
            )
        if _is_int(data[0]):  # OpenAI: one input given as a flat list of token ids
            return [_input_item(data, 0)]
        return [_input_item(item, index) for index, item in enumerate(data)]

    def to_representation(self, value: Any) -> Any:
        return value


# Fields of vLLM's and TEI's embedding requests that would change the result and are not
# served here: refused with a 400 naming them (when set to anything but their no-op value),
# never ignored. (vLLM: entrypoints/pooling protocol; TEI: its /embed request.)
REFUSED_FIELDS: dict[str, str] = {
    "messages": "Chat-formatted input is not supported; send the text as `input`.",
    "chat_template": "Chat templates are not supported; send the text as `input`.",
    "chat_template_kwargs": "Chat templates are not supported; send the text as `input`.",
    "add_generation_prompt": "Chat templates are not supported; send the text as `input`.",
    "continue_final_message": "Chat templates are not supported; send the text as `input`.",
    "mm_processor_kwargs": "Processor arguments are not supported.",
    "media_io_kwargs": "Media IO arguments are not supported.",
    "prompt_name": "Prompt names are not supported; send `task` instead.",
}
# Fields accepted only with the value that changes nothing.
NO_OP_VALUES: dict[str, tuple[Any, ...]] = {
    "truncation_direction": ("right", "Right"),  # TEI; Left would cut the start
}
_NORMALIZE_SPELLINGS = ("normalized", "normalize", "use_activation")


class EmbeddingRequestSerializer(serializers.Serializer):
    """The body of POST /v1/embeddings in either wire format."""

    input = EmbeddingInputField()
    model = StrictCharField(
        required=False,
        allow_null=True,
        max_length=200,
        help_text="A model of GET /v1/models (default: EMBEDDINGS_DEFAULT_MODEL).",
    )
    task = StrictCharField(
        required=False,
        allow_null=True,
        max_length=100,
        help_text="What the vectors are for (e.g. retrieval.query); the model's own tasks only.",
    )
    dimensions = StrictPositiveIntegerField(
        required=False,
        allow_null=True,
        help_text="Keep the first N dimensions of each vector (Matryoshka truncation).",
    )
    normalized = StrictBooleanField(
        required=False, allow_null=True, help_text="Scale each vector to unit length (L2)."
    )
    normalize = StrictBooleanField(
        required=False, allow_null=True, help_text="vLLM's spelling of `normalized`."
    )
    use_activation = StrictBooleanField(
        required=False,
        allow_null=True,
        help_text="vLLM's (0.11+) spelling of `normalized` for embeddings.",
    )
    embedding_type = EmbeddingTypeField(
        required=False,
        allow_null=True,
        help_text="float, base64, binary or ubinary; a list asks for each of them.",
    )
    encoding_type = EmbeddingTypeField(  # older Jina clients
        required=False, allow_null=True, help_text="Older Jina clients' `embedding_type`."
    )
    encoding_format = EmbeddingTypeField(  # OpenAI
        required=False, allow_null=True, help_text="OpenAI's `embedding_type`."
    )
    truncate = StrictBooleanField(
        required=False,
        allow_null=True,
        help_text="Cut inputs longer than the model's context (default false: 400).",
    )
    late_chunking = StrictBooleanField(
        required=False,
        allow_null=True,
        help_text="Embed the inputs as one text, then pool each input's own tokens.",
    )
    return_multivector = StrictBooleanField(
        required=False,
        allow_null=True,
        help_text="One vector per token (Jina's MultiEmbeddingData). Not with `dimensions`.",
    )
    return_tokenized_input = StrictBooleanField(
        required=False,
        allow_null=True,
        help_text="The tokens beside multi-vector embeddings; needs `return_multivector`.",
    )
    embed_dtype = StrictChoiceField(
        choices=EMBED_DTYPES,
        required=False,
        allow_null=True,
        help_text="vLLM's: values rounded to this precision; base64 holds bytes of this dtype.",
    )
    endianness = StrictChoiceField(
        choices=ENDIANNESS,
        required=False,
        allow_null=True,
        help_text="vLLM's: byte order of base64 output (native is little-endian here).",
    )
    truncate_prompt_tokens = TruncatePromptTokensField(required=False, allow_null=True)
    truncation_side = StrictChoiceField(
        choices=("left", "right"),
        required=False,
        allow_null=True,
        help_text="vLLM's: with truncate_prompt_tokens, right keeps the first tokens, left the "
        "last (default: the tokenizer's side).",
    )
    padding = StrictChoiceField(
        choices=("do_not_pad",),
        required=False,
        allow_null=True,
        help_text="vLLM's; max_length padding is not served (it would change the vectors).",
    )
    add_special_tokens = SpecialTokensField(
        required=False,
        allow_null=True,
        help_text="vLLM's: add the model's special tokens (true, the default, only).",
    )
    user = StrictCharField(
        required=False,
        allow_null=True,
        allow_blank=True,
        max_length=500,
        help_text="OpenAI's end-user id: accepted and ignored.",
    )

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        body = self.initial_data if isinstance(self.initial_data, dict) else {}
        for name, reason in REFUSED_FIELDS.items():
            if body.get(name) is not None:
                raise serializers.ValidationError({name: reason})
        for name, allowed in NO_OP_VALUES.items():
            value = body.get(name)
            if value is not None and not any(
                value == ok and type(value) is type(ok) for ok in allowed
            ):
                raise serializers.ValidationError(
                    {name: f"Only {', '.join(map(repr, allowed))} is supported here."}
                )
        given = {name: attrs[name] for name in _NORMALIZE_SPELLINGS if attrs.get(name) is not None}
        if len(set(given.values())) > 1:
            names = list(given)
            raise serializers.ValidationError(
                {names[-1]: f"{' and '.join(names)} disagree; send one of them."}
            )
        if attrs.get("return_tokenized_input") and not attrs.get("return_multivector"):
            raise serializers.ValidationError(
                {"return_tokenized_input": "Requires return_multivector: true."}
            )
        if attrs.get("truncation_side") is not None and attrs.get("truncate_prompt_tokens") is None:
            raise serializers.ValidationError(
                {"truncation_side": "Applies only with truncate_prompt_tokens."}
            )
        return attrs

    def to_request(self) -> EmbeddingRequest:
        data = self.validated_data
        types = (
            data.get("embedding_type") or data.get("encoding_type") or data.get("encoding_format")
        )
        normalized = next(
            (data[name] for name in _NORMALIZE_SPELLINGS if data.get(name) is not None), True
        )
        endianness = data.get("endianness") or "native"
        if endianness == "native":
            endianness = sys.byteorder
        return EmbeddingRequest(
            inputs=data["input"],
            model=data.get("model") or None,
            task=data.get("task") or None,
            dimensions=data.get("dimensions"),
            normalized=normalized,
            embedding_types=types or ["float"],
            truncate=bool(data.get("truncate")),
            late_chunking=bool(data.get("late_chunking")),
            multivector=bool(data.get("return_multivector")),
            tokenized_input=bool(data.get("return_tokenized_input")),
            embed_dtype=data.get("embed_dtype") or "float32",
            endianness=endianness,
            truncate_prompt_tokens=data.get("truncate_prompt_tokens"),
            truncation_side=data.get("truncation_side"),
        )

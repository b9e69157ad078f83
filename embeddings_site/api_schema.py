"""The OpenAPI description of the public API (drf-spectacular): the /v1 routes only, Bearer
keys, and documentation serializers for shapes the views build by hand."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from drf_spectacular.utils import OpenApiExample, extend_schema_field, inline_serializer
from rest_framework import serializers


def only_public_api(
    endpoints: list[tuple[str, str, str, Any]], **kwargs: Any
) -> list[tuple[str, str, str, Any]]:
    """Preprocessing hook: drop internal routes such as /internal/workers (/v2 is Cohere's rerank)."""
    return [endpoint for endpoint in endpoints if endpoint[0].startswith(("/v1/", "/v2/"))]


class ApiKeyScheme(OpenApiAuthenticationExtension):  # type: ignore[no-untyped-call]
    """`Authorization: Bearer <key>`."""

    target_class = "metering.authentication.ApiKeyAuthentication"
    name = "ApiKey"

    def get_security_definition(self, auto_schema: Any) -> dict[str, str]:
        return {"type": "http", "scheme": "bearer", "description": "Your API key: `jina_…`."}


# Some text: a character that is not whitespace, a control or a format character (NUL,
# zero-width space, ...) of the Basic Multilingual Plane. Tokenizers drop all of those, so a
# text of nothing else would be embedded, and charged, as special tokens alone. The server
# checks inputs with this same pattern (inference.protocol), so the schema and the API cannot
# disagree on what is blank. (ECMA 262 patterns cannot name astral characters in a class, so
# the few astral format characters count as text.)
NON_BLANK_PATTERN = (
    r"[^\u0000-\u0020\u007f-\u00a0\u00ad\u0600-\u0605\u061c\u06dd\u070f\u0890-\u0891"
    r"\u08e2\u1680\u180e\u2000-\u200f\u2028-\u202f\u205f-\u2064\u2066-\u206f\u3000\ufeff"
    r"\ufff9-\ufffb]"
)
# Bounds that are settings: a schema fragment names its setting, and the postprocessing hook
# writes the setting's value when the schema is generated, so the published schema refuses
# exactly what the server refuses (`{SETTING}` in a description is filled in the same way).
BOUND_BY = "x-bound-by-settings"
BOUND_SETTINGS = (
    "EMBEDDINGS_MAX_INPUTS",
    "CLASSIFY_MAX_INPUTS",
    "CLASSIFY_MAX_LABELS",
    "CLASSIFY_MAX_LABEL_GROUPS",
    "CLASSIFY_MAX_LABELS_PER_GROUP",
    "CLASSIFY_MAX_LABEL_CHARS",
    "TRAIN_MAX_EXAMPLES",
)


def setting_bound(**keywords: str) -> dict[str, Any]:
    """Keywords such as maxItems="EMBEDDINGS_MAX_INPUTS": each gets its setting's value when
    the schema is generated."""
    assert set(keywords.values()) <= set(BOUND_SETTINGS), keywords  # noqa: S101 - a typo
    return {**dict.fromkeys(keywords, 0), BOUND_BY: keywords}


def _bind_settings(node: Any) -> None:
    if isinstance(node, dict):
        for keyword, setting in node.pop(BOUND_BY, {}).items():
            node[keyword] = int(getattr(settings, setting))
        description = node.get("description")
        if isinstance(description, str) and "{" in description:
            for name in BOUND_SETTINGS:
                description = description.replace(f"{{{name}}}", str(getattr(settings, name)))
            node["description"] = description
        for value in node.values():
            _bind_settings(value)
    elif isinstance(node, list):
        for value in node:
            _bind_settings(value)


_TEXT: dict[str, Any] = {"type": "string", "pattern": NON_BLANK_PATTERN}
_TOKEN_IDS: dict[str, Any] = {
    "type": "array",
    "minItems": 1,
    "items": {"type": "integer", "minimum": 0},
    "description": "Token ids in the model's vocabulary.",
}
_TEXT_DOC: dict[str, Any] = {
    "type": "object",
    "required": ["text"],
    "properties": {"text": _TEXT},
}
_IMAGE_DOC: dict[str, Any] = {
    "type": "object",
    "required": ["image"],
    "properties": {"image": {"type": "string", "minLength": 1}},
    "description": "An image: an http(s) URL, base64 bytes or a data URI.",
}
# A text, a TextDoc/ImageDoc object, token ids, or a list mixing them (see the Jina spec).
# anyOf, not oneOf: an object with both `text` and `image` is valid (the text is used).
INPUT_SCHEMA: dict[str, Any] = {
    "anyOf": [
        _TEXT,
        _TOKEN_IDS,
        {
            "type": "array",
            "minItems": 1,
            **setting_bound(maxItems="EMBEDDINGS_MAX_INPUTS"),
            "items": {"anyOf": [_TEXT, _TEXT_DOC, _IMAGE_DOC, _TOKEN_IDS]},
        },
        _TEXT_DOC,
        _IMAGE_DOC,
    ],
    "description": (
        'Texts, images ({"image": URL | base64}) or token ids; at most {EMBEDDINGS_MAX_INPUTS} '
        "items. "
        "A text must have a character other than whitespace or control characters."
    ),
}
_EMBEDDING_TYPES = ["float", "base64", "binary", "ubinary"]
EMBEDDING_TYPE_SCHEMA: dict[str, Any] = {
    "anyOf": [
        {"type": "string", "enum": _EMBEDDING_TYPES},
        {"type": "array", "minItems": 1, "items": {"type": "string", "enum": _EMBEDDING_TYPES}},
    ],
    "default": "float",
}

# vLLM's truncate_prompt_tokens: -1 (the model's limit) or a positive number of tokens.
TRUNCATE_PROMPT_TOKENS_SCHEMA: dict[str, Any] = {
    "type": "integer",
    "anyOf": [{"enum": [-1]}, {"minimum": 1}],
    "description": (
        "vLLM's: keep this many tokens (special tokens included), on `truncation_side`; -1: "
        "the model's limit. Over the model's limit: 400."
    ),
}
_ENCODED_VECTOR: dict[str, Any] = {
    "anyOf": [
        {"type": "array", "items": {"type": "number"}},
        {"type": "string"},
        {
            "type": "object",
            "additionalProperties": {
                "anyOf": [{"type": "array", "items": {"type": "number"}}, {"type": "string"}]
            },
        },
    ],
    "description": "Floats, base64 bytes (float32 little-endian unless embed_dtype / "
    "endianness say otherwise), packed bits, or one of each type asked for.",
}
_SINGLE_EMBEDDING: dict[str, Any] = {
    "type": "object",
    "title": "Embedding",
    "required": ["object", "index", "embedding"],
    "properties": {
        "object": {"type": "string", "enum": ["embedding"]},
        "index": {"type": "integer"},
        "embedding": _ENCODED_VECTOR,
    },
}
# Jina's MultiEmbeddingData: one vector per token (return_multivector).
_MULTI_EMBEDDING: dict[str, Any] = {
    "type": "object",
    "title": "MultiEmbeddingData",
    "required": ["object", "index", "embeddings"],
    "properties": {
        "object": {"type": "string", "enum": ["embeddings"]},
        "index": {"type": "integer"},
        "embeddings": {
            "type": "array",
            "items": {
                "anyOf": [{"type": "array", "items": {"type": "number"}}, {"type": "string"}]
            },
            "description": "One vector per token the model read, special tokens included.",
        },
        "tokenized_input": {
            "type": "array",
            "items": {"type": "string"},
            "description": "The tokens, one per vector (return_tokenized_input).",
        },
    },
}


@extend_schema_field({"type": "array", "items": {"anyOf": [_SINGLE_EMBEDDING, _MULTI_EMBEDDING]}})
class EmbeddingDataField(serializers.JSONField):
    """Documentation only: `data` of an embeddings response, dense or multi-vector."""


Usage = inline_serializer(
    "Usage",
    {
        "total_tokens": serializers.IntegerField(),
        "prompt_tokens": serializers.IntegerField(),
        "image_tokens": serializers.IntegerField(required=False),
    },
)
EmbeddingResponse = inline_serializer(
    "EmbeddingResponse",
    {
        "object": serializers.CharField(default="list"),
        "model": serializers.CharField(),
        "data": EmbeddingDataField(),
        "usage": Usage,
    },
)
ErrorResponse = inline_serializer(
    "ErrorResponse",
    {
        "detail": serializers.CharField(),
        "code": serializers.CharField(
            help_text="e.g. INPUT_VALIDATION_ERROR, AUTH_INVALID_API_KEY"
        ),
        "request_id": serializers.CharField(),
        "error": inline_serializer(
            "OpenAIError",
            {
                "message": serializers.CharField(),
                "type": serializers.CharField(),
                "param": serializers.CharField(allow_null=True),
                "code": serializers.CharField(),
            },
        ),
    },
)
Model = inline_serializer(
    "Model",
    {
        "id": serializers.CharField(),
        "object": serializers.CharField(default="model"),
        "created": serializers.IntegerField(),
        "owned_by": serializers.CharField(),
        "name": serializers.CharField(),
        "hugging_face_id": serializers.CharField(),
        "description": serializers.CharField(),
        "input_modalities": serializers.ListField(child=serializers.CharField()),
        "output_modalities": serializers.ListField(child=serializers.CharField()),
        "context_length": serializers.IntegerField(help_text="Longest input, in tokens."),
        "max_output_length": serializers.IntegerField(help_text="The vector's dimensions."),
        "pricing": inline_serializer(
            "ModelPricing",
            {
                name: serializers.CharField(help_text=help_text)
                for name, help_text in (
                    ("prompt", "USD per input token."),
                    ("completion", "Always 0."),
                    ("image", "Always 0: images are priced as tokens (tiles)."),
                    ("request", "Always 0."),
                    ("input_cache_read", "Always 0."),
                    ("input_cache_write", "Always 0."),
                )
            },
        ),
        "dimensions": serializers.IntegerField(),
        "max_tokens": serializers.IntegerField(),
        "matryoshka": serializers.BooleanField(help_text="Trained for truncated `dimensions`."),
        "tasks": serializers.ListField(child=serializers.CharField()),
        "default_task": serializers.CharField(allow_null=True),
        "kind": serializers.CharField(help_text="embedding or reranker."),
        "operations": serializers.ListField(
            child=serializers.CharField(), help_text="The /v1 operations the model serves."
        ),
    },
)
ModelList = inline_serializer(
    "ModelList",
    {"object": serializers.CharField(default="list"), "data": Model.__class__(many=True)},
)
ERRORS = {
    400: ErrorResponse,
    401: ErrorResponse,
    403: ErrorResponse,
    429: ErrorResponse,
    503: ErrorResponse,
}
EMBEDDING_EXAMPLES = [
    OpenApiExample(
        "Jina",
        value={
            "model": "all-MiniLM-L6-v2",
            "input": ["Hello, world!", {"text": "A TextDoc"}],
            "normalized": True,
            "embedding_type": "float",
        },
        request_only=True,
    ),
    OpenApiExample(
        "OpenAI",
        value={"model": "all-MiniLM-L6-v2", "input": "Hello", "encoding_format": "base64"},
        request_only=True,
    ),
]


# POST /v1/tokenize answers in the shape of the field that carried the text.
_VLLM_TOKENIZE: dict[str, Any] = {
    "type": "object",
    "title": "VllmTokenizeResponse",
    "required": ["count", "max_model_len", "tokens"],
    "properties": {
        "count": {"type": "integer", "minimum": 0},
        "max_model_len": {"type": "integer"},
        "tokens": {"type": "array", "items": {"type": "integer", "minimum": 0}},
        "token_strs": {"anyOf": [{"type": "array", "items": {"type": "string"}}, {"type": "null"}]},
    },
}
_TEI_TOKEN: dict[str, Any] = {
    "type": "object",
    "required": ["id", "text", "special", "start", "stop"],
    "properties": {
        "id": {"type": "integer", "minimum": 0},
        "text": {"type": "string"},
        "special": {"type": "boolean"},
        "start": {"anyOf": [{"type": "integer"}, {"type": "null"}]},
        "stop": {"anyOf": [{"type": "integer"}, {"type": "null"}]},
    },
}
_TEI_TOKENIZE: dict[str, Any] = {
    "type": "array",
    "title": "TeiTokenizeResponse",
    "items": {"type": "array", "items": _TEI_TOKEN},
}
_JINA_SEGMENT: dict[str, Any] = {
    "type": "object",
    "title": "SegmenterResponse",
    "required": ["num_tokens", "tokenizer", "usage"],
    "properties": {
        "num_tokens": {"type": "integer", "minimum": 0},
        "tokenizer": {"type": "string"},
        "usage": {
            "type": "object",
            "required": ["tokens"],
            "properties": {"tokens": {"type": "integer", "enum": [0]}},
        },
        "tokens": {
            "type": "array",
            "items": {
                "type": "array",
                "prefixItems": [
                    {"type": "string"},
                    {"type": "array", "items": {"type": "integer"}},
                ],
                "minItems": 2,
                "maxItems": 2,
            },
        },
    },
}
TOKENIZE_RESPONSE_SCHEMA: dict[str, Any] = {
    "anyOf": [_VLLM_TOKENIZE, _TEI_TOKENIZE, _JINA_SEGMENT],
    "description": "vLLM's answer to `prompt`, TEI's to `inputs`, Jina's segmenter's to `content`.",
}

# What a serializer cannot say about its fields together, added to its component.
COMPONENT_CONSTRAINTS: dict[str, dict[str, Any]] = {
    # Jina's batch: the lines inline or a file's URL, exactly one of them.
    "JinaBatchRequest": {"oneOf": [{"required": ["input"]}, {"required": ["input_url"]}]},
    # The text in exactly one client's field: vLLM's, TEI's or Jina's segmenter's.
    "TokenizeRequest": {
        "oneOf": [{"required": ["prompt"]}, {"required": ["inputs"]}, {"required": ["content"]}]
    },
}


def _drop_doubled_request_suffix(result: dict[str, Any], schemas: dict[str, Any]) -> None:
    """`EmbeddingRequestRequest` → `EmbeddingRequest`: COMPONENT_SPLIT_REQUEST appends "Request"
    to every request component, and the request serializers' names already end with it. Every
    `$ref` to a renamed component follows it."""
    renames = {
        name: name.removesuffix("Request")
        for name in list(schemas)
        if name.endswith("RequestRequest") and name.removesuffix("Request") not in schemas
    }
    if not renames:
        return
    for old, new in renames.items():
        schemas[new] = schemas.pop(old)
    refs = {
        f"#/components/schemas/{old}": f"#/components/schemas/{new}" for old, new in renames.items()
    }

    def follow(node: Any) -> None:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref in refs:
                node["$ref"] = refs[ref]
            for value in node.values():
                follow(value)
        elif isinstance(node, list):
            for value in node:
                follow(value)

    follow(result)


def without_trailing_slash(result: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
    """Postprocessing hook: /v1 routes take an optional slash; document them without it. Adds
    COMPONENT_CONSTRAINTS, names request components without a doubled "Request", and writes the
    bounds that are settings."""
    result["paths"] = {path.rstrip("/"): item for path, item in result.get("paths", {}).items()}
    # A body whose fields are each optional is still required (`{}` at least): drf-spectacular
    # marks it optional, which would make "no body at all" valid.
    for item in result["paths"].values():
        for operation in item.values():
            if isinstance(operation, dict) and "requestBody" in operation:
                operation["requestBody"]["required"] = True
    schemas = result.get("components", {}).get("schemas", {})
    _drop_doubled_request_suffix(result, schemas)
    _bind_settings(result)
    for name, constraint in COMPONENT_CONSTRAINTS.items():
        for component in (name, f"{name}Request"):  # drf-spectacular's request components
            if component in schemas:
                schemas[component].update(constraint)
    return result

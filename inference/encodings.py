"""Output encodings of Jina's `embedding_type` and OpenAI's `encoding_format`.

- float: the float32 values;
- base64: little-endian float32 bytes, base64 (what the OpenAI SDK decodes by default);
- ubinary: sign bits (1 where the component > 0), packed MSB-first into uint8;
- binary: ubinary − 128 as int8.

vLLM's `embed_dtype` (float32, float16, bfloat16) rounds the values to that precision first, and
base64 then holds bytes of that dtype, in the byte order `endianness` asks (vLLM's
utils/serial_utils.py; bfloat16 rounds to nearest even, as torch does).
"""

from __future__ import annotations

import base64
from typing import Any

import numpy as np

EMBEDDING_TYPES = ("float", "base64", "binary", "ubinary")
EMBED_DTYPES = ("float32", "float16", "bfloat16")
ENDIANNESS = ("native", "little", "big")


def matryoshka(vectors: np.ndarray, *, dimensions: int | None, normalized: bool) -> np.ndarray:
    """Keep the first `dimensions` components, then L2-normalise when asked.

    A `dimensions` at or above the model's width gives the full vector: clients such as
    LangChain JS always send 1024, whatever the model.
    """
    if dimensions is not None and dimensions < vectors.shape[1]:
        vectors = vectors[:, :dimensions]
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if normalized:
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        vectors = vectors / np.maximum(norms, np.float32(1e-12))
    return vectors


def ubinary(vectors: np.ndarray) -> np.ndarray:
    return np.packbits(vectors > 0, axis=1)


def binary(vectors: np.ndarray) -> np.ndarray:
    return (ubinary(vectors).astype(np.int16) - 128).astype(np.int8)


def _bfloat16_bits(vectors: np.ndarray) -> np.ndarray:
    """The upper halves of the float32 values, rounded to nearest even: bfloat16 as uint16."""
    bits = np.ascontiguousarray(vectors, dtype=np.float32).view(np.uint32)
    rounding = ((bits >> 16) & 1) + np.uint32(0x7FFF)
    return ((bits + rounding) >> 16).astype(np.uint16)


def rounded(vectors: np.ndarray, embed_dtype: str) -> np.ndarray:
    """The float32 values rounded to `embed_dtype`'s precision (and back to float32)."""
    if embed_dtype == "float32":
        return vectors
    if embed_dtype == "float16":
        return vectors.astype(np.float16).astype(np.float32)
    if embed_dtype == "bfloat16":
        return (_bfloat16_bits(vectors).astype(np.uint32) << 16).view(np.float32)
    raise ValueError(f"unknown embed dtype {embed_dtype!r}")


def _base64_rows(vectors: np.ndarray, embed_dtype: str, endianness: str) -> list[str]:
    order = ">" if endianness == "big" else "<"
    if embed_dtype == "bfloat16":
        raw = _bfloat16_bits(vectors).astype(f"{order}u2", copy=False)
    else:
        raw = vectors.astype(f"{order}f{4 if embed_dtype == 'float32' else 2}", copy=False)
    return [base64.b64encode(row.tobytes()).decode("ascii") for row in raw]


def encode(
    vectors: np.ndarray,
    embedding_type: str,
    *,
    embed_dtype: str = "float32",
    endianness: str = "little",
) -> list[Any]:
    """One encoded embedding per row (numpy rows serialise straight to JSON lists)."""
    if embedding_type == "float":
        return list(rounded(vectors, embed_dtype))
    if embedding_type == "base64":
        return _base64_rows(vectors, embed_dtype, endianness)
    if embedding_type == "ubinary":
        return list(ubinary(vectors))
    if embedding_type == "binary":
        return list(binary(vectors))
    raise ValueError(f"unknown embedding type {embedding_type!r}")


def encode_all(
    vectors: np.ndarray,
    embedding_types: list[str],
    *,
    embed_dtype: str = "float32",
    endianness: str = "little",
) -> list[Any]:
    """One type: the encoded rows. Several: one `{type: encoded}` object per row."""
    options = {"embed_dtype": embed_dtype, "endianness": endianness}
    if len(embedding_types) == 1:
        return encode(vectors, embedding_types[0], **options)
    columns = {kind: encode(vectors, kind, **options) for kind in embedding_types}
    return [{kind: columns[kind][i] for kind in embedding_types} for i in range(len(vectors))]

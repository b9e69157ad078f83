"""Output encodings of Jina's `embedding_type` and OpenAI's `encoding_format`.

- float: the float32 values;
- base64: little-endian float32 bytes, base64 (what the OpenAI SDK decodes by default);
- ubinary: sign bits (1 where the component > 0), packed MSB-first into uint8;
- binary: ubinary − 128 as int8.
"""

from __future__ import annotations

import base64
from typing import Any

import numpy as np

EMBEDDING_TYPES = ("float", "base64", "binary", "ubinary")


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


def _base64_rows(vectors: np.ndarray) -> list[str]:
    little_endian = vectors.astype("<f4", copy=False)
    return [base64.b64encode(row.tobytes()).decode("ascii") for row in little_endian]


def encode(vectors: np.ndarray, embedding_type: str) -> list[Any]:
    """One encoded embedding per row (numpy rows serialise straight to JSON lists)."""
    if embedding_type == "float":
        return list(vectors)
    if embedding_type == "base64":
        return _base64_rows(vectors)
    if embedding_type == "ubinary":
        return list(ubinary(vectors))
    if embedding_type == "binary":
        return list(binary(vectors))
    raise ValueError(f"unknown embedding type {embedding_type!r}")


def encode_all(vectors: np.ndarray, embedding_types: list[str]) -> list[Any]:
    """One type: the encoded rows. Several: one `{type: encoded}` object per row."""
    if len(embedding_types) == 1:
        return encode(vectors, embedding_types[0])
    columns = {kind: encode(vectors, kind) for kind in embedding_types}
    return [{kind: columns[kind][i] for kind in embedding_types} for i in range(len(vectors))]

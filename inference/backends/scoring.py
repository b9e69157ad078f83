"""What a backend with the SCORE_PAIRS capability scores: (query, document) pairs."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PairItem:
    """One (query, document) pair as the model reads it (special tokens and segment ids
    included), and its texts for workers that tokenize themselves (`document` is what is left
    of the document after truncation)."""

    token_ids: list[int]
    type_ids: list[int]
    query: str
    document: str

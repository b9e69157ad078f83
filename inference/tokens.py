"""Token counting with the model's own fast tokenizer, so `usage` is exactly what the model runs."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import tokenizers


class InputTooLong(Exception):
    """An input has more tokens than the model takes and truncation was not asked for."""

    def __init__(self, index: int, count: int, limit: int) -> None:
        super().__init__(f"input[{index}] has {count} tokens; the limit is {limit}")
        self.index = index
        self.count = count
        self.limit = limit


class EmptyInput(Exception):
    """An input produced no tokens where one is needed (a late-chunking chunk)."""

    def __init__(self, index: int) -> None:
        super().__init__(f"input[{index}] has no tokens")
        self.index = index


@dataclass(frozen=True)
class LateChunkSequence:
    """All inputs as one sequence, and where each input's tokens lie in it."""

    ids: list[int]
    spans: list[tuple[int, int]]


class TextTokenizer:
    """A Hugging Face fast tokenizer (tokenizer.json) used for counting and for model input."""

    def __init__(self, tokenizer: tokenizers.Tokenizer) -> None:
        # tokenizer.json files often carry padding/truncation for training; the gateway decides.
        tokenizer.no_truncation()
        tokenizer.no_padding()
        self._tokenizer = tokenizer
        self.special_tokens = tokenizer.num_special_tokens_to_add(False)
        self.vocab_size = tokenizer.get_vocab_size(with_added_tokens=True)

    @classmethod
    def from_dir(cls, model_dir: Path) -> TextTokenizer:
        path = model_dir / "tokenizer.json"
        if not path.exists():
            raise FileNotFoundError(f"{path} not found: the model needs a fast tokenizer.json")
        return cls(tokenizers.Tokenizer.from_file(str(path)))

    def encode(self, texts: Sequence[str], *, max_tokens: int, truncate: bool) -> list[list[int]]:
        """Token ids with special tokens, one list per text; raises InputTooLong unless truncating."""
        encodings = self._tokenizer.encode_batch(list(texts), add_special_tokens=True)
        result: list[list[int]] = []
        for index, encoding in enumerate(encodings):
            ids = encoding.ids
            if len(ids) > max_tokens:
                if not truncate:
                    raise InputTooLong(index, len(ids), max_tokens)
                ids = self._truncated(texts[index], max_tokens)
            result.append(ids)
        return result

    def _truncated(self, text: str, max_tokens: int) -> list[int]:
        encoding = self._tokenizer.encode(text, add_special_tokens=False)
        encoding.truncate(max(max_tokens - self.special_tokens, 0))
        return self._tokenizer.post_process(encoding).ids

    def encode_late_chunks(self, texts: Sequence[str], *, max_tokens: int) -> LateChunkSequence:
        """The texts as one sequence (special tokens once, around the whole) and each text's span.

        Late chunking (Günther et al., 2024): the model reads all chunks in one context and each
        chunk's vector is pooled from its own tokens only.
        """
        encodings = self._tokenizer.encode_batch(list(texts), add_special_tokens=False)
        for index, encoding in enumerate(encodings):
            if not encoding.ids:
                raise EmptyInput(index)
        merged = self._tokenizer.post_process(
            tokenizers.Encoding.merge(encodings, growing_offsets=True)
        )
        if len(merged.ids) > max_tokens:
            raise InputTooLong(0, len(merged.ids), max_tokens)
        start = merged.special_tokens_mask.index(0)
        spans = []
        for encoding in encodings:
            spans.append((start, start + len(encoding.ids)))
            start += len(encoding.ids)
        return LateChunkSequence(ids=merged.ids, spans=spans)

"""Token counting with the model's own fast tokenizer, so `usage` is exactly what the model runs.

Counting is bounded work whatever an input's size: a long text is tokenized only up to a cut
(a multiple of the token limit, in characters), and the tokens before a point the rest of the
text cannot change are used as they are. See `_stable_count` for when that is exact.
"""

from __future__ import annotations

import json
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import tokenizers

# The first cut is this many characters per token wanted (English runs about 4-5 per token with
# BERT's vocabulary); a cut that falls short is doubled.
CHARS_PER_TOKEN = 6
# Characters before the cut that its neighbourhood may still change (a look-ahead, a Hangul
# jamo that composes with the next one); the stable point is at least this far before it.
CUT_MARGIN = 32
# How far back from the margin to look for a character that starts a new grapheme (a starter);
# past a longer run of combining marks the cut is simply doubled.
STARTER_SEARCH = 256


class InputTooLong(Exception):
    """An input has more tokens than the model takes and truncation was not asked for.

    `count` is the exact number of tokens (special tokens included) when `exact`; otherwise it
    is a lower bound: counting stopped once the input had proved longer than `limit`, and the
    input has at least `count` tokens.
    """

    def __init__(self, index: int, count: int, limit: int, *, exact: bool = True) -> None:
        tokens = f"{count} tokens" if exact else f"at least {count} tokens"
        super().__init__(f"input[{index}] has {tokens}; the limit is {limit}")
        self.index = index
        self.count = count
        self.limit = limit
        self.exact = exact


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


@dataclass(frozen=True)
class _Counted:
    """A text's tokens without special tokens: of the whole text, or of a cut of it."""

    encoding: tokenizers.Encoding
    stable: int  # leading tokens of `encoding` the whole text's tokens begin with (all if whole)
    whole: bool


class TextTokenizer:
    """A Hugging Face fast tokenizer (tokenizer.json) used for counting and for model input."""

    def __init__(
        self,
        tokenizer: tokenizers.Tokenizer,
        *,
        truncation_side: Literal["left", "right"] = "right",
    ) -> None:
        # tokenizer.json files often carry padding/truncation for training; the gateway decides.
        tokenizer.no_truncation()
        tokenizer.no_padding()
        self._tokenizer = tokenizer
        self.special_tokens = tokenizer.num_special_tokens_to_add(False)
        self.vocab_size = tokenizer.get_vocab_size(with_added_tokens=True)
        # The side Hugging Face's tokenizer cuts by default (tokenizer_config.json), which vLLM's
        # truncate_prompt_tokens follows when the request names none.
        self.truncation_side: Literal["left", "right"] = truncation_side

    @classmethod
    def from_dir(cls, model_dir: Path) -> TextTokenizer:
        path = model_dir / "tokenizer.json"
        if not path.exists():
            raise FileNotFoundError(f"{path} not found: the model needs a fast tokenizer.json")
        side: Literal["left", "right"] = "right"
        config = model_dir / "tokenizer_config.json"
        if config.exists():
            try:
                if json.loads(config.read_text()).get("truncation_side") == "left":
                    side = "left"
            except (OSError, ValueError, AttributeError):
                pass  # an unreadable config: Hugging Face's default side
        return cls(tokenizers.Tokenizer.from_file(str(path)), truncation_side=side)

    def encode_keeping(
        self, texts: Sequence[str], *, keep: int, side: Literal["left", "right"] | None
    ) -> list[list[int]]:
        """vLLM's truncate_prompt_tokens: at most `keep` token ids per text, special tokens
        included. With no side named, as Hugging Face's tokenizer truncates (its own side;
        special tokens stay, the text is cut); with a side, the whole sequence sliced there
        (`right` keeps the first `keep` ids, `left` the last), as vLLM slices it."""
        if side is None:
            if self.truncation_side == "right":
                return self.encode(texts, max_tokens=keep, truncate=True)
            content = max(keep - self.special_tokens, 0)
            result = []
            for encoding in self._tokenizer.encode_batch(list(texts), add_special_tokens=False):
                encoding.truncate(content, direction="left")
                result.append(self._tokenizer.post_process(encoding).ids)
            return result
        if side == "right":
            return [ids[:keep] for ids in self.encode(texts, max_tokens=keep + 1, truncate=True)]
        encodings = self._tokenizer.encode_batch(list(texts), add_special_tokens=True)
        return [encoding.ids[-keep:] for encoding in encodings]

    def token_strings(self, ids: Sequence[int]) -> list[str]:
        """Each id's token as the vocabulary spells it ("##ing", "[CLS]")."""
        return [self._tokenizer.id_to_token(token_id) or "" for token_id in ids]

    def tokenize(self, text: str, *, add_special_tokens: bool = True) -> tokenizers.Encoding:
        """The whole text's encoding (ids, tokens, offsets, which are special); the caller
        bounds the text's size."""
        return self._tokenizer.encode(text, add_special_tokens=add_special_tokens)

    def encode(self, texts: Sequence[str], *, max_tokens: int, truncate: bool) -> list[list[int]]:
        """Token ids with special tokens, one list per text; raises InputTooLong unless truncating.

        The ids are exactly those of tokenizing each whole text (and truncating it to
        `max_tokens`), but a long text is read only as far as that needs.
        """
        content = max(max_tokens - self.special_tokens, 0)
        if truncate:
            counted = self._count(texts, wanted=content, until="each")
        else:  # one token more than fits proves an input too long; the first such ends the reading
            counted = self._count(texts, wanted=content + 1, until="first")
            for index, text_count in enumerate(counted):
                if text_count.stable > content:
                    raise InputTooLong(
                        index,
                        text_count.stable + self.special_tokens,
                        max_tokens,
                        exact=text_count.whole,
                    )
        result: list[list[int]] = []
        for text_count in counted:
            text_count.encoding.truncate(content)
            result.append(self._tokenizer.post_process(text_count.encoding).ids)
        return result

    def encode_late_chunks(self, texts: Sequence[str], *, max_tokens: int) -> LateChunkSequence:
        """The texts as one sequence (special tokens once, around the whole) and each text's span.

        Late chunking (Günther et al., 2024): the model reads all chunks in one context and each
        chunk's vector is pooled from its own tokens only.
        """
        content = max(max_tokens - self.special_tokens, 0)
        counted = self._count(texts, wanted=content + 1, until="total")
        for index, text_count in enumerate(counted):
            if text_count.whole and not text_count.encoding.ids:
                raise EmptyInput(index)
        total = sum(text_count.stable for text_count in counted)
        if total > content:
            exact = all(text_count.whole for text_count in counted)
            raise InputTooLong(0, total + self.special_tokens, max_tokens, exact=exact)
        encodings = [text_count.encoding for text_count in counted]
        merged = self._tokenizer.post_process(
            tokenizers.Encoding.merge(encodings, growing_offsets=True)
        )
        start = merged.special_tokens_mask.index(0)
        spans = []
        for encoding in encodings:
            spans.append((start, start + len(encoding.ids)))
            start += len(encoding.ids)
        return LateChunkSequence(ids=merged.ids, spans=spans)

    def _count(
        self, texts: Sequence[str], *, wanted: int, until: Literal["each", "first", "total"]
    ) -> list[_Counted]:
        """Each text tokenized whole, or far enough to show `wanted` tokens that stay.

        Texts are cut at a multiple of `wanted` characters and the cuts tokenized together (the
        batch API); a cut that does not yet show `wanted` stable tokens is doubled, up to the
        whole text. Reading stops when `until` is met: "each" text is whole or shows `wanted`
        tokens; the "first" text to show `wanted` tokens ends the reading of the texts after it
        (those before it are still read to the end); the texts show `wanted` tokens in "total".
        Texts whose reading stopped keep the tokens their last cut settled.
        """
        counted: dict[int, _Counted] = {}
        first_cut = (wanted + 1) * CHARS_PER_TOKEN + 4 * CUT_MARGIN
        cuts = dict.fromkeys(range(len(texts)), first_cut)
        while cuts:
            order = sorted(cuts)
            encodings = self._tokenizer.encode_batch(
                [texts[index][: cuts[index]] for index in order], add_special_tokens=False
            )
            for index, encoding in zip(order, encodings, strict=True):
                text, cut = texts[index], cuts[index]
                if cut >= len(text):
                    counted[index] = _Counted(encoding, stable=len(encoding.ids), whole=True)
                    del cuts[index]
                    continue
                stable = _stable_count(encoding, text, cut)
                counted[index] = _Counted(encoding, stable=stable, whole=False)
                if stable >= wanted:
                    del cuts[index]
                else:
                    cuts[index] = cut * 2
            if until == "first":
                enough = [index for index, c in counted.items() if c.stable >= wanted]
                if enough:
                    cuts = {index: cut for index, cut in cuts.items() if index < min(enough)}
            elif until == "total" and sum(c.stable for c in counted.values()) >= wanted:
                cuts = {}
        return [counted[index] for index in range(len(texts))]


def _stable_count(encoding: tokenizers.Encoding, text: str, cut: int) -> int:
    """How many leading tokens of `text[:cut]`'s encoding the whole text's encoding shares.

    The pre-tokenizer splits the text into words and the model tokenizes each word on its own,
    so every word before the one that may run on past the cut is settled, provided the text up to
    where the next word begins is normalized the same with or without what follows the cut.
    That holds before a starter (a character with canonical combining class 0): normalizers
    decompose, lowercase or map characters one at a time and reorder only runs of combining
    marks, which a starter ends; the margin covers what looks a few characters ahead. A word is
    settled once the word after it begins before that starter, however long the word is (a
    WordPiece word over 100 characters is one [UNK], so a word cut short would differ).
    """
    boundary = _starter_before(text, cut - CUT_MARGIN)
    if boundary <= 0:
        return 0
    # The word of the last character before the boundary that belongs to a word begins last.
    for position in range(boundary - 1, max(boundary - 1 - STARTER_SEARCH, -1), -1):
        word = encoding.char_to_word(position)
        if word is not None:
            span = encoding.word_to_tokens(word)
            return span[0] if span else 0
    # A long run of spaces (or of characters normalized away): look through all the tokens.
    words = encoding.word_ids
    offsets = encoding.offsets
    for position in range(len(words) - 1, 0, -1):
        word = words[position]
        if word is None:  # a tokenizer without words: nothing is settled before the end
            return 0
        if word != words[position - 1] and offsets[position][0] < boundary:
            return position  # the tokens before the first one of a word that begins in time
    return 0


def _starter_before(text: str, end: int) -> int:
    """The last position at or before `end` that holds a starter, or 0 when none is near."""
    for position in range(end, max(end - STARTER_SEARCH, 0), -1):
        if unicodedata.combining(text[position]) == 0:
            return position
    return 0

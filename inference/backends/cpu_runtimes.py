"""The CPU backend for a registry entry's runtime: torch, or ONNX Runtime (fp32 or int8).

Its own module so that cpu.py need not know onnx.py, which builds on it.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from inference.backends.cpu import TransformersCpuBackend
from inference.backends.onnx import OnnxCpuBackend


def cpu_backend_for(
    *,
    model_dir: Path,
    runtime: str = "torch",
    pooling: str = "mean",
    num_threads: int = 0,
    batch_wait: float | None = None,
    max_batch_tokens: int = 2048,
    max_queued_tokens: int | None = None,
    cache_dir: Path | None = None,
    label: str = "",
) -> TransformersCpuBackend:
    """The CPU backend for a runtime: torch, onnx or onnx-int8 (ONNX falls back to torch when
    its vectors drift from torch's)."""
    common: dict[str, Any] = {
        "model_dir": model_dir,
        "pooling": pooling,
        "num_threads": num_threads,
        "batch_wait": batch_wait,
        "max_batch_tokens": max_batch_tokens,
        "max_queued_tokens": max_queued_tokens,
        "label": label,
    }
    if runtime == "torch":
        return TransformersCpuBackend(**common)
    if runtime in ("onnx", "onnx-int8"):
        return OnnxCpuBackend(
            **common,
            cache_dir=cache_dir or Path(tempfile.gettempdir()) / "embeddings-onnx",
            quantize=runtime == "onnx-int8",
        )
    raise ValueError(f"unknown CPU runtime {runtime!r}")

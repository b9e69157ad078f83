"""The CPU backend on ONNX Runtime, optionally with int8 weights.

The encoder is exported from the same transformers checkpoint once, then run by onnxruntime;
pooling is the torch backend's. Exports are cached in a directory that processes may share
(ONNX_CACHE_DIR): a file is named by a hash of the checkpoint's contents and of the exporter's
versions, written by one process at a time under a lock and renamed into place whole. At load the two runtimes
embed the same probe texts and the ONNX path is kept only if every cosine is at least
`min_cosine` — otherwise the backend falls back to torch and says so in its health.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import tempfile
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np

from inference.backends.base import BackendError, BackendHealth, EmbedItem
from inference.backends.cpu import TransformersCpuBackend, _import_torch

logger = logging.getLogger(__name__)

PROBES = [
    "The quick brown fox jumps over the lazy dog.",
    "Embeddings turn text into vectors that can be compared with cosine similarity.",
    "Kurz.",
    "数据库中的向量检索",
    " ".join(["A longer passage about retrieval, batching and latency."] * 12),
]


def _import_onnxruntime() -> Any:
    try:
        import onnxruntime
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise BackendError(
            "The onnx runtime needs onnxruntime and onnx: `pip install onnxruntime onnx` (see README)."
        ) from exc
    return onnxruntime


# Bump when the export code changes what it writes: old cache entries are then left unused.
EXPORT_FORMAT = "1"
EXPORTER_PACKAGES = ("torch", "transformers", "onnxruntime")


def export_key(model_dir: Path) -> str:
    """A hash of what an export depends on: the checkpoint's config and weights (their bytes,
    not their path, so copies of one checkpoint share an entry) and the exporter's versions."""
    weights = sorted(model_dir.glob("*.safetensors")) or sorted(model_dir.glob("*.bin"))
    digest = hashlib.sha256(f"format {EXPORT_FORMAT}\n".encode())
    for package in EXPORTER_PACKAGES:
        digest.update(f"{package} {version(package)}\n".encode())
    for path in [model_dir / "config.json", *weights]:
        with path.open("rb") as file:
            digest.update(path.name.encode() + hashlib.file_digest(file, "sha256").digest())
    return digest.hexdigest()


def write_once(target: Path, write: Callable[[Path], None]) -> Path:
    """`target`, made by `write(partial)` if it is missing. Processes that share the cache take
    turns on a lock file (the others then find the file made), and each writes to a private
    temporary name renamed into place, so a crash or a concurrent reader never sees half a file."""
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with target.with_name(target.name + ".lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if target.exists():
            return target
        handle, name = tempfile.mkstemp(dir=target.parent, prefix=target.name + ".", suffix=".part")
        os.close(handle)
        partial = Path(name)
        try:
            write(partial)
            os.replace(partial, target)
        finally:
            partial.unlink(missing_ok=True)
    return target


def _quantize(plain: Path, partial: Path) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # Per-channel int8 weights of the MatMuls only: the least lossy dynamic scheme (whole-graph
    # per-tensor int8 left MiniLM at cosine 0.78 against torch).
    quantize_dynamic(
        str(plain),
        str(partial),
        weight_type=QuantType.QInt8,
        per_channel=True,
        op_types_to_quantize=["MatMul"],
    )


def _last_hidden_state(model: Any) -> Any:
    """The encoder as the exporter wants it: two tensors in, the last hidden state out.
    (A class made at export time: defined at import, it made importing this module, and so
    every Django start, import torch.)"""

    class LastHiddenState(_import_torch().nn.Module):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids: Any, attention_mask: Any) -> Any:
            return self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    return LastHiddenState()


class OnnxCpuBackend(TransformersCpuBackend):
    """TransformersCpuBackend whose forward pass runs in onnxruntime (fp32 or int8 weights)."""

    def __init__(
        self,
        *,
        model_dir: Path,
        cache_dir: Path,
        quantize: bool = False,
        min_cosine: float = 0.999,
        **kwargs: Any,
    ) -> None:
        super().__init__(model_dir=model_dir, **kwargs)
        self.cache_dir = cache_dir
        self.quantize = quantize
        self.min_cosine = min_cosine
        self._session: Any = None
        self.probe_cosine: float | None = None
        self.fell_back = ""

    @property
    def runtime(self) -> str:
        if self._session is None:
            return "torch"
        return "onnx-int8" if self.quantize else "onnx"

    def _export(self) -> Path:
        """The ONNX file for this checkpoint: exported once into the cache, then reused."""
        # Named by content alone: copies of a checkpoint at other paths share the entry.
        base = self.cache_dir / f"encoder-{export_key(self.model_dir)[:24]}"
        plain = write_once(base.with_suffix(".onnx"), self._export_plain)
        if not self.quantize:
            return plain
        return write_once(
            base.with_name(base.name + "-int8").with_suffix(".onnx"),
            lambda partial: _quantize(plain, partial),
        )

    def _export_plain(self, partial: Path) -> None:
        torch = _import_torch()
        from transformers import AutoModel

        # Eager attention, and a dummy batch with padding: traced with an all-ones mask,
        # the graph would leave masking out and pool padding into the vectors.
        eager = AutoModel.from_pretrained(
            str(self.model_dir), dtype=torch.float32, attn_implementation="eager"
        ).eval()
        dummy_ids = torch.ones((2, 8), dtype=torch.long)
        dummy_mask = torch.ones((2, 8), dtype=torch.long)
        dummy_mask[1, 5:] = 0
        torch.onnx.export(
            _last_hidden_state(eager),
            (dummy_ids, dummy_mask),
            str(partial),
            input_names=["input_ids", "attention_mask"],
            output_names=["last_hidden_state"],
            dynamic_axes={
                "input_ids": {0: "batch", 1: "sequence"},
                "attention_mask": {0: "batch", 1: "sequence"},
                "last_hidden_state": {0: "batch", 1: "sequence"},
            },
            opset_version=17,
            dynamo=False,  # the TorchScript exporter handles BERT without onnxscript
        )

    def load(self) -> None:
        super().load()  # the torch model: the exporter's source and the quality reference
        ort = _import_onnxruntime()
        path = self._export()
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if self.num_threads:
            options.intra_op_num_threads = self.num_threads
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self._check_against_torch(session)

    def _check_against_torch(self, session: Any) -> None:
        from tokenizers import Tokenizer

        tokenizer = Tokenizer.from_file(str(self.model_dir / "tokenizer.json"))
        tokenizer.enable_truncation(256)
        items = [EmbedItem(token_ids=encoding.ids) for encoding in tokenizer.encode_batch(PROBES)]
        reference = np.concatenate(self._forward(items))
        self._session = session
        candidate = np.concatenate(self._forward(items))
        cosine = np.sum(reference * candidate, axis=1) / (
            np.linalg.norm(reference, axis=1) * np.linalg.norm(candidate, axis=1)
        )
        self.probe_cosine = float(cosine.min())
        if self.probe_cosine < self.min_cosine:
            self._session = None
            self.fell_back = (
                f"{'int8 ' if self.quantize else ''}ONNX cosine {self.probe_cosine:.5f} < {self.min_cosine}: "
                "running on torch"
            )
            logger.warning("%s: %s", self.model_dir, self.fell_back)
        else:
            logger.info(
                "%s on %s (probe cosine vs torch %.6f)",
                self.model_dir,
                self.runtime,
                self.probe_cosine,
            )

    def _hidden(self, input_ids: Any, mask: Any) -> Any:
        if self._session is None:
            return super()._hidden(input_ids, mask)
        torch = _import_torch()
        (hidden,) = self._session.run(
            ["last_hidden_state"], {"input_ids": input_ids.numpy(), "attention_mask": mask.numpy()}
        )
        return torch.from_numpy(hidden)

    def health(self) -> BackendHealth:
        base = super().health()
        if not base.ok:
            return base
        detail = (
            self.fell_back
            or f"loaded on cpu ({self.runtime}, probe cosine {self.probe_cosine:.5f})"
        )
        return BackendHealth(ok=True, detail=detail)

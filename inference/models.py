from __future__ import annotations

from decimal import Decimal

from django.core.exceptions import ValidationError
from django.db import models

# Jina's task names (EmbeddingsV3Request.task); a model maps the ones it supports to a prefix.
KNOWN_MODALITIES = ("text", "image")


def _validate_tasks(value: object) -> None:
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and k and isinstance(v, str) for k, v in value.items()
    ):
        raise ValidationError(
            'Tasks must be an object of task name → prefix, e.g. {"retrieval.query": "query: "}.'
        )


def _validate_modalities(value: object) -> None:
    if not isinstance(value, list) or not value or any(m not in KNOWN_MODALITIES for m in value):
        raise ValidationError(f"Modalities must be a non-empty list drawn from {KNOWN_MODALITIES}.")


def _default_modalities() -> list[str]:
    return ["text"]


class EmbeddingModel(models.Model):
    """A model in the registry: which backend serves it and what requests it accepts."""

    class Backend(models.TextChoices):
        CPU = "cpu", "In-process CPU (transformers)"
        CLIP = "clip", "In-process CPU CLIP (transformers, text and images)"
        VLLM = "vllm", "vLLM workers (OpenAI-compatible embedding servers)"

    class Kind(models.TextChoices):
        EMBEDDING = "embedding", "Embedding model (embeddings; reranks by cosine)"
        RERANKER = "reranker", "Cross-encoder reranker (sequence classification, one score)"

    class Runtime(models.TextChoices):
        TORCH = "torch", "PyTorch"
        ONNX = "onnx", "ONNX Runtime (falls back to torch if its vectors drift)"
        ONNX_INT8 = "onnx-int8", "ONNX Runtime, int8 weights (falls back to torch if they drift)"

    class Pooling(models.TextChoices):
        MEAN = "mean", "Mean of token vectors"
        CLS = "cls", "First ([CLS]) token"
        LAST = "last", "Last token"

    name = models.CharField(max_length=100, unique=True, help_text="What clients send as `model`.")
    hugging_face_id = models.CharField(max_length=200, blank=True, db_index=True)
    description = models.TextField(blank=True)
    kind = models.CharField(
        max_length=20,
        choices=Kind.choices,
        default=Kind.EMBEDDING,
        help_text="A reranker is a Hugging Face sequence-classification checkpoint with one "
        "label (dimensions 1): it serves /v1/rerank only.",
    )
    backend = models.CharField(max_length=20, choices=Backend.choices, default=Backend.CPU)
    source = models.CharField(
        max_length=500,
        help_text="Model directory, or `package:<python package>` for a model shipped on PyPI.",
    )
    dimensions = models.PositiveIntegerField()
    max_tokens = models.PositiveIntegerField(help_text="Longest input, special tokens included.")
    matryoshka = models.BooleanField(
        default=False, help_text="Trained for truncated `dimensions` (any model accepts them)."
    )
    pooling = models.CharField(max_length=10, choices=Pooling.choices, default=Pooling.MEAN)
    runtime = models.CharField(
        max_length=10,
        choices=Runtime.choices,
        default=Runtime.TORCH,
        help_text="CPU backend only: what runs the forward pass (bench/cpu_backend.py compares).",
    )
    tasks = models.JSONField(default=dict, blank=True, validators=[_validate_tasks])
    default_task = models.CharField(max_length=50, blank=True)
    modalities = models.JSONField(default=_default_modalities, validators=[_validate_modalities])
    image_tile_size = models.PositiveIntegerField(
        null=True, blank=True, help_text="Image models: tile edge in pixels (jina-clip-v2: 512)."
    )
    tokens_per_tile = models.PositiveIntegerField(
        null=True,
        blank=True,
        help_text="Image models: tokens billed per tile (jina-clip-v2: 4000).",
    )
    price_per_million_tokens = models.DecimalField(
        max_digits=12, decimal_places=6, default=Decimal("0.05"), help_text="USD per 1M tokens."
    )
    enabled = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    def clean(self) -> None:
        if self.default_task and self.default_task not in (self.tasks or {}):
            raise ValidationError(
                {"default_task": "The default task must be one of the model's tasks."}
            )
        if self.accepts_images and not (self.image_tile_size and self.tokens_per_tile):
            raise ValidationError("An image model needs a tile size and tokens per tile.")
        if self.is_reranker:
            if self.backend == self.Backend.CLIP:
                raise ValidationError({"backend": "A reranker runs on the cpu or vllm backend."})
            if self.dimensions != 1:
                raise ValidationError({"dimensions": "A reranker gives one score: dimensions 1."})
            if self.accepts_images:
                raise ValidationError({"modalities": "A reranker reads text only."})

    @property
    def is_reranker(self) -> bool:
        return self.kind == self.Kind.RERANKER

    @property
    def operations(self) -> list[str]:
        """The /v1 operations this model serves: an embedding model also reranks (by cosine),
        classifies (zero-shot, and few-shot once trained) and tokenizes; a reranker (a
        cross-encoder) only scores pairs."""
        if self.is_reranker:
            return ["rerank"]
        return ["embeddings", "rerank", "classify", "train", "tokenize"]

    @property
    def accepts_images(self) -> bool:
        return "image" in (self.modalities or [])


class Worker(models.Model):
    """An OpenAI-compatible embedding server (a vLLM worker) that serves one registry model.

    Launcher workers register themselves and heartbeat; they count only while their heartbeat
    is fresh. Operator workers (an existing vLLM or TEI, added in the admin or by CLI) count
    while enabled. Either way the gateway checks their health itself.
    """

    class Source(models.TextChoices):
        LAUNCHER = "launcher", "Registered by run_worker (heartbeats)"
        OPERATOR = "operator", "Registered by an operator"

    model = models.ForeignKey(EmbeddingModel, on_delete=models.CASCADE, related_name="workers")
    url = models.URLField(help_text="Base URL, e.g. http://gpu-1.internal:8001")
    served_model_name = models.CharField(
        max_length=200,
        blank=True,
        help_text="`model` to send to the worker (default: the registry name).",
    )
    accepts_token_ids = models.BooleanField(
        default=True,
        help_text="Send token ids (vLLM) so the worker does not tokenize again; off for servers that take text only.",
    )
    source = models.CharField(max_length=10, choices=Source.choices, default=Source.OPERATOR)
    enabled = models.BooleanField(default=True)
    last_heartbeat_at = models.DateTimeField(null=True, blank=True)
    health_state = models.CharField(max_length=20, default="unknown")
    health_detail = models.CharField(max_length=255, blank=True)
    health_checked_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["model__name", "url"]
        constraints = [
            models.UniqueConstraint(fields=["model", "url"], name="worker_unique_url_per_model")
        ]

    def __str__(self) -> str:
        return f"{self.model.name} @ {self.url}"

    @property
    def served_name(self) -> str:
        return self.served_model_name or self.model.name

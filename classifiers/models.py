"""Few-shot classifiers trained by a key's owner over a model's embeddings."""

from __future__ import annotations

import uuid

import numpy as np
from django.db import models

from billing.models import User
from classifiers.logistic import SoftmaxRegression


class Classifier(models.Model):
    """A softmax regression over one model's unit-length embeddings, with the examples it was
    trained on (an update retrains on all of them, from the previous weights).

    It belongs to a user (the owner of the key that trained it), not to one key: any of the
    owner's keys may use, update, list and delete it; other users may only classify with a
    public one.
    """

    class Access(models.TextChoices):
        PRIVATE = "private", "Private (the owner's keys only)"
        PUBLIC = "public", "Public (any key may classify with it)"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    owner = models.ForeignKey(User, on_delete=models.CASCADE, related_name="classifiers")
    model = models.CharField(max_length=200, help_text="The embedding model's registry name.")
    dimensions = models.PositiveIntegerField(help_text="Of the embeddings it was trained on.")
    access = models.CharField(max_length=10, choices=Access.choices, default=Access.PRIVATE)
    labels = models.JSONField(default=list, help_text="Class names, in the weights' row order.")
    # float32, little-endian: weights (labels × dimensions), bias (labels), and the examples'
    # embeddings (samples × dimensions) with their label indexes (int32).
    weights = models.BinaryField()
    bias = models.BinaryField()
    examples = models.BinaryField()
    example_labels = models.BinaryField()
    num_samples = models.PositiveIntegerField(default=0)
    updated_number = models.PositiveIntegerField(default=0)
    used_number = models.PositiveIntegerField(default=0)
    used_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-created_at", "id"]
        indexes = [models.Index(fields=["owner", "created_at"])]

    def __str__(self) -> str:
        return f"{self.id} ({self.model}, {len(self.labels)} labels)"

    @property
    def regression(self) -> SoftmaxRegression:
        rows = len(self.labels)
        return SoftmaxRegression(
            weights=np.frombuffer(bytes(self.weights), "<f4").reshape(rows, self.dimensions),
            bias=np.frombuffer(bytes(self.bias), "<f4"),
        )

    @property
    def training_set(self) -> tuple[np.ndarray, np.ndarray]:
        """The examples' embeddings (rows) and label indexes."""
        x = np.frombuffer(bytes(self.examples), "<f4").reshape(-1, self.dimensions)
        return x, np.frombuffer(bytes(self.example_labels), "<i4")

"""Multinomial logistic regression on unit-length embeddings, in numpy.

A few-shot classifier is a softmax over `weights @ x + bias`. Training is full-batch gradient
descent with Adam steps and a little L2, warm-started from the classifier's previous weights
when it is updated. Each of `num_iters` iterations is one pass over all the examples (one
step), so Jina's iteration count keeps its meaning — more passes, a closer fit — and training
is a bounded, deterministic amount of work: num_iters × examples × labels × dimensions.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

LEARNING_RATE = 0.1
L2 = 1e-4
_BETA1, _BETA2, _EPS = 0.9, 0.999, 1e-8


@dataclass(frozen=True)
class SoftmaxRegression:
    """Weights (classes × dimensions) and biases (classes) of a trained classifier."""

    weights: np.ndarray
    bias: np.ndarray

    @property
    def classes(self) -> int:
        return int(self.weights.shape[0])

    @property
    def dimensions(self) -> int:
        return int(self.weights.shape[1])

    def probabilities(self, x: np.ndarray) -> np.ndarray:
        """Rows of class probabilities for rows of unit-length embeddings."""
        return softmax(x @ self.weights.T + self.bias)

    def with_classes(self, classes: int) -> SoftmaxRegression:
        """The same weights with zero rows for labels added since they were trained."""
        extra = classes - self.classes
        if extra <= 0:
            return self
        return SoftmaxRegression(
            weights=np.vstack([self.weights, np.zeros((extra, self.dimensions), np.float32)]),
            bias=np.concatenate([self.bias, np.zeros(extra, np.float32)]),
        )


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax, stable for any logits."""
    shifted = logits - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=-1, keepdims=True)


def unit_rows(x: np.ndarray) -> np.ndarray:
    """Rows scaled to length 1 (a zero row stays zero)."""
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.where(norms == 0, 1, norms)).astype(np.float32)


def softmax_regression_fit(
    *,
    x: np.ndarray,
    y: np.ndarray,
    classes: int,
    iterations: int,
    start: SoftmaxRegression | None = None,
) -> SoftmaxRegression:
    """Fit to rows `x` (unit length) with class indexes `y`, from `start` or from zero."""
    n, dimensions = x.shape
    initial = (start or _zero(classes, dimensions)).with_classes(classes)
    weights = initial.weights.astype(np.float32)
    bias = initial.bias.astype(np.float32)
    targets = np.zeros((n, classes), np.float32)
    targets[np.arange(n), y] = 1.0
    moments = [np.zeros_like(weights), np.zeros_like(bias)]
    squares = [np.zeros_like(weights), np.zeros_like(bias)]
    for step in range(1, iterations + 1):
        error = (softmax(x @ weights.T + bias) - targets) / n
        gradients = [error.T @ x + L2 * weights, error.sum(axis=0)]
        for parameter, gradient, moment, square in zip(
            (weights, bias), gradients, moments, squares, strict=True
        ):
            moment *= _BETA1
            moment += (1 - _BETA1) * gradient
            square *= _BETA2
            square += (1 - _BETA2) * gradient**2
            corrected = moment / (1 - _BETA1**step)
            parameter -= LEARNING_RATE * corrected / (np.sqrt(square / (1 - _BETA2**step)) + _EPS)
    return SoftmaxRegression(weights=weights.astype(np.float32), bias=bias.astype(np.float32))


def _zero(classes: int, dimensions: int) -> SoftmaxRegression:
    return SoftmaxRegression(
        weights=np.zeros((classes, dimensions), np.float32), bias=np.zeros(classes, np.float32)
    )

"""Reads of classifiers: a user sees their own; anyone may classify with a public one."""

from __future__ import annotations

import uuid

from django.db.models import Q, QuerySet

from classifiers.models import Classifier

# A classifier's training examples are read only to retrain it (classifier_train locks and
# reads the whole row); every other read leaves them, up to megabytes, in the database.
_EXAMPLES = ("examples", "example_labels")


def _classifier_uuid(classifier_id: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(classifier_id)
    except ValueError:
        return None


def classifier_get_owned(*, owner_id: int, classifier_id: str) -> Classifier | None:
    """The owner's classifier by id, or None (for another user's too: its existence is not theirs
    to learn)."""
    pk = _classifier_uuid(classifier_id)
    if pk is None:
        return None
    return Classifier.objects.filter(pk=pk, owner_id=owner_id).defer(*_EXAMPLES).first()


def classifier_get_usable(*, user_id: int, classifier_id: str) -> Classifier | None:
    """A classifier this user may classify with: their own, or a public one."""
    pk = _classifier_uuid(classifier_id)
    if pk is None:
        return None
    return (
        Classifier.objects.filter(pk=pk)
        .defer(*_EXAMPLES)
        .filter(Q(owner_id=user_id) | Q(access=Classifier.Access.PUBLIC))
        .first()
    )


def classifier_list(*, owner_id: int) -> QuerySet[Classifier]:
    """The owner's classifiers, newest first (others' public ones are not listed)."""
    return Classifier.objects.filter(owner_id=owner_id).defer(*_EXAMPLES, "weights", "bias")

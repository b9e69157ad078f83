"""Request bodies validated by serializers built once per thread, not once per request.

Building a DRF serializer deep-copies every declared field (about twenty for an embeddings
request), which costs several times what validating a one-text body does. Each thread keeps
one instance per serializer class and hands it the next body, after clearing what the last
validation left on it (its data, validated data and errors). Fields hold no state of a request
between validations; the serializer's own state is what is cleared.
"""

from __future__ import annotations

import threading
from typing import Any, TypeVar

from rest_framework import serializers

S = TypeVar("S", bound=serializers.Serializer)

_local = threading.local()
_PER_REQUEST = ("_validated_data", "_errors", "_data")


def serializer_for(serializer_class: type[S], *, data: Any) -> S:
    """This thread's `serializer_class(data=data)`, ready for `is_valid()`."""
    cache: dict[type[Any], Any] = _local.__dict__.setdefault("serializers", {})
    serializer = cache.get(serializer_class)
    if serializer is None:
        serializer = cache[serializer_class] = serializer_class(data=data)
        return serializer  # type: ignore[no-any-return]
    for name in _PER_REQUEST:
        serializer.__dict__.pop(name, None)
    serializer.initial_data = data
    return serializer  # type: ignore[no-any-return]

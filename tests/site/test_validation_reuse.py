"""Serializers are reused by their thread: no request sees what the previous one left."""

from __future__ import annotations

import threading

import pytest

from embeddings_site.validation import serializer_for
from inference.protocol import EmbeddingRequestSerializer


def test_each_body_is_validated_on_its_own_in_one_thread(post_embeddings) -> None:
    first_bad = post_embeddings({"input": "hello", "dimensions": "wide"})
    good = post_embeddings({"input": "hello"})
    second_bad = post_embeddings({"input": "hello", "embedding_type": ["nope"]})
    good_again = post_embeddings({"input": ["one", "two"]})

    assert first_bad.status_code == 400 and first_bad.json()["error"]["param"] == "dimensions"
    assert good.status_code == 200 and len(good.json()["data"]) == 1
    assert second_bad.status_code == 400 and second_bad.json()["error"]["param"] == "embedding_type"
    assert good_again.status_code == 200 and len(good_again.json()["data"]) == 2


def test_threads_never_share_an_instance() -> None:
    seen: list[object] = []

    def take() -> None:
        seen.append(serializer_for(EmbeddingRequestSerializer, data={"input": "x"}))

    threads = [threading.Thread(target=take) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    take()
    take()
    assert len({id(s) for s in seen[:3]}) == 3
    assert seen[3] is seen[4]


@pytest.fixture(autouse=True)
def _db(db) -> None:  # noqa: PT004 - the posts write usage rows
    return None

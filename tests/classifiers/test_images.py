"""Classification of images on an image model (a tiny CLIP checkpoint made by the test): the
labels are texts, the inputs images, and images cost their tiles' tokens as in /v1/embeddings."""

from __future__ import annotations

import pytest

from billing.services import api_key_create
from inference.models import EmbeddingModel
from tests.factories import UserFactory
from tests.inference.images import data_uri, image_bytes, make_tiny_clip
from tests.jina_spec import assert_valid

RED = data_uri(image_bytes(300, 200, color=(220, 20, 20)))
BLUE = data_uri(image_bytes(200, 300, color=(20, 20, 220)))


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory) -> str:
    return str(make_tiny_clip(tmp_path_factory.mktemp("tiny-clip")))


@pytest.fixture
def clip(db, clip_dir, default_model) -> EmbeddingModel:
    return EmbeddingModel.objects.create(
        name="tiny-clip",
        backend="clip",
        source=clip_dir,
        dimensions=16,
        max_tokens=77,
        modalities=["text", "image"],
        tasks={"retrieval.query": "", "retrieval.passage": ""},
        image_tile_size=224,
        tokens_per_tile=1000,
    )


@pytest.fixture
def funded(db):
    api_key, plaintext = api_key_create(user=UserFactory(), tokens=10_000_000, tpm=5_000_000)
    api_key.plaintext = plaintext  # type: ignore[attr-defined]
    return api_key


def test_zero_shot_on_images_charges_the_images_tiles_and_the_labels(call, clip, funded) -> None:
    labels = ["a red picture", "a blue picture"]
    same = call(
        "post",
        "/v1/embeddings",
        {"model": "tiny-clip", "input": [{"image": RED}, {"image": BLUE}, *labels]},
        key=funded,
    ).json()["usage"]
    assert same["image_tokens"] == 2 * 2 * 1000  # each image: 2 tiles of 224 px
    funded.refresh_from_db()
    before = funded.balance

    response = call(
        "post",
        "/v1/classify",
        {"model": "tiny-clip", "input": [{"image": RED}, {"image": BLUE}], "labels": labels},
        key=funded,
    )

    assert response.status_code == 200, response.content
    body = response.json()
    assert_valid(body, "ClassificationResponse")
    assert [len(item["predictions"]) for item in body["data"]] == [2, 2]
    assert body["usage"] == {"total_tokens": same["total_tokens"]}
    funded.refresh_from_db()
    assert before - funded.balance == same["total_tokens"]


def test_training_on_images_charges_their_tokens_times_the_iterations(call, clip, funded) -> None:
    items = [
        {"image": RED, "label": "red"},
        {"image": BLUE, "label": "blue"},
        {"text": "something red", "label": "red"},
    ]
    same = call(
        "post",
        "/v1/embeddings",
        {"model": "tiny-clip", "input": [{"image": RED}, {"image": BLUE}, "something red"]},
        key=funded,
    ).json()["usage"]["total_tokens"]

    response = call(
        "post", "/v1/train", {"model": "tiny-clip", "input": items, "num_iters": 2}, key=funded
    )

    assert response.status_code == 200, response.content
    assert_valid(response.json(), "TrainingResponse")
    assert response.json()["usage"] == {"total_tokens": same * 2}
    classified = call(
        "post",
        "/v1/classify",
        {"classifier_id": response.json()["classifier_id"], "input": [{"image": RED}]},
        key=funded,
    )
    assert classified.status_code == 200, classified.content
    assert {p["label"] for p in classified.json()["data"][0]["predictions"]} == {"red", "blue"}

"""Image embeddings: inputs, tile accounting, the CLIP backend (ADVERSARIAL rows 20–22 in
test_image_safety.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from billing.services import api_key_create
from metering.ledger import ledger_mismatches
from tests.factories import UserFactory
from tests.inference.images import ImageServer, b64, data_uri, image_bytes
from tests.jina_spec import assert_error_envelope, assert_valid


@pytest.fixture
def image_server(settings):
    server = ImageServer().start()
    settings.IMAGE_FETCH_ALLOWED_HOSTS = [server.host]  # the test-only allow-list
    yield server
    server.stop()


@pytest.fixture
def key(db):
    api_key, plaintext = api_key_create(user=UserFactory(), tokens=10_000_000, tpm=5_000_000)
    api_key.plaintext = plaintext
    return api_key


@pytest.fixture
def embed(client, key):
    def post(body, api_key=None):
        return client.post(
            "/v1/embeddings",
            data=json.dumps(body),
            content_type="application/json",
            HTTP_AUTHORIZATION=f"Bearer {(api_key or key).plaintext}",
        )

    return post


def vectors(body) -> np.ndarray:
    return np.array([item["embedding"] for item in body["data"]], dtype=np.float32)


@pytest.mark.parametrize(
    ("size", "v1_tokens", "v2_tokens"),
    [
        ((224, 224), 1000, 4000),
        ((225, 224), 2000, 4000),
        ((1000, 600), 15000, 16000),
        ((512, 513), 9000, 8000),
    ],
)
def test_tile_tokens_for_known_sizes_move_the_ledger_and_tpm_exactly(
    embed, key, clip_models, size, v1_tokens, v2_tokens
) -> None:
    image = b64(image_bytes(*size))
    for model, expected in (("tiny-clip-v1", v1_tokens), ("tiny-clip-v2", v2_tokens)):
        key.refresh_from_db()
        before = key.balance
        response = embed({"model": model, "input": [{"image": image}]})
        assert response.status_code == 200, response.content
        usage = response.json()["usage"]
        assert usage == {
            "prompt_tokens": expected,
            "total_tokens": expected,
            "image_tokens": expected,
        }
        key.refresh_from_db()
        assert before - key.balance == expected
    assert ledger_mismatches() == []


def test_tpm_window_holds_exactly_the_image_tokens(embed, key, clip_models) -> None:
    text_only = embed({"model": "tiny-clip-v2", "input": ["a photo"]}).json()["usage"][
        "total_tokens"
    ]
    response = embed(
        {"model": "tiny-clip-v2", "input": ["a photo", {"image": b64(image_bytes(1000, 600))}]}
    )
    body = response.json()
    assert body["usage"]["image_tokens"] == 16000
    assert body["usage"]["total_tokens"] == text_only + 16000
    assert (
        int(response["X-RateLimit-Remaining-Tokens"])
        == 5_000_000 - text_only - body["usage"]["total_tokens"]
    )


def test_every_image_shape_gives_the_same_vector(embed, clip_models, image_server) -> None:
    data = image_bytes(300, 200)
    url = image_server.url("/img?w=300&h=200")
    shapes = [
        {"image": b64(data)},
        {"image": data_uri(data)},
        {"image": url},
        {"url": url},
        {"bytes": b64(data)},
        data_uri(data),  # a bare data-URI string, as Haystack's image embedder sends
    ]
    response = embed({"model": "tiny-clip-v1", "input": shapes})
    assert response.status_code == 200, response.content
    assert_valid(response.json(), "EmbeddingResponse")
    found = vectors(response.json())
    assert found.shape == (6, 16)
    np.testing.assert_allclose(found, np.repeat(found[:1], 6, axis=0), atol=1e-6)
    assert response.json()["usage"]["image_tokens"] == 6 * 2 * 1000


def test_text_and_images_land_in_one_space(embed, clip_models, clip_dir) -> None:
    """Each vector equals the CLIP model's own projection, normalised."""
    photo = image_bytes(64, 48, "JPEG")
    response = embed({"model": "tiny-clip-v2", "input": ["a red square", {"image": b64(photo)}]})
    ours = vectors(response.json())
    import io

    import torch
    from PIL import Image
    from transformers import CLIPImageProcessorPil, CLIPModel

    model = CLIPModel.from_pretrained(clip_dir).eval()
    processor = CLIPImageProcessorPil.from_pretrained(clip_dir)

    with torch.no_grad():
        ids = torch.tensor([[101, 1037, 2417, 2675, 102]])  # [CLS] a red square [SEP]
        text = (
            model.get_text_features(input_ids=ids, attention_mask=torch.ones_like(ids))
            .pooler_output[0]
            .numpy()
        )
        pixels = processor(
            images=[Image.open(io.BytesIO(photo)).convert("RGB")], return_tensors="pt"
        )["pixel_values"]
        image = model.get_image_features(pixel_values=pixels).pooler_output[0].numpy()
    expected = np.stack([text / np.linalg.norm(text), image / np.linalg.norm(image)])
    np.testing.assert_allclose(np.sum(ours * expected, axis=1), 1.0, atol=1e-5)
    # Matryoshka and encodings work on images as on text.
    short = vectors(
        embed({"model": "tiny-clip-v2", "input": [{"image": b64(photo)}], "dimensions": 8}).json()
    )
    np.testing.assert_allclose(
        short[0], expected[1][:8] / np.linalg.norm(expected[1][:8]), atol=1e-5
    )
    packed = embed(
        {"model": "tiny-clip-v2", "input": [{"image": b64(photo)}], "embedding_type": "ubinary"}
    ).json()
    assert np.array_equal(
        np.unpackbits(np.array(packed["data"][0]["embedding"], dtype=np.uint8)),
        (expected[1] > 0).astype(np.uint8),
    )


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "GIF"])
def test_allowed_formats(embed, clip_models, fmt) -> None:
    response = embed({"model": "tiny-clip-v1", "input": [{"image": b64(image_bytes(40, 30, fmt))}]})
    assert response.status_code == 200, response.content
    assert response.json()["usage"]["image_tokens"] == 1000


def test_text_only_model_refuses_images_clearly(embed, key, default_model) -> None:
    response = embed(
        {"model": "all-MiniLM-L6-v2", "input": ["text", {"image": b64(image_bytes(10, 10))}]}
    )
    assert response.status_code == 400
    assert_error_envelope(response.json(), "INPUT_UNSUPPORTED_MODALITY")
    assert "text only" in response.json()["detail"]
    key.refresh_from_db()
    assert key.balance == 10_000_000


def test_image_models_are_listed_with_their_modalities(client, clip_models) -> None:
    models = {m["id"]: m for m in client.get("/v1/models").json()["data"]}
    assert models["tiny-clip-v2"]["input_modalities"] == ["text", "image"]
    assert models["all-MiniLM-L6-v2"]["input_modalities"] == ["text"]


def test_registering_an_image_model_from_the_command_line(embed, clip_dir, db) -> None:
    """The README's recipe: register a CLIP checkpoint directory, then embed an image with it."""
    from io import StringIO

    from django.core.management import CommandError, call_command

    with pytest.raises(CommandError, match="tile size"):
        call_command(
            "register_model",
            "--name",
            "my-clip",
            "--backend",
            "clip",
            "--source",
            clip_dir,
            "--dimensions",
            "16",
            "--max-tokens",
            "77",
            "--modalities",
            "text,image",
            stdout=StringIO(),
        )
    out = StringIO()
    call_command(
        "register_model",
        "--name",
        "my-clip",
        "--backend",
        "clip",
        "--source",
        clip_dir,
        "--dimensions",
        "16",
        "--max-tokens",
        "77",
        "--modalities",
        "text,image",
        "--tile-size",
        "512",
        "--tokens-per-tile",
        "4000",
        "--task",
        "retrieval.query=",
        stdout=out,
    )
    assert "Registered my-clip" in out.getvalue()
    response = embed(
        {
            "model": "my-clip",
            "input": [{"image": b64(image_bytes(600, 100))}],
            "task": "retrieval.query",
        }
    )
    assert response.status_code == 200, response.content
    assert response.json()["usage"]["image_tokens"] == 2 * 4000

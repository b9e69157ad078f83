"""Images that must be refused (ADVERSARIAL 20–22), each uncharged.

The refusals run with the test-only allow-list off; positive fetches go through it to a local
server. URLs that must not be fetched point at that local server (loopback in every spelling),
so a connection that should not happen would be counted; link-local and private ranges are
checked through the same guard without sending anything anywhere.
"""

from __future__ import annotations

import json
import time
from urllib.parse import quote

import pytest

from billing.services import api_key_create
from inference.image_fetch import ImageFetchError, _checked_target, is_public_address
from tests.factories import UserFactory
from tests.inference.images import ImageServer, b64, image_bytes, png_header_only
from tests.jina_spec import assert_error_envelope


@pytest.fixture
def server():
    server = ImageServer().start()
    yield server
    server.stop()


@pytest.fixture
def key(db):
    api_key, plaintext = api_key_create(user=UserFactory(), tokens=1_000_000)
    api_key.plaintext = plaintext
    return api_key


@pytest.fixture
def embed_image(client, key, clip_models):
    def post(image: str, field: str = "image"):
        return client.post(
            "/v1/embeddings",
            data=json.dumps({"model": "tiny-clip-v1", "input": [{field: image}]}),
            content_type="application/json",
            HTTP_AUTHORIZATION=f"Bearer {key.plaintext}",
        )

    return post


def assert_refused_uncharged(response, key, fragment: str = "") -> None:
    assert response.status_code == 400, response.content
    body = response.json()
    assert_error_envelope(body, "INPUT_INVALID_IMAGE")
    assert fragment.lower() in body["detail"].lower()
    key.refresh_from_db()
    assert key.balance == 1_000_000


# --- ADVERSARIAL 20: sizes, non-images, formats ------------------------------------------


def test_a_header_claiming_20000_by_20000_is_refused_before_decoding(embed_image, key) -> None:
    # The pixel data is garbage: decoding would fail differently. The size check comes first.
    started = time.monotonic()
    response = embed_image(b64(png_header_only(20000, 20000)))
    assert_refused_uncharged(response, key, "400,000,000 pixels")
    assert time.monotonic() - started < 5


def test_an_image_just_over_the_pixel_cap_is_refused(embed_image, key, settings) -> None:
    settings.IMAGE_MAX_PIXELS = 100 * 100
    assert_refused_uncharged(embed_image(b64(png_header_only(101, 100))), key, "pixels")


@pytest.mark.parametrize(
    "payload",
    [b"this is plain text, not an image", b"%PDF-1.4 not an image", b"\x00" * 64],
    ids=["text", "pdf", "zeros"],
)
def test_non_images_are_refused(embed_image, key, payload) -> None:
    assert_refused_uncharged(embed_image(b64(payload)), key, "not an image")


@pytest.mark.parametrize("fmt", ["BMP", "TIFF", "ICO", "PPM"])
def test_formats_outside_the_allow_list_are_refused(embed_image, key, fmt) -> None:
    assert_refused_uncharged(embed_image(b64(image_bytes(16, 16, fmt))), key, "accepted format")


def test_corrupt_pixels_after_a_valid_header_are_refunded(embed_image, key) -> None:
    """The header passes (so the request is charged), decoding fails: the charge is refunded."""
    assert_refused_uncharged(embed_image(b64(png_header_only(64, 64))), key, "corrupt")


def test_not_base64_and_not_a_url(embed_image, key) -> None:
    assert_refused_uncharged(embed_image("***not base64***"), key, "neither")
    assert_refused_uncharged(embed_image("data:image/png,rawbytes"), key, "base64")


def test_billing_uses_the_real_size_not_the_file_name(
    client, key, clip_models, server, settings
) -> None:
    settings.IMAGE_FETCH_ALLOWED_HOSTS = [server.host]
    response = client.post(
        "/v1/embeddings",
        data=json.dumps(
            {
                "model": "tiny-clip-v1",
                "input": [{"image": server.url("/img?w=449&h=10&name=tiny-1x1.png")}],
            }
        ),
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {key.plaintext}",
    )
    assert response.json()["usage"]["image_tokens"] == 3 * 1000


# --- ADVERSARIAL 21: where a URL may point ------------------------------------------------


@pytest.mark.parametrize(
    "host",
    [
        "127.0.0.1",
        "localhost",
        "127.1",
        "0x7f000001",
        "0x7f.0.0.1",
        "2130706433",
        "017700000001",
        "0177.0.0.1",
        "[::1]",
        "[::ffff:127.0.0.1]",
        "[::ffff:7f00:1]",
        "0.0.0.0",  # noqa: S104 - a URL host to refuse, not a bind address
    ],
)
def test_loopback_in_every_spelling_is_refused_without_a_connection(
    embed_image, key, server, host
) -> None:
    response = embed_image(f"http://{host}:{server.port}/img?w=10&h=10")
    assert_refused_uncharged(response, key)
    assert server.connections == 0


@pytest.mark.parametrize(
    "url",
    [
        "http://169.254.169.254/latest/meta-data/",
        "http://[fe80::1]/x.png",
        "http://10.0.0.1/x.png",
        "http://172.16.5.4/x.png",
        "http://192.168.1.1/x.png",
        "http://100.64.0.1/x.png",
        "http://[fc00::1]/x.png",
        "http://[::ffff:10.0.0.1]/x.png",
        "http://224.0.0.1/x.png",
        "http://240.0.0.1/x.png",
    ],
)
def test_private_link_local_and_reserved_addresses_are_refused(url) -> None:
    with pytest.raises(ImageFetchError, match="not a public address"):
        _checked_target(url)


@pytest.mark.parametrize("address", ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111"])
def test_public_addresses_pass_the_guard(address) -> None:
    assert is_public_address(address)


@pytest.mark.parametrize(
    "url",
    [
        "file:///etc/passwd",
        "ftp://example.com/x.png",
        "gopher://example.com/",
        "dict://127.0.0.1:11211/",
        "http://user:pw@example.com/x.png",
    ],
)
def test_other_schemes_and_credentials_are_refused(embed_image, key, url) -> None:
    assert_refused_uncharged(embed_image(url), key)


def test_the_url_and_bytes_fields_are_guarded_alike(embed_image, key, server) -> None:
    assert_refused_uncharged(embed_image(server.url("/img?w=5&h=5"), field="url"), key)
    assert server.connections == 0


def test_a_redirect_to_an_internal_host_is_refused(embed_image, key, settings) -> None:
    public, internal = ImageServer().start(), ImageServer().start()
    try:
        settings.IMAGE_FETCH_ALLOWED_HOSTS = [public.host]  # stands for a public server
        response = embed_image(public.url(f"/redirect?to={quote(internal.url('/img?w=10&h=10'))}"))
        assert_refused_uncharged(response, key, "not a public address")
        assert public.connections == 1 and internal.connections == 0
        response = embed_image(public.url("/redirect?to=file:///etc/passwd"))
        assert_refused_uncharged(response, key, "http or https")
        # ... while a redirect that stays on allowed ground is followed.
        followed = embed_image(public.url(f"/redirect?to={quote(public.url('/img?w=10&h=10'))}"))
        assert followed.status_code == 200
    finally:
        public.stop()
        internal.stop()


def test_a_url_that_is_not_an_image(embed_image, key, server, settings) -> None:
    settings.IMAGE_FETCH_ALLOWED_HOSTS = [server.host]
    assert_refused_uncharged(embed_image(server.url("/text")), key, "not an image")
    assert_refused_uncharged(embed_image(server.url("/missing")), key, "HTTP 404")


# --- ADVERSARIAL 22: slow and endless servers ----------------------------------------------


@pytest.fixture
def tight_fetch_limits(settings, server):
    settings.IMAGE_FETCH_ALLOWED_HOSTS = [server.host]
    settings.IMAGE_FETCH_DEADLINE = 1.5
    settings.IMAGE_FETCH_READ_TIMEOUT = 1.0
    settings.IMAGE_MAX_BYTES = 512 * 1024


def test_a_dripping_server_hits_the_deadline(embed_image, key, server, tight_fetch_limits) -> None:
    started = time.monotonic()
    assert_refused_uncharged(embed_image(server.url("/drip")), key, "longer than")
    assert time.monotonic() - started < 5


def test_an_endless_body_hits_the_size_cap(embed_image, key, server, tight_fetch_limits) -> None:
    assert_refused_uncharged(embed_image(server.url("/endless")), key, "larger than")


def test_a_silent_server_hits_the_read_timeout(
    embed_image, key, server, tight_fetch_limits
) -> None:
    started = time.monotonic()
    assert_refused_uncharged(embed_image(server.url("/silent")), key, "could not be fetched")
    assert time.monotonic() - started < 5


def test_an_oversized_base64_image_is_refused(embed_image, key, settings) -> None:
    settings.IMAGE_MAX_BYTES = 1024
    assert_refused_uncharged(embed_image(b64(b"\x00" * 4096)), key, "larger than")

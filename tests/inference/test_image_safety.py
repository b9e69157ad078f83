"""Images that must be refused (ADVERSARIAL 20–22), each uncharged.

The refusals run with the test-only allow-list off; positive fetches go through it to a local
server. URLs that must not be fetched point at that local server (loopback in every spelling),
so a connection that should not happen would be counted; link-local and private ranges are
checked through the same guard without sending anything anywhere.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, quote, urlsplit

import pytest

from billing.services import api_key_create
from embeddings_site.deadlines import Deadline, deadline_scope
from embeddings_site.public_http import (
    PublicUrlError,
    check_public_url,
    checked_target,
    is_public_address,
)
from inference.image_tiles import ImageInputError, images_load, read_header
from tests.factories import UserFactory
from tests.inference.images import ImageServer, b64, data_uri, image_bytes, png_header_only
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
    with pytest.raises(PublicUrlError, match="not a public address"):
        checked_target(url, allowed_hosts=[], label="image")


@pytest.fixture
def hanging_dns(monkeypatch):
    """A resolver that never answers for one public name, as a broken DNS server on the internet
    would (a stand-in for the public internet: nothing here may reach it). Other names resolve
    as usual. Released at the end so its lookup thread finishes."""
    import socket

    release = threading.Event()
    real = socket.getaddrinfo

    def getaddrinfo(host, *args, **kwargs):
        if host == "hangs.example.com":
            release.wait(timeout=10)  # without the guard's timeout the test fails, not hangs
            raise socket.gaierror("released")
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    yield
    release.set()


def test_a_lookup_that_never_answers_is_refused_within_the_dns_timeout(
    embed_image, key, settings, hanging_dns
) -> None:
    settings.OUTBOUND_DNS_TIMEOUT_SECONDS = 0.2
    response = embed_image("http://hangs.example.com/x.png")
    assert_refused_uncharged(response, key, "did not resolve within 0.2 s")
    # The same guard bounds a batch job's webhook and input_url before anything is stored.
    with pytest.raises(PublicUrlError, match="did not resolve"):
        check_public_url("https://hangs.example.com/hook", allowed_hosts=[], label="webhook")


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


# --- One request's image URLs: fetched together, under one budget -------------------------


class GateServer:
    """/img?w=W&h=H answers only once `together` requests are in flight at the same time (a
    barrier: requests fetched one after another never all arrive, and get a 503). /hold sends
    the start of a body, then waits for the client to hang up and notes it in `hung_up`.
    /missing (a 404) and /endless (a body with no end) answer only once /hold is being read, so
    a fetch that fails is sure to have another one reading to call off."""

    def __init__(self, together: int) -> None:
        gate = threading.Barrier(together, timeout=15)
        self.hung_up = threading.Event()
        hung_up = self.hung_up
        holding = threading.Event()

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                url = urlsplit(self.path)
                query = {k: v[0] for k, v in parse_qs(url.query).items()}
                try:
                    if url.path == "/img":
                        gate.wait()
                        body = image_bytes(int(query["w"]), int(query["h"]))
                        self.send_response(200)
                        self.send_header("Content-Length", str(len(body)))
                        self.end_headers()
                        self.wfile.write(body)
                    elif url.path == "/hold":
                        self.send_response(200)
                        self.end_headers()
                        self.wfile.write(b"\x89PNG\r\n\x1a\n")
                        self.wfile.flush()
                        holding.set()
                        self.connection.settimeout(30)
                        if self.connection.recv(1) == b"":
                            hung_up.set()
                    elif url.path == "/missing":
                        holding.wait(15)
                        self.send_error(404)
                    elif url.path == "/endless":
                        holding.wait(15)
                        self.send_response(200)
                        self.end_headers()
                        self.wfile.write(b"\x89PNG\r\n\x1a\n")
                        for _ in range(4096):  # 256 MB at most: far past any budget
                            self.wfile.write(b"\x00" * 65536)
                except threading.BrokenBarrierError:
                    self.send_error(503)
                except (OSError, TimeoutError):
                    pass

        class Server(ThreadingHTTPServer):
            daemon_threads = True

        self.httpd = Server(("127.0.0.1", 0), Handler)
        self.host = f"127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True
        )
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://{self.host}{path}"

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def gate(settings, server):
    gate = GateServer(together=4)
    settings.IMAGE_FETCH_ALLOWED_HOSTS = [server.host, gate.host]
    settings.IMAGE_FETCH_CONCURRENCY = 4
    yield gate
    gate.stop()


def test_a_requests_urls_are_all_in_flight_at_once_and_come_back_in_order(gate) -> None:
    inline = image_bytes(7, 3)
    sources = [
        data_uri(inline),
        gate.url("/img?w=11&h=1"),
        b64(inline),
        gate.url("/img?w=12&h=1"),
        gate.url("/img?w=13&h=1"),
        gate.url("/img?w=14&h=1"),
    ]
    loaded = images_load(sources)
    assert [read_header(data).width for data in loaded] == [7, 11, 7, 12, 13, 14]


def test_more_urls_than_a_request_may_name_are_refused_before_any_fetch(server, settings) -> None:
    settings.IMAGE_FETCH_ALLOWED_HOSTS = [server.host]
    settings.IMAGE_MAX_URLS_PER_REQUEST = 2
    sources = [b64(image_bytes(2, 2))] + [server.url("/img?w=5&h=5")] * 3
    with pytest.raises(ImageInputError, match="at most 2 image URLs") as refused:
        images_load(sources)
    assert refused.value.index == 3
    assert server.connections == 0


def test_a_bad_inline_image_is_refused_before_any_fetch(server, settings) -> None:
    settings.IMAGE_FETCH_ALLOWED_HOSTS = [server.host]
    with pytest.raises(ImageInputError, match="neither") as refused:
        images_load([server.url("/img?w=5&h=5"), "***not base64***"])
    assert refused.value.index == 1
    assert server.connections == 0


def test_the_total_bytes_budget_stops_the_fetches_and_names_the_image(
    gate, server, settings
) -> None:
    settings.IMAGE_MAX_BYTES = 8 * 1024 * 1024
    settings.IMAGE_FETCH_MAX_TOTAL_BYTES = 1024 * 1024
    settings.IMAGE_FETCH_READ_TIMEOUT = settings.IMAGE_FETCH_DEADLINE = 60
    with pytest.raises(ImageInputError, match="larger than 1 MB in total") as refused:
        images_load([gate.url("/hold"), gate.url("/endless")])
    assert refused.value.index == 1
    assert gate.hung_up.wait(10), "the other fetch kept reading"


def test_one_failed_fetch_calls_off_the_others(gate, server, settings) -> None:
    settings.IMAGE_FETCH_READ_TIMEOUT = settings.IMAGE_FETCH_DEADLINE = 60
    with pytest.raises(ImageInputError, match="HTTP 404") as refused:
        images_load([gate.url("/hold"), b64(image_bytes(2, 2)), gate.url("/missing")])
    assert refused.value.index == 2
    assert gate.hung_up.wait(10), "the other fetch kept reading"


def test_a_dripping_server_is_cut_by_the_requests_deadline(server, settings) -> None:
    settings.IMAGE_FETCH_ALLOWED_HOSTS = [server.host]
    settings.IMAGE_FETCH_READ_TIMEOUT = settings.IMAGE_FETCH_DEADLINE = 60
    with (
        deadline_scope(deadline=Deadline.after(1.0)),
        pytest.raises(ImageInputError, match="longer than") as refused,
    ):
        images_load([b64(image_bytes(2, 2)), server.url("/drip")])
    assert refused.value.index == 1


def test_dripping_servers_share_one_fetch_deadline(server, settings) -> None:
    settings.IMAGE_FETCH_ALLOWED_HOSTS = [server.host]
    settings.IMAGE_FETCH_READ_TIMEOUT = 60
    settings.IMAGE_FETCH_DEADLINE = 1.0
    with pytest.raises(ImageInputError, match="longer than") as refused:
        images_load([server.url("/drip"), server.url("/drip")])
    assert refused.value.index in {0, 1}


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "[::ffff:127.0.0.1]", "0x7f000001"])
def test_urls_loaded_together_pass_the_same_guard(server, host) -> None:
    with pytest.raises(ImageInputError) as refused:
        images_load([b64(image_bytes(2, 2)), f"http://{host}:{server.port}/img?w=5&h=5"])
    assert refused.value.index == 1
    assert server.connections == 0


def test_a_redirect_to_an_internal_host_is_refused_when_loaded_together(settings) -> None:
    public, internal = ImageServer().start(), ImageServer().start()
    try:
        settings.IMAGE_FETCH_ALLOWED_HOSTS = [public.host]  # stands for a public server
        redirect = public.url(f"/redirect?to={quote(internal.url('/img?w=10&h=10'))}")
        with pytest.raises(ImageInputError, match="not a public address") as refused:
            images_load([public.url("/img?w=3&h=3"), redirect])
        assert refused.value.index == 1 and internal.connections == 0
    finally:
        public.stop()
        internal.stop()

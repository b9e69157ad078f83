"""Fetching image URLs without becoming a proxy into the private network (SSRF).

Only http and https. The host is resolved once and every address must be public — loopback,
private, link-local (169.254.169.254), shared, reserved, multicast and IPv4-mapped IPv6
addresses are refused, and numeric or hex IPv4 spellings resolve to what they mean before
the check. The connection then goes to the address that was checked (no second lookup that
could answer differently), with the original host name for Host and TLS. Redirects are
followed by hand and each hop is checked again. Connect and read time limits, a deadline for
the whole download and a size cap bound what a slow or endless server can cost.

The same guard serves the other URLs a client may hand the server (a batch job's input file
and its webhook): `fetch_public_bytes` and `post_public` take their own allow-list and label.
"""

from __future__ import annotations

import http.client
import ipaddress
import socket
import ssl
import time
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

from django.conf import settings

MAX_REDIRECTS = 3


class ImageFetchError(Exception):
    """The URL was refused or could not be fetched; the message says why, for the client.

    (Named for images, where it began; every fetch through this guard raises it.)
    """


@dataclass(frozen=True)
class FetchLimits:
    max_bytes: int
    connect_timeout: float
    read_timeout: float
    deadline: float


def default_limits() -> FetchLimits:
    return FetchLimits(
        max_bytes=settings.IMAGE_MAX_BYTES,
        connect_timeout=settings.IMAGE_FETCH_CONNECT_TIMEOUT,
        read_timeout=settings.IMAGE_FETCH_READ_TIMEOUT,
        deadline=settings.IMAGE_FETCH_DEADLINE,
    )


def is_public_address(address: str) -> bool:
    """True for addresses on the public internet only."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and (
        ip.ipv4_mapped is not None or ip.sixtofour is not None or ip.teredo is not None
    ):
        return False
    return bool(ip.is_global) and not (ip.is_multicast or ip.is_reserved or ip.is_link_local)


def _resolve(host: str, port: int, label: str) -> list[str]:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise ImageFetchError(f"cannot resolve {label} host {host!r}") from exc
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def _checked_target(
    url: str, *, allowed_hosts: list[str] | None = None, label: str = "image"
) -> tuple[str, str, int, str, str]:
    """(scheme, host, port, address to connect to, path) for a URL that may be fetched.

    `allowed_hosts` (host:port) may resolve to non-public addresses; IMAGE_FETCH_ALLOWED_HOSTS
    when not given.
    """
    if allowed_hosts is None:
        allowed_hosts = settings.IMAGE_FETCH_ALLOWED_HOSTS
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in {"http", "https"}:
        raise ImageFetchError(f"{label} URLs must be http or https, not {scheme or 'none'!r}")
    if parts.username or parts.password:
        raise ImageFetchError(f"{label} URLs must not carry credentials")
    host = parts.hostname
    if not host:
        raise ImageFetchError(f"{label} URL has no host")
    try:
        port = parts.port or (443 if scheme == "https" else 80)
    except ValueError as exc:
        raise ImageFetchError(f"{label} URL has an invalid port") from exc
    addresses = _resolve(host, port, label)
    allowed = f"{host}:{port}" in allowed_hosts
    if not allowed and (not addresses or not all(is_public_address(a) for a in addresses)):
        raise ImageFetchError(f"{label} host {host!r} is not a public address; refused")
    path = parts.path or "/"
    if parts.query:
        path = f"{path}?{parts.query}"
    return scheme, host, port, addresses[0], path


class _PinnedHTTPConnection(http.client.HTTPConnection):
    def __init__(self, host: str, port: int, address: str, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout)
        self._address = address

    def connect(self) -> None:
        self.sock = socket.create_connection((self._address, self.port), self.timeout)


class _PinnedHTTPSConnection(http.client.HTTPSConnection):
    def __init__(self, host: str, port: int, address: str, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout, context=ssl.create_default_context())
        self._address = address

    def connect(self) -> None:
        sock = socket.create_connection((self._address, self.port), self.timeout)
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)  # type: ignore[attr-defined]


def check_public_url(url: str, *, allowed_hosts: list[str], label: str) -> None:
    """Refuse (ImageFetchError) a URL this guard would not connect to; nothing is fetched."""
    _checked_target(url, allowed_hosts=allowed_hosts, label=label)


def _pinned_connection(
    scheme: str, host: str, port: int, address: str, timeout: float
) -> http.client.HTTPConnection:
    connection_class = _PinnedHTTPSConnection if scheme == "https" else _PinnedHTTPConnection
    return connection_class(host, port, address, timeout=timeout)


def fetch_image_bytes(url: str, limits: FetchLimits | None = None) -> bytes:
    """The body at `url`, or ImageFetchError; never more than max_bytes, never past the deadline."""
    return fetch_public_bytes(
        url,
        limits=limits or default_limits(),
        allowed_hosts=settings.IMAGE_FETCH_ALLOWED_HOSTS,
        label="image",
        accept="image/*",
    )


def fetch_public_bytes(
    url: str, *, limits: FetchLimits, allowed_hosts: list[str], label: str, accept: str
) -> bytes:
    """GET a public URL through the guard, following checked redirects, within `limits`."""
    started = time.monotonic()
    size_limit = f"{label} is larger than {limits.max_bytes // (1024 * 1024)} MB"
    for _ in range(MAX_REDIRECTS + 1):
        scheme, host, port, address, path = _checked_target(
            url, allowed_hosts=allowed_hosts, label=label
        )
        connection = _pinned_connection(scheme, host, port, address, limits.connect_timeout)
        try:
            connection.connect()
            connection.sock.settimeout(limits.read_timeout)
            connection.request(
                "GET", path, headers={"User-Agent": "embeddings-platform/1", "Accept": accept}
            )
            response = connection.getresponse()
            if response.status in {301, 302, 303, 307, 308}:
                location = response.getheader("Location")
                if not location:
                    raise ImageFetchError(f"{label} URL redirected without a Location")
                url = urljoin(url, location)
                continue
            if response.status != 200:
                raise ImageFetchError(f"{label} URL answered HTTP {response.status}")
            declared = response.getheader("Content-Length")
            if declared and declared.isdigit() and int(declared) > limits.max_bytes:
                raise ImageFetchError(size_limit)
            return _read_capped(response, limits, started, label, size_limit)
        except (OSError, http.client.HTTPException) as exc:
            raise ImageFetchError(
                f"{label} URL could not be fetched: {type(exc).__name__}"
            ) from exc
        finally:
            connection.close()
    raise ImageFetchError(f"{label} URL redirected more than {MAX_REDIRECTS} times")


def post_public(
    url: str,
    *,
    body: bytes,
    headers: dict[str, str],
    timeout: float,
    allowed_hosts: list[str],
    label: str,
) -> int:
    """POST to a public URL through the guard; the HTTP status. Redirects are not followed."""
    scheme, host, port, address, path = _checked_target(
        url, allowed_hosts=allowed_hosts, label=label
    )
    connection = _pinned_connection(scheme, host, port, address, timeout)
    try:
        connection.connect()
        connection.sock.settimeout(timeout)
        connection.request(
            "POST",
            path,
            body=body,
            headers={"User-Agent": "embeddings-platform/1", **headers},
        )
        response = connection.getresponse()
        response.read(64 * 1024)
        return response.status
    except (OSError, http.client.HTTPException) as exc:
        raise ImageFetchError(f"{label} URL could not be reached: {type(exc).__name__}") from exc
    finally:
        connection.close()


def _read_capped(
    response: http.client.HTTPResponse,
    limits: FetchLimits,
    started: float,
    label: str,
    size_limit: str,
) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        if time.monotonic() - started > limits.deadline:
            raise ImageFetchError(f"{label} download took longer than {limits.deadline:g} s")
        chunk = response.read1(64 * 1024)
        if not chunk:
            return b"".join(chunks)
        size += len(chunk)
        if size > limits.max_bytes:
            raise ImageFetchError(size_limit)
        chunks.append(chunk)

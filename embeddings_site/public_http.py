"""HTTP to URLs a client handed the server, without becoming a proxy into the private network
(SSRF): the outbound guard for image URLs, a batch job's input file and its webhook.

Only http and https. The host is resolved once, within OUTBOUND_DNS_TIMEOUT_SECONDS (and what
is left of a shared budget), and every address must be public — loopback,
private, link-local (169.254.169.254), shared, reserved, multicast and IPv4-mapped IPv6
addresses are refused, and numeric or hex IPv4 spellings resolve to what they mean before
the check. The connection then goes to the address that was checked (no second lookup that
could answer differently), with the original host name for Host and TLS. Redirects are
followed by hand and each hop is checked again. Connect and read time limits, a deadline for
the whole download and a size cap bound what a slow or endless server can cost.

`fetch_public_bytes` and `post_public` take each caller's allow-list (host:port pairs exempt
from the public-address rule, for tests) and a label that names the URL in errors.

Several fetches for one request can share a `FetchBudget`: bytes and time for all of them
together, and a way to call the others off when one fails.
"""

from __future__ import annotations

import contextlib
import http.client
import ipaddress
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeoutError
from contextlib import contextmanager
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

from django.conf import settings

MAX_REDIRECTS = 3


class PublicUrlError(Exception):
    """The URL was refused or could not be fetched; the message says why, for the client."""


class FetchCalledOff(PublicUrlError):
    """Another fetch sharing the budget failed, so this one stopped."""


@dataclass(frozen=True)
class FetchLimits:
    max_bytes: int
    connect_timeout: float
    read_timeout: float
    deadline: float


class FetchBudget:
    """Bytes and seconds that several fetches (one request's images) spend together.

    Thread-safe. Each fetch's socket is registered while it reads, so calling the budget off
    ends the other fetches' reads at once rather than at their next byte or read timeout.
    """

    def __init__(self, *, max_bytes: int, seconds: float, label: str = "image") -> None:
        self.max_bytes = max_bytes
        self.seconds = seconds
        self.expires = time.monotonic() + seconds
        self._label = label
        self._spent = 0
        self._called_off = False
        self._sockets: set[socket.socket] = set()
        self._lock = threading.Lock()

    def remaining(self) -> float:
        """Seconds left for all the fetches, never negative."""
        return max(self.expires - time.monotonic(), 0.0)

    def bytes_left(self) -> int:
        with self._lock:
            return max(self.max_bytes - self._spent, 0)

    def check(self) -> None:
        """Raise when the fetches were called off or their time is up."""
        if self._called_off:
            raise FetchCalledOff(f"{self._label} download stopped: another one failed")
        if time.monotonic() >= self.expires:
            raise PublicUrlError(self.time_out_message())

    def time_out_message(self) -> str:
        return f"{self._label} downloads took longer than {self.seconds:g} s"

    def size_message(self) -> str:
        return f"{self._label}s are larger than {self.max_bytes // (1024 * 1024)} MB in total"

    def spend(self, size: int) -> None:
        """Count `size` fetched bytes; raise once all fetches together went over. Only the fetch
        whose bytes crossed the total is named for it: one that reads after is called off (under
        load a fetch's first bytes could land after another's crossing and take the blame)."""
        with self._lock:
            already_over = self._spent > self.max_bytes
            self._spent += size
            over = self._spent > self.max_bytes
        if already_over:
            raise FetchCalledOff(f"{self._label} download stopped: another one went over the total")
        if over:
            raise PublicUrlError(self.size_message())

    def call_off(self) -> None:
        """Stop every fetch: those reading now and those yet to start."""
        with self._lock:
            self._called_off = True
            for sock in self._sockets:
                _shut(sock)

    @contextmanager
    def reading(self, sock: socket.socket) -> Iterator[None]:
        """While a fetch reads from `sock`, calling off shuts it."""
        with self._lock:
            if self._called_off:
                _shut(sock)
            self._sockets.add(sock)
        try:
            yield
        finally:
            with self._lock:
                self._sockets.discard(sock)


def _shut(sock: socket.socket) -> None:
    # socket.socket's own shutdown, also for a TLS socket: it ends the TCP stream under the TLS
    # layer without touching the TLS state the reading thread is using.
    with contextlib.suppress(OSError):  # already closed by its fetch
        socket.socket.shutdown(sock, socket.SHUT_RDWR)


def is_public_address(address: str) -> bool:
    """True for addresses on the public internet only."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and (
        ip.ipv4_mapped is not None or ip.sixtofour is not None or ip.teredo is not None
    ):
        return False
    return bool(ip.is_global) and not (ip.is_multicast or ip.is_reserved or ip.is_link_local)


# getaddrinfo has no timeout of its own (the system resolver retries for many seconds), so
# lookups run on these threads and the caller waits at most its timeout. A lookup that hangs
# holds one thread until the resolver gives up; later lookups queue behind at most this many.
_resolver = ThreadPoolExecutor(max_workers=8, thread_name_prefix="outbound-dns")


def _resolve(host: str, port: int, label: str, timeout: float) -> list[str]:
    lookup = _resolver.submit(socket.getaddrinfo, host, port, type=socket.SOCK_STREAM)
    try:
        infos = lookup.result(timeout=timeout)
    except FutureTimeoutError as exc:
        lookup.cancel()
        raise PublicUrlError(f"{label} host {host!r} did not resolve within {timeout:g} s") from exc
    except (socket.gaierror, UnicodeError) as exc:
        raise PublicUrlError(f"cannot resolve {label} host {host!r}") from exc
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def checked_target(
    url: str, *, allowed_hosts: list[str], label: str, dns_timeout: float | None = None
) -> tuple[str, str, int, str, str]:
    """(scheme, host, port, address to connect to, path) for a URL that may be fetched.

    `allowed_hosts` (host:port) may resolve to non-public addresses. The lookup waits at most
    `dns_timeout` seconds (OUTBOUND_DNS_TIMEOUT_SECONDS when not given).
    """
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in {"http", "https"}:
        raise PublicUrlError(f"{label} URLs must be http or https, not {scheme or 'none'!r}")
    if parts.username or parts.password:
        raise PublicUrlError(f"{label} URLs must not carry credentials")
    host = parts.hostname
    if not host:
        raise PublicUrlError(f"{label} URL has no host")
    try:
        port = parts.port or (443 if scheme == "https" else 80)
    except ValueError as exc:
        raise PublicUrlError(f"{label} URL has an invalid port") from exc
    if dns_timeout is None:
        dns_timeout = settings.OUTBOUND_DNS_TIMEOUT_SECONDS
    addresses = _resolve(host, port, label, dns_timeout)
    allowed = f"{host}:{port}" in allowed_hosts
    if not allowed and (not addresses or not all(is_public_address(a) for a in addresses)):
        raise PublicUrlError(f"{label} host {host!r} is not a public address; refused")
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
    """Refuse (PublicUrlError) a URL this guard would not connect to; nothing is fetched."""
    checked_target(url, allowed_hosts=allowed_hosts, label=label)


def _pinned_connection(
    scheme: str, host: str, port: int, address: str, timeout: float
) -> http.client.HTTPConnection:
    connection_class = _PinnedHTTPSConnection if scheme == "https" else _PinnedHTTPConnection
    return connection_class(host, port, address, timeout=timeout)


def fetch_public_bytes(
    url: str,
    *,
    limits: FetchLimits,
    allowed_hosts: list[str],
    label: str,
    accept: str,
    budget: FetchBudget | None = None,
) -> bytes:
    """GET a public URL through the guard, following checked redirects, within `limits` (and
    within `budget`, shared with other fetches, when one is given)."""
    started = time.monotonic()
    size_limit = f"{label} is larger than {limits.max_bytes // (1024 * 1024)} MB"
    for _ in range(MAX_REDIRECTS + 1):
        if budget:
            budget.check()
        dns_timeout = settings.OUTBOUND_DNS_TIMEOUT_SECONDS
        if budget:
            dns_timeout = min(dns_timeout, budget.remaining())
        scheme, host, port, address, path = checked_target(
            url, allowed_hosts=allowed_hosts, label=label, dns_timeout=dns_timeout
        )
        connect_timeout = limits.connect_timeout
        if budget:
            budget.check()  # resolving may have taken a while
            connect_timeout = min(connect_timeout, budget.remaining())
        connection = _pinned_connection(scheme, host, port, address, connect_timeout)
        try:
            connection.connect()
            # The connection lets go of its socket once a response that closes it arrives; the
            # response reads on through the same socket.
            sock = connection.sock
            with budget.reading(sock) if budget else contextlib.nullcontext():
                sock.settimeout(_read_timeout(limits, budget))
                connection.request(
                    "GET", path, headers={"User-Agent": "embeddings-platform/1", "Accept": accept}
                )
                response = connection.getresponse()
                if response.status in {301, 302, 303, 307, 308}:
                    location = response.getheader("Location")
                    if not location:
                        raise PublicUrlError(f"{label} URL redirected without a Location")
                    url = urljoin(url, location)
                    continue
                if response.status != 200:
                    raise PublicUrlError(f"{label} URL answered HTTP {response.status}")
                declared = response.getheader("Content-Length")
                if declared and declared.isdigit():
                    if int(declared) > limits.max_bytes:
                        raise PublicUrlError(size_limit)
                    if budget and int(declared) > budget.bytes_left():
                        raise PublicUrlError(budget.size_message())
                return _read_capped(response, sock, limits, started, label, size_limit, budget)
        except (OSError, http.client.HTTPException) as exc:
            if budget:
                budget.check()  # called off or out of time: say that, not the socket's error
            raise PublicUrlError(f"{label} URL could not be fetched: {type(exc).__name__}") from exc
        finally:
            connection.close()
    raise PublicUrlError(f"{label} URL redirected more than {MAX_REDIRECTS} times")


def _read_timeout(limits: FetchLimits, budget: FetchBudget | None) -> float:
    """The read timeout, shortened so a silent server cannot outlast the shared budget."""
    if budget is None:
        return limits.read_timeout
    return max(min(limits.read_timeout, budget.remaining()), 0.001)


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
    scheme, host, port, address, path = checked_target(
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
        raise PublicUrlError(f"{label} URL could not be reached: {type(exc).__name__}") from exc
    finally:
        connection.close()


def _read_capped(
    response: http.client.HTTPResponse,
    sock: socket.socket,
    limits: FetchLimits,
    started: float,
    label: str,
    size_limit: str,
    budget: FetchBudget | None,
) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        if time.monotonic() - started > limits.deadline:
            raise PublicUrlError(f"{label} download took longer than {limits.deadline:g} s")
        if budget:
            budget.check()
            sock.settimeout(_read_timeout(limits, budget))
        chunk = response.read1(64 * 1024)
        if not chunk:
            if budget:
                budget.check()  # a socket shut by calling off reads as the end of the body
            return b"".join(chunks)
        size += len(chunk)
        if size > limits.max_bytes:
            raise PublicUrlError(size_limit)
        if budget:
            budget.spend(len(chunk))
        chunks.append(chunk)

"""Per-client-IP limits (django-ratelimit, on the Django cache) and the client address they count.

Every `key="ip"` limit counts `client_ip(request)`: settings name it as django-ratelimit's
RATELIMIT_IP_META_KEY, so no limit reads a client-chosen header on its own.

django-ratelimit counts in fixed windows of time.time(); here its clock is `use_clock`'s, the
real one unless a test pins it (a window that rolls over mid-test lets one more through).
"""

from __future__ import annotations

import functools
import ipaddress
import time
from collections.abc import Callable, Sequence
from typing import Any

import django_ratelimit.core
from django.conf import settings
from django.http import HttpRequest
from django_ratelimit.decorators import ratelimit

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# What a request without a usable REMOTE_ADDR counts as (a Unix-socket peer, a broken WSGI
# environ): such requests share one allowance instead of failing with a 500.
UNKNOWN_CLIENT = "0.0.0.0"  # noqa: S104 - an address to count by, never one to bind to

Clock = Callable[[], float]  # seconds since the epoch, as time.time() gives them
_clock: Clock = time.time


def use_clock(clock: Clock | None) -> None:
    """Count every per-IP window on `clock` from now on (None: the real time.time again)."""
    global _clock
    _clock = clock or time.time


class _WindowTime:
    """What django_ratelimit.core (4.1.0, pinned) calls as its `time` module: it reads only
    time.time(), for the window a request falls in and the seconds left in it."""

    @staticmethod
    def time() -> float:
        return _clock()


django_ratelimit.core.time = _WindowTime()  # type: ignore[assignment]


def posts_limited_per_ip(rate_setting: str) -> Callable[[Any], Any]:
    """A view decorator: at most settings.<rate_setting> POSTs per IP (e.g. "20/m"), then 429."""
    return ratelimit(
        key="ip",
        rate=lambda group, request: getattr(settings, rate_setting),
        method="POST",
        block=True,
    )


def client_ip(request: HttpRequest) -> str:
    """The address a request's per-IP limits count; X-Forwarded-For only as trusted proxies set it."""
    remote = _parse_ip(request.META.get("REMOTE_ADDR", ""))
    if remote is None:
        return UNKNOWN_CLIENT
    trusted = _trusted_networks(tuple(getattr(settings, "TRUSTED_PROXIES", ())))
    if not _is_trusted(remote, trusted):
        return str(remote)
    forwarded = request.META.get("HTTP_X_FORWARDED_FOR", "")
    if not isinstance(forwarded, str) or not forwarded.strip():
        return str(remote)
    # Each proxy appends the address it received from, so walking from the right, the first
    # address that is not one of ours is the client; whatever is left of it the client wrote.
    hops = [hop.strip() for hop in forwarded.split(",")]
    address: IpAddress | None = None
    for hop in reversed(hops):
        address = _parse_ip(hop)
        if address is None:
            return str(remote)
        if not _is_trusted(address, trusted):
            return str(address)
    # Every hop is one of ours (a health check from inside): the left-most is where it began.
    return str(address) if address is not None else str(remote)


def _parse_ip(value: object) -> IpAddress | None:
    if not isinstance(value, str):
        return None
    try:
        address = ipaddress.ip_address(value.strip())
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return address.ipv4_mapped
        if address.scope_id is not None:
            # django-ratelimit masks the address into a network, which a zone id breaks.
            return ipaddress.IPv6Address(address.packed)
    return address


@functools.lru_cache(maxsize=8)
def _trusted_networks(entries: Sequence[str]) -> tuple[IpNetwork, ...]:
    # settings.py refuses a bad entry at startup; one set later (a test) is skipped, not raised.
    networks = []
    for entry in entries:
        try:
            networks.append(ipaddress.ip_network(entry.strip(), strict=False))
        except ValueError:
            continue
    return tuple(networks)


def _is_trusted(address: IpAddress, trusted: Sequence[IpNetwork]) -> bool:
    return any(address in network for network in trusted)

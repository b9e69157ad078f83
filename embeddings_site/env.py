"""Typed readers of the environment for settings.py.

Each reader parses one variable, checks it against its bounds or choices, and raises
SettingError naming the variable when it does not fit, so a typo stops `manage.py`, gunicorn
and Celery at start-up instead of failing the first request that reads it. An unset or blank
variable is its default. Every reader records the name it was asked for, with its default, so
a test can hold `.env.example` to what the settings read (tests/site/test_settings.py).
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import TypeVar
from urllib.parse import urlsplit

from django.core.exceptions import ImproperlyConfigured

T = TypeVar("T")


class SettingError(ImproperlyConfigured):
    """A variable of the environment that the settings cannot use; the message names it."""


@dataclass(frozen=True)
class Variable:
    """A variable the settings read: its name, its kind and its default as written in .env."""

    name: str
    kind: str
    default: str


# Every variable read (its latest read: a default may follow another variable); and those read
# only to refuse them.
READ: dict[str, Variable] = {}
RETIRED: set[str] = set()

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}
# django-ratelimit's rates: a count, "/", an optional multiplier and a unit ("20/m", "5/10m").
# Its own parser takes any prefix that matches ("20/x" counts per second), so check it whole.
_RATE = re.compile(r"\d+/\d*[smhd]")


def _raw(name: str, kind: str, default: object) -> str:
    if isinstance(default, bool):
        text = "true" if default else "false"
    elif isinstance(default, list):
        text = ",".join(default)
    else:
        text = str(default)
    READ[name] = Variable(name=name, kind=kind, default=text)
    return os.environ.get(name, "").strip()


def _check_bounds(
    name: str, raw: str, value: float, minimum: float | None, maximum: float | None
) -> None:
    if minimum is not None and value < minimum:
        raise SettingError(f"{name}: {raw} is below the minimum, {minimum:g}")
    if maximum is not None and value > maximum:
        raise SettingError(f"{name}: {raw} is above the maximum, {maximum:g}")


def env_str(name: str, default: str = "") -> str:
    """A string, stripped."""
    return _raw(name, "str", default) or default


def env_bool(name: str, default: bool = False) -> bool:
    """true/false, yes/no, on/off or 1/0."""
    raw = _raw(name, "bool", default).lower()
    if not raw:
        return default
    if raw in _TRUE:
        return True
    if raw in _FALSE:
        return False
    raise SettingError(f"{name}: {raw!r} is not a boolean (true or false)")


def env_int(
    name: str, default: int, *, minimum: int | None = None, maximum: int | None = None
) -> int:
    """A whole number within [minimum, maximum]."""
    raw = _raw(name, "int", default)
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingError(f"{name}: {raw!r} is not an integer") from None
    _check_bounds(name, raw, value, minimum, maximum)
    return value


def env_float(
    name: str,
    default: float,
    *,
    minimum: float | None = None,
    above: float | None = None,
) -> float:
    """A number at least `minimum`, or strictly more than `above` (a timeout of 0 is none)."""
    raw = _raw(name, "float", default)
    if not raw:
        return float(default)
    try:
        value = float(raw)
    except ValueError:
        raise SettingError(f"{name}: {raw!r} is not a number") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise SettingError(f"{name}: {raw!r} is not a finite number")
    if above is not None and value <= above:
        raise SettingError(f"{name}: {raw} must be more than {above:g}")
    _check_bounds(name, raw, value, minimum, None)
    return value


def env_choice(name: str, default: str, choices: Collection[str]) -> str:
    """One of `choices`."""
    raw = _raw(name, "choice", default)
    if not raw:
        return default
    if raw not in choices:
        raise SettingError(f"{name}: {raw!r} is not one of {', '.join(sorted(choices))}")
    return raw


def env_list(name: str, default: list[str]) -> list[str]:
    """Comma-separated items, stripped; empty items dropped."""
    raw = _raw(name, "list", default)
    if not raw:
        return default
    return [item.strip() for item in raw.split(",") if item.strip()]


def env_networks(name: str, default: list[str]) -> list[str]:
    """Comma-separated IP addresses or networks (CIDR)."""
    items = env_list(name, default)
    for item in items:
        try:
            ipaddress.ip_network(item, strict=False)
        except ValueError:
            raise SettingError(f"{name}: {item!r} is not an IP address or network") from None
    return items


def env_rate(name: str, default: str) -> str:
    """A django-ratelimit rate: "20/m" (per s, m, h or d; "5/10m" is 5 per 10 minutes)."""
    raw = _raw(name, "rate", default)
    if not raw:
        return default
    if not _RATE.fullmatch(raw):
        raise SettingError(
            f"{name}: {raw!r} is not a rate like 20/m (a count per s, m, h or d, e.g. 5/10m)"
        )
    return raw


def env_url(name: str, default: str = "", *, schemes: Collection[str]) -> str:
    """A URL with one of `schemes`, or empty when the default is. Only its scheme is echoed
    in an error: the rest may hold a password."""
    raw = _raw(name, "url", default)
    if not raw:
        return default
    known = list(dict.fromkeys(scheme.lower() for scheme in schemes))
    scheme = urlsplit(raw).scheme.lower() if "://" in raw else ""
    if scheme not in known:
        shown = f"scheme {scheme!r}" if scheme else "no scheme"
        expected = " or ".join(f"{s}://" for s in known)
        if len(known) > 3:
            expected = f"one of {', '.join(sorted(known))}"
        raise SettingError(f"{name}: the URL has {shown}; expected {expected}")
    return raw


def env_json(name: str, default: T, parse: Callable[[object], T]) -> T:
    """JSON, checked by `parse`, which raises ValueError saying which entry is wrong."""
    raw = _raw(name, "json", "")
    if not raw:
        return default
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise SettingError(f"{name}: not valid JSON ({exc})") from None
    try:
        return parse(value)
    except ValueError as exc:
        raise SettingError(f"{name}: {exc}") from None


def env_retired(name: str, instead: str) -> None:
    """Refuse a variable that is no longer read, saying what replaces it."""
    RETIRED.add(name)
    if os.environ.get(name, "").strip():
        raise SettingError(f"{name} is no longer read: {instead}")


def require(condition: bool, message: str) -> None:
    """A constraint between settings; `message` names them."""
    if not condition:
        raise SettingError(message)

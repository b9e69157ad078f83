"""The typed readers settings.py reads the environment with, and the shapes of its JSON values:
each refusal names the variable and what is wrong with it."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from embeddings_site import setting_shapes
from embeddings_site.env import (
    READ,
    RETIRED,
    SettingError,
    env_bool,
    env_choice,
    env_float,
    env_int,
    env_json,
    env_networks,
    env_rate,
    env_retired,
    env_url,
)

NAME = "TEST_ENV_SETTING"
SetEnv = Callable[[str], None]


@pytest.fixture
def setenv(monkeypatch: pytest.MonkeyPatch) -> Iterator[SetEnv]:
    def set_value(value: str) -> None:
        monkeypatch.setenv(NAME, value)

    monkeypatch.delenv(NAME, raising=False)
    yield set_value
    READ.pop(NAME, None)
    RETIRED.discard(NAME)


def refusal(read: Callable[..., object], *args: Any, **kwargs: Any) -> str:
    with pytest.raises(SettingError) as caught:
        read(NAME, *args, **kwargs)
    return str(caught.value)


def test_unset_and_blank_are_the_default(setenv: SetEnv) -> None:
    assert env_int(NAME, 7, minimum=1) == 7
    setenv("  ")
    assert env_int(NAME, 7, minimum=1) == 7
    assert env_float(NAME, 2, above=0) == 2.0
    assert env_bool(NAME, True) is True


def test_integers(setenv: SetEnv) -> None:
    setenv(" 12 ")
    assert env_int(NAME, 1) == 12
    setenv("abc")
    assert refusal(env_int, 1) == f"{NAME}: 'abc' is not an integer"
    setenv("1.5")
    assert refusal(env_int, 1) == f"{NAME}: '1.5' is not an integer"
    setenv("0")
    assert refusal(env_int, 4, minimum=1) == f"{NAME}: 0 is below the minimum, 1"
    setenv("70000")
    assert refusal(env_int, 25, minimum=1, maximum=65535) == (
        f"{NAME}: 70000 is above the maximum, 65535"
    )


def test_numbers(setenv: SetEnv) -> None:
    setenv("0.25")
    assert env_float(NAME, 60, above=0) == 0.25
    setenv("-1")
    assert refusal(env_float, 60, above=0) == f"{NAME}: -1 must be more than 0"
    setenv("0")
    assert refusal(env_float, 60, above=0) == f"{NAME}: 0 must be more than 0"
    assert env_float(NAME, 5, minimum=0) == 0
    setenv("soon")
    assert refusal(env_float, 60) == f"{NAME}: 'soon' is not a number"
    setenv("nan")
    assert refusal(env_float, 60, minimum=0) == f"{NAME}: 'nan' is not a finite number"


def test_booleans_are_strict(setenv: SetEnv) -> None:
    for text, value in (("true", True), ("YES", True), ("1", True), ("off", False), ("0", False)):
        setenv(text)
        assert env_bool(NAME, not value) is value
    # Before, anything but a true word was silently false.
    setenv("sometimes")
    assert refusal(env_bool) == f"{NAME}: 'sometimes' is not a boolean (true or false)"


def test_choices(setenv: SetEnv) -> None:
    setenv("closed")
    assert env_choice(NAME, "local", ("local", "closed", "open")) == "closed"
    setenv("sometimes")
    assert refusal(env_choice, "local", ("local", "closed", "open")) == (
        f"{NAME}: 'sometimes' is not one of closed, local, open"
    )


@pytest.mark.parametrize("rate", ["20/m", "5/10m", "1000/h", "3/d", "1/s"])
def test_rates_django_ratelimit_reads(setenv: SetEnv, rate: str) -> None:
    setenv(rate)
    assert env_rate(NAME, "20/m") == rate


# django-ratelimit reads "20/x" and "20/M" as 20 a second, and fails on "abc" in the request.
@pytest.mark.parametrize("rate", ["20/x", "20/M", "20", "abc", "/m", "20/m/h"])
def test_rates_that_would_misread_are_refused(setenv: SetEnv, rate: str) -> None:
    setenv(rate)
    assert refusal(env_rate, "20/m").startswith(f"{NAME}: {rate!r} is not a rate like 20/m")


def test_urls_name_the_scheme_never_the_password(setenv: SetEnv) -> None:
    schemes = ("redis", "rediss", "unix")
    setenv("rediss://:pw@cache:6380/0")
    assert env_url(NAME, schemes=schemes) == "rediss://:pw@cache:6380/0"
    setenv("http://user:hunter2@cache:6379")
    message = refusal(env_url, schemes=schemes)
    assert message == (
        f"{NAME}: the URL has scheme 'http'; expected redis:// or rediss:// or unix://"
    )
    assert "hunter2" not in message
    setenv("cache:6379")
    assert refusal(env_url, schemes=schemes).startswith(f"{NAME}: the URL has no scheme")
    # Celery's transports: many, some spelled in capitals.
    setenv("rabbit://broker")
    assert refusal(env_url, schemes=("redis", "SQS", "sqs", "amqp", "memory")) == (
        f"{NAME}: the URL has scheme 'rabbit'; expected one of amqp, memory, redis, sqs"
    )
    setenv("SQS://queue")
    assert env_url(NAME, schemes=("redis", "SQS", "amqp", "memory")) == "SQS://queue"


def test_networks(setenv: SetEnv) -> None:
    setenv("10.0.0.0/8, ::1")
    assert env_networks(NAME, []) == ["10.0.0.0/8", "::1"]
    setenv("10.0.0.0/8,proxy.local")
    assert refusal(env_networks, []) == f"{NAME}: 'proxy.local' is not an IP address or network"


def test_retired_variables_are_refused_with_what_replaces_them(setenv: SetEnv) -> None:
    env_retired(NAME, "set OTHER instead")
    setenv("anything")
    assert refusal(env_retired, "set OTHER instead") == (
        f"{NAME} is no longer read: set OTHER instead"
    )


def test_every_reader_records_its_variable_and_default(setenv: SetEnv) -> None:
    env_int(NAME, 2048, minimum=1)
    assert (READ[NAME].kind, READ[NAME].default) == ("int", "2048")
    env_bool(NAME, True)
    assert (READ[NAME].kind, READ[NAME].default) == ("bool", "true")


def tiers(value: object) -> str:
    with pytest.raises(ValueError) as caught:
        setting_shapes.rate_limit_tiers(value)
    return str(caught.value)


def test_rate_limit_tiers() -> None:
    good = {"free": {"rpm": 60, "tpm": 100_000, "concurrency": 2}}
    assert setting_shapes.rate_limit_tiers(good) == good
    assert tiers([1]).startswith("must be an object of tiers")
    assert tiers({"free": 5}) == "tier 'free' must be an object of rpm, tpm, concurrency"
    assert tiers({"free": {"rpm": 60, "tpm": 1}}) == "tier 'free' lacks concurrency"
    assert tiers({"free": {"rpm": 1, "tpm": 1, "concurrency": 1, "rps": 1}}) == (
        "tier 'free' has unknown keys ['rps'] (known: rpm, tpm, concurrency)"
    )
    for bad in (0, -5, 1.5, "60", True, None):
        assert tiers({"free": {"rpm": bad, "tpm": 1, "concurrency": 1}}) == (
            f"tier 'free': rpm must be a positive integer, not {bad!r}"
        )


PACK = {"id": "pack-1b", "name": "1B", "tokens": 10**9, "amount": 5000, "currency": "usd"}


def packs(value: object) -> str:
    with pytest.raises(ValueError) as caught:
        setting_shapes.token_packs(value)
    return str(caught.value)


def test_token_packs() -> None:
    assert setting_shapes.token_packs([PACK, {**PACK, "id": "b", "currency": "EUR"}])[1] == {
        **PACK,
        "id": "b",
        "currency": "EUR",
    }
    assert packs(PACK).startswith("must be a list of packs")
    assert packs([PACK, {**PACK, "name": "again"}]) == (
        "pack 'pack-1b': id is used by an earlier pack"
    )
    assert packs([{**PACK, "tokens": 0}]) == (
        "pack 'pack-1b': tokens must be a positive integer, not 0"
    )
    assert packs([{**PACK, "amount": "50.00"}]) == (
        "pack 'pack-1b': amount must be a positive integer, not '50.00'"
    )
    assert packs([{**PACK, "currency": "dollars"}]) == (
        "pack 'pack-1b': currency must be a three-letter code such as usd, not 'dollars'"
    )
    assert packs([{**PACK, "price": 5}]) == (
        "pack 'pack-1b' has unknown keys ['price'] (known: id, name, tokens, amount, currency)"
    )
    without_id = {key: value for key, value in PACK.items() if key != "id"}
    assert packs([PACK, without_id]) == "pack 1 lacks id"
    assert packs([{**PACK, "name": " "}]) == (
        "pack 'pack-1b': name must be a non-empty string, not ' '"
    )


def test_json_errors_name_the_variable_and_the_entry(setenv: SetEnv) -> None:
    assert env_json(NAME, [PACK], setting_shapes.token_packs) == [PACK]
    setenv("[{'id': 1}]")
    assert refusal(env_json, [], setting_shapes.token_packs).startswith(f"{NAME}: not valid JSON (")
    setenv(json.dumps([{**PACK, "tokens": -1}]))
    assert refusal(env_json, [], setting_shapes.token_packs) == (
        f"{NAME}: pack 'pack-1b': tokens must be a positive integer, not -1"
    )

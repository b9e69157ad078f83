"""Issue 14.1: visitor trial keys stay small and few. Each UTC day an address gets at most
VISITOR_TRIALS_PER_IP_PER_DAY and its network (/24, or /56 for IPv6) at most
VISITOR_TRIALS_PER_NETWORK_PER_DAY; visitors are not users in staff's counts."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import requests
from django.core.cache import cache
from django.test import Client

from billing.models import ApiKey, User, VisitorTrialCount
from tests.infra import Gateway, postgres_query

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def caps(settings: Any) -> None:
    settings.VISITOR_TRIAL_TOKENS = 1_000
    settings.VISITOR_TRIALS_PER_IP_PER_DAY = 2
    settings.VISITOR_TRIALS_PER_NETWORK_PER_DAY = 3
    # The hourly per-IP form limit is another guard; these tests are about the daily caps.
    settings.IP_RATE_LIMIT_TRIAL_KEY = "1000/h"
    cache.clear()


def trial(address: str, **extra: str) -> Any:
    return Client(REMOTE_ADDR=address).post("/playground/key", **extra)


def test_an_address_gets_its_daily_trials_then_a_coded_429_until_midnight() -> None:
    first, second, third = (trial("198.51.100.7") for _ in range(3))
    assert (first.status_code, second.status_code) == (200, 200)
    assert first.json()["balance"] == 1_000 and first.json()["key"] != second.json()["key"]
    assert third.status_code == 429
    assert third.json()["error"]["code"] == "RATE_TRIAL_QUOTA_EXCEEDED"
    assert "Sign up" in third.json()["error"]["message"]
    assert 0 < int(third["Retry-After"]) <= 86_400
    assert ApiKey.objects.filter(name="playground trial").count() == 2


def test_addresses_of_one_network_share_its_cap_and_other_networks_do_not() -> None:
    codes = [trial(f"198.51.100.{n}").status_code for n in (1, 2, 3, 4, 5)]
    assert codes == [200, 200, 200, 429, 429]
    assert trial("198.51.101.1").status_code == 200  # the next /24
    # An address refused for its network took nothing from its own allowance.
    assert not VisitorTrialCount.objects.filter(scope="ip:198.51.100.4", count__gt=0).exists()


def test_ipv6_addresses_count_by_their_56() -> None:
    inside = ["2001:db8:0:ab::1", "2001:db8:0:cd::2", "2001:db8:0:ff:1::3", "2001:db8:0:12::4"]
    assert [trial(address).status_code for address in inside] == [200, 200, 200, 429]
    assert trial("2001:db8:0:100::1").status_code == 200  # another /56


def test_forwarded_headers_from_an_untrusted_peer_do_not_multiply_trials(settings: Any) -> None:
    settings.TRUSTED_PROXIES = ["10.0.0.0/8"]
    codes = [
        trial("203.0.113.9", HTTP_X_FORWARDED_FOR=f"198.51.{n}.1").status_code for n in range(4)
    ]
    assert codes == [200, 200, 429, 429]
    # Behind the trusted proxy, the forwarded client is what counts.
    assert trial("10.0.0.1", HTTP_X_FORWARDED_FOR="192.0.2.1").status_code == 200


def test_visitors_are_not_users_and_cannot_sign_in(settings: Any) -> None:
    trial("198.51.100.1")
    owner = ApiKey.objects.get(name="playground trial").user
    assert owner.is_visitor and not owner.has_usable_password()
    staff = User.objects.create_user(email="ops@example.com", password="x" * 20, is_staff=True)
    client = Client()
    client.force_login(staff)
    page = client.get("/staff/").content.decode()
    assert '<div class="stat" id="stat-users">1</div>' in page
    assert "and 1 visitor trial keys" in page


def test_operators_can_turn_visitor_trials_off(settings: Any) -> None:
    settings.VISITOR_TRIAL_TOKENS = 0
    response = trial("198.51.100.1")
    assert response.status_code == 403
    assert not ApiKey.objects.exists() and not VisitorTrialCount.objects.exists()


@pytest.mark.e2e
def test_two_gateways_on_postgres_give_one_network_exactly_its_cap(
    gateways: list[Gateway], tmp_path: Path, postgres_url: str
) -> None:
    """Concurrent requests from one /24, behind a trusted proxy, on two gunicorn processes."""
    gateway = Gateway(
        tmp_path / "gw",
        workers=2,
        threads=4,
        env={
            "DATABASE_URL": postgres_url,
            "TRUSTED_PROXIES": "127.0.0.1",
            "VISITOR_TRIALS_PER_IP_PER_DAY": "50",
            "VISITOR_TRIALS_PER_NETWORK_PER_DAY": "5",
            "IP_RATE_LIMIT_TRIAL_KEY": "1000/h",
            "EMBEDDINGS_WARM_ON_START": "false",
        },
    ).start()
    gateways.append(gateway)

    def ask(n: int) -> int:
        with requests.Session() as session:
            session.get(f"{gateway.url}/", timeout=30)
            return session.post(
                f"{gateway.url}/playground/key",
                headers={
                    "X-CSRFToken": session.cookies["csrftoken"],
                    "X-Forwarded-For": f"198.51.100.{n}",
                },
                timeout=30,
            ).status_code

    with ThreadPoolExecutor(8) as pool:
        codes = list(pool.map(ask, range(1, 25)))
    assert sorted(codes) == [200] * 5 + [429] * 19
    [(keys,)] = postgres_query(
        postgres_url, "SELECT count(*) FROM billing_apikey WHERE name = 'playground trial'"
    )
    assert keys == 5

"""Issue 14.2: the address per-IP limits count. X-Forwarded-For is believed only as far as
TRUSTED_PROXIES wrote it; a client cannot buy a fresh allowance with a header, and no header
value, however broken, turns a limited route into a 500."""

from __future__ import annotations

from pathlib import Path

import pytest
import requests
from django.core.cache import cache
from django.test import RequestFactory

from embeddings_site.ip_limits import UNKNOWN_CLIENT, client_ip
from tests.infra import Gateway

PROXIES = ["10.0.0.0/8", "192.0.2.10", "2001:db8:ffff::/48"]


def ip_of(remote_addr: str | None, forwarded: str | None = None) -> str:
    request = RequestFactory().get("/v1/models")
    if remote_addr is None:
        del request.META["REMOTE_ADDR"]
    else:
        request.META["REMOTE_ADDR"] = remote_addr
    if forwarded is not None:
        request.META["HTTP_X_FORWARDED_FOR"] = forwarded
    return client_ip(request)


@pytest.fixture
def proxies(settings):
    settings.TRUSTED_PROXIES = PROXIES


def test_without_trusted_proxies_the_header_is_ignored(settings) -> None:
    settings.TRUSTED_PROXIES = []
    assert ip_of("203.0.113.5", "198.51.100.1") == "203.0.113.5"
    assert ip_of("10.0.0.1", "198.51.100.1") == "10.0.0.1"


@pytest.mark.usefixtures("proxies")
class TestClientIp:
    def test_an_untrusted_peer_is_the_client_whatever_it_forwards(self) -> None:
        assert ip_of("203.0.113.5", "198.51.100.1") == "203.0.113.5"
        assert ip_of("203.0.113.5", "10.0.0.1") == "203.0.113.5"

    def test_a_trusted_proxy_names_the_client(self) -> None:
        assert ip_of("10.0.0.1", "203.0.113.1") == "203.0.113.1"
        assert ip_of("192.0.2.10", "203.0.113.1") == "203.0.113.1"

    def test_the_right_most_untrusted_entry_wins_over_what_the_client_wrote(self) -> None:
        # nginx's $proxy_add_x_forwarded_for appends to whatever the client sent.
        assert ip_of("10.0.0.1", "1.2.3.4, 203.0.113.1") == "203.0.113.1"
        assert ip_of("10.0.0.1", "1.2.3.4, 203.0.113.1, 10.0.0.7") == "203.0.113.1"
        assert ip_of("10.0.0.1", "1.2.3.4,203.0.113.1,10.0.0.7,192.0.2.10") == "203.0.113.1"

    def test_spaces_around_entries_are_ignored(self) -> None:
        assert ip_of("10.0.0.1", "   203.0.113.1 ,  10.0.0.2  ") == "203.0.113.1"

    def test_garbage_left_of_the_client_is_the_clients_own_and_ignored(self) -> None:
        assert ip_of("10.0.0.1", "not-an-ip, <script>, 203.0.113.1") == "203.0.113.1"

    def test_ipv6(self) -> None:
        assert ip_of("2001:db8:ffff::1", "2001:db8:1::42") == "2001:db8:1::42"
        assert ip_of("10.0.0.1", "2001:DB8:1:0::42, 2001:db8:ffff::9") == "2001:db8:1::42"
        assert ip_of("2001:db8:1::42") == "2001:db8:1::42"
        # An IPv4 client seen through a dual-stack socket is the IPv4 address.
        assert ip_of("::ffff:10.0.0.1", "203.0.113.1") == "203.0.113.1"
        assert ip_of("::ffff:203.0.113.5") == "203.0.113.5"

    @pytest.mark.parametrize(
        "forwarded",
        [
            "",
            "   ",
            ",",
            "garbage",
            "203.0.113.1, ",
            "203.0.113.1,,10.0.0.2",
            "203.0.113.1:4431",
            "[2001:db8::1]:443",
            "300.1.1.1",
            "unknown",
            "\x00\xff",
            "203.0.113.1, 10.0.0.2, ?",
        ],
    )
    def test_a_malformed_header_falls_back_to_the_peer(self, forwarded: str) -> None:
        assert ip_of("10.0.0.1", forwarded) == "10.0.0.1"

    def test_a_missing_header_is_the_peer(self) -> None:
        assert ip_of("10.0.0.1") == "10.0.0.1"

    def test_a_request_from_inside_through_the_proxy_is_the_inside_address(self) -> None:
        assert ip_of("10.0.0.1", "10.9.9.9, 10.0.0.2") == "10.9.9.9"

    @pytest.mark.parametrize("remote_addr", [None, "", "unix:/run/gunicorn.sock", "garbage"])
    def test_no_usable_peer_address_is_one_shared_unknown_client(
        self, remote_addr: str | None
    ) -> None:
        assert ip_of(remote_addr, "203.0.113.1") == UNKNOWN_CLIENT

    def test_a_bad_trusted_proxies_entry_set_at_run_time_is_skipped(self, settings) -> None:
        settings.TRUSTED_PROXIES = ["not-a-network", "10.0.0.0/8"]
        assert ip_of("10.0.0.1", "203.0.113.1") == "203.0.113.1"


# --- Through the Django test client, on a real per-IP limit ---------------------------------


@pytest.fixture
def three_per_ip(settings):
    settings.IP_RATE_LIMIT_ANONYMOUS = "3/m"
    cache.clear()
    yield
    cache.clear()


@pytest.mark.usefixtures("three_per_ip", "proxies")
class TestPerIpLimitBehindAProxy:
    def test_forwarded_headers_from_an_untrusted_address_do_not_buy_more_requests(
        self, client, default_model
    ) -> None:
        codes = [
            client.get(
                "/v1/models", REMOTE_ADDR="203.0.113.7", HTTP_X_FORWARDED_FOR=f"198.51.100.{n}"
            ).status_code
            for n in range(4)
        ]
        assert codes == [200, 200, 200, 429]
        # Nor does leaving the header off.
        assert client.get("/v1/models", REMOTE_ADDR="203.0.113.7").status_code == 429

    def test_a_client_behind_the_proxy_cannot_rotate_the_left_of_the_list(
        self, client, default_model
    ) -> None:
        codes = [
            client.get(
                "/v1/models",
                REMOTE_ADDR="10.0.0.1",
                HTTP_X_FORWARDED_FOR=f"198.51.100.{n}, 203.0.113.1",
            ).status_code
            for n in range(4)
        ]
        assert codes == [200, 200, 200, 429]

    def test_clients_behind_one_proxy_each_have_their_own_allowance(
        self, client, default_model
    ) -> None:
        for _ in range(3):
            ok = client.get(
                "/v1/models", REMOTE_ADDR="10.0.0.1", HTTP_X_FORWARDED_FOR="203.0.113.1"
            )
            assert ok.status_code == 200
        refused = client.get(
            "/v1/models", REMOTE_ADDR="10.0.0.1", HTTP_X_FORWARDED_FOR="203.0.113.1"
        )
        assert refused.status_code == 429
        assert refused.json()["code"] == "RATE_IP_LIMIT_EXCEEDED"
        other = client.get(
            "/v1/models", REMOTE_ADDR="10.0.0.2", HTTP_X_FORWARDED_FOR="203.0.113.2, 10.0.0.9"
        )
        assert other.status_code == 200

    @pytest.mark.parametrize(
        "forwarded", [None, "", "garbage", "203.0.113.1, 10.0.0.1", " , ,", "::::", "1.2.3.4:80"]
    )
    @pytest.mark.parametrize("remote_addr", ["10.0.0.1", "203.0.113.9", ""])
    def test_no_header_value_makes_a_limited_route_fail(
        self, client, default_model, remote_addr: str, forwarded: str | None
    ) -> None:
        extra = {} if forwarded is None else {"HTTP_X_FORWARDED_FOR": forwarded}
        response = client.get("/v1/models", REMOTE_ADDR=remote_addr, **extra)
        assert response.status_code == 200
        detail = client.get("/v1/models/all-MiniLM-L6-v2", REMOTE_ADDR=remote_addr, **extra)
        assert detail.status_code == 200

    def test_the_admin_sign_in_counts_the_forwarded_client(self, client, db, settings) -> None:
        settings.IP_RATE_LIMIT_LOGIN = "2/m"
        codes = [
            client.post(
                "/admin/login/",
                {"username": "a@example.com", "password": "wrong"},
                REMOTE_ADDR="10.0.0.1",
                HTTP_X_FORWARDED_FOR=f"198.51.100.{n}, 203.0.113.1",
            ).status_code
            for n in range(3)
        ]
        assert codes == [200, 200, 429]
        other = client.post(
            "/admin/login/",
            {"username": "a@example.com", "password": "wrong"},
            REMOTE_ADDR="10.0.0.1",
            HTTP_X_FORWARDED_FOR="203.0.113.2",
        )
        assert other.status_code == 200


# --- Real processes: gunicorn behind a proxy on 127.0.0.1, and startup refusals ------------


@pytest.mark.e2e
def test_behind_a_trusted_proxy_gunicorn_limits_each_forwarded_client(
    gateways: list[Gateway], tmp_path: Path
) -> None:
    gateway = Gateway(
        tmp_path / "gw",
        workers=1,
        threads=4,
        env={"TRUSTED_PROXIES": "127.0.0.1,::1", "IP_RATE_LIMIT_ANONYMOUS": "2/m"},
    ).start()
    gateways.append(gateway)

    def models(forwarded: str | None) -> int:
        headers = {} if forwarded is None else {"X-Forwarded-For": forwarded}
        return requests.get(f"{gateway.url}/v1/models", headers=headers, timeout=30).status_code

    # What nginx's $proxy_add_x_forwarded_for sends: the client's own header, then its address.
    assert [models(f"1.1.1.{n}, 203.0.113.1") for n in range(3)] == [200, 200, 429]
    assert models("203.0.113.2") == 200
    # Broken or missing headers count as the proxy itself, and are answered, never a 500.
    assert [models(None), models("garbage"), models("203.0.113.3, ")] == [200, 200, 429]


@pytest.mark.e2e  # starts manage.py check in a process of its own
def test_the_old_spoofable_setting_refuses_to_start(tmp_path: Path) -> None:
    gateway = Gateway(
        tmp_path / "gw", workers=1, threads=1, env={"RATELIMIT_IP_META_KEY": "HTTP_X_FORWARDED_FOR"}
    )
    gateway.directory.mkdir(parents=True)
    result = gateway.manage("check", check=False)
    assert result.returncode != 0
    assert "TRUSTED_PROXIES" in result.stderr


@pytest.mark.e2e  # starts manage.py check in a process of its own
def test_a_trusted_proxies_entry_that_is_no_address_refuses_to_start(tmp_path: Path) -> None:
    gateway = Gateway(
        tmp_path / "gw", workers=1, threads=1, env={"TRUSTED_PROXIES": "10.0.0.0/8,proxy.local"}
    )
    gateway.directory.mkdir(parents=True)
    result = gateway.manage("check", check=False)
    assert result.returncode != 0
    assert "'proxy.local' is not an IP address or network" in result.stderr

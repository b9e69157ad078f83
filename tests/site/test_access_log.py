"""gunicorn's access log keeps no credential sent in a query string. The API refuses such a key
(keys go in the Authorization header), but the request line would otherwise be written in full."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import requests

from tests.infra import Gateway, create_key

pytestmark = pytest.mark.e2e


def access_log_line(gateway: Gateway, marker: str, timeout: float = 30) -> str:
    """The access-log line of the request whose URL holds `marker`; gunicorn writes it just
    after the response has gone out, so poll the log for it until the deadline."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in gateway.log.read_text().splitlines():
            if marker in line:
                return line
        time.sleep(0.05)
    pytest.fail(f"no access-log line with {marker!r}:\n{gateway.log.read_text()[-3000:]}")


def test_query_string_credentials_are_refused_and_not_written_to_the_access_log(
    gateways: list[Gateway], tmp_path: Path
) -> None:
    gateway = Gateway(tmp_path / "gw", workers=1, threads=4, env={}).start()
    gateways.append(gateway)
    real_key = create_key(gateway, email="query-string@example.com")

    requests.get(
        f"{gateway.url}/v1/models",
        params={"marker": "made-up", "api_key": "SECRET-made-up", "Token": "SECRET-token"},
        timeout=30,
    )
    leaked = requests.post(
        f"{gateway.url}/v1/embeddings",
        params={"marker": "real", "KEY": real_key, "access_token": real_key},
        json={"input": "hello"},
        timeout=30,
    )

    assert leaked.status_code == 401, leaked.text
    made_up_line = access_log_line(gateway, "marker=made-up")
    real_line = access_log_line(gateway, "marker=real")
    log = gateway.log.read_text()
    assert "SECRET" not in log
    assert real_key not in log
    # The rest of the line is still there for whoever reads the log.
    assert "GET /v1/models?marker=made-up&api_key=REDACTED&Token=REDACTED" in made_up_line
    assert "POST /v1/embeddings?marker=real&KEY=REDACTED&access_token=REDACTED" in real_line
    assert " 401 " in real_line


def test_credential_headers_are_blanked_even_when_the_access_log_format_asks_for_them(
    gateways: list[Gateway], tmp_path: Path
) -> None:
    """An operator's --access-logformat may name any header; the ones that carry credentials
    are written as REDACTED (so are key- and Stripe-secret-shaped values in the URL)."""
    log_format = "%(r)s auth=%({authorization}i)s cookie=%({cookie}i)s sig=%({stripe-signature}i)s"
    gateway = Gateway(
        tmp_path / "gw",
        workers=1,
        threads=2,
        env={"GUNICORN_CMD_ARGS": f"--access-logformat '{log_format}'"},
    ).start()
    gateways.append(gateway)
    key = create_key(gateway, email="headers@example.com")

    response = requests.post(
        f"{gateway.url}/v1/embeddings",
        params={"marker": "headers", "next": "sk_live_" + "L1ve" * 8},
        json={"input": "hello"},
        headers={
            "Authorization": f"Bearer {key}",
            "Cookie": "sessionid=SECRET-session",
            "Stripe-Signature": "t=1,v1=SECRET-signature",
        },
        timeout=30,
    )

    assert response.status_code == 200, response.text
    line = access_log_line(gateway, "marker=headers")
    log = gateway.log.read_text()
    assert key not in log and "SECRET" not in log and "sk_live_" not in log
    assert "auth=REDACTED cookie=REDACTED sig=REDACTED" in line
    assert "POST /v1/embeddings?marker=headers&next=REDACTED" in line

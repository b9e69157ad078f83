"""Auto-recharge across real processes: gunicorn on Postgres, localstripe, and either the embedded
task threads or a Celery worker on Redis. ADVERSARIAL row 9."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from tests.billing.test_metering_e2e import assert_ledger_ok, create_key, embed, fire
from tests.infra import CeleryWorker, Gateway, LocalStripe, stripe_env

pytestmark = pytest.mark.e2e

PACKS = [
    {"id": "small", "name": "1M tokens", "tokens": 1_000_000, "amount": 500, "currency": "usd"}
]

SETUP = """
import json
from billing import payments, stripe_api
from metering.selectors import api_key_get_active
key = api_key_get_active(key={key!r})
user = key.user
secret = payments.card_setup_start(user=user)
setup_intent = secret.split("_secret_")[0]
stripe_api.client().v1.setup_intents.confirm(setup_intent, params={{"client_secret": secret,
    "payment_method_data": {{"type": "card", "card": {{"number": "4242424242424242",
    "exp_month": 12, "exp_year": 2034, "cvc": "123"}}}}}})
payments.card_save(user=user, setup_intent_id=setup_intent)
payments.auto_recharge_configure(api_key=key, enabled=True, threshold_tokens={threshold},
    pack_id="small", monthly_cap_amount=100_000)
print(json.dumps({{"customer": user.stripe_customer_id}}))
"""

STATE = """
import json
from billing.models import LedgerEntry, Payment
from metering.selectors import api_key_get_active
key = api_key_get_active(key={key!r})
print(json.dumps({{
    "balance": key.balance,
    "payments": list(Payment.objects.filter(api_key=key).values("status", "kind", "tokens")),
    "topups": LedgerEntry.objects.filter(api_key=key, kind="topup").count(),
}}))
"""


def shell(gateway: Gateway, script: str) -> dict[str, Any]:
    result = gateway.manage("shell", "-c", script, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("tasks", ["embedded-threads", "celery-worker"])
def test_fifty_requests_crossing_the_threshold_make_one_payment_intent_and_one_credit(
    request: pytest.FixtureRequest,
    gateways: list[Gateway],
    localstripe: LocalStripe,
    postgres_url: str,
    tmp_path: Any,
    tasks: str,
) -> None:
    env = {
        **stripe_env(localstripe),
        "DATABASE_URL": postgres_url,
        "TOKEN_PACKS": json.dumps(PACKS),
    }
    if tasks == "celery-worker":
        redis_server = request.getfixturevalue("redis_server")
        env["REDIS_URL"] = redis_server.url
    gateway = Gateway(tmp_path / "gw", workers=2, threads=32, env=env).start()
    gateways.append(gateway)
    worker = None
    if tasks == "celery-worker":
        worker = CeleryWorker(tmp_path, env=gateway.env, concurrency=8).start()
    try:
        probe = create_key(gateway, "--tokens", "1000")
        cost = embed(gateway.url, probe, {"input": "hello"}).json()["usage"]["total_tokens"]
        start = 100 * cost
        key = create_key(gateway, "--tokens", str(start), "--concurrency", "100", "--rpm", "1000")
        # Every one of the 50 debits leaves the balance under the threshold: 50 triggers.
        customer = shell(gateway, SETUP.format(key=key, threshold=start))["customer"]

        responses = fire(gateway.url, key, [{"input": "hello"}] * 50)
        assert [r.status_code for r in responses] == [200] * 50

        deadline = time.monotonic() + 60
        state = shell(gateway, STATE.format(key=key))
        while time.monotonic() < deadline and not (
            state["payments"] and state["payments"][0]["status"] == "succeeded"
        ):
            time.sleep(0.5)
            state = shell(gateway, STATE.format(key=key))
        time.sleep(2)  # let any straggling trigger run, then look again
        state = shell(gateway, STATE.format(key=key))

        assert state["payments"] == [
            {"status": "succeeded", "kind": "auto_recharge", "tokens": 1_000_000}
        ]
        assert state["topups"] == 1
        assert state["balance"] == start - 50 * cost + 1_000_000
        intents = [
            intent
            for intent in localstripe.client()
            .v1.payment_intents.list(params={"limit": 100})
            .auto_paging_iter()  # type: ignore[attr-defined]
            if intent.customer == customer
        ]
        assert len(intents) == 1 and intents[0].status == "succeeded"
        assert_ledger_ok(gateway)
    finally:
        if worker is not None:
            worker.stop()

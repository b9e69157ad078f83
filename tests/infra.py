"""Real services for the tests: a private Redis, a fresh Postgres database, gunicorn gateways,
a localstripe server and Celery workers.

Each is started or found here; when one cannot be had the test fails with a message that says
what is missing — it is never skipped silently. Each server starts through
tests/run_processes.py's `start_process`, and the hooks below make sure none outlives the run.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from embeddings_site.local_processes import free_port, stop_process_groups, wait_for_port
from tests.run_processes import environ_outside_the_run, run_finish, run_start, start_process

ROOT = Path(__file__).resolve().parents[1]
POSTGRES_ADMIN_URL = os.environ.get(
    "TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)


# Every server started here is one the run tracks and stops, whatever ends it (issue 18).
def pytest_configure(config: pytest.Config) -> None:
    run_start(config)


@pytest.hookimpl(wrapper=True)
def pytest_sessionfinish(session: pytest.Session) -> Iterator[None]:
    yield  # the fixtures are finalized in here (_pytest.runner's pytest_sessionfinish)
    run_finish(session)


class RedisServer:
    """A redis-server of the test's own, on a free port, keeping nothing on disk."""

    def __init__(self, directory: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail("redis-server is not installed (Debian: apt-get install redis-server)")
        self.binary = binary
        self.directory = directory
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.process = start_process(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.directory),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for_port(self.port)
        return self

    def stop(self) -> None:
        if self.process is not None:
            stop_process_groups([self.process], grace=10)
        self.process = None


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis").start()
    yield server
    server.stop()


def _postgres_admin() -> object:
    import psycopg

    try:
        return psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError:
        pass
    # Not running: start the machine's cluster the way the environment documents it.
    versions = sorted(Path("/etc/postgresql").glob("*")) if Path("/etc/postgresql").exists() else []
    if versions:
        subprocess.run(
            ["pg_ctlcluster", "--skip-systemctl-redirect", versions[-1].name, "main", "start"],
            capture_output=True,
            check=False,
            env=environ_outside_the_run(),  # the machine's cluster, not one of the run's servers
        )
        time.sleep(2)
    try:
        return psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as exc:
        pytest.fail(
            f"PostgreSQL is not reachable at {POSTGRES_ADMIN_URL} and could not be started: {exc}"
        )


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A new, empty Postgres database for one test; dropped afterwards."""
    admin = _postgres_admin()
    name = f"embeddings_test_{uuid.uuid4().hex[:12]}"
    admin.execute(f'CREATE DATABASE "{name}"')  # type: ignore[attr-defined]
    base = POSTGRES_ADMIN_URL.rsplit("/", 1)[0]
    yield f"{base}/{name}"
    admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')  # type: ignore[attr-defined]
    admin.close()  # type: ignore[attr-defined]


class Gateway:
    """The product served by gunicorn, as `make run` serves it, in its own processes."""

    def __init__(self, directory: Path, *, workers: int, threads: int, env: dict[str, str]) -> None:
        self.directory = directory
        self.workers = workers
        self.threads = threads
        self.port = free_port()
        self.env = {
            **{
                k: v
                for k, v in os.environ.items()
                if not k.startswith(("DJANGO_", "PYTEST", "DATABASE_URL", "REDIS_URL"))
            },
            "DATA_DIR": str(directory / "data"),
            "EMBEDDINGS_WARM_ON_START": "true",
            "USAGE_FLUSH_INTERVAL_SECONDS": "0.2",
            "TORCH_NUM_THREADS": "1",
            **env,
        }
        self.process: subprocess.Popen[bytes] | None = None
        self.log = directory / "gunicorn.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def manage(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "manage.py", *args],
            cwd=ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            check=check,
        )

    def start(self, *, wait_ready: bool = True) -> Gateway:
        """Serve; wait until /ready (or only until it answers at all, for models whose
        workers start afterwards)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        self.manage("migrate", "--noinput", "-v0")
        self.manage("register_models")
        with self.log.open("w") as log:
            self.process = start_process(
                [
                    sys.executable,
                    "-m",
                    "gunicorn",
                    "embeddings_site.wsgi",
                    "--bind",
                    f"127.0.0.1:{self.port}",
                    "--worker-class",
                    "gthread",
                    "--workers",
                    str(self.workers),
                    "--threads",
                    str(self.threads),
                    "--timeout",
                    "120",
                    "--no-control-socket",
                    "--access-logfile",
                    "-",
                    "--logger-class",
                    "embeddings_site.gunicorn_logging.RedactingLogger",
                ],
                cwd=ROOT,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        if wait_ready:
            self.wait_ready()
        else:
            self.wait_live()
        return self

    def wait_live(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{self.url}/live", timeout=5) as response:
                    if response.status == 200:
                        return
            except OSError:
                time.sleep(0.2)
        pytest.fail(f"gateway not answering after {timeout}s:\n{self.log.read_text()[-3000:]}")

    def wait_ready(self, timeout: float = 180) -> None:
        """Ready in every worker: /ready answers 200 on enough consecutive calls to reach each."""
        deadline = time.monotonic() + timeout
        streak = 0
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                pytest.fail(f"gunicorn exited:\n{self.log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{self.url}/ready", timeout=10) as response:
                    streak = streak + 1 if response.status == 200 else 0
            except OSError:
                streak = 0
            if streak >= self.workers * 4:
                return
            time.sleep(0.1)
        pytest.fail(f"gateway not ready after {timeout}s:\n{self.log.read_text()[-3000:]}")

    def worker_pids(self) -> list[int]:
        assert self.process is not None
        out = subprocess.run(
            ["pgrep", "-P", str(self.process.pid)], capture_output=True, text=True
        ).stdout
        return [int(pid) for pid in out.split()]

    def stop(self) -> None:
        if self.process is not None:
            stop_process_groups([self.process], grace=30)
        self.process = None


@pytest.fixture
def gateways(tmp_path: Path) -> Iterator[list[Gateway]]:
    """Start gateways with `gateways.append(Gateway(...).start())`; all are stopped afterwards."""
    started: list[Gateway] = []
    yield started
    for gateway in started:
        gateway.stop()


WEBHOOK_SECRET = "whsec_test_secret"


class LocalStripe:
    """A localstripe process: Stripe's API (customers, intents, refunds, signed webhooks) and its
    fake Stripe.js, on a free port. One per test session; tests keep to their own customers."""

    def __init__(self, directory: Path) -> None:
        self.port = free_port()
        self.log = directory / "localstripe.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> LocalStripe:
        try:
            import localstripe  # noqa: F401
        except ImportError:
            pytest.fail("localstripe is not installed: `make test` installs the test extras")
        with self.log.open("w") as log:
            self.process = start_process(
                [sys.executable, "-m", "localstripe", "--port", str(self.port), "--from-scratch"],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        try:
            wait_for_port(self.port, timeout=20)
        except TimeoutError:
            pytest.fail(f"localstripe did not start:\n{self.log.read_text()[-2000:]}")
        return self

    def stop(self) -> None:
        if self.process is not None:
            stop_process_groups([self.process], grace=10)
        self.process = None

    def client(self) -> object:
        import stripe

        return stripe.StripeClient("sk_test_localstripe", base_addresses={"api": self.url})

    def send_webhooks_to(self, url: str | None) -> None:
        """Deliver localstripe's signed events to `url` (None: to nobody)."""
        import requests

        data: dict[str, object] = {"url": url or "http://127.0.0.1:9/", "secret": WEBHOOK_SECRET}
        if not url:
            data["events"] = ["none"]
        response = requests.post(f"{self.url}/_config/webhooks/tests", json=data, timeout=10)
        response.raise_for_status()


def stripe_signature(
    payload: bytes, *, timestamp: int | None = None, secret: str = WEBHOOK_SECRET
) -> str:
    """A Stripe-Signature header for a payload, as Stripe signs it (t=…,v1=HMAC-SHA256)."""
    stamp = int(time.time()) if timestamp is None else timestamp
    signed = f"{stamp}.".encode() + payload
    digest = hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()
    return f"t={stamp},v1={digest}"


def stripe_event(event_type: str, obj: dict[str, object], *, event_id: str | None = None) -> bytes:
    """A webhook body as Stripe sends it (only the fields the handlers read are needed)."""
    return json.dumps(
        {
            "id": event_id or f"evt_{uuid.uuid4().hex[:24]}",
            "object": "event",
            "type": event_type,
            "created": int(time.time()),
            "livemode": False,
            "data": {"object": obj},
        }
    ).encode()


@pytest.fixture(scope="session")
def localstripe(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStripe]:
    server = LocalStripe(tmp_path_factory.mktemp("localstripe")).start()
    yield server
    server.stop()


def stripe_env(server: LocalStripe) -> dict[str, str]:
    """The settings that point the product at a localstripe server."""
    return {
        "STRIPE_SECRET_KEY": "sk_test_localstripe",
        "STRIPE_PUBLISHABLE_KEY": "pk_test_localstripe",
        "STRIPE_WEBHOOK_SECRET": WEBHOOK_SECRET,
        "STRIPE_API_BASE": server.url,
        "STRIPE_JS_URL": f"{server.url}/js.stripe.com/v3/",
    }


class CeleryWorker:
    """`celery worker` for the project, in its own process group, with the gateway's settings."""

    def __init__(self, directory: Path, *, env: dict[str, str], concurrency: int = 4) -> None:
        self.env = env
        self.concurrency = concurrency
        self.log = directory / "celery.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> CeleryWorker:
        with self.log.open("w") as log:
            self.process = start_process(
                [
                    sys.executable,
                    "-m",
                    "celery",
                    "-A",
                    "embeddings_site",
                    "worker",
                    "--pool",
                    "threads",
                    "--concurrency",
                    str(self.concurrency),
                    "--loglevel",
                    "INFO",
                    "--without-gossip",
                    "--without-mingle",
                ],
                cwd=ROOT,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"celery worker exited:\n{self.log.read_text()[-3000:]}")
            if " ready." in self.log.read_text():
                return self
            time.sleep(0.2)
        pytest.fail(f"celery worker not ready after 60s:\n{self.log.read_text()[-3000:]}")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, sig)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
        self.process = None


def _postgres_database_name(database_url: str) -> str:
    return database_url.rsplit("/", 1)[1].split("?", 1)[0]


def postgres_query(database_url: str, sql: str, params: tuple[object, ...] = ()) -> list[tuple]:
    """Rows of one query on the database behind `database_url`, on a connection of its own."""
    import psycopg

    with psycopg.connect(database_url, autocommit=True, connect_timeout=3) as conn:
        return conn.execute(sql, params).fetchall()  # type: ignore[arg-type]


def postgres_connections(database_url: str) -> int:
    """How many client connections Postgres holds open to this database right now."""
    rows = postgres_query(
        POSTGRES_ADMIN_URL,
        "SELECT count(*) FROM pg_stat_activity"
        " WHERE datname = %s AND backend_type = 'client backend'",
        (_postgres_database_name(database_url),),
    )
    return int(rows[0][0])


def postgres_terminate_connections(database_url: str) -> int:
    """Drop every connection to this database from the server side, as a Postgres restart or a
    failover would (pg_terminate_backend); returns how many were dropped."""
    rows = postgres_query(
        POSTGRES_ADMIN_URL,
        "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity"
        " WHERE datname = %s AND backend_type = 'client backend' AND pid <> pg_backend_pid()",
        (_postgres_database_name(database_url),),
    )
    return int(rows[0][0])


def create_key(gateway: Gateway, *args: str, email: str = "load@example.com") -> str:
    """A new key of `email`'s account (`manage.py createkey`, with its options in args)."""
    return gateway.manage("createkey", "--email", email, *args).stdout.strip().splitlines()[-1]


def postgres_key_state(database_url: str, email: str) -> dict[str, object]:
    """The balance of `email`'s key and how many of its usage rows are in each status, read
    straight from Postgres (fast enough to poll while requests are in flight)."""
    from billing.models import ApiKey, UsageRecord, User

    rows = postgres_query(
        database_url,
        f"SELECT k.id, k.balance FROM {ApiKey._meta.db_table} k"  # noqa: S608 - table names
        f" JOIN {User._meta.db_table} u ON u.id = k.user_id WHERE u.email = %s",
        (email,),
    )
    assert len(rows) == 1, f"expected one key for {email}, found {len(rows)}"
    key_id, balance = rows[0]
    statuses = postgres_query(
        database_url,
        f"SELECT status, count(*) FROM {UsageRecord._meta.db_table}"  # noqa: S608
        " WHERE api_key_id = %s GROUP BY status",
        (key_id,),
    )
    return {"balance": balance, "statuses": dict(statuses)}

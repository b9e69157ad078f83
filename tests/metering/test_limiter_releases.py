"""Concurrency slots given back without a Redis call of their own (issue 17, P5).

A release waits in its process for the next script call to ride on, or for the flusher.
Real redis-servers throughout; "another process" is another limiter on its own connection
(or, for the exit flush, a real child process).
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import uuid
from pathlib import Path
from typing import Any, cast

import pytest
import redis

from metering.limiter import FailoverLimiter, Limits, RedisLimiter
from tests.clock import FakeClock
from tests.infra import RedisServer

pytestmark = pytest.mark.e2e  # real redis-servers, and a child process

ONE = Limits(rpm=10_000, tpm=10**9, concurrency=1)
NEVER = 3600.0  # a flush delay no test reaches: releases go only with calls (or flush())
BOUND = 15.0  # the longest any wait below may take before the test fails (not a timing)
REPO = Path(__file__).resolve().parents[2]


class CountingRedis(redis.Redis):
    """Counts the commands sent, the flusher's included."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.sent: list[str] = []
        self._lock = threading.Lock()

    def execute_command(self, *args, **options):  # type: ignore[no-untyped-def]
        with self._lock:
            self.sent.append(str(args[0]))
        return super().execute_command(*args, **options)


def counting_limiter(url: str, **kwargs: Any) -> tuple[RedisLimiter, CountingRedis]:
    """A limiter whose scripts are loaded already (each costs a SCRIPT LOAD once)."""
    client = cast(CountingRedis, CountingRedis.from_url(url))
    limiter = RedisLimiter(client, window=60, **kwargs)
    limiter.admit(key="warm", limits=ONE, tokens=1, slot="warm")
    limiter.release(key="warm", slot="warm", backend="redis")
    limiter.flush()
    client.sent.clear()
    return limiter, client


def new_slot() -> str:
    return uuid.uuid4().hex


@pytest.fixture
def key() -> str:
    return uuid.uuid4().hex


def test_a_request_costs_one_call_when_another_follows(redis_server: RedisServer, key) -> None:
    limiter, client = counting_limiter(redis_server.url, flush_delay=NEVER)
    requests = 50
    for _ in range(requests):
        taken = new_slot()
        assert limiter.admit(key=key, limits=ONE, tokens=7, slot=taken).allowed
        limiter.release(key=key, slot=taken, backend="redis")
    # Every release but the last rode the next admission: one EVALSHA per request.
    assert client.sent == ["EVALSHA"] * requests
    assert limiter.pending_releases == 1
    assert limiter.flush() == 1
    assert limiter.pending_releases == 0 and len(client.sent) == requests + 1


def test_one_at_a_time_with_the_flusher_racing(redis_server: RedisServer, key) -> None:
    """With the real flush delay the flusher may send a release while the next admission
    runs; the admission carries it anyway until Redis has answered one of them."""
    limiter = RedisLimiter.from_url(redis_server.url, window=60)
    for _ in range(300):
        taken = new_slot()
        decision = limiter.admit(key=key, limits=ONE, tokens=1, slot=taken)
        assert decision.allowed, decision.reason
        limiter.release(key=key, slot=taken, backend="redis")
    assert limiter.wait_flushed(BOUND)


def test_a_release_rides_a_call_for_another_key(redis_server: RedisServer, key) -> None:
    limiter, client = counting_limiter(redis_server.url, flush_delay=NEVER)
    other_process = RedisLimiter.from_url(redis_server.url, window=60)
    taken = new_slot()
    assert limiter.admit(key=key, limits=ONE, tokens=1, slot=taken).allowed
    limiter.release(key=key, slot=taken, backend="redis")
    # Until this process calls Redis again, another process still sees the slot taken:
    # the window RELEASE_FLUSH_SECONDS bounds when the process stays quiet.
    refused = other_process.admit(key=key, limits=ONE, tokens=1, slot=new_slot())
    assert not refused.allowed and refused.reason == "concurrency"
    client.sent.clear()
    assert limiter.admit(key=key + "-other", limits=ONE, tokens=1, slot=new_slot()).allowed
    assert client.sent == ["EVALSHA"] and limiter.pending_releases == 0
    assert other_process.admit(key=key, limits=ONE, tokens=1, slot=new_slot()).allowed


def test_adjust_and_peek_carry_releases_too(redis_server: RedisServer, key) -> None:
    limiter = RedisLimiter.from_url(redis_server.url, window=60, flush_delay=NEVER)
    other_process = RedisLimiter.from_url(redis_server.url, window=60)
    first, second = new_slot(), new_slot()
    assert limiter.admit(key=key, limits=ONE, tokens=1, slot=first).allowed
    assert limiter.admit(key=key + "-b", limits=ONE, tokens=4, slot=second).allowed
    limiter.release(key=key, slot=first, backend="redis")
    adjusted = limiter.adjust(
        key=key + "-b", limits=ONE, slot=second, tokens=4, to=9, backend="redis"
    )
    assert adjusted.allowed and adjusted.tokens_in_window == 9
    assert limiter.pending_releases == 0
    assert other_process.admit(key=key, limits=ONE, tokens=1, slot=new_slot()).allowed

    limiter.release(key=key + "-b", slot=second, backend="redis")
    assert limiter.peek(key=key, limits=ONE).in_flight == 1
    assert limiter.pending_releases == 0
    assert other_process.admit(key=key + "-b", limits=ONE, tokens=1, slot=new_slot()).allowed


def test_a_quiet_process_gives_its_slot_back(redis_server: RedisServer, key) -> None:
    """No further admission in this process: the flusher sends the release on its own."""
    limiter, client = counting_limiter(redis_server.url)
    other_process = RedisLimiter.from_url(redis_server.url, window=60)
    taken = new_slot()
    assert limiter.admit(key=key, limits=ONE, tokens=1, slot=taken).allowed
    client.sent.clear()
    limiter.release(key=key, slot=taken, backend="redis")
    assert limiter.wait_flushed(BOUND), "the flusher never sent the release"
    assert client.sent == ["EVALSHA"]  # one call, from the flusher
    assert other_process.admit(key=key, limits=ONE, tokens=1, slot=new_slot()).allowed


def test_the_flusher_sends_many_releases_in_one_call(redis_server: RedisServer, key) -> None:
    limiter, client = counting_limiter(redis_server.url, flush_delay=NEVER)
    limits = Limits(rpm=10_000, tpm=10**9, concurrency=40)
    taken = [new_slot() for _ in range(40)]
    for slot in taken:
        assert limiter.admit(key=key, limits=limits, tokens=1, slot=slot).allowed
    for slot in taken:
        limiter.release(key=key, slot=slot, backend="redis")
    client.sent.clear()
    assert limiter.flush() == 40
    assert client.sent == ["EVALSHA"]
    other_process = RedisLimiter.from_url(redis_server.url, window=60)
    assert other_process.peek(key=key, limits=limits).in_flight == 0


def restart_keeping_data(server: RedisServer) -> None:
    redis.Redis.from_url(server.url).shutdown(save=True)  # on disk: restored on start
    assert server.process is not None
    server.process.wait(timeout=10)


def test_a_release_queued_while_redis_is_away_rides_the_next_call(tmp_path: Path, key) -> None:
    """Redis goes away with the slot taken and comes back with its data: the release that
    failed stays queued, failover admissions go on meanwhile, and the next call carries it."""
    server = RedisServer(tmp_path / "redis").start()
    try:
        primary = RedisLimiter.from_url(server.url, window=60, flush_delay=NEVER)
        limiter = FailoverLimiter(primary, mode="local", retry_interval=0.2)
        taken = new_slot()
        admitted = limiter.admit(key=key, limits=ONE, tokens=1, slot=taken)
        assert admitted.allowed and admitted.backend == "redis"
        restart_keeping_data(server)

        limiter.release(key=key, slot=taken, backend="redis")
        with pytest.raises(redis.ConnectionError):
            primary.flush()
        assert primary.pending_releases == 1
        during = limiter.admit(key=key, limits=ONE, tokens=1, slot=new_slot())
        assert during.allowed and during.backend == "local"

        server.start()
        other_process = RedisLimiter.from_url(server.url, window=60)
        still_taken = other_process.admit(key=key, limits=ONE, tokens=1, slot=new_slot())
        assert not still_taken.allowed and still_taken.reason == "concurrency"
        assert primary.admit(key=key + "-next", limits=ONE, tokens=1, slot=new_slot()).allowed
        assert primary.pending_releases == 0
        assert other_process.admit(key=key, limits=ONE, tokens=1, slot=new_slot()).allowed
    finally:
        server.stop()


def test_the_flusher_retries_until_redis_is_back(tmp_path: Path, key) -> None:
    server = RedisServer(tmp_path / "redis").start()
    try:
        limiter = RedisLimiter.from_url(server.url, window=60)
        taken = new_slot()
        assert limiter.admit(key=key, limits=ONE, tokens=1, slot=taken).allowed
        restart_keeping_data(server)
        limiter.release(key=key, slot=taken, backend="redis")
        assert not limiter.wait_flushed(0.5)  # nothing can land while Redis is away
        server.start()
        # Only a successful call empties the queue (its lease is far from running out).
        assert limiter.wait_flushed(BOUND), "the release was not retried after the restart"
        other_process = RedisLimiter.from_url(server.url, window=60)
        assert other_process.admit(key=key, limits=ONE, tokens=1, slot=new_slot()).allowed
    finally:
        server.stop()


def test_process_exit_sends_queued_releases(redis_server: RedisServer, key) -> None:
    child = textwrap.dedent(
        f"""
        from metering.limiter import Limits, RedisLimiter
        limiter = RedisLimiter.from_url(
            {redis_server.url!r}, window=60, lease=60, flush_delay={NEVER}
        )
        limits = Limits(rpm=100, tpm=1000, concurrency=1)
        assert limiter.admit(key={key!r}, limits=limits, tokens=1, slot="child").allowed
        limiter.release(key={key!r}, slot="child", backend="redis")
        assert limiter.pending_releases == 1
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", child], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    other_process = RedisLimiter.from_url(redis_server.url, window=60)
    assert other_process.admit(key=key, limits=ONE, tokens=1, slot=new_slot()).allowed


def test_keys_out_of_step_heal_instead_of_counting_wrong(redis_server: RedisServer, key) -> None:
    """A Redis that evicts one of a key's two entries (maxmemory) must not leave it limited
    by ghosts, nor let old entries go uncounted."""
    # A window of one second on a clock that does not move: "still within its window" holds
    # however slowly the test runs.
    limiter = RedisLimiter.from_url(redis_server.url, window=1, clock=FakeClock())
    admin = redis.Redis.from_url(redis_server.url)
    limits = Limits(rpm=3, tpm=10**9, concurrency=100)
    for _ in range(3):
        assert limiter.admit(key=key, limits=limits, tokens=1, slot=new_slot()).allowed
    admin.delete(f"rl:{{{key}}}:log")  # the log gone, its counts still in the state
    refused = limiter.admit(key=key, limits=limits, tokens=1, slot=new_slot())
    assert not refused.allowed and refused.reason == "requests"  # still within its window
    admin.hset(f"rl:{{{key}}}:state", "o", 0)  # as if the oldest entry had left the window
    healed = limiter.admit(key=key, limits=limits, tokens=1, slot=new_slot())
    assert healed.allowed and healed.requests_in_window == 1

    other = key + "-b"
    for _ in range(2):
        assert limiter.admit(key=other, limits=limits, tokens=1, slot=new_slot()).allowed
    admin.delete(f"rl:{{{other}}}:state")  # the counts gone, the log left over
    fresh = limiter.admit(key=other, limits=limits, tokens=1, slot=new_slot())
    assert fresh.allowed and fresh.requests_in_window == 1
    assert admin.llen(f"rl:{{{other}}}:log") == 1

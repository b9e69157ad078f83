"""One contract for both limiters: the in-process one and the Redis one (a real redis-server).

Both run on a FakeClock (Redis takes the time from the caller when a limiter has a clock), so a
window moves exactly as far as a test advances it and every retry-after is an exact figure.
"""

from __future__ import annotations

import threading
import uuid
from pathlib import Path

import pytest

from metering.limiter import (
    FailoverLimiter,
    Limiter,
    LimiterUnavailable,
    Limits,
    LocalLimiter,
    RedisLimiter,
    format_duration,
)
from tests.clock import FakeClock
from tests.infra import RedisServer

WINDOW = 1.0  # seconds


def slot() -> str:
    return uuid.uuid4().hex


class LimiterContract:
    """Behaviour every Limiter must have. Subclasses provide `make(window, lease)`, a limiter
    on `self.clock`."""

    clock: FakeClock

    def make(self, *, window: float = WINDOW, lease: float = 60.0) -> Limiter:
        raise NotImplementedError

    @pytest.fixture(autouse=True)
    def _fake_clock(self) -> None:
        self.clock = FakeClock()

    @pytest.fixture
    def key(self) -> str:
        return uuid.uuid4().hex

    def test_admits_exactly_rpm_requests(self, key: str) -> None:
        limiter = self.make(window=60)
        limits = Limits(rpm=5, tpm=10_000, concurrency=100)
        results = [limiter.admit(key=key, limits=limits, tokens=1, slot=slot()) for _ in range(7)]
        assert [r.allowed for r in results] == [True] * 5 + [False] * 2
        refused = results[5]
        assert refused.reason == "requests"
        assert refused.retry_after == 60  # all five came at this instant
        assert refused.remaining_requests == 0
        assert results[4].remaining_requests == 0 and results[0].remaining_requests == 4

    def test_tokens_are_weighted_and_refusal_takes_nothing(self, key: str) -> None:
        limiter = self.make(window=60)
        limits = Limits(rpm=100, tpm=100, concurrency=100)
        assert limiter.admit(key=key, limits=limits, tokens=60, slot=slot()).allowed
        refused = limiter.admit(key=key, limits=limits, tokens=41, slot=slot())
        assert not refused.allowed and refused.reason == "tokens"
        assert refused.tokens_in_window == 60
        # The refused request took neither tokens nor a request: 40 more still fit exactly.
        fits = limiter.admit(key=key, limits=limits, tokens=40, slot=slot())
        assert fits.allowed and fits.remaining_tokens == 0 and fits.requests_in_window == 2

    def test_window_slides_and_no_boundary_lets_twice_through(self, key: str) -> None:
        limiter = self.make(window=WINDOW)
        limits = Limits(rpm=3, tpm=10_000, concurrency=100)
        assert limiter.admit(key=key, limits=limits, tokens=1, slot=slot()).allowed
        self.clock.advance(0.5)
        for _ in range(2):
            assert limiter.admit(key=key, limits=limits, tokens=1, slot=slot()).allowed
        self.clock.advance(0.25)
        # A fixed window aligned anywhere in the last 0.75 s would have reset; a sliding one
        # waits for the first request to leave, one window after it came.
        refused = limiter.admit(key=key, limits=limits, tokens=1, slot=slot())
        assert not refused.allowed and refused.reason == "requests"
        assert refused.retry_after == 0.25
        self.clock.advance(0.25)
        assert limiter.admit(key=key, limits=limits, tokens=1, slot=slot()).allowed
        # Only the first request left: the two that came half a window later still count.
        again = limiter.admit(key=key, limits=limits, tokens=1, slot=slot())
        assert not again.allowed and again.retry_after == 0.5
        assert again.requests_in_window == 3

    def test_token_retry_after_waits_for_enough_tokens_to_leave(self, key: str) -> None:
        limiter = self.make(window=WINDOW)
        limits = Limits(rpm=100, tpm=10, concurrency=100)
        assert limiter.admit(key=key, limits=limits, tokens=4, slot=slot()).allowed
        self.clock.advance(0.25)
        assert limiter.admit(key=key, limits=limits, tokens=6, slot=slot()).allowed
        refused = limiter.admit(key=key, limits=limits, tokens=5, slot=slot())
        # 5 tokens need both earlier requests gone: the second leaves a window after it came.
        assert refused.reason == "tokens"
        assert refused.retry_after == WINDOW
        small = limiter.admit(key=key, limits=limits, tokens=1, slot=slot())
        assert not small.allowed
        assert small.retry_after == 0.75  # the first request's 4 tokens free it
        self.clock.advance(0.75)
        assert limiter.admit(key=key, limits=limits, tokens=4, slot=slot()).allowed

    def test_concurrency_slots_are_released(self, key: str) -> None:
        limiter = self.make()
        limits = Limits(rpm=100, tpm=10_000, concurrency=2)
        a, b = slot(), slot()
        first = limiter.admit(key=key, limits=limits, tokens=1, slot=a)
        assert limiter.admit(key=key, limits=limits, tokens=1, slot=b).allowed
        refused = limiter.admit(key=key, limits=limits, tokens=1, slot=slot())
        assert not refused.allowed and refused.reason == "concurrency" and refused.in_flight == 2
        limiter.release(key=key, slot=a, backend=first.backend)
        assert limiter.admit(key=key, limits=limits, tokens=1, slot=slot()).allowed

    def test_one_at_a_time_requests_never_find_their_own_slot_taken(self, key: str) -> None:
        """A concurrency-1 client that waits for each answer: never a concurrency 429."""
        limiter = self.make(window=60)
        limits = Limits(rpm=10_000, tpm=10**9, concurrency=1)
        for _ in range(100):
            taken = slot()
            decision = limiter.admit(key=key, limits=limits, tokens=3, slot=taken)
            assert decision.allowed, decision.reason
            limiter.release(key=key, slot=taken, backend=decision.backend)

    def test_a_slot_held_by_a_dead_process_expires(self, key: str) -> None:
        limiter = self.make(lease=0.5)
        limits = Limits(rpm=100, tpm=10_000, concurrency=1)
        never_released = slot()
        assert limiter.admit(key=key, limits=limits, tokens=1, slot=never_released).allowed
        assert not limiter.admit(key=key, limits=limits, tokens=1, slot=slot()).allowed
        self.clock.advance(0.25)
        assert not limiter.admit(key=key, limits=limits, tokens=1, slot=slot()).allowed
        self.clock.advance(0.25)  # the lease has run out
        assert limiter.admit(key=key, limits=limits, tokens=1, slot=slot()).allowed

    def test_keys_are_independent(self, key: str) -> None:
        limiter = self.make(window=60)
        limits = Limits(rpm=1, tpm=10_000, concurrency=100)
        assert limiter.admit(key=key, limits=limits, tokens=1, slot=slot()).allowed
        assert limiter.admit(key=key + "-other", limits=limits, tokens=1, slot=slot()).allowed
        assert not limiter.admit(key=key, limits=limits, tokens=1, slot=slot()).allowed

    def test_concurrent_admissions_are_exact(self, key: str) -> None:
        limiter = self.make(window=60)
        limits = Limits(rpm=25, tpm=10_000, concurrency=1000)
        barrier = threading.Barrier(60)
        allowed: list[bool] = []

        def call() -> None:
            barrier.wait()
            allowed.append(limiter.admit(key=key, limits=limits, tokens=1, slot=slot()).allowed)

        threads = [threading.Thread(target=call) for _ in range(60)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert allowed.count(True) == 25

    def test_adjust_raises_an_estimate_to_the_exact_count_only_within_tpm(self, key: str) -> None:
        limiter = self.make(window=60)
        limits = Limits(rpm=100, tpm=100, concurrency=100)
        first, second = slot(), slot()
        admitted = limiter.admit(key=key, limits=limits, tokens=10, slot=first)
        backend = admitted.backend
        assert limiter.admit(key=key, limits=limits, tokens=10, slot=second).allowed
        raised = limiter.adjust(
            key=key, limits=limits, slot=first, tokens=10, to=70, backend=backend
        )
        assert raised.allowed and raised.tokens_in_window == 80
        # 80 + (40 - 10) would pass TPM: refused, and nothing changed.
        refused = limiter.adjust(
            key=key, limits=limits, slot=second, tokens=10, to=40, backend=backend
        )
        assert not refused.allowed and refused.reason == "tokens" and refused.retry_after > 0
        assert limiter.peek(key=key, limits=limits).tokens_in_window == 80
        # Lowering always passes, to zero included: a refused request gives its tokens back.
        lowered = limiter.adjust(
            key=key, limits=limits, slot=second, tokens=10, to=0, backend=backend
        )
        assert lowered.allowed and lowered.tokens_in_window == 70
        assert limiter.admit(key=key, limits=limits, tokens=30, slot=slot()).allowed
        assert not limiter.admit(key=key, limits=limits, tokens=1, slot=slot()).allowed

    def test_a_needed_bound_must_fit_but_is_not_taken(self, key: str) -> None:
        limiter = self.make(window=60)
        limits = Limits(rpm=100, tpm=100, concurrency=100)
        assert limiter.admit(key=key, limits=limits, tokens=70, slot=slot()).allowed
        refused = limiter.admit(key=key, limits=limits, tokens=0, slot=slot(), need=31)
        assert not refused.allowed and refused.reason == "tokens"
        fits = limiter.admit(key=key, limits=limits, tokens=0, slot=slot(), need=30)
        assert fits.allowed and fits.tokens_in_window == 70

    def test_peek_takes_nothing(self, key: str) -> None:
        limiter = self.make(window=60)
        limits = Limits(rpm=2, tpm=100, concurrency=1)
        assert limiter.admit(key=key, limits=limits, tokens=30, slot=slot()).allowed
        for _ in range(3):
            state = limiter.peek(key=key, limits=limits)
            assert state.requests_in_window == 1 and state.tokens_in_window == 30
        assert state.reset_after == 60
        self.clock.advance(15)
        assert limiter.peek(key=key, limits=limits).reset_after == 45


class TestLocalLimiter(LimiterContract):
    def make(self, *, window: float = WINDOW, lease: float = 60.0) -> Limiter:
        return LocalLimiter(window=window, lease=lease, clock=self.clock)


class TestRedisLimiter(LimiterContract):
    @pytest.fixture(autouse=True)
    def _redis(self, redis_server: RedisServer) -> None:
        self.redis_url = redis_server.url

    def make(self, *, window: float = WINDOW, lease: float = 60.0) -> Limiter:
        return RedisLimiter.from_url(self.redis_url, window=window, lease=lease, clock=self.clock)

    def test_without_a_clock_the_window_runs_on_redis_time(self, key: str) -> None:
        """The production setting: every process counts on the one clock of Redis."""
        limiter = RedisLimiter.from_url(self.redis_url, window=60)
        limits = Limits(rpm=1, tpm=10_000, concurrency=100)
        assert limiter.admit(key=key, limits=limits, tokens=1, slot=slot()).allowed
        refused = limiter.admit(key=key, limits=limits, tokens=1, slot=slot())
        assert refused.reason == "requests" and 0 < refused.retry_after <= 60

    def test_processes_share_one_window(self, key: str) -> None:
        """Two limiter instances (as in two gateway processes) see the same counts."""
        first, second = self.make(window=60), self.make(window=60)
        limits = Limits(rpm=2, tpm=10_000, concurrency=100)
        assert first.admit(key=key, limits=limits, tokens=1, slot=slot()).allowed
        assert second.admit(key=key, limits=limits, tokens=1, slot=slot()).allowed
        assert not first.admit(key=key, limits=limits, tokens=1, slot=slot()).allowed

    def test_one_redis_call_per_admission(self, key: str) -> None:
        import redis

        calls: list[tuple] = []

        class CountingRedis(redis.Redis):
            def execute_command(self, *args, **options):  # type: ignore[no-untyped-def]
                calls.append(args)
                return super().execute_command(*args, **options)

        limiter = RedisLimiter(CountingRedis.from_url(self.redis_url), window=60)
        limits = Limits(rpm=1000, tpm=10_000, concurrency=100)
        limiter.admit(key=key, limits=limits, tokens=1, slot=slot())  # loads the script
        calls.clear()
        for _ in range(50):
            limiter.admit(key=key, limits=limits, tokens=1, slot=slot())
        assert len(calls) == 50
        assert {args[0] for args in calls} == {"EVALSHA"}


@pytest.mark.e2e  # starts a process of its own
def test_failover_modes(tmp_path: Path) -> None:
    """With Redis gone, "local" keeps limiting per process, "closed" refuses, "open" admits."""
    server = RedisServer(tmp_path / "redis").start()
    primary = RedisLimiter.from_url(server.url, window=60)
    limits = Limits(rpm=2, tpm=10_000, concurrency=100)
    clock = FakeClock()
    local = FailoverLimiter(primary, mode="local", retry_interval=0.25, clock=clock)
    closed = FailoverLimiter(RedisLimiter.from_url(server.url, window=60), mode="closed")
    opened = FailoverLimiter(RedisLimiter.from_url(server.url, window=60), mode="open")
    assert local.admit(key="k", limits=limits, tokens=1, slot=slot()).backend == "redis"
    server.stop()
    degraded = [local.admit(key="k", limits=limits, tokens=1, slot=slot()) for _ in range(3)]
    assert [d.backend for d in degraded] == ["local"] * 3
    assert [d.allowed for d in degraded] == [True, True, False]
    with pytest.raises(LimiterUnavailable):
        closed.admit(key="k", limits=limits, tokens=1, slot=slot())
    assert all(
        opened.admit(key="k", limits=limits, tokens=1, slot=slot()).allowed for _ in range(5)
    )
    # Redis back (same port): it is tried again only once retry_interval has passed.
    server.start()
    assert local.admit(key="k2", limits=limits, tokens=1, slot=slot()).backend == "local"
    clock.advance(0.25)
    assert local.admit(key="k2", limits=limits, tokens=1, slot=slot()).backend == "redis"
    server.stop()


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0s"),
        (0.0174, "18ms"),
        (1, "1s"),
        (8.64, "8.64s"),
        (60, "1m0s"),
        (360, "6m0s"),
        (90.5, "1m30.5s"),
    ],
)
def test_reset_durations_read_like_openais(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text

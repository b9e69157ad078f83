"""Per-key requests per minute, tokens per minute and concurrency, checked and taken at once.

A sliding-window log: a request is admitted when, counting it, the last 60 seconds hold at most
RPM requests and TPM tokens, and fewer than `concurrency` requests are in flight. There is no
fixed window, so nothing lets 2× through at a boundary. All three are decided in one atomic
call — a Lua script on Redis' own clock (shared by every gateway process), or the same
algorithm under a lock in-process (the embedded default). Concurrency slots are leased: a
process that dies holding one loses it after CONCURRENCY_LEASE_SECONDS.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from abc import ABC, abstractmethod
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Limits:
    rpm: int
    tpm: int
    concurrency: int


@dataclass(frozen=True)
class Decision:
    """The limiter's answer, with what the rate-limit headers report."""

    allowed: bool
    limits: Limits
    reason: str = ""  # "requests" | "tokens" | "concurrency" when refused
    retry_after: float = 0.0  # seconds until a refused request could pass
    requests_in_window: int = 0
    tokens_in_window: int = 0
    in_flight: int = 0
    reset_after: float = 0.0  # seconds until the window is empty again
    backend: str = "local"

    @property
    def remaining_requests(self) -> int:
        return max(self.limits.rpm - self.requests_in_window, 0)

    @property
    def remaining_tokens(self) -> int:
        return max(self.limits.tpm - self.tokens_in_window, 0)


class LimiterUnavailable(Exception):
    """The limiter's store cannot be reached and its failure mode is "closed"."""


class Limiter(ABC):
    """Admission control for one key at a time."""

    @abstractmethod
    def admit(self, *, key: str, limits: Limits, tokens: int, slot: str, need: int = 0) -> Decision:
        """Take one request of `tokens` and a concurrency slot if all three limits allow it.

        `need`: tokens that must fit the window too, without being taken (a lower bound of a
        request whose exact count comes later, through `adjust`).
        """

    @abstractmethod
    def adjust(
        self, *, key: str, limits: Limits, slot: str, tokens: int, to: int, backend: str
    ) -> Decision:
        """Change an admitted request's tokens from its estimate `tokens` to the exact `to`.

        Lowering always passes. Raising passes only if the window, counting the new amount,
        still holds at most TPM tokens; when it does not, nothing changes and the decision
        says "tokens" with when it could pass.
        """

    @abstractmethod
    def release(self, *, key: str, slot: str, backend: str) -> None:
        """Give back a concurrency slot taken by `admit`."""

    @abstractmethod
    def peek(self, *, key: str, limits: Limits) -> Decision:
        """The current state, taking nothing (for headers on refused-before-admission requests)."""


@dataclass
class _KeyWindow:
    requests: deque[tuple[float, int, str]] = field(default_factory=deque)  # (when, tokens, slot)
    tokens: int = 0
    slots: dict[str, float] = field(default_factory=dict)


class LocalLimiter(Limiter):
    """The algorithm of the Redis script, in this process, under one lock."""

    name = "local"

    def __init__(self, *, window: float | None = None, lease: float | None = None) -> None:
        self.window = float(window or settings.RATE_LIMIT_WINDOW_SECONDS)
        self.lease = float(lease or settings.CONCURRENCY_LEASE_SECONDS)
        self._keys: dict[str, _KeyWindow] = {}
        self._lock = threading.Lock()

    def _expire(self, state: _KeyWindow, now: float) -> None:
        cutoff = now - self.window
        while state.requests and state.requests[0][0] <= cutoff:
            state.tokens -= state.requests.popleft()[1]
        for slot, expiry in list(state.slots.items()):
            if expiry <= now:
                del state.slots[slot]

    def _decision(self, state: _KeyWindow, limits: Limits, now: float, **kwargs: Any) -> Decision:
        reset = state.requests[-1][0] + self.window - now if state.requests else 0.0
        return Decision(
            limits=limits,
            requests_in_window=len(state.requests),
            tokens_in_window=state.tokens,
            in_flight=len(state.slots),
            reset_after=reset,
            backend=self.name,
            **kwargs,
        )

    def _tokens_refused(
        self, state: _KeyWindow, limits: Limits, now: float, *, over: int
    ) -> Decision:
        """A TPM refusal: retry when enough of the window's oldest tokens leave to free `over`."""
        freed, retry = 0, self.window
        for stamp, weight, _ in state.requests:
            freed += weight
            if freed >= over:
                retry = stamp + self.window - now
                break
        return self._decision(state, limits, now, allowed=False, reason="tokens", retry_after=retry)

    def admit(self, *, key: str, limits: Limits, tokens: int, slot: str, need: int = 0) -> Decision:
        with self._lock:
            now = time.time()
            state = self._keys.setdefault(key, _KeyWindow())
            self._expire(state, now)
            if len(state.requests) + 1 > limits.rpm:
                oldest_to_leave = state.requests[len(state.requests) - limits.rpm][0]
                retry = oldest_to_leave + self.window - now
                return self._decision(
                    state, limits, now, allowed=False, reason="requests", retry_after=retry
                )
            if state.tokens + max(tokens, need) > limits.tpm:
                return self._tokens_refused(
                    state, limits, now, over=state.tokens + max(tokens, need) - limits.tpm
                )
            if len(state.slots) + 1 > limits.concurrency:
                return self._decision(
                    state, limits, now, allowed=False, reason="concurrency", retry_after=1.0
                )
            state.requests.append((now, tokens, slot))
            state.tokens += tokens
            state.slots[slot] = now + self.lease
            return self._decision(state, limits, now, allowed=True)

    def adjust(
        self, *, key: str, limits: Limits, slot: str, tokens: int, to: int, backend: str
    ) -> Decision:
        with self._lock:
            now = time.time()
            state = self._keys.setdefault(key, _KeyWindow())
            self._expire(state, now)
            position = next((i for i, entry in enumerate(state.requests) if entry[2] == slot), None)
            if position is None:  # the entry left the window already: nothing to count
                return self._decision(state, limits, now, allowed=True)
            stamp, current, _ = state.requests[position]
            delta = to - current
            if delta > 0 and state.tokens + delta > limits.tpm:
                return self._tokens_refused(
                    state, limits, now, over=state.tokens + delta - limits.tpm
                )
            state.requests[position] = (stamp, to, slot)
            state.tokens += delta
            return self._decision(state, limits, now, allowed=True)

    def release(self, *, key: str, slot: str, backend: str) -> None:
        with self._lock:
            state = self._keys.get(key)
            if state is not None:
                state.slots.pop(slot, None)

    def peek(self, *, key: str, limits: Limits) -> Decision:
        with self._lock:
            now = time.time()
            state = self._keys.setdefault(key, _KeyWindow())
            self._expire(state, now)
            return self._decision(state, limits, now, allowed=True)


# KEYS: request log (zset "slot:tokens" by µs), token sum (string), in-flight slots (zset by
# lease expiry µs). ARGV: rpm, tpm, concurrency, tokens, slot, window µs, lease µs, mode.
_ADMIT_SCRIPT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local window = tonumber(ARGV[6])
local cutoff = now - window
local old = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', cutoff)
if #old > 0 then
  local freed = 0
  for _, member in ipairs(old) do
    freed = freed + tonumber(string.match(member, ':(%d+)$'))
  end
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', cutoff)
  if redis.call('DECRBY', KEYS[2], freed) <= 0 then redis.call('DEL', KEYS[2]) end
end
local rpm, tpm, conc, tokens = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local want = math.max(tokens, tonumber(ARGV[9] or '0'))
local count = redis.call('ZCARD', KEYS[1])
local used = tonumber(redis.call('GET', KEYS[2]) or '0')
local inflight = redis.call('ZCARD', KEYS[3])
if inflight >= conc or ARGV[8] ~= 'admit' then
  -- Expired leases (slots of dead processes) are only worth purging when they could matter.
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
  inflight = redis.call('ZCARD', KEYS[3])
end
local reason, retry = '', 0
if ARGV[8] == 'admit' then
  if count + 1 > rpm then
    reason = 'requests'
    local entry = redis.call('ZRANGE', KEYS[1], count - rpm, count - rpm, 'WITHSCORES')
    retry = tonumber(entry[2]) + window - now
  elseif used + want > tpm then
    reason = 'tokens'
    retry = window
    local need, freed = used + want - tpm, 0
    local entries = redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')
    for i = 1, #entries, 2 do
      freed = freed + tonumber(string.match(entries[i], ':(%d+)$'))
      if freed >= need then
        retry = tonumber(entries[i + 1]) + window - now
        break
      end
    end
  elseif inflight + 1 > conc then
    reason = 'concurrency'
    retry = 1000000
  else
    redis.call('ZADD', KEYS[1], now, ARGV[5] .. ':' .. tokens)
    redis.call('INCRBY', KEYS[2], tokens)
    redis.call('ZADD', KEYS[3], now + tonumber(ARGV[7]), ARGV[5])
    local ttl = math.ceil(window / 1000) + 1000
    redis.call('PEXPIRE', KEYS[1], ttl)
    redis.call('PEXPIRE', KEYS[2], ttl)
    redis.call('PEXPIRE', KEYS[3], math.ceil(tonumber(ARGV[7]) / 1000) + 1000)
    -- Just admitted: the newest entry is this one, so the window empties `window` from now.
    return {'', '0', count + 1, used + tokens, inflight + 1, tostring(window)}
  end
end
local reset = 0
local newest = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
if #newest > 0 then reset = tonumber(newest[2]) + window - now end
return {reason, tostring(retry), count, used, inflight, tostring(reset)}
"""


# KEYS: as above. ARGV: tpm, slot, estimated tokens, exact tokens, window µs. The request's
# log entry "slot:estimate" becomes "slot:exact" at the same time stamp.
_ADJUST_SCRIPT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local window = tonumber(ARGV[5])
local old = ARGV[2] .. ':' .. ARGV[3]
local stamp = redis.call('ZSCORE', KEYS[1], old)
local used = tonumber(redis.call('GET', KEYS[2]) or '0')
local count = redis.call('ZCARD', KEYS[1])
local inflight = redis.call('ZCARD', KEYS[3])
if not stamp or tonumber(stamp) <= now - window then
  return {'', '0', count, used, inflight, '0'}
end
local delta = tonumber(ARGV[4]) - tonumber(ARGV[3])
if delta > 0 and used + delta > tonumber(ARGV[1]) then
  local need, freed, retry = used + delta - tonumber(ARGV[1]), 0, window
  local entries = redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')
  for i = 1, #entries, 2 do
    freed = freed + tonumber(string.match(entries[i], ':(%d+)$'))
    if freed >= need then
      retry = tonumber(entries[i + 1]) + window - now
      break
    end
  end
  return {'tokens', tostring(retry), count, used, inflight, tostring(window)}
end
redis.call('ZREM', KEYS[1], old)
redis.call('ZADD', KEYS[1], stamp, ARGV[2] .. ':' .. ARGV[4])
if delta ~= 0 then used = redis.call('INCRBY', KEYS[2], delta) end
local newest = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
local reset = tonumber(newest[2]) + window - now
return {'', '0', count, used, inflight, tostring(reset)}
"""


class RedisLimiter(Limiter):
    """The sliding-window log in Redis: one EVALSHA per admission, on Redis' clock."""

    name = "redis"

    def __init__(
        self, client: Any, *, window: float | None = None, lease: float | None = None
    ) -> None:
        self.client = client
        self.window_us = int(float(window or settings.RATE_LIMIT_WINDOW_SECONDS) * 1_000_000)
        self.lease_us = int(float(lease or settings.CONCURRENCY_LEASE_SECONDS) * 1_000_000)
        self._script = client.register_script(_ADMIT_SCRIPT)
        self._adjust_script = client.register_script(_ADJUST_SCRIPT)

    @classmethod
    def from_url(cls, url: str, **kwargs: Any) -> RedisLimiter:
        import redis

        # Short timeouts: a Redis that stops answering must not stall requests (see Failover).
        client = redis.Redis.from_url(url, socket_timeout=0.5, socket_connect_timeout=0.5)
        return cls(client, **kwargs)

    @staticmethod
    def _keys(key: str) -> list[str]:
        # One hash tag per key: the three keys live in the same Redis Cluster slot.
        return [f"rl:{{{key}}}:req", f"rl:{{{key}}}:tok", f"rl:{{{key}}}:con"]

    def _run(
        self, key: str, limits: Limits, tokens: int, slot: str, mode: str, need: int = 0
    ) -> Decision:
        args = [
            limits.rpm,
            limits.tpm,
            limits.concurrency,
            tokens,
            slot,
            self.window_us,
            self.lease_us,
            mode,
            need,
        ]
        return self._decision(limits, self._script(keys=self._keys(key), args=args))

    def _decision(self, limits: Limits, answer: list[Any]) -> Decision:
        reason, retry, count, used, inflight, reset = answer
        reason = reason.decode() if isinstance(reason, bytes) else reason
        return Decision(
            allowed=reason == "",
            limits=limits,
            reason=reason,
            retry_after=float(retry) / 1_000_000,
            requests_in_window=int(count),
            tokens_in_window=int(used),
            in_flight=int(inflight),
            reset_after=float(reset) / 1_000_000,
            backend=self.name,
        )

    def admit(self, *, key: str, limits: Limits, tokens: int, slot: str, need: int = 0) -> Decision:
        return self._run(key, limits, tokens, slot, "admit", need)

    def adjust(
        self, *, key: str, limits: Limits, slot: str, tokens: int, to: int, backend: str
    ) -> Decision:
        args = [limits.tpm, slot, tokens, to, self.window_us]
        return self._decision(limits, self._adjust_script(keys=self._keys(key), args=args))

    def release(self, *, key: str, slot: str, backend: str) -> None:
        self.client.zrem(self._keys(key)[2], slot)

    def peek(self, *, key: str, limits: Limits) -> Decision:
        return self._run(key, limits, 0, "", "peek")


class FailoverLimiter(Limiter):
    """Redis first; when it cannot be reached, RATE_LIMIT_ON_REDIS_ERROR decides.

    "local": this process limits on its own until Redis answers again (per-process limits
    for that time; billing is unaffected, it lives in the database). "closed": refuse with
    503. "open": admit without limits. Redis is retried at most once per `retry_interval`.
    """

    def __init__(self, primary: RedisLimiter, *, mode: str, retry_interval: float = 1.0) -> None:
        if mode not in {"local", "closed", "open"}:
            raise ValueError(
                f"RATE_LIMIT_ON_REDIS_ERROR must be local, closed or open, not {mode!r}"
            )
        self.primary = primary
        self.fallback = LocalLimiter()
        self.mode = mode
        self.retry_interval = retry_interval
        self._down_until = 0.0

    def _redis_usable(self) -> bool:
        return time.monotonic() >= self._down_until

    def _mark_down(self, exc: Exception) -> None:
        if self._redis_usable():
            logger.warning("Rate limiter: Redis unreachable (%s); mode %r", exc, self.mode)
        self._down_until = time.monotonic() + self.retry_interval

    def _degraded(
        self, *, key: str, limits: Limits, tokens: int | None, slot: str, need: int = 0
    ) -> Decision:
        if self.mode == "closed":
            raise LimiterUnavailable("rate limiter store unreachable")
        if self.mode == "open":
            return Decision(allowed=True, limits=limits, backend="open")
        if tokens is None:
            return self.fallback.peek(key=key, limits=limits)
        return self.fallback.admit(key=key, limits=limits, tokens=tokens, slot=slot, need=need)

    def admit(self, *, key: str, limits: Limits, tokens: int, slot: str, need: int = 0) -> Decision:
        import redis

        if self._redis_usable():
            try:
                return self.primary.admit(
                    key=key, limits=limits, tokens=tokens, slot=slot, need=need
                )
            except redis.RedisError as exc:
                self._mark_down(exc)
        return self._degraded(key=key, limits=limits, tokens=tokens, slot=slot, need=need)

    def adjust(
        self, *, key: str, limits: Limits, slot: str, tokens: int, to: int, backend: str
    ) -> Decision:
        import redis

        if backend == "local":
            return self.fallback.adjust(
                key=key, limits=limits, slot=slot, tokens=tokens, to=to, backend=backend
            )
        if backend == "redis":
            try:
                return self.primary.adjust(
                    key=key, limits=limits, slot=slot, tokens=tokens, to=to, backend=backend
                )
            except redis.RedisError as exc:
                # Admitted on the estimate; the debit is still exact, only TPM is less so.
                self._mark_down(exc)
        return Decision(allowed=True, limits=limits, backend=backend)

    def release(self, *, key: str, slot: str, backend: str) -> None:
        import redis

        if backend == "local":
            self.fallback.release(key=key, slot=slot, backend=backend)
        elif backend == "redis":
            try:
                self.primary.release(key=key, slot=slot, backend=backend)
            except redis.RedisError as exc:  # the lease expires it
                self._mark_down(exc)

    def peek(self, *, key: str, limits: Limits) -> Decision:
        import redis

        if self._redis_usable():
            try:
                return self.primary.peek(key=key, limits=limits)
            except redis.RedisError as exc:
                self._mark_down(exc)
        return self._degraded(key=key, limits=limits, tokens=None, slot="")


_limiter: Limiter | None = None
_limiter_lock = threading.Lock()


def get_limiter() -> Limiter:
    """The process's limiter: Redis (with failover) when RATE_LIMIT_REDIS_URL is set, else local."""
    global _limiter
    if _limiter is None:
        with _limiter_lock:
            if _limiter is None:
                url = settings.RATE_LIMIT_REDIS_URL
                _limiter = (
                    FailoverLimiter(
                        RedisLimiter.from_url(url), mode=settings.RATE_LIMIT_ON_REDIS_ERROR
                    )
                    if url
                    else LocalLimiter()
                )
    return _limiter


def reset_limiter() -> None:
    """Forget the process's limiter (settings changed, e.g. in tests)."""
    global _limiter
    _limiter = None


def format_duration(seconds: float) -> str:
    """OpenAI's x-ratelimit-reset-* format: `20ms`, `1s`, `6m0s`, `1m30.5s`."""
    if seconds <= 0:
        return "0s"
    if seconds < 1:
        return f"{max(math.ceil(seconds * 1000), 1)}ms"
    minutes, rest = divmod(seconds, 60)
    rest_text = f"{rest:.3f}".rstrip("0").rstrip(".")
    return f"{int(minutes)}m{rest_text}s" if minutes else f"{rest_text}s"

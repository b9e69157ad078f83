"""Per-key requests per minute, tokens per minute and concurrency, checked and taken at once.

A sliding-window log: a request is admitted when, counting it, the last 60 seconds hold at most
RPM requests and TPM tokens, and fewer than `concurrency` requests are in flight. There is no
fixed window, so nothing lets 2× through at a boundary. All three are decided in one atomic
call — a Lua script on Redis' own clock (shared by every gateway process), or the same
algorithm under a lock in-process (the embedded default). Concurrency slots are leased: a
process that dies holding one loses it after CONCURRENCY_LEASE_SECONDS.

On Redis a request costs one call: giving its slot back makes no call of its own but rides
the process's next admission (or a background flusher's call, RELEASE_FLUSH_SECONDS later
when the process is quiet), so another process can see a slot taken that long after its
request ended. A client whose next request reaches the same process never does.
"""

from __future__ import annotations

import atexit
import logging
import math
import os
import threading
import time
import weakref
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings

logger = logging.getLogger(__name__)

# Seconds since the epoch (time.time's shape). The limiters take one so that a test can move
# time on by exactly what it means, instead of sleeping through a window.
Clock = Callable[[], float]


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
        """Give back a concurrency slot taken by `admit` (Redis: with this process's next call)."""

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

    def __init__(
        self, *, window: float | None = None, lease: float | None = None, clock: Clock = time.time
    ) -> None:
        self.window = float(window or settings.RATE_LIMIT_WINDOW_SECONDS)
        self.lease = float(lease or settings.CONCURRENCY_LEASE_SECONDS)
        self.clock = clock
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
            now = self.clock()
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
            now = self.clock()
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
            now = self.clock()
            state = self._keys.setdefault(key, _KeyWindow())
            self._expire(state, now)
            return self._decision(state, limits, now, allowed=True)


# The Redis layout, two keys per API key (one hash tag: the same Redis Cluster slot):
#   log    list of admitted requests in arrival order, "stamp:slot:tokens" (stamp: Redis'
#          clock in µs). Appending and trimming the head are O(1); a sorted set's ZADD was
#          the dearest command of an admission. Should the clock step back, an entry behind a
#          newer one leaves the window only after it: counted longer, never shorter.
#   state  hash: n = entries in the log, t = their tokens, o = the oldest entry's stamp,
#          r = when the keys' TTLs were last set, and one field "s<slot>" per request in
#          flight holding its admission stamp (its lease runs from there; in flight = HLEN - 4).
# An admission reads everything in one HMGET and writes it in one HSET, and `o` lets it leave
# the log alone until its oldest entry leaves the window. Every script first gives back the
# slots released since this process's previous call: KEYS after the first two, each paired
# with its "s<slot>" field in ARGV at the key's index + 9. ARGV: rpm, tpm, concurrency,
# tokens, slot, window µs, lease µs, mode, need, exact tokens (adjust), now µs (empty: Redis'
# own clock, the one every process shares; a limiter given a clock sends its time instead).
_PRELUDE = """
for i = 3, #KEYS do redis.call('HDEL', KEYS[i], ARGV[i + 9]) end
local now = tonumber(ARGV[11])
if not now then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
end
local window, lease = tonumber(ARGV[6]), tonumber(ARGV[7])
local cutoff = now - window
local state = redis.call('HMGET', KEYS[2], 'n', 't', 'o', 'r')
local exists = state[1] ~= false
local count, used = tonumber(state[1]) or 0, tonumber(state[2]) or 0
local oldest, refreshed = tonumber(state[3]) or 0, tonumber(state[4]) or 0
local purged = false
if count > 0 and oldest <= cutoff then
  -- The entries that left the window, oldest first, a few at a time; their tokens go too.
  local removed, first = 0, 0
  while first == 0 and removed < count do
    local batch = redis.call('LRANGE', KEYS[1], removed, removed + 15)
    if #batch == 0 then  -- shorter than `n` says (evicted?): the log is the truth
      count = removed
      break
    end
    for i = 1, #batch do
      local stamp = tonumber(string.match(batch[i], '^(%d+)'))
      if stamp > cutoff then
        first = stamp
        break
      end
      used = used - tonumber(string.match(batch[i], ':(%d+)$'))
      removed = removed + 1
    end
  end
  if removed > 0 then redis.call('LTRIM', KEYS[1], removed, -1) end
  count, oldest, purged = math.max(count - removed, 0), first, true
  if count == 0 or used < 0 then used = 0 end
end
local inflight = exists and redis.call('HLEN', KEYS[2]) - 4 or 0
"""

# Slots whose lease ran out belong to dead processes: only looked for when they could matter.
_PURGE_LEASES = """
if inflight > 0 then
  local fields, dead, expired = redis.call('HGETALL', KEYS[2]), {}, now - lease
  for i = 1, #fields, 2 do
    if string.byte(fields[i]) == 115 and tonumber(fields[i + 1]) <= expired then
      dead[#dead + 1] = fields[i]
    end
  end
  for i = 1, #dead, 500 do
    redis.call('HDEL', KEYS[2], unpack(dead, i, math.min(i + 499, #dead)))
  end
  inflight = inflight - #dead
end
"""

# A TPM refusal: `retry` is when enough of the window's oldest tokens leave for `over` to fit.
_TOKENS_RETRY = """
retry = window
local freed, entries = 0, redis.call('LRANGE', KEYS[1], 0, -1)
for i = 1, #entries do
  freed = freed + tonumber(string.match(entries[i], ':(%d+)$'))
  if freed >= over then
    retry = tonumber(string.match(entries[i], '^(%d+)')) + window - now
    break
  end
end
"""

_SAVE_PURGE = """
if purged then redis.call('HSET', KEYS[2], 'n', count, 't', used, 'o', oldest) end
"""

_RESET_AFTER = """
local reset = 0
local newest = count > 0 and redis.call('LINDEX', KEYS[1], -1)
if newest then reset = tonumber(string.match(newest, '^(%d+)')) + window - now end
"""

_ADMIT_SCRIPT = f"""{_PRELUDE}
local rpm, tpm, conc = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local tokens, mode = tonumber(ARGV[4]), ARGV[8]
local want = math.max(tokens, tonumber(ARGV[9]))
if inflight >= conc or mode ~= 'admit' then
{_PURGE_LEASES}
end
local reason, retry = '', 0
if mode == 'admit' then
  if count + 1 > rpm then
    reason = 'requests'
    local entry = redis.call('LINDEX', KEYS[1], count - rpm)
    retry = entry and tonumber(string.match(entry, '^(%d+)')) + window - now or window
  elseif used + want > tpm then
    reason = 'tokens'
    local over = used + want - tpm
{_TOKENS_RETRY}
  elseif inflight + 1 > conc then
    reason, retry = 'concurrency', 1000000
  else
    -- Without its state a log is left over (evicted, deleted): it would count nothing right.
    if not exists then redis.call('DEL', KEYS[1]) end
    redis.call('RPUSH', KEYS[1], string.format('%d', now) .. ':' .. ARGV[5] .. ':' .. ARGV[4])
    if count == 0 then oldest = now end
    local span = math.max(window, lease)
    -- TTLs are set when a key is (re)created and then once per span, not on every call: at
    -- any admission both keys outlive the window and every lease by at least one span.
    if count == 0 or not exists or now - refreshed >= span then
      redis.call('HSET', KEYS[2], 'n', count + 1, 't', used + tokens, 'o', oldest, 'r', now,
        's' .. ARGV[5], now)
      local ttl = math.ceil(2 * span / 1000) + 1000
      redis.call('PEXPIRE', KEYS[1], ttl)
      redis.call('PEXPIRE', KEYS[2], ttl)
    elseif purged then
      redis.call('HSET', KEYS[2], 'n', count + 1, 't', used + tokens, 'o', oldest,
        's' .. ARGV[5], now)
    else  -- the oldest entry is still the one `o` names
      redis.call('HSET', KEYS[2], 'n', count + 1, 't', used + tokens, 's' .. ARGV[5], now)
    end
    -- Just admitted: the newest entry is this one, so the window empties `window` from now.
    return {{'', '0', count + 1, used + tokens, inflight + 1, tostring(window)}}
  end
end
{_SAVE_PURGE}
{_RESET_AFTER}
return {{reason, tostring(retry), count, used, inflight, tostring(reset)}}
"""

# The request's log entry "stamp:slot:estimate" becomes "stamp:slot:exact" in its place. Its
# stamp is the slot's field; a slot already given back is looked for along the log.
_ADJUST_SCRIPT = f"""{_PRELUDE}
local tpm, slot, estimate = tonumber(ARGV[2]), ARGV[5], ARGV[4]
local entry, index = nil, nil
local stamp = exists and redis.call('HGET', KEYS[2], 's' .. slot)
if stamp then
  entry = stamp .. ':' .. slot .. ':' .. estimate
  index = redis.call('LPOS', KEYS[1], entry)
end
if not index and count > 0 then
  local suffix = ':' .. slot .. ':' .. estimate
  local entries = redis.call('LRANGE', KEYS[1], 0, -1)
  for i = 1, #entries do
    if string.sub(entries[i], -#suffix) == suffix then
      entry, index = entries[i], i - 1
      break
    end
  end
end
if not index then  -- the entry left the window already: nothing to count
{_SAVE_PURGE}
  return {{'', '0', count, used, inflight, '0'}}
end
local delta = tonumber(ARGV[10]) - tonumber(estimate)
if delta > 0 and used + delta > tpm then
  local retry, over = 0, used + delta - tpm
{_TOKENS_RETRY}
{_SAVE_PURGE}
  return {{'tokens', tostring(retry), count, used, inflight, tostring(window)}}
end
redis.call('LSET', KEYS[1], index, string.match(entry, '^(.*:)%d+$') .. ARGV[10])
used = used + delta
redis.call('HSET', KEYS[2], 'n', count, 't', used, 'o', oldest)
{_RESET_AFTER}
return {{'', '0', count, used, inflight, tostring(reset)}}
"""

# The flusher's call: the queued slots only (KEYS: state hashes, ARGV: their "s<slot>" fields).
_RELEASE_SCRIPT = """
for i = 1, #KEYS do redis.call('HDEL', KEYS[i], ARGV[i]) end
return #KEYS
"""

# A released slot waits this long for a call of this process to ride on before the flusher
# sends it on its own. Another process sees the slot taken for up to about this long.
RELEASE_FLUSH_SECONDS = 0.02
_RELEASE_BATCH = 500  # slots per flusher call, to keep one script call short


class _ReleaseQueue:
    """Slots given back in this process that Redis has not been told about yet."""

    def __init__(self, *, max_age: float) -> None:
        self.max_age = max_age  # past its lease a slot is gone anyway
        self._items: dict[tuple[str, str], float] = {}  # (state key, "s<slot>") -> queued at
        self._changed = threading.Condition()

    def __len__(self) -> int:
        return len(self._items)

    def add(self, state_key: str, field: str) -> bool:
        """Queue one slot; True when the queue was empty (the flusher has to be told)."""
        with self._changed:
            was_empty = not self._items
            self._items[(state_key, field)] = time.monotonic()
            return was_empty

    def snapshot(self, limit: int | None = None) -> list[tuple[str, str]]:
        """What a call should carry. Items stay queued until a call that carried them answers,
        so a release being flushed by one thread still rides another thread's admission."""
        if not self._items:  # the common case under load: nothing queued, no lock taken
            return []
        with self._changed:
            stale = time.monotonic() - self.max_age
            for item in [item for item, queued in self._items.items() if queued <= stale]:
                del self._items[item]
            if not self._items:
                self._changed.notify_all()
            items = list(self._items)
        return items if limit is None else items[:limit]

    def done(self, items: list[tuple[str, str]]) -> None:
        if not items:
            return
        with self._changed:
            for item in items:
                self._items.pop(item, None)
            if not self._items:
                self._changed.notify_all()

    def due_in(self, delay: float) -> float | None:
        """Seconds until the oldest queued slot has waited `delay`; None when nothing waits."""
        with self._changed:
            if not self._items:
                return None
            return next(iter(self._items.values())) + delay - time.monotonic()

    def wait_empty(self, timeout: float) -> bool:
        with self._changed:
            return self._changed.wait_for(lambda: not self._items, timeout)


class _ReleaseFlusher:
    """One daemon thread per process: sends the releases that found no call to ride on."""

    def __init__(self) -> None:
        self._limiters: weakref.WeakSet[RedisLimiter] = weakref.WeakSet()
        self._retry_at: weakref.WeakKeyDictionary[RedisLimiter, tuple[float, float]] = (
            weakref.WeakKeyDictionary()
        )
        self._wake = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._pid = 0
        self._next_look = math.inf  # monotonic time the thread looks at the queues again

    def schedule(self, limiter: RedisLimiter) -> None:
        """`limiter` has queued a release: make sure the thread looks within the delay."""
        with self._lock:
            self._limiters.add(limiter)
            if self._thread is None or self._pid != os.getpid() or not self._thread.is_alive():
                self._pid = os.getpid()
                self._thread = threading.Thread(
                    target=self._run, name="limiter-release-flusher", daemon=True
                )
                self._thread.start()
        # Under load the queue empties and refills at every request: waking the thread each
        # time would cost a context switch per request for nothing. It wakes only when idle.
        if time.monotonic() + limiter.flush_delay < self._next_look:
            self._wake.set()

    def _run(self) -> None:
        timeout: float | None = None
        while True:
            self._next_look = math.inf if timeout is None else time.monotonic() + timeout
            self._wake.wait(timeout)
            self._wake.clear()
            self._next_look = math.inf  # looking now: a release queued meanwhile wakes it again
            timeout = self._look()

    def _look(self) -> float | None:
        """Flush what is due; how long until something else is (None: nothing queued).
        (A method of its own so that no limiter stays referenced while the thread waits.)"""
        timeout: float | None = None
        for limiter in list(self._limiters):
            wait = self._flush_if_due(limiter)
            if wait is not None:
                timeout = wait if timeout is None else min(timeout, wait)
        return timeout

    def _flush_if_due(self, limiter: RedisLimiter) -> float | None:
        """Flush `limiter` if its oldest release has waited long enough; when to look again."""
        due = limiter._releases.due_in(limiter.flush_delay)
        if due is None:  # sent, by this or by a call that carried them
            self._retry_at.pop(limiter, None)
            return None
        now = time.monotonic()
        retry_at, backoff = self._retry_at.get(limiter, (0.0, 0.0))
        if due > 0 or retry_at > now:
            return max(due, retry_at - now, 0.001)
        try:
            limiter.flush()
        except Exception as exc:
            # Kept queued: the next call of this process carries them, or this retries; a
            # slot that is never given back runs out with its lease.
            if not backoff:
                logger.warning("Rate limiter: releasing slots failed (%s); retrying", exc)
            backoff = min(max(backoff * 2, 0.05), 1.0)
            self._retry_at[limiter] = (now + backoff, backoff)
            return backoff
        if backoff:
            logger.info("Rate limiter: queued slot releases sent again")
        self._retry_at.pop(limiter, None)
        due = limiter._releases.due_in(limiter.flush_delay)  # queued while it was sending
        return None if due is None else max(due, 0.001)

    def flush_all(self) -> None:
        """At process exit: one try for every limiter's queued releases."""
        for limiter in list(self._limiters):
            try:
                limiter.flush()
            except Exception as exc:  # the leases expire them
                logger.info("Rate limiter: releasing slots at exit failed (%s)", exc)

    def after_fork(self) -> None:
        # The child has no flusher thread (and maybe a lock held by a thread that is gone).
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._thread = None
        self._next_look = math.inf


_flusher = _ReleaseFlusher()
atexit.register(_flusher.flush_all)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_flusher.after_fork)


class RedisLimiter(Limiter):
    """The sliding-window log in Redis: one EVALSHA per admission, on Redis' clock.

    `release` makes no call of its own: the slot is queued and rides this process's next
    script call (which gives it back before counting slots in flight, for any key), or the
    flusher sends it within about RELEASE_FLUSH_SECONDS when the process is quiet. A client
    that waits for each answer before its next request through this process never finds its
    own slot still taken; through another process it can for that long (a concurrency 429).
    """

    name = "redis"

    def __init__(
        self,
        client: Any,
        *,
        window: float | None = None,
        lease: float | None = None,
        flush_delay: float = RELEASE_FLUSH_SECONDS,
        clock: Clock | None = None,
    ) -> None:
        self.client = client
        self.clock = clock  # None: Redis' clock, shared by every process (the real setting)
        self.flush_delay = flush_delay  # how long a release waits for a call to ride on
        lease_seconds = float(lease or settings.CONCURRENCY_LEASE_SECONDS)
        self.window_us = int(float(window or settings.RATE_LIMIT_WINDOW_SECONDS) * 1_000_000)
        self.lease_us = int(lease_seconds * 1_000_000)
        self._script = client.register_script(_ADMIT_SCRIPT)
        self._adjust_script = client.register_script(_ADJUST_SCRIPT)
        self._release_script = client.register_script(_RELEASE_SCRIPT)
        self._releases = _ReleaseQueue(max_age=lease_seconds)

    @classmethod
    def from_url(cls, url: str, **kwargs: Any) -> RedisLimiter:
        import redis

        # Short timeouts: a Redis that stops answering must not stall requests (see Failover).
        client = redis.Redis.from_url(url, socket_timeout=0.5, socket_connect_timeout=0.5)
        return cls(client, **kwargs)

    @staticmethod
    def _keys(key: str) -> list[str]:
        return [f"rl:{{{key}}}:log", f"rl:{{{key}}}:state"]

    def _call(self, script: Any, key: str, limits: Limits, args: list[Any]) -> Decision:
        # The newest queued releases ride along (a client's own previous request among them);
        # only a backlog (after an outage) is left to the flusher, oldest first.
        releases = self._releases.snapshot()[-_RELEASE_BATCH:]
        keys = self._keys(key) + [state_key for state_key, _ in releases]
        answer = script(keys=keys, args=args + [field for _, field in releases])
        self._releases.done(releases)
        return self._decision(limits, answer)

    def _args(
        self, limits: Limits, tokens: int, slot: str, mode: str, need: int = 0, to: int = 0
    ) -> list[Any]:
        return [
            limits.rpm,
            limits.tpm,
            limits.concurrency,
            tokens,
            slot,
            self.window_us,
            self.lease_us,
            mode,
            need,
            to,
            "" if self.clock is None else int(self.clock() * 1_000_000),
        ]

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
        args = self._args(limits, tokens, slot, "admit", need)
        return self._call(self._script, key, limits, args)

    def adjust(
        self, *, key: str, limits: Limits, slot: str, tokens: int, to: int, backend: str
    ) -> Decision:
        args = self._args(limits, tokens, slot, "adjust", to=to)
        return self._call(self._adjust_script, key, limits, args)

    def release(self, *, key: str, slot: str, backend: str) -> None:
        if self._releases.add(self._keys(key)[1], "s" + slot):
            _flusher.schedule(self)

    def peek(self, *, key: str, limits: Limits) -> Decision:
        return self._call(self._script, key, limits, self._args(limits, 0, "", "peek"))

    @property
    def pending_releases(self) -> int:
        """Slots released in this process that Redis has not been told about yet."""
        return len(self._releases)

    def flush(self) -> int:
        """Send every queued release now, in one call per 500; how many were sent."""
        sent = 0
        while batch := self._releases.snapshot(_RELEASE_BATCH):
            self._release_script(
                keys=[state_key for state_key, _ in batch], args=[field for _, field in batch]
            )
            self._releases.done(batch)
            sent += len(batch)
        return sent

    def wait_flushed(self, timeout: float) -> bool:
        """Block until no release is queued (the flusher or a call sent them); False on timeout."""
        return self._releases.wait_empty(timeout)


class FailoverLimiter(Limiter):
    """Redis first; when it cannot be reached, RATE_LIMIT_ON_REDIS_ERROR decides.

    "local": this process limits on its own until Redis answers again (per-process limits
    for that time; billing is unaffected, it lives in the database). "closed": refuse with
    503. "open": admit without limits. Redis is retried at most once per `retry_interval`.
    """

    def __init__(
        self,
        primary: RedisLimiter,
        *,
        mode: str,
        retry_interval: float = 1.0,
        clock: Clock = time.monotonic,
    ) -> None:
        if mode not in {"local", "closed", "open"}:
            raise ValueError(
                f"RATE_LIMIT_ON_REDIS_ERROR must be local, closed or open, not {mode!r}"
            )
        self.primary = primary
        self.fallback = LocalLimiter()
        self.mode = mode
        self.retry_interval = retry_interval
        self.clock = clock  # when Redis may be tried again
        self._down_until = -math.inf

    def _redis_usable(self) -> bool:
        return self.clock() >= self._down_until

    def _mark_down(self, exc: Exception) -> None:
        if self._redis_usable():
            logger.warning("Rate limiter: Redis unreachable (%s); mode %r", exc, self.mode)
        self._down_until = self.clock() + self.retry_interval

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
        # Neither makes a call to Redis: the primary queues the slot for its next call (or its
        # flusher), which retries while Redis is away; the lease is the last resort.
        if backend == "local":
            self.fallback.release(key=key, slot=slot, backend=backend)
        elif backend == "redis":
            self.primary.release(key=key, slot=slot, backend=backend)

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

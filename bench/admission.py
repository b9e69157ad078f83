"""P5: admission ops/s as a ratio to raw Redis INCR ops/s, and Redis calls per request.

The loops run in this one process, on one connection each, against the same redis-server,
alternating in rounds so drift hits them alike. A request is what the gateway does for a
small input: `admit` with its exact tokens, then `release` of its concurrency slot.
`--baseline FILE` measures another limiter.py side by side in the same rounds (e.g. the
previous commit's: `git show HEAD~1:metering/limiter.py > /tmp/old_limiter.py`).
Run: `.venv/bin/python -m bench.admission`.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, cast

import redis

from bench._redis import CommandTime, private_redis
from metering import limiter as current_limiter

GOAL_RATIO = 0.8
TOKENS = 25  # the exact count of a short input, known before admission


class CountingRedis(redis.Redis):
    """Counts the commands (round trips) sent; the limiter's flusher thread included."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.calls = 0
        self._calls_lock = threading.Lock()

    def execute_command(self, *args, **options):  # type: ignore[no-untyped-def]
        with self._calls_lock:
            self.calls += 1
        return super().execute_command(*args, **options)


@dataclass
class Subject:
    """One limiter implementation under measurement."""

    name: str
    module: ModuleType
    admit_rates: list[float] = field(default_factory=list)
    request_rates: list[float] = field(default_factory=list)
    script_time: CommandTime | None = None  # during admissions alone
    request_script_time: CommandTime | None = None  # during whole requests
    calls: dict[str, float] = field(default_factory=dict)

    def limiter(self, client: Any) -> Any:
        return self.module.RedisLimiter(client, window=60, lease=300)

    def settle(self, limiter: Any) -> None:
        """Send whatever releases the limiter still holds (outside any timed loop)."""
        if hasattr(limiter, "flush"):
            limiter.flush()


def load_baseline(path: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location("baseline_limiter", path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def slots(count: int) -> list[str]:
    return [uuid.uuid4().hex for _ in range(count)]


def timed_rounds(
    url: str, subjects: list[Subject], operations: int, rounds: int, keys: int
) -> tuple[list[float], list[float], CommandTime]:
    """Interleaved rounds: INCR, the empty script, then each subject's admissions and requests."""
    client = redis.Redis.from_url(url)
    admin = redis.Redis.from_url(url)
    incr_time = CommandTime(admin, "incr", "incrby")  # redis-py 8 sends INCR as INCRBY
    for subject in subjects:
        subject.script_time = CommandTime(admin, "evalsha")
        subject.request_script_time = CommandTime(admin, "evalsha", "zrem")
    limiters = [subject.limiter(client) for subject in subjects]
    # Realistic per-key windows: requests spread over `keys` keys, far below their limits.
    limits_of = {
        s.name: s.module.Limits(rpm=10**9, tpm=10**12, concurrency=10**9) for s in subjects
    }
    key_names = [f"bench-{i}" for i in range(keys)]
    for subject, limiter in zip(subjects, limiters, strict=True):  # loads the scripts
        limiter.admit(key="warm", limits=limits_of[subject.name], tokens=1, slot="warm")
    # The floor of any script admission: EVALSHA of a script that does nothing, with the same
    # keys and arguments. No admission script can beat this ratio.
    empty = client.register_script("return {'', '0', 0, 0, 0, '0'}")
    empty_args: list[str | int] = [
        10**9,
        10**12,
        10**9,
        TOKENS,
        "slot",
        60_000_000,
        300_000_000,
        "admit",
        0,
        0,
    ]
    empty(keys=["a", "b"], args=empty_args)
    incr_rates, empty_rates = [], []
    for _ in range(rounds):
        with incr_time.measure():
            started = time.perf_counter()
            for i in range(operations):
                client.incr(f"bench-incr-{i % keys}")
            incr_rates.append(operations / (time.perf_counter() - started))
        started = time.perf_counter()
        for i in range(operations):
            empty(keys=[f"rl:{{e{i % keys}}}:log", f"rl:{{e{i % keys}}}:state"], args=empty_args)
        empty_rates.append(operations / (time.perf_counter() - started))

        for subject, limiter in zip(subjects, limiters, strict=True):
            limits = limits_of[subject.name]
            prefix = f"{subject.name}-"
            # Admission alone: the slots are given back outside the timed loop.
            taken = slots(operations)
            assert subject.script_time is not None
            with subject.script_time.measure():
                started = time.perf_counter()
                for i, slot in enumerate(taken):
                    limiter.admit(
                        key=prefix + key_names[i % keys], limits=limits, tokens=TOKENS, slot=slot
                    )
                subject.admit_rates.append(operations / (time.perf_counter() - started))
            for i, slot in enumerate(taken):
                limiter.release(key=prefix + key_names[i % keys], slot=slot, backend="redis")
            subject.settle(limiter)

            # The whole request: admit, then release.
            taken = slots(operations)
            assert subject.request_script_time is not None
            with subject.request_script_time.measure():
                started = time.perf_counter()
                for i, slot in enumerate(taken):
                    key = prefix + key_names[i % keys]
                    limiter.admit(key=key, limits=limits, tokens=TOKENS, slot=slot)
                    limiter.release(key=key, slot=slot, backend="redis")
                subject.request_rates.append(operations / (time.perf_counter() - started))
            subject.settle(limiter)
    return incr_rates, empty_rates, incr_time


def count_calls(url: str, subject: Subject, requests: int, threads: int) -> None:
    """Redis calls per admission, and per request sequentially and from `threads` threads."""
    limits = subject.module.Limits(rpm=10**9, tpm=10**12, concurrency=10**9)

    client = cast(CountingRedis, CountingRedis.from_url(url))
    limiter = subject.limiter(client)
    limiter.admit(key="count-warm", limits=limits, tokens=1, slot="warm")  # loads the script
    limiter.release(key="count-warm", slot="warm", backend="redis")
    subject.settle(limiter)
    client.calls = 0
    limiter.admit(key="count", limits=limits, tokens=TOKENS, slot="one")
    subject.calls["admission"] = client.calls
    limiter.release(key="count", slot="one", backend="redis")
    subject.settle(limiter)

    def requests_from(thread: int, count: int) -> None:
        for slot in slots(count):
            key = f"count-{thread}"
            limiter.admit(key=key, limits=limits, tokens=TOKENS, slot=slot)
            limiter.release(key=key, slot=slot, backend="redis")

    client.calls = 0
    requests_from(0, requests)
    # A quiet process sends its last release on its own: that call counts too.
    if hasattr(limiter, "wait_flushed"):
        limiter.wait_flushed(5.0)
    subject.calls["sequential"] = client.calls / requests

    client.calls = 0
    workers = [
        threading.Thread(target=requests_from, args=(t, requests // threads))
        for t in range(threads)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    if hasattr(limiter, "wait_flushed"):
        limiter.wait_flushed(5.0)
    subject.calls["concurrent"] = client.calls / (requests // threads * threads)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--redis-url", help="Use this Redis instead of starting a private one")
    parser.add_argument("--operations", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--keys", type=int, default=100)
    parser.add_argument("--threads", type=int, default=4, help="clients for the concurrent count")
    parser.add_argument("--baseline", help="another limiter.py to measure side by side")
    args = parser.parse_args()
    subjects = [Subject("current", current_limiter)]
    if args.baseline:
        subjects.append(Subject("baseline", load_baseline(args.baseline)))
    with private_redis(args.redis_url) as url:
        incr_rates, empty_rates, incr_time = timed_rounds(
            url, subjects, args.operations, args.rounds, args.keys
        )
        for subject in subjects:
            count_calls(url, subject, args.operations, args.threads)
    incr_ops = statistics.median(incr_rates)
    for subject in subjects:
        label = "P5" if subject.name == "current" else f"baseline {args.baseline}:"
        ratio = statistics.median(
            a / b for a, b in zip(subject.admit_rates, incr_rates, strict=True)
        )
        request_ratio = statistics.median(
            a / b for a, b in zip(subject.request_rates, incr_rates, strict=True)
        )
        verdict = "meets" if ratio >= GOAL_RATIO else "misses"
        admit_ops = statistics.median(subject.admit_rates)
        print(f"{label} admission: {admit_ops:,.0f} ops/s vs raw INCR {incr_ops:,.0f} ops/s")
        print(f"{label} ratio admission/INCR = {ratio:.2f} (goal >= {GOAL_RATIO}: {verdict})")
        print(
            f"{label} ratio request (admit + release)/INCR = {request_ratio:.2f} "
            f"({statistics.median(subject.request_rates):,.0f} requests/s)"
        )
        calls = subject.calls
        print(
            f"{label} Redis calls: {calls['admission']:.0f} per admission; per request "
            f"(admit with exact tokens + release) {calls['sequential']:.3f} sequentially, "
            f"{calls['concurrent']:.3f} from {args.threads} threads"
        )
        assert subject.script_time is not None and subject.request_script_time is not None
        per_request = subject.request_script_time.usec / (args.operations * args.rounds)
        print(
            f"{label} Redis time (INFO commandstats): admission script "
            f"{subject.script_time.usec_per_call:.2f} usec/call, whole request "
            f"{per_request:.2f} usec, INCR {incr_time.usec_per_call:.2f} usec/call"
        )
    floor = statistics.median(a / b for a, b in zip(empty_rates, incr_rates, strict=True))
    print(f"floor: an empty script with the same arguments/INCR = {floor:.2f}")
    one, five, fifteen = os.getloadavg()
    print(
        f"load average {one:.2f} {five:.2f} {fifteen:.2f} on {os.cpu_count()} CPUs "
        "(ratios are noisy on a shared machine)"
    )


if __name__ == "__main__":
    main()

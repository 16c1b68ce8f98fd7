"""Sentences/s of ingest's cached, token-sorted `embed_sentences` vs a plain
`SentenceTransformer.encode(sentences, batch_size=32)`, on the same sentences and the same loaded
model, in one run. Ours starts from an empty cache (a temp dir), so it pays for hashing, sorting
and writing its shards.

    python -m benchmarks.embed_throughput                  # first 4000 sentences of the corpus
    python -m benchmarks.embed_throughput --sentences 0    # all of them
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from typing import Any

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from benchmarks.common import save_report  # noqa: E402
from cascade.encoder import (  # noqa: E402
    embed_sentences,
    encoder_dim,
    encoder_info,
    load_encoder,
)
from training.corpora import default_corpus_path, read_wikipedia_corpus  # noqa: E402
from training.ingest import split_sentences  # noqa: E402


def corpus_sentences(limit: int) -> list[str]:
    """The first `limit` sentences (0: all) of the default corpus, in article order."""
    out: list[str] = []
    for article in read_wikipedia_corpus(default_corpus_path()):
        out.extend(split_sentences(article.text))
        if limit and len(out) >= limit:
            return out[:limit]
    return out


def padding_ratio(model: Any, sentences: list[str], batch: int, by_tokens: bool) -> float:
    """Padded tokens / real tokens when batches of `batch` are cut from a length-sorted list."""
    ids = model.tokenizer(sentences, truncation=True, max_length=model.max_seq_length)["input_ids"]
    tokens = np.array([len(x) for x in ids])
    key = tokens if by_tokens else np.array([len(s) for s in sentences])
    ordered = tokens[np.argsort(-key, kind="stable")]
    padded = sum(int(ordered[lo:lo + batch].max()) * len(ordered[lo:lo + batch])
                 for lo in range(0, len(ordered), batch))
    return padded / int(tokens.sum())


def time_methods(model, sentences: list[str], batch_size: int, repeats: int
                 ) -> tuple[dict[str, list[float]], float]:
    """Seconds of each run of the plain encode and of embed_sentences, in ABBA order, and the
    largest difference of their vectors."""
    def plain() -> np.ndarray:
        return model.encode(sentences, batch_size=batch_size, normalize_embeddings=True,
                            convert_to_numpy=True, show_progress_bar=False)

    def ours() -> np.ndarray:
        with tempfile.TemporaryDirectory() as cache:
            return embed_sentences(sentences, model, cache, progress=False,
                                   encode_batch_size=batch_size)

    methods = {"plain encode": plain, "embed_sentences": ours}
    times: dict[str, list[float]] = {name: [] for name in methods}
    outputs: dict[str, np.ndarray] = {}
    schedule = [name for r in range(repeats)
                for name in (list(methods) if r % 2 == 0 else list(methods)[::-1])]
    for name in schedule:
        t = time.perf_counter()
        outputs[name] = methods[name]()
        times[name].append(time.perf_counter() - t)
        print(f"  {name:16s} {times[name][-1]:7.1f} s", file=sys.stderr)
    return times, float(np.abs(outputs["plain encode"] - outputs["embed_sentences"]).max())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.embed_throughput",
                                description=__doc__.split("\n")[0])
    p.add_argument("--sentences", type=int, default=4000, help="first N sentences; 0 = all")
    p.add_argument("--batch-size", type=int, default=32, help="forward batch of both methods")
    p.add_argument("--repeats", type=int, default=2,
                   help="timed runs per method, in ABBA order so neither always goes first")
    p.add_argument("--out", default="benchmarks/results/embed_throughput.json")
    args = p.parse_args(argv)

    import torch

    # The load average goes into the JSON: on a shared machine another job halves throughput,
    # and a reader needs to know whether that happened.
    load_before = os.getloadavg()
    sentences = corpus_sentences(args.sentences)
    n = len(sentences)
    t = time.perf_counter()
    model = load_encoder()
    load_s = time.perf_counter() - t
    model.encode(sentences[:64], batch_size=args.batch_size)  # warm-up: first-call overheads

    methods = ("plain encode", "embed_sentences")
    times, max_diff = time_methods(model, sentences, args.batch_size, args.repeats)

    pad = {"char_sort": padding_ratio(model, sentences, args.batch_size, by_tokens=False),
           "token_sort": padding_ratio(model, sentences, args.batch_size, by_tokens=True)}
    base = n / min(times["plain encode"])
    rows = []
    for name in methods:
        best = min(times[name])
        rows.append({"method": name, "sentences": n, "best_s": round(best, 2),
                     "runs_s": [round(x, 2) for x in times[name]],
                     "sentences_per_s": round(n / best, 1),
                     "speedup": round(n / best / base, 3)})

    print(f"\nembedding throughput: {n:,} sentences, {encoder_info()['name']}, "
          f"batch {args.batch_size}, {torch.get_num_threads()} torch threads, "
          f"best of {args.repeats}")
    print(f"{'method':18s} {'best s':>8s} {'sent/s':>8s} {'speedup':>8s}")
    for r in rows:
        print(f"{r['method']:18s} {r['best_s']:8.2f} {r['sentences_per_s']:8.1f} "
              f"{r['speedup']:7.2f}x")
    print(f"padding (padded / real tokens): char-length sort {pad['char_sort']:.3f}, "
          f"token-length sort {pad['token_sort']:.3f}; max |diff| of vectors {max_diff:.1e}")
    print(f"load average (1 min) before {load_before[0]:.2f}, after {os.getloadavg()[0]:.2f} "
          f"on {os.cpu_count()} CPUs: other jobs on the machine slow both methods")

    result = {
        "benchmark": "embed_throughput",
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "encoder": encoder_info(), "dim": encoder_dim(model), "model_load_s": round(load_s, 2),
        "sentences": n, "unique_sentences": len(set(sentences)), "batch_size": args.batch_size,
        "repeats": args.repeats, "results": rows, "padding_ratio": pad,
        "max_abs_diff": max_diff,
        "env": {"torch": torch.__version__, "torch_threads": torch.get_num_threads(),
                "cpu_count": os.cpu_count(), "python": platform.python_version(),
                "machine": platform.machine(), "device": "cpu",
                "loadavg_1_5_15_before": [round(x, 2) for x in load_before],
                "loadavg_1_5_15_after": [round(x, 2) for x in os.getloadavg()]},
    }
    save_report(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())

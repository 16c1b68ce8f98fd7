"""Concurrent text embedding in one process, as the front's handler threads do it.

    python -m benchmarks.embed_concurrency            # 16 threads x 8 calls of 2-4 short texts

Three ways, each run twice in turn: `none` (every thread calls the encoder at once: the Hugging
Face fast tokenizer is not thread-safe, "Already borrowed" under concurrency), `lock` (one lock
around the encoder), `batcher` (serving.batcher.Batcher, as the front does: the texts of the calls
waiting while one encoder call runs go together into the next one). Prints calls/s and errors;
writes benchmarks/results/embed_concurrency.json.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import grpc

from cascade.bank import write_json

RESULTS = Path(__file__).resolve().parent / "results" / "embed_concurrency.json"
THREADS, CALLS = 16, 8


class _NoDeadline:
    """What the batcher asks of a gRPC context, for calls that come from no gRPC call."""

    def time_remaining(self) -> None:
        return None

    def is_active(self) -> bool:
        return True

    def abort(self, code: grpc.StatusCode, details: str) -> None:
        raise RuntimeError(details)


def main() -> int:
    from cascade.encoder import encode, load_encoder
    from cascade.threads import set_threads
    from serving.batcher import Batcher

    set_threads(1)  # as a serving process (front.threads)
    model = load_encoder("cpu")
    encode(["warm up"], model)
    texts = [[f"Sentence {i} about rivers and the sea, number {j}." for j in range(2 + i % 3)]
             for i in range(THREADS)]
    lock = threading.Lock()

    def run_batch(calls: list[list[str]]) -> list:
        with lock:
            out = encode([t for c in calls for t in c], model)
        res, at = [], 0
        for c in calls:
            res.append(out[at:at + len(c)])
            at += len(c)
        return res

    batcher = Batcher("embed", run_batch, max_batch=16)

    def one(mode: str, t: list[str]):
        if mode == "none":
            return encode(t, model)
        if mode == "lock":
            with lock:
                return encode(t, model)
        return batcher.submit(t, 0, _NoDeadline())

    rows = []
    for mode in ("none", "lock", "batcher", "none", "lock", "batcher"):
        errors: list[str] = []

        def worker(i: int, mode=mode, errors=errors) -> None:
            for _ in range(CALLS):
                try:
                    one(mode, texts[i])
                except Exception as e:  # what the tokenizer raises under concurrency
                    errors.append(f"{type(e).__name__}: {e}")

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(THREADS)]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - t0
        rows.append({"mode": mode, "calls_per_s": round(THREADS * CALLS / wall, 1),
                     "errors": len(errors), "first_error": errors[0] if errors else None})
        print(f"{mode:8s} {rows[-1]['calls_per_s']:7.1f} calls/s  errors {len(errors)}"
              f"{'  ' + errors[0] if errors else ''}", flush=True)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    write_json(RESULTS, {"benchmark": "embed_concurrency", "threads": THREADS,
                         "calls_per_thread": CALLS, "texts_per_call": "2-4", "runs": rows})
    print(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

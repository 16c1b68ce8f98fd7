"""Approximate stage 1, measured: FAISS index types against exact search on a bank's test split.

    python -m benchmarks.index                       # the default bank, the default indexes
    python -m benchmarks.index --bank artifacts/synth_200k.npz --pairs ... \
        --index "HNSW32|efSearch=600" --index "IVF1024,Flat|nprobe=32"

Each `--index` is an `index_factory` string, optionally `|` FAISS search parameters (as
faiss.ParameterSpace reads them: "nprobe=32", "efSearch=600"); "Flat|prefilter=int8" is stage
1's exact index with its 8-bit prefilter (cascade.index.Int8Prefilter: exact, containment 100%).
For each: build time (train + add), memory (the serialized index's bytes), single-query latency
(median and p99 of one query per search, with 1 OpenMP thread and with FAISS's default), and
containment@500: the fraction of exact search's top 500 that the index returns in its top 500.
Queries are the exp-weighted heuristic's queries of the TEST split, and each query's own context
rows are excluded from both result lists, as stage 1 does. Stage-1 Recall@10/@500 of the
heuristic through each index is printed beside it (test split, 95% CIs resampled by article).
Prints a table, writes strict JSON.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import faiss
import numpy as np

from benchmarks.common import created, save_report
from cascade.bank import BankError, load_bank
from cascade.index import ExactIndex, build_index, search, search_batched
from cascade.metrics import recall_report, target_ranks
from cascade.pairs import PairsError, load_pairs
from cascade.query import heuristic_queries
from cascade.stage1 import EXACT, EXACT_PARAMS, open_index

DEFAULT_INDEXES = ("Flat", "Flat|prefilter=int8", "HNSW32|efSearch=600",
                   "IVF256,Flat|nprobe=32", "IVF256,PQ32|nprobe=32")
K = 500


def parse_spec(spec: str) -> tuple[str, str]:
    """'IVF256,Flat|nprobe=32' -> ('IVF256,Flat', 'nprobe=32')."""
    factory, _, params = spec.partition("|")
    return factory.strip(), params.strip()


def build(factory: str, params: str, xb: np.ndarray, seed: int) -> tuple[faiss.Index, float]:
    """An inner-product index from `factory` over xb, trained on (a sample of) xb; its seconds."""
    t0 = time.perf_counter()
    if factory == EXACT and params:  # stage 1's exact index with its 8-bit prefilter
        index = open_index(xb, factory, params)
        _ = index.prefilter  # built here, so build_s counts it
        return index, time.perf_counter() - t0
    index = faiss.index_factory(xb.shape[1], factory, faiss.METRIC_INNER_PRODUCT)
    if not index.is_trained:
        ivf = faiss.try_extract_index_ivf(index)
        if ivf is not None:
            ivf.cp.seed = seed
        n = min(len(xb), 100_000)  # k-means and PQ codebooks converge long before this
        sample = xb[np.sort(np.random.default_rng(seed).choice(len(xb), n, replace=False))]
        index.train(sample)
    index.add(xb)
    if params:
        faiss.ParameterSpace().set_index_parameters(index, params)
    return index, time.perf_counter() - t0


def single_query_ms(index, xq: np.ndarray, ctx_start: np.ndarray, ctx_end: np.ndarray,
                    threads: int | None) -> dict:
    """Median and p99 milliseconds of one query per call (stage 1 serving one context)."""
    before = faiss.omp_get_max_threads()
    if threads:
        faiss.omp_set_num_threads(threads)
    try:
        for i in range(min(5, len(xq))):  # warm caches
            search(index, xq[i:i + 1], K, ctx_start[i:i + 1], ctx_end[i:i + 1])
        times = []
        for i in range(len(xq)):
            t0 = time.perf_counter()
            search(index, xq[i:i + 1], K, ctx_start[i:i + 1], ctx_end[i:i + 1])
            times.append((time.perf_counter() - t0) * 1e3)
    finally:
        faiss.omp_set_num_threads(before)
    return {"median_ms": float(np.median(times)), "p99_ms": float(np.percentile(times, 99)),
            "threads": threads or before, "queries": len(times)}


def containment(I: np.ndarray, exact: np.ndarray) -> np.ndarray:
    """Per query: the fraction of exact's valid top-k ids found among I's."""
    out = np.empty(len(I))
    for i, (got, want) in enumerate(zip(I, exact, strict=True)):
        want = want[want >= 0]
        out[i] = np.isin(want, got[got >= 0]).mean() if len(want) else 1.0
    return out


def measure(spec: str, bank, split, xq: np.ndarray, exact_I: np.ndarray, latency_queries: int,
            seed: int) -> dict:
    factory, params = parse_spec(spec)
    index, build_s = build(factory, params, bank.vectors, seed)
    if isinstance(index, ExactIndex):  # the bank's array (as IndexFlat holds) + the codes
        pf = index.prefilter
        memory = index.xb.nbytes + (pf.codes.ntotal * pf.codes.code_size if pf else 0)
    else:
        memory = len(faiss.serialize_index(index))
    D, I = search_batched(index, xq, K, split.ctx_start, split.ctx_end)
    ranks = target_ranks(I, split.target)
    clusters = split.articles(bank)
    stage1 = recall_report(ranks, (10, K), clusters=clusters)
    contained = containment(I, exact_I)
    lat = slice(0, min(latency_queries, len(xq)))
    args = (index, xq[lat], split.ctx_start[lat], split.ctx_end[lat])
    return {"index": spec, "factory": factory, "params": params, "build_s": build_s,
            "memory_mb": memory / 2**20, "containment@500": float(contained.mean()),
            "containment@500_min": float(contained.min()),
            "latency_1_thread": single_query_ms(*args, threads=1),
            "latency_default_threads": single_query_ms(*args, threads=None),
            "recall@10": stage1["recall@10"], "recall@10_ci95": stage1["recall@10_ci95"],
            f"recall@{K}": stage1[f"recall@{K}"], f"recall@{K}_ci95": stage1[f"recall@{K}_ci95"]}


def table(rows: list[dict]) -> str:
    head = (f"{'index':<26}{'build s':>9}{'MB':>8}{'cont@500':>10}{'1-thr med':>11}"
            f"{'p99':>8}{'dflt med':>10}{'p99':>8}{'R@10':>8}{'R@500':>8}")
    lines = [head, "-" * len(head)]
    for r in rows:
        a, b = r["latency_1_thread"], r["latency_default_threads"]
        lines.append(f"{r['index']:<26}{r['build_s']:9.2f}{r['memory_mb']:8.1f}"
                     f"{100 * r['containment@500']:9.1f}%{a['median_ms']:9.2f}ms"
                     f"{a['p99_ms']:6.2f}ms{b['median_ms']:8.2f}ms{b['p99_ms']:6.2f}ms"
                     f"{r['recall@10']:8.2f}{r[f'recall@{K}']:8.2f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.index",
                                description=__doc__.split("\n")[0])
    p.add_argument("--bank", default="artifacts/wikipedia_vital_bank.npz", help="bank .npz")
    p.add_argument("--pairs", default=None,
                   help="pairs .npz whose TEST split gives the queries (default: "
                        "artifacts/twotower/<bank>/pairs_v4.npz, as make train-v4 writes it)")
    p.add_argument("--index", action="append", default=None, metavar="FACTORY[|PARAMS]",
                   help=f"index_factory string and search parameters, repeatable (default: "
                        f"{', '.join(DEFAULT_INDEXES)})")
    p.add_argument("--latency-queries", type=int, default=500,
                   help="test queries timed one at a time per index and thread setting")
    p.add_argument("--seed", type=int, default=0, help="seed of the training samples")
    p.add_argument("--out", default="benchmarks/results/index.json", help="results JSON")
    args = p.parse_args(argv)
    pairs_path = args.pairs or f"artifacts/twotower/{Path(args.bank).stem}/pairs_v4.npz"
    specs = args.index or list(DEFAULT_INDEXES)
    try:
        bank = load_bank(args.bank, mmap=True)  # one mapped copy, however large
        split = load_pairs(pairs_path, bank).test()
        for spec in specs:  # a bad string fails here, before minutes of measuring
            factory, params = parse_spec(spec)
            if factory == EXACT and params not in EXACT_PARAMS:
                raise ValueError(f"--index {spec!r}: the exact index takes no parameters but "
                                 f"{' or '.join(repr(p) for p in EXACT_PARAMS if p)}")
            faiss.index_factory(bank.dim, factory, faiss.METRIC_INNER_PRODUCT)
    except (BankError, PairsError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except RuntimeError as e:
        print(f"error: --index {spec!r}: not an index_factory string "
              f"({str(e).strip().splitlines()[-1][:160]})", file=sys.stderr)
        return 2
    if len(split) == 0:
        print(f"error: {pairs_path}: no test pairs", file=sys.stderr)
        return 2

    t0 = time.perf_counter()
    xq = heuristic_queries(bank.vectors, split)
    _, exact_I = search_batched(build_index(bank.vectors, "flat"), xq, K, split.ctx_start,
                                split.ctx_end)
    rows = []
    for spec in specs:
        r = measure(spec, bank, split, xq, exact_I, args.latency_queries, args.seed)
        rows.append(r)
        print(f"  {spec}: containment@500 {100 * r['containment@500']:.1f}%, 1-thread median "
              f"{r['latency_1_thread']['median_ms']:.2f} ms, built in {r['build_s']:.1f}s "
              f"({time.perf_counter() - t0:.0f}s so far)", file=sys.stderr, flush=True)
    print(f"test split: {len(split):,} exp-weighted heuristic queries from "
          f"{len(np.unique(split.articles(bank))):,} articles, bank {args.bank} "
          f"({bank.n:,} x {bank.dim}); context rows excluded; latency over "
          f"{min(args.latency_queries, len(split))} single queries; containment@500 = share of "
          f"exact search's top 500 returned")
    print(table(rows))
    report = {"benchmark": "index", "created": created(),
              "bank": args.bank, "bank_rows": bank.n, "dim": bank.dim,
              "bank_fingerprint": bank.fingerprint(), "pairs": pairs_path, "split": "test",
              "queries": len(split), "query": "exp_weighted heuristic (alpha 0.1)", "k": K,
              "omp_default_threads": faiss.omp_get_max_threads(),
              "seconds": time.perf_counter() - t0, "indexes": rows}
    save_report(args.out, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())

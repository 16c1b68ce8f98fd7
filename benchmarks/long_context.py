"""Recall against context length on a long-document bank: is 100 chunks of context better than 8?

    python -m benchmarks.long_context --bank artifacts/sotu_bank.npz \
        --pairs artifacts/twotower/sotu_bank/pairs_v4.npz \
        --ckpt v4=runs/sotu_bank/twotower_v4/checkpoints/best.pt

The pairs of one split (test by default) whose context is full (`--full-context` chunks, the
checklist's 100) are scored with the query reading only the last L of those chunks, for each L in
`--context-lens`. The rows excluded from the results are always the whole full context, so the
only thing that changes with L is what the query reads. Methods: each checkpoint, the
exp-weighted heuristic, the last vector (the same at every L) and the oracle (the target itself).
Every number comes from `cascade.evaluation.evaluate` (exact search, article-bootstrap CIs).

Beside each table: a method's gain from reading L = max instead of L = min chunks, and whether a
checkpoint's gain exceeds the heuristic's (a difference of paired differences, its CI resampling
articles).
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from benchmarks.common import created, named_checkpoints, save_report
from cascade.bank import Bank, BankError, load_bank
from cascade.checkpoint import CheckpointError, check_split_of, load_checkpoint
from cascade.evaluation import evaluate
from cascade.index import build_index
from cascade.methods import method_queries
from cascade.metrics import difference_ci, hits_at, reciprocal_ranks
from cascade.pairs import Pairs, PairsError, load_pairs

KS = (10, 50, 500)


def reading(pairs: Pairs, length: int) -> Pairs:
    """The same pairs with each context cut to its last `length` chunks."""
    start = np.maximum(pairs.ctx_start, pairs.ctx_end - length)
    return Pairs(start, pairs.ctx_end, pairs.target, pairs.split, pairs.bank_fingerprint,
                 pairs.meta, pairs.path)


def per_query(ranks: np.ndarray) -> dict[str, np.ndarray]:
    """The per-query values behind each reported metric."""
    out = {f"recall@{k}": 100 * hits_at(ranks, k) for k in KS}
    out["mrr"] = reciprocal_ranks(ranks)
    return out


def run(bank: Bank, pairs: Pairs, ckpts: dict[str, str], lengths: list[int]) -> dict:
    """{"tables": {L: {method: metrics}}, "gain_from_context": ..., ...} for `pairs` with full
    contexts: queries read the last L chunks, results always exclude the whole context."""
    clusters = pairs.articles(bank)
    methods = {name: ("checkpoint", path) for name, path in ckpts.items()}
    methods.update({"heuristic": ("exp_weighted", None), "last-vector": ("last_vector", None),
                    "oracle": ("oracle", None)})
    tables: dict[int, dict] = {}
    values: dict[tuple[str, int], dict[str, np.ndarray]] = {}
    indexes: dict[int, object] = {}
    for length in lengths:
        view = reading(pairs, length)
        table = {}
        for name, (kind, source) in methods.items():
            # The same query forming as the trainer's and benchmarks.recall's comparisons.
            q, docs = method_queries(kind, source, bank, view)
            if id(docs) not in indexes:
                indexes[id(docs)] = build_index(docs, "flat")
            scored = bank if docs is bank.vectors else Bank(
                docs, bank.article_indices, bank.chunk_indices, path=bank.path)
            table[name], ranks = evaluate(q, pairs, scored, indexes[id(docs)], KS)
            values[name, length] = per_query(ranks)
        tables[length] = table
        print(f"context {length}: scored", flush=True)

    short, long_ = min(lengths), max(lengths)
    learned = [m for m in methods if m != "oracle"]
    gains = {m: {key: difference_ci(values[m, long_][key] - values[m, short][key], clusters)
                 for key in values[m, long_]} for m in learned}
    versus = {}
    for name in ckpts:
        versus[name] = {key: difference_ci((values[name, long_][key] - values[name, short][key])
                                     - (values["heuristic", long_][key]
                                        - values["heuristic", short][key]), clusters)
                        for key in values[name, long_]}
    at_full = {name: {key: difference_ci(values[name, long_][key] - values["heuristic", long_][key],
                                   clusters) for key in values[name, long_]} for name in ckpts}
    return {"tables": tables, "gain_from_context": gains, "gain_vs_heuristic_gain": versus,
            "vs_heuristic_at_full_context": at_full, "short": short, "long": long_}


def markdown(result: dict) -> str:
    lines = []
    for length, table in result["tables"].items():
        lines += [f"context = last {length} chunks", "",
                  "| method | " + " | ".join(f"R@{k} (95% CI)" for k in KS) + " | MRR (95% CI) |",
                  "|---" * (len(KS) + 2) + "|"]
        for name, m in table.items():
            cells = " | ".join(f"{m[f'recall@{k}']:.1f} ({m[f'recall@{k}_ci95'][0]:.1f}-"
                               f"{m[f'recall@{k}_ci95'][1]:.1f})" for k in KS)
            lines.append(f"| {name} | {cells} | {m['mrr']:.3f} ({m['mrr_ci95'][0]:.3f}-"
                         f"{m['mrr_ci95'][1]:.3f}) |")
        lines.append("")

    def fmt(d: dict, key: str) -> str:
        unit = "" if key == "mrr" else " pts"
        return (f"{d['diff']:+.3f}{unit} ({d['ci95'][0]:+.3f} to {d['ci95'][1]:+.3f})"
                if key == "mrr" else
                f"{d['diff']:+.1f}{unit} ({d['ci95'][0]:+.1f} to {d['ci95'][1]:+.1f})")

    keys = [f"recall@{k}" for k in KS] + ["mrr"]
    lines += [f"gain from reading {result['long']} instead of {result['short']} chunks "
              f"(paired, 95% CI over articles)", "",
              "| method | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
    for name, g in result["gain_from_context"].items():
        lines.append(f"| {name} | " + " | ".join(fmt(g[k], k) for k in keys) + " |")
    for name, g in result["gain_vs_heuristic_gain"].items():
        lines.append(f"| {name} gain - heuristic gain | "
                     + " | ".join(fmt(g[k], k) for k in keys) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.long_context",
                                description=__doc__.split("\n")[0])
    p.add_argument("--bank", default="artifacts/sotu_bank.npz", help="bank .npz")
    p.add_argument("--pairs", default="artifacts/twotower/sotu_bank/pairs_v4.npz",
                   help="pairs .npz whose split is scored")
    p.add_argument("--ckpt", action="append", default=[], metavar="NAME=PATH",
                   help="a trained checkpoint to score beside the heuristics (repeatable)")
    p.add_argument("--split", choices=("test", "val"), default="test",
                   help="which split (test: the reporting split; val: the tuning one)")
    p.add_argument("--full-context", type=int, default=100,
                   help="score only pairs with at least this many context chunks (default 100)")
    p.add_argument("--context-lens", type=int, nargs="+", default=[8, 32, 100],
                   help="context lengths the queries read (default 8 32 100)")
    p.add_argument("--out", default="benchmarks/results/long_context.json", help="results JSON")
    args = p.parse_args(argv)
    if any(n < 1 or n > args.full_context for n in args.context_lens):
        print(f"error: --context-lens must lie in 1..--full-context ({args.full_context})",
              file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    try:
        ckpts = named_checkpoints(args.ckpt)
        bank = load_bank(args.bank)
        pairs = load_pairs(args.pairs, bank)
        split = pairs.side(args.split)
        for name, path in ckpts.items():  # never score a checkpoint on its own train articles
            check_split_of(load_checkpoint(path, bank.fingerprint()), path, pairs, bank,
                           f"--ckpt {name}")
        full = split.subset(np.flatnonzero(split.lengths >= args.full_context))
        if not len(full):
            print(f"error: {args.pairs}: no {args.split} pair has a context of "
                  f"{args.full_context} chunks", file=sys.stderr)
            return 2
        result = run(bank, full, ckpts, sorted(set(args.context_lens)))
    except (BankError, PairsError, CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    articles = len(np.unique(full.articles(bank)))
    print(f"{args.split} split: {len(full):,} of {len(split):,} pairs have a full "
          f"{args.full_context}-chunk context, from {articles} articles; bank {args.bank} "
          f"({bank.n:,} x {bank.dim})\n")
    print(markdown(result))
    report = {"benchmark": "long_context",
              "created": created(),
              "bank": args.bank, "bank_fingerprint": bank.fingerprint(), "pairs": args.pairs,
              "split": args.split, "full_context": args.full_context, "n": len(full),
              "articles": articles, "checkpoints": ckpts,
              "seconds": round(time.perf_counter() - t0, 1),
              **{k: v for k, v in result.items() if k != "tables"},
              "tables": {str(k): v for k, v in result["tables"].items()}}
    save_report(args.out, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())

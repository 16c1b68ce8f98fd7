"""The cascade offline: quality after each stage and latency per stage, on one split.

    python -m benchmarks.cascade_eval --deploy runs/wikipedia_vital_bank/deploy.json \
        --pairs artifacts/twotower/wikipedia_vital_bank/pairs_v4.npz --split test

Quality goes through the serving path (`Cascade.search` on the contexts' bank rows): Hit@{1,5,10}
and MRR@10 after stage 1 alone, after the LVM and after TMD, each with an article-clustered 95%
bootstrap CI, and the paired difference against stage 1 alone; stage 1's Recall@K (the ceiling
of what follows). Latency: median and p99 wall time per stage for one context sent as raw
vectors (the serving case; duplicates of its chunks are left out), and per context in batches.
Timings depend on the machine's load: the JSON records the thread settings and the host's CPU
count; re-measure on a quiet machine before quoting them as targets.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from benchmarks.reference import describe, reference_ops, relative
from cascade.bank import BankError, write_json
from cascade.deploy import DeployError
from cascade.lvm import LvmError
from cascade.metrics import (
    cluster_bootstrap_ci,
    hits_at,
    paired_difference,
    reciprocal_ranks,
    target_ranks,
)
from cascade.pairs import PairsError, load_pairs
from cascade.pipeline import Cascade, ContextRows, set_threads
from cascade.split import TEST

HIT_KS = (1, 5, 10)


def stage_ranks(cascade: Cascade, pairs, batch: int = 256) -> dict[str, np.ndarray]:
    """Rank of each pair's target in every stage's output (-1: not there)."""
    out: dict[str, list] = {}
    for lo in range(0, len(pairs), batch):
        sub = pairs.subset(np.arange(lo, min(lo + batch, len(pairs))))
        rows = [np.arange(s, e) for s, e in zip(sub.ctx_start, sub.ctx_end, strict=True)]
        res = cascade.search(ContextRows(rows))
        for name, st in res.stages.items():
            out.setdefault(name, []).append(target_ranks(st.ids, sub.target))
    return {name: np.concatenate(parts) for name, parts in out.items()}


def with_ci(values: np.ndarray, clusters: np.ndarray, scale: float = 100.0) -> dict:
    lo, hi = cluster_bootstrap_ci(values, clusters)
    return {"value": scale * float(values.mean()), "ci95": [scale * lo, scale * hi]}


def quality(ranks: dict[str, np.ndarray], clusters: np.ndarray, k1: int) -> dict:
    base = ranks["stage1"]
    report = {}
    for name, r in ranks.items():
        m = {f"hit@{k}": with_ci(hits_at(r, k), clusters) for k in HIT_KS}
        m["mrr@10"] = with_ci(reciprocal_ranks(r, 10), clusters, scale=1.0)
        if name == "stage1":
            m[f"recall@{k1}"] = with_ci(hits_at(r, k1), clusters)
        else:
            m["vs_stage1"] = {f"hit@{k}": paired_difference(r, base, k, clusters=clusters)
                              for k in HIT_KS}
            d = reciprocal_ranks(r, 10) - reciprocal_ranks(base, 10)
            lo, hi = cluster_bootstrap_ci(d, clusters)
            m["vs_stage1"]["mrr@10"] = {"diff": float(d.mean()), "ci95": [lo, hi],
                                        "significant": bool(lo > 0 or hi < 0)}
        report[name] = m
    return report


def latency(cascade: Cascade, pairs, n: int, batch: int, warmup: int, seed: int) -> dict:
    """Per-stage and total seconds: one context at a time, and per context in batches."""
    bank = cascade.bank
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(pairs), size=min(n, len(pairs)), replace=False)
    contexts = [bank.vectors[s:e] for s, e in zip(pairs.ctx_start[pick], pairs.ctx_end[pick],
                                                  strict=True)]
    for c in contexts[:warmup]:
        cascade.search(c)
    single: dict[str, list] = {}
    for c in contexts:
        t, cpu = time.perf_counter(), time.process_time()
        res = cascade.search(c)
        single.setdefault("total", []).append(time.perf_counter() - t)
        # CPU time of this process: on a shared machine, wall time also counts the waits for
        # a core, CPU time does not (cache and memory-bandwidth contention still count).
        single.setdefault("total_cpu", []).append(time.process_time() - cpu)
        for name, st in res.stages.items():
            single.setdefault(name, []).append(st.seconds)
    batched: dict[str, list] = {}
    for lo in range(0, len(contexts) - batch + 1, batch):
        t = time.perf_counter()
        res = cascade.search(contexts[lo:lo + batch])
        batched.setdefault("total", []).append((time.perf_counter() - t) / batch)
        for name, st in res.stages.items():
            batched.setdefault(name, []).append(st.seconds / batch)

    def summary(d: dict[str, list]) -> dict:
        return {name: {"median_ms": 1e3 * float(np.median(v)),
                       "p99_ms": 1e3 * float(np.percentile(v, 99)), "calls": len(v)}
                for name, v in d.items()}

    return {"single": summary(single), "batch": summary(batched), "batch_size": batch}


def table(q: dict, lat: dict, k1: int) -> str:
    lines = [f"{'after':<8}" + "".join(f"{'Hit@' + str(k):>22}" for k in HIT_KS)
             + f"{'MRR@10':>24}{'Δ Hit@10 vs stage 1':>32}"]
    for name, m in q.items():
        cells = "".join(f"{m[f'hit@{k}']['value']:7.2f} [{m[f'hit@{k}']['ci95'][0]:5.1f},"
                        f"{m[f'hit@{k}']['ci95'][1]:5.1f}]" for k in HIT_KS)
        mr = m["mrr@10"]
        cells += f"{mr['value']:8.4f} [{mr['ci95'][0]:.3f},{mr['ci95'][1]:.3f}]"
        if "vs_stage1" in m:
            d = m["vs_stage1"]["hit@10"]
            cells += f"   {d['diff']:+6.2f} [{d['ci95'][0]:+.2f},{d['ci95'][1]:+.2f}]" + \
                     (" *" if d["significant"] else "")
        lines.append(f"{name:<8}{cells}")
    s1 = q["stage1"][f"recall@{k1}"]
    lines.append(f"stage 1 Recall@{k1}: {s1['value']:.2f}% [{s1['ci95'][0]:.1f}, "
                 f"{s1['ci95'][1]:.1f}] (the ceiling of stages 2 and 3)")
    lines.append("")
    lines.append(f"{'latency (ms)':<14}{'one context: median':>22}{'p99':>8}"
                 f"{'batch of ' + str(lat['batch_size']) + ', per context: median':>40}{'p99':>8}")
    for name in lat["single"]:
        s, b = lat["single"][name], lat["batch"].get(name, {"median_ms": float("nan"),
                                                              "p99_ms": float("nan")})
        lines.append(f"{name:<14}{s['median_ms']:22.2f}{s['p99_ms']:8.2f}"
                     f"{b['median_ms']:40.3f}{b['p99_ms']:8.3f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.cascade_eval",
                                description=__doc__.split("\n")[0])
    p.add_argument("--deploy", default="runs/wikipedia_vital_bank/deploy.json")
    p.add_argument("--pairs", default="artifacts/twotower/wikipedia_vital_bank/pairs_v4.npz")
    p.add_argument("--split", choices=("test", "val"), default="test")
    p.add_argument("--latency-contexts", type=int, default=640, help="contexts timed")
    p.add_argument("--batch", type=int, default=64, help="batch size of the batched timing")
    p.add_argument("--threads", type=int, default=1, help="torch and FAISS threads")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="benchmarks/results/cascade_eval.json")
    args = p.parse_args(argv)
    try:
        cascade = Cascade.from_deploy(args.deploy)
        pairs = load_pairs(args.pairs, cascade.bank)
        split = pairs.test() if args.split == "test" else pairs.val()
        if not len(split):
            raise PairsError(f"{args.pairs}: no {args.split} pairs")
        if args.split == "test" and cascade.lvm is not None:
            cascade.lvm.check_reported_on(pairs, TEST)
    except (BankError, PairsError, DeployError, LvmError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    set_threads(args.threads)
    clusters = cascade.bank.article_indices[split.target]
    k1 = cascade.config.k_stage1
    q = quality(stage_ranks(cascade, split), clusters, k1)
    lat = latency(cascade, split, args.latency_contexts, args.batch, warmup=20, seed=args.seed)
    ref = reference_ops(cascade)
    print(f"{args.split} split: {len(split):,} contexts, stage 1 = {cascade.stage1.kind}, "
          f"{cascade.config.k_stage1}/{cascade.config.k_lvm}/{cascade.config.k_tmd}, "
          f"{args.threads} thread(s), {os.cpu_count()} CPUs (article-clustered 95% CIs)")
    print(table(q, lat, k1))
    print(describe(ref))
    print(relative("one context, median", lat["single"]["total"]["median_ms"], 5.0, ref))
    report = {"benchmark": "cascade_eval", "created": datetime.now(UTC).isoformat(
        timespec="seconds"), "deploy": args.deploy, "pairs": args.pairs, "split": args.split,
        "n": len(split), "stage1_kind": cascade.stage1.kind,
        "config": cascade.config.to_dict(), "threads": args.threads, "cpus": os.cpu_count(),
        "quality": q, "latency": lat, "reference": ref}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    write_json(args.out, report)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The cascade offline: quality after each stage and latency per stage, on one split.

    python -m benchmarks.cascade_eval --deploy runs/wikipedia_vital_bank/deploy.json \
        --pairs artifacts/twotower/wikipedia_vital_bank/pairs_v4.npz --split test

Quality goes through the serving path (`Cascade.search`), once for every form a client can send
a context in:
- texts: each context's chunk texts through the bank's encoder, as the front embeds them (the
  number a text client gets, so it leads; the report says how close the re-embedded vectors come
  to the bank's);
- vectors: the chunks' bank vectors sent as raw vectors (repeats of them are left out, not rows);
- rows: the context as bank row ids (stage 3's lanes from the bank's own codes);
- ablated: rows, with every other row of the target's article struck from stage 1's list (the
  target stays): how much of the rerankers' gain needs the bank to hold the article being read.
Per form: Hit@{1,5,10} and MRR@10 after stage 1 alone, after the LVM and after TMD, each with an
article-clustered 95% bootstrap CI, the paired difference against stage 1 and against the
previous stage; stage 1's Recall@K (the ceiling of what follows). For the vectors form it also
counts the served hits the near-duplicate rule (cascade.dup_cos) removes.

Latency: median and p99 wall time per stage for one context sent as raw
vectors (the serving case; duplicates of its chunks are left out), and per context in batches.
Timings depend on the machine's load: the JSON records the thread settings and the host's CPU
count; re-measure on a quiet machine before quoting them as targets.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

from benchmarks.common import created, save_report
from benchmarks.reference import describe, reference_ops, relative
from cascade.bank import BankError
from cascade.deploy import DeployError
from cascade.lvm import LvmError
from cascade.metrics import (
    difference_ci,
    hits_at,
    mean_ci,
    paired_difference,
    reciprocal_ranks,
    target_ranks,
)
from cascade.pairs import PairsError, load_pairs
from cascade.pipeline import Cascade, ContextRows, set_threads
from cascade.result import StageResult
from cascade.split import TEST
from cascade.stage1 import DUP_COS

HIT_KS = (1, 5, 10)


FORMS = ("texts", "vectors", "rows", "ablated")  # the first one a bank supports leads


def strike_article(bank, targets: np.ndarray):
    """An `after_stage1` for `Cascade.search`: each context's list without the other rows of its
    target's article (the target stays); the rest moves up, -1 pads the end."""
    def strike(res: StageResult) -> StageResult:
        ids = res.ids
        art = bank.article_indices[np.maximum(ids, 0)]
        keep = (ids >= 0) & ((art != bank.article_indices[targets][:, None])
                             | (ids == targets[:, None]))
        order = np.argsort(~keep, axis=1, kind="stable")
        kept = np.take_along_axis(keep, order, 1)
        return StageResult(np.where(kept, np.take_along_axis(ids, order, 1), -1),
                           np.where(kept, np.take_along_axis(res.scores, order, 1), -np.inf)
                           .astype(np.float32), res.seconds)
    return strike


def stage_ranks(cascade: Cascade, pairs, form: str = "rows", vectors: np.ndarray | None = None,
                batch: int = 256) -> dict[str, np.ndarray]:
    """Rank of each pair's target in every stage's output (-1: not there), the contexts sent in
    `form`; "vectors" and "texts" send rows of `vectors` (the bank's vectors, or the texts'
    vectors re-embedded, aligned with the bank's rows)."""
    out: dict[str, list] = {}
    for lo in range(0, len(pairs), batch):
        sub = pairs.subset(np.arange(lo, min(lo + batch, len(pairs))))
        rows = [np.arange(s, e) for s, e in zip(sub.ctx_start, sub.ctx_end, strict=True)]
        if form in ("rows", "ablated"):
            strike = strike_article(cascade.bank, sub.target) if form == "ablated" else None
            res = cascade.search(ContextRows(rows), after_stage1=strike)
        else:
            res = cascade.search([vectors[r] for r in rows])
        for name, st in res.stages.items():
            out.setdefault(name, []).append(target_ranks(st.ids, sub.target))
    return {name: np.concatenate(parts) for name, parts in out.items()}


def text_vectors(cascade: Cascade, pairs) -> tuple[np.ndarray, dict]:
    """The bank's vectors with every context row of `pairs` replaced by its text embedded
    again (what a text client's chunks become), and how close they came back."""
    bank = cascade.bank
    rows = np.unique(np.concatenate([np.arange(s, e) for s, e in
                                     zip(pairs.ctx_start, pairs.ctx_end, strict=True)]))
    embedded = cascade.embed([bank.text(int(r)) for r in rows])
    out = np.array(bank.vectors, copy=True)
    out[rows] = embedded
    cos = np.einsum("nd,nd->n", embedded, bank.vectors[rows])
    return out, {"rows": int(len(rows)), "min_cos": float(cos.min()),
                 "max_abs_diff": float(np.abs(embedded - bank.vectors[rows]).max())}


def removed_repeats(cascade: Cascade, pairs, batch: int = 256) -> dict:
    """Served hits of vector contexts that the near-duplicate rule removes: the final top-k
    with only exact duplicates left out, its rows within cascade.dup_cos of a context chunk."""
    dup = cascade.stage1.dup_cos
    removed, contexts = 0, 0
    cascade.stage1.dup_cos = DUP_COS
    try:
        for lo in range(0, len(pairs), batch):
            sub = pairs.subset(np.arange(lo, min(lo + batch, len(pairs))))
            ctxs = [cascade.bank.vectors[s:e] for s, e in zip(sub.ctx_start, sub.ctx_end,
                                                              strict=True)]
            res = cascade.search(ctxs)
            for ids, c in zip(res.ids, ctxs, strict=True):
                cos = (cascade.bank.vectors[ids[ids >= 0]] @ c.T).max(axis=1)
                n = int(((cos >= dup) & (cos < DUP_COS)).sum())
                removed += n
                contexts += n > 0
    finally:
        cascade.stage1.dup_cos = dup
    return {"dup_cos": dup, "hits_removed": removed, "contexts_changed": contexts,
            "served_hits": int(len(pairs) * cascade.last_k)}


def with_ci(values: np.ndarray, clusters: np.ndarray, scale: float = 100.0) -> dict:
    value, ci = mean_ci(values, clusters, scale)
    return {"value": value, "ci95": ci}


def paired(r: np.ndarray, base: np.ndarray, clusters: np.ndarray) -> dict:
    """Hit@k and MRR@10 of ranks `r` minus `base`, paired, article-clustered 95% CIs."""
    out = {f"hit@{k}": paired_difference(r, base, k, clusters=clusters) for k in HIT_KS}
    out["mrr@10"] = difference_ci(reciprocal_ranks(r, 10) - reciprocal_ranks(base, 10), clusters)
    return out


def quality(ranks: dict[str, np.ndarray], clusters: np.ndarray, k1: int) -> dict:
    base = ranks["stage1"]
    report, previous = {}, None
    for name, r in ranks.items():
        m = {f"hit@{k}": with_ci(hits_at(r, k), clusters) for k in HIT_KS}
        m["mrr@10"] = with_ci(reciprocal_ranks(r, 10), clusters, scale=1.0)
        if name == "stage1":
            m[f"recall@{k1}"] = with_ci(hits_at(r, k1), clusters)
        else:
            m["vs_stage1"] = paired(r, base, clusters)
            m["vs_previous"] = paired(r, ranks[previous], clusters)
        report[name] = m
        previous = name
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


def table(q: dict) -> str:
    lines = [f"{'after':<8}" + "".join(f"{'Hit@' + str(k):>22}" for k in HIT_KS)
             + f"{'MRR@10':>24}{'Δ Hit@10 vs stage 1':>30}{'vs previous':>26}"]
    for name, m in q.items():
        cells = "".join(f"{m[f'hit@{k}']['value']:7.2f} [{m[f'hit@{k}']['ci95'][0]:5.1f},"
                        f"{m[f'hit@{k}']['ci95'][1]:5.1f}]" for k in HIT_KS)
        mr = m["mrr@10"]
        cells += f"{mr['value']:8.4f} [{mr['ci95'][0]:.3f},{mr['ci95'][1]:.3f}]"
        for key in ("vs_stage1", "vs_previous"):
            if key in m:
                d = m[key]["hit@10"]
                cells += f"  {d['diff']:+6.2f} [{d['ci95'][0]:+.2f},{d['ci95'][1]:+.2f}]" + \
                         ("*" if d["significant"] else " ")
        lines.append(f"{name:<8}{cells}")
    return "\n".join(lines)


def latency_table(lat: dict) -> str:
    lines = [f"{'latency (ms)':<14}{'one context: median':>22}{'p99':>8}"
             f"{'batch of ' + str(lat['batch_size']) + ', per context: median':>40}{'p99':>8}"]
    for name in lat["single"]:
        s, b = lat["single"][name], lat["batch"].get(name, {"median_ms": float("nan"),
                                                              "p99_ms": float("nan")})
        lines.append(f"{name:<14}{s['median_ms']:22.2f}{s['p99_ms']:8.2f}"
                     f"{b['median_ms']:40.3f}{b['p99_ms']:8.3f}")
    return "\n".join(lines)


def print_results(args, cascade: Cascade, split, forms: list[str], q: dict, notes: dict,
                  lat: dict, ref: dict) -> None:
    k1 = cascade.config.k_stage1
    cfg = cascade.config
    print(f"{args.split} split: {len(split):,} contexts, stage 1 = {cascade.stage1.kind}, "
          f"{cfg.k_stage1}/{cfg.k_lvm}/{cfg.k_tmd}, stage 3 w {cfg.tmd_w} (lanes from codes: "
          f"rows) / {cfg.tmd_w_tagged} (tagged: texts, vectors), {args.threads} thread(s), "
          f"{os.cpu_count()} CPUs (article-clustered 95% CIs; * CI excludes 0)")
    for form in forms:
        print(f"\ncontexts sent as {form}:")
        print(table(q[form]))
        s1 = q[form]["stage1"][f"recall@{k1}"]
        print(f"stage 1 Recall@{k1}: {s1['value']:.2f}% [{s1['ci95'][0]:.1f}, "
              f"{s1['ci95'][1]:.1f}] (the ceiling of stages 2 and 3)")
    if "texts_roundtrip" in notes:
        t = notes["texts_roundtrip"]
        print(f"\ntexts re-embedded: {t['rows']:,} context rows, min cos to the bank's vector "
              f"{t['min_cos']:.6f}, max |difference| {t['max_abs_diff']:.2e}"
              + (" (the bank's vectors within float tolerance)" if t["min_cos"] > 0.9999
                 else " (NOT the bank's vectors: another encoder or text?)"))
    if "near_duplicates" in notes:
        n = notes["near_duplicates"]
        print(f"near-duplicates of vector contexts (cos >= {n['dup_cos']}): {n['hits_removed']:,}"
              f" of {n['served_hits']:,} served hits removed, in {n['contexts_changed']:,} "
              f"contexts")
    print()
    print(latency_table(lat))
    print(describe(ref))
    print(relative("one context, median", lat["single"]["total"]["median_ms"], 5.0, ref))


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
    p.add_argument("--forms", default=",".join(FORMS),
                   help=f"context forms to measure, comma-separated ({', '.join(FORMS)})")
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
    forms = [f for f in args.forms.split(",") if f]
    unknown = sorted(set(forms) - set(FORMS))
    if unknown or not forms:
        print(f"error: --forms {args.forms!r}: expected a comma list of {', '.join(FORMS)}",
              file=sys.stderr)
        return 2
    notes = {}
    if "texts" in forms and cascade.bank.concept_texts is None:
        forms.remove("texts")
        notes["texts"] = "the bank holds no texts: the texts form is left out"
    vectors = {"vectors": cascade.bank.vectors}
    if "texts" in forms:
        vectors["texts"], notes["texts_roundtrip"] = text_vectors(cascade, split)
    q = {form: quality(stage_ranks(cascade, split, form, vectors.get(form)), clusters, k1)
         for form in forms}
    if "vectors" in forms:
        notes["near_duplicates"] = removed_repeats(cascade, split)
    lat = latency(cascade, split, args.latency_contexts, args.batch, warmup=20, seed=args.seed)
    ref = reference_ops(cascade)
    print_results(args, cascade, split, forms, q, notes, lat, ref)
    cfg = cascade.config
    lead = forms[0]
    report = {"benchmark": "cascade_eval", "created": created(),
        "deploy": args.deploy, "pairs": args.pairs, "split": args.split,
        "n": len(split), "stage1_kind": cascade.stage1.kind, "config": cfg.to_dict(),
        "threads": args.threads, "cpus": os.cpu_count(), "forms": forms,
        "headline": {"form": lead, "stage": list(q[lead])[-1],
                     "hit@10": q[lead][list(q[lead])[-1]]["hit@10"]},
        "quality": q, "notes": notes, "latency": lat, "reference": ref}
    save_report(args.out, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())

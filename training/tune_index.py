"""Choose stage 1's ANN index for a large bank, on val, and record its measured containment.

    python -m training.tune_index --deploy runs/<bank>/deploy.json --pairs runs/<bank>/pairs.npz

Stage 1 serves exact search while the bank is at most --exact-max-size rows x dims (the
default is cascade.index.EXACT_MAX_SIZE; serving.yaml's stage1.exact_max_size); above it (or
with --force) this step builds each candidate index (`--index`, FAISS index_factory strings;
default an IVF over 8-bit codes with ~4 sqrt(N) lists), cached beside the bank by fingerprint,
and sweeps its search parameters (nprobe or efSearch) and the shortlist that is rescored
exactly from the mapped bank (cascade.index.RescoredIndex). For every setting it measures, on
the VAL split's stage-1 queries (the deploy's own query: v4 or the heuristic, context rows left
out), containment@K = the share of exact search's top K that the index returns in its top K,
and the median one-query latency (1 thread). It picks the fastest setting reaching --target
(default 0.99) on val, then measures that setting's containment on TEST, and writes into
deploy.json: cascade.index_factory / index_params, and `stage1_index` (factory, params, k,
containment on val and test, query counts, build seconds, index bytes, bank fingerprint),
which serving checks at start-up against stage1.min_containment. The sweep is written as
tune_index.json beside deploy.json. Then, over every test context (--cascade-contexts), it
runs the whole cascade (Cascade.search: the LVM and TMD deploy.json names) once over the ANN
stage 1 and once over exact search, contexts sent as vectors and as rows, and records the share
whose final top 10 is the same (`cascade_top10_equal_test`). Exit 1 (deploy.json untouched)
when no setting reaches the target: the closest is printed with its gap.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import faiss
import numpy as np

from cascade.bank import BankError, atomic_write, load_bank, write_json
from cascade.context import ContextRows
from cascade.deploy import CascadeConfig, DeployError, read_deploy, resolve
from cascade.index import EXACT_MAX_SIZE, search_batched
from cascade.pairs import PairsError, load_pairs
from cascade.pipeline import Cascade
from cascade.stage1 import (
    EXACT,
    Stage1,
    cached_build_seconds,
    index_cache_path,
    open_index,
)

log = logging.getLogger("tune_index")

SHORTLISTS = (1000, 2000, 4000)
NPROBES = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
EF_SEARCH = (1000, 2000, 4000)
LATENCY_QUERIES = 100


def default_factory(n: int) -> str:
    """IVF over 8-bit codes with a power of two near 4 sqrt(N) lists (the FAISS guideline)."""
    nlist = 2 ** int(round(np.log2(max(4 * np.sqrt(n), 16))))
    return f"IVF{nlist},SQ8"


def containment(ann: np.ndarray, exact: np.ndarray) -> float:
    """Mean over queries of |ann top K & exact top K| / |exact top K| (-1 padding ignored)."""
    shares = []
    for a, e in zip(ann, exact, strict=True):
        e = e[e >= 0]
        if len(e):
            shares.append(len(np.intersect1d(a[a >= 0], e, assume_unique=True)) / len(e))
    return float(np.mean(shares)) if shares else float("nan")


def settings(factory: str, index, shortlists: tuple[int, ...] = SHORTLISTS) -> list[str]:
    """The search-parameter strings to try, cheapest first within each shortlist; a longer
    shortlist tries only searches cheaper than one that already reached the target."""
    ivf = faiss.try_extract_index_ivf(index.ann)
    if ivf is not None:
        probes = [p for p in NPROBES if p <= ivf.nlist]
        return [f"nprobe={p},shortlist={s}" for s in shortlists for p in probes]
    if "HNSW" in factory:
        return [f"efSearch={e},shortlist={s}" for s in shortlists for e in EF_SEARCH if e >= s]
    return [f"shortlist={s}" for s in shortlists]


def one_query_ms(index, q: np.ndarray, ctx_start, ctx_end, k: int) -> float:
    """Median ms of one query's search (k + its context, as serving fetches), 1 thread."""
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        times = []
        for i in range(min(LATENCY_QUERIES, len(q))):
            t0 = time.perf_counter()
            search_batched(index, q[i:i + 1], k, ctx_start[i:i + 1], ctx_end[i:i + 1])
            times.append((time.perf_counter() - t0) * 1000)
    finally:
        faiss.omp_set_num_threads(before)
    return float(np.median(times))


def cascade_top10_equal(ann: Cascade, exact: Stage1, pairs, batch: int = 256
                        ) -> dict[str, float]:
    """Per context form (vectors, rows): the share of `pairs`' contexts whose final answer
    (`Cascade.search`, every stage, ids in order) is the same with the ANN stage 1 as with
    `exact` under the same rerankers."""
    ref = Cascade(exact, ann.lvm, ann.config, ann.tmd, ann.centroids, ann.classifier)
    vectors = ann.bank.vectors
    out = {}
    for form in ("vectors", "rows"):
        same = []
        for lo in range(0, len(pairs), batch):
            sub = pairs.subset(np.arange(lo, min(lo + batch, len(pairs))))
            rows = [np.arange(s, e) for s, e in zip(sub.ctx_start, sub.ctx_end, strict=True)]
            ctx = ContextRows(rows) if form == "rows" else [vectors[r] for r in rows]
            same.append((ann.search(ctx).ids == ref.search(ctx).ids).all(axis=1))
        out[form] = float(np.concatenate(same).mean())
    return out


def sample(pairs, n: int, seed: int):
    if len(pairs) <= n:
        return pairs
    rng = np.random.default_rng(seed)
    return pairs.subset(np.sort(rng.choice(len(pairs), n, replace=False)))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.tune_index",
                                description=__doc__.split("\n")[0])
    p.add_argument("--deploy", required=True, help="deploy.json to tune (rewritten in place)")
    p.add_argument("--pairs", required=True, help="the bank's pairs .npz (val and test split)")
    p.add_argument("--index", action="append", default=None,
                   help="candidate index_factory string, repeatable (default: "
                        "IVF<~4 sqrt N>,SQ8)")
    p.add_argument("--target", type=float, default=0.99, help="containment@500 to reach on val")
    p.add_argument("--queries", type=int, default=2000, help="pairs sampled per split")
    p.add_argument("--exact-max-size", type=int, default=EXACT_MAX_SIZE,
                   help="rows x dims up to which stage 1 stays exact")
    p.add_argument("--force", action="store_true", help="tune an ANN index below the size too")
    p.add_argument("--shortlists", default=",".join(map(str, SHORTLISTS)),
                   help="rows rescored exactly per query, to sweep (comma-separated)")
    p.add_argument("--cascade-contexts", type=int, default=-1,
                   help="test contexts whose final top 10 (the whole cascade) is compared with "
                        "the exact stage 1's, per context form (default all; 0 skips)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    args.shortlists = tuple(int(x) for x in args.shortlists.split(","))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    try:
        return tune(args)
    except (BankError, DeployError, PairsError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def exact_answers(exact: Stage1, pairs, args, k: int) -> dict:
    """Per split (val, test): the sampled pairs, their stage-1 queries and exact search's
    top k (the reference containment is measured against)."""
    splits = {}
    for name in ("val", "test"):
        side = sample(pairs.side(name), args.queries, args.seed)
        if not len(side):
            raise PairsError(f"{args.pairs}: no {name} pairs")
        t0 = time.perf_counter()
        faiss.omp_set_num_threads(os.cpu_count() or 1)
        q, _, ids = exact.search_pairs(side, k)
        log.info("exact top-%d of %d %s queries in %.1fs", k, len(side), name,
                 time.perf_counter() - t0)
        splits[name] = (side, q, ids)
    return splits


def sweep_factory(bank, factory: str, val_split: tuple, args, k: int, sweep: list[dict],
                  best: dict | None) -> dict | None:
    """Build (or open the cached) `factory` index and try its settings on val, appending a
    row to `sweep` for each; -> the fastest setting reaching --target so far (`best` or one
    of this factory's)."""
    val, q_val, exact_val = val_split
    cache = index_cache_path(bank, factory)
    t0 = time.perf_counter()
    index = open_index(bank.vectors, factory, "", cache, bank.fingerprint(), progress=True)
    build_s = cached_build_seconds(cache) or round(time.perf_counter() - t0, 2)
    nbytes = os.path.getsize(cache)
    log.info("%s: built in %.1fs (or cached), %.1f MB", factory, build_s, nbytes / 1e6)
    reached, cheapest = set(), None  # shortlists that reached; the least search that did
    for params in settings(factory, index, args.shortlists):
        shortlist = params.rsplit("shortlist=", 1)[1]
        search = int(params.split("=")[1].split(",")[0]) if "," in params else 0
        if shortlist in reached or (cheapest is not None and search >= cheapest):
            continue  # a cheaper setting already reached the target
        index = open_index(bank.vectors, factory, params, cache, bank.fingerprint())
        faiss.omp_set_num_threads(os.cpu_count() or 1)
        _, ann = search_batched(index, q_val, k, val.ctx_start, val.ctx_end)
        c = containment(ann, exact_val)
        ms = one_query_ms(index, q_val, val.ctx_start, val.ctx_end, k)
        row = {"index_factory": factory, "index_params": params, "containment_val": c,
               "one_query_ms": ms, "build_seconds": build_s, "index_bytes": nbytes}
        sweep.append(row)
        log.info("%s | %-26s containment@%d val %.4f   one query %.2f ms", factory, params,
                 k, c, ms)
        if c >= args.target:
            reached.add(shortlist)
            cheapest = search if cheapest is None else min(cheapest, search)
            if best is None or ms < best["one_query_ms"]:
                best = row
    return best


def measure_on_test(bank, best: dict, test_split: tuple, report: dict, args, k: int) -> dict:
    """The chosen setting measured on test: deploy.json's `stage1_index` record."""
    test, q_test, exact_test = test_split
    index = open_index(bank.vectors, best["index_factory"], best["index_params"],
                       index_cache_path(bank, best["index_factory"]), bank.fingerprint())
    _, ann = search_batched(index, q_test, k, test.ctx_start, test.ctx_end)
    best["containment_test"] = containment(ann, exact_test)
    # Stage 1's own answer above the rerankers: the share of test queries whose top 10 is
    # exact search's top 10, in order.
    best["top10_equal_test"] = float((ann[:, :10] == exact_test[:, :10]).all(axis=1).mean())
    return {"index_factory": best["index_factory"], "index_params": best["index_params"],
            "k": k, "containment": {"val": best["containment_val"],
                                    "test": best["containment_test"]},
            "top10_equal_test": best["top10_equal_test"],
            "tuned_on": "val", "queries": report["queries"], "pairs": str(args.pairs),
            "one_query_ms_val": best["one_query_ms"], "build_seconds": best["build_seconds"],
            "index_bytes": best["index_bytes"], "bank_fingerprint": bank.fingerprint(),
            "rows": bank.n, "dim": bank.dim,
            "tuned_at": datetime.now(UTC).isoformat(timespec="seconds")}


def write_index_record(deploy_path: str, record: dict) -> dict:
    """deploy.json with the chosen index in its cascade settings and `stage1_index`."""
    deploy = read_deploy(deploy_path)  # re-read: keep whatever else changed meanwhile
    deploy["cascade"] = {**(deploy.get("cascade") or {}), "index_factory": record["index_factory"],
                         "index_params": record["index_params"]}
    deploy["stage1_index"] = record
    atomic_write(deploy_path, lambda f: f.write(json.dumps(deploy, indent=2).encode()))
    return deploy


def record_cascade(args, bank, exact: Stage1, pairs, record: dict, deploy: dict) -> None:
    """The answer a user gets: the whole cascade's top 10 over the ANN stage 1 against the
    same cascade over exact search (needs the record just written to open)."""
    side = pairs.side("test")
    if args.cascade_contexts > 0:
        side = sample(side, args.cascade_contexts, args.seed)
    t0 = time.perf_counter()
    record["cascade_top10_equal_test"] = cascade_top10_equal(
        Cascade.from_deploy(args.deploy, bank=bank), exact, side)
    record["cascade_contexts_test"] = len(side)
    log.info("cascade top 10 over %d test contexts in %.1fs", len(side),
             time.perf_counter() - t0)
    deploy["stage1_index"] = record
    atomic_write(args.deploy, lambda f: f.write(json.dumps(deploy, indent=2).encode()))


def print_chosen(record: dict, best: dict, report: dict, deploy_path: str) -> None:
    k = record["k"]
    print(f"stage 1 = {record['index_factory']}|{record['index_params']}: containment@{k} val "
          f"{record['containment']['val']:.4f}, test {record['containment']['test']:.4f} "
          f"(stage 1's top 10 = exact's on {best['top10_equal_test']:.2%} of test queries) "
          f"({report['queries']['val']} / {report['queries']['test']} queries), one query "
          f"{best['one_query_ms']:.2f} ms, built in {best['build_seconds']:.0f}s, "
          f"{best['index_bytes'] / 1e6:.0f} MB; written to {deploy_path}")
    if "cascade_top10_equal_test" in record:
        eq = record["cascade_top10_equal_test"]
        print(f"the cascade's final top 10 = the exact stage 1 cascade's on "
              f"{', '.join(f'{v:.2%} ({form})' for form, v in eq.items())} of "
              f"{record['cascade_contexts_test']:,} test contexts")


def tune(args) -> int:
    deploy = read_deploy(args.deploy)
    bank_path = resolve(args.deploy, deploy["bank"])
    bank = load_bank(bank_path, mmap=True)
    size = bank.n * bank.dim
    if size <= args.exact_max_size and not args.force:
        print(f"{bank_path}: {bank.n:,} x {bank.dim} = {size:,} <= --exact-max-size "
              f"{args.exact_max_size:,}: stage 1 stays exact ('Flat'); --force tunes an ANN "
              f"index anyway")
        return 0
    pairs = load_pairs(args.pairs, bank)
    cascade = {**(deploy.get("cascade") or {}), "index_factory": EXACT, "index_params": ""}
    cfg = CascadeConfig.from_dict(cascade, f"{args.deploy}: cascade")
    exact = Stage1.from_deploy(args.deploy, bank=bank, config=cfg)
    K = cfg.k_stage1  # containment@K: the K stage 1 serves (500 by default)
    splits = exact_answers(exact, pairs, args, K)
    sweep, best = [], None
    for factory in args.index or [default_factory(bank.n)]:
        best = sweep_factory(bank, factory, splits["val"], args, K, sweep, best)
    out_dir = Path(args.deploy).parent
    report = {"bank": str(bank_path), "rows": bank.n, "dim": bank.dim, "k": K,
              "target": args.target, "queries": {n: len(s[0]) for n, s in splits.items()},
              "sweep": sweep, "chosen": best}
    if best is None:
        closest = max(sweep, key=lambda r: r["containment_val"])
        c = closest["containment_val"]
        write_json(out_dir / "tune_index.json", report)
        print(f"no setting reached containment@{K} {args.target} on val; closest "
              f"{closest['index_factory']}|{closest['index_params']} at {c:.4f} (gap "
              f"{args.target - c:.4f}); deploy.json unchanged (probe more lists, rescore a "
              f"longer shortlist, or try HNSW)")
        return 1
    record = measure_on_test(bank, best, splits["test"], report, args, K)
    deploy = write_index_record(args.deploy, record)
    if args.cascade_contexts:
        record_cascade(args, bank, exact, pairs, record, deploy)
    write_json(out_dir / "tune_index.json", report)
    print_chosen(record, best, report, args.deploy)
    return 0


if __name__ == "__main__":
    sys.exit(main())

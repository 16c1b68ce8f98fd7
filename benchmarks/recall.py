"""Stage-1 recall on a bank's reporting split: every query formation side by side.

    python -m benchmarks.recall --bank artifacts/wikipedia_vital_bank.npz      # make bench

Last vector, mean of the context, exp-weighted at alpha 0.05 / 0.1 / 0.3, the trained v3 and v4
checkpoints, and the oracle (the target's own vector: the ceiling of any stage 1), each scored by
the same `cascade.evaluation.evaluate` the trainer uses (exact search, the context's own rows
excluded): Recall@{1,5,10,50,100,500,1000}, MRR@10 and nDCG@10, each with a 95% CI that resamples
articles (pairs of one article are not independent). Each checkpoint is compared with the
exp-weighted heuristic (alpha 0.1) by a paired, article-clustered 95% CI.

With the bank's deploy.json, the whole cascade's final top-10 (stage 1 -> LVM -> TMD as
deploy.json names them, through `Cascade.search` as serving runs it) is scored on the same pairs,
twice: with the contexts sent as vectors (what a text or vector client gets: this row leads) and
as bank rows. Its list holds 10 rows, so its Recall@K past 10 is not defined and shown as "-".

The heuristic is also scored the original way (the context's own rows left in the results), the
protocol of the original report; that report's figures (500k bank, 154 queries) are quoted in a
table of their own, never as measured here. --pairs and --ckpt default to the bank's own
(`artifacts/twotower/<bank>/pairs_v4.npz`, `runs/<bank>/twotower_v4` and `twotower_v3_phase2`),
so `make bench BANK=...` needs nothing else.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from benchmarks.cascade_eval import stage_ranks
from benchmarks.common import created, named_checkpoints, save_report
from cascade.bank import BankError, load_bank
from cascade.checkpoint import CheckpointError, check_split_of, load_checkpoint
from cascade.deploy import DeployError, read_deploy
from cascade.device import resolve_device
from cascade.index import build_index
from cascade.lvm import LvmError
from cascade.methods import compare_methods
from cascade.metrics import (
    hits_at,
    mean_ci,
    ndcg_gains,
    paired_difference,
    reciprocal_ranks,
    target_ranks,
)
from cascade.pairs import PairsError, load_pairs
from cascade.pipeline import Cascade
from cascade.query import DEFAULT_ALPHA, heuristic_queries
from cascade.split import TEST

KS = (1, 5, 10, 50, 100, 500, 1000)
CUTOFF = 10  # MRR@10, nDCG@10
HEURISTIC = f"exp-weighted a={DEFAULT_ALPHA:g} (heuristic)"
FORMATIONS = {  # name: (kind, source) as cascade.methods.method_queries takes them
    "last vector": ("last_vector", None),
    "mean": ("mean", None),
    "exp-weighted a=0.05": ("exp_weighted", 0.05),
    HEURISTIC: ("exp_weighted", DEFAULT_ALPHA),
    "exp-weighted a=0.3": ("exp_weighted", 0.3),
}
ORIGINAL_WAY = {  # scored with the context's own rows left in the results
    "last vector, context rows left in": ("last_vector", None),
    f"exp-weighted a={DEFAULT_ALPHA:g}, context rows left in": ("exp_weighted", DEFAULT_ALPHA),
}
QUOTED = {  # the original report: its 500k-chunk bank, 154 queries, context rows left in
    "source": "the original system's report (quoted, not measured here)",
    "bank": "500k chunks", "queries": 154, "protocol": "context rows left in the results",
    "recall@500": {"last vector": 35.71, "exp-weighted": 38.96, "oracle": 97.40},
}


def bank_defaults(bank: str) -> tuple[str, dict[str, str], str]:
    """The pairs, checkpoints and deploy.json `make train-v4 BANK=bank` leaves, by the bank's
    file stem."""
    stem = Path(bank).stem
    ckpts = {"v4": f"runs/{stem}/twotower_v4/checkpoints/best.pt",
             "v3": f"runs/{stem}/twotower_v3_phase2/checkpoints/best.pt"}
    return f"artifacts/twotower/{stem}/pairs_v4.npz", ckpts, f"runs/{stem}/deploy.json"


def scores(ranks: np.ndarray, clusters: np.ndarray, seed: int = 0,
           list_len: int | None = None) -> dict:
    """Recall@k for KS, MRR@10 and nDCG@10 in percent / [0, 1], each with its clustered CI.
    A ranking only `list_len` rows long has no Recall@k for k > list_len (None)."""
    out: dict = {"n": int(len(ranks))}
    for k in KS:
        if list_len is not None and k > list_len:
            out[f"recall@{k}"], out[f"recall@{k}_ci95"] = None, None
            continue
        out[f"recall@{k}"], out[f"recall@{k}_ci95"] = mean_ci(hits_at(ranks, k), clusters, 100,
                                                              seed)
    for name, v in ((f"mrr@{CUTOFF}", reciprocal_ranks(ranks, CUTOFF)),
                    (f"ndcg@{CUTOFF}", ndcg_gains(ranks, CUTOFF))):
        out[name], out[f"{name}_ci95"] = mean_ci(v, clusters, seed=seed)
    if not len(ranks):  # no queries: no value (its interval is NaN)
        out.update({key: None for key in out if key != "n" and not key.endswith("_ci95")})
    return out


def markdown(table: dict) -> str:
    head = ("| method | " + " | ".join(f"R@{k}" for k in KS)
            + f" | MRR@{CUTOFF} | nDCG@{CUTOFF} |")
    rows = [head, "|---" * (len(KS) + 3) + "|"]

    def cell(m: dict, key: str, scale: str) -> str:
        if m[key] is None:
            return "-"
        lo, hi = m[f"{key}_ci95"]
        return f"{m[key]:{scale}} [{lo:{scale}}, {hi:{scale}}]"

    for name, m in table.items():
        cells = [cell(m, f"recall@{k}", ".1f") for k in KS]
        cells += [cell(m, f"mrr@{CUTOFF}", ".3f"), cell(m, f"ndcg@{CUTOFF}", ".3f")]
        rows.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def quoted_markdown() -> str:
    r = QUOTED["recall@500"]
    return "\n".join([
        f"Quoted from {QUOTED['source']}: {QUOTED['bank']} bank, {QUOTED['queries']} queries, "
        f"{QUOTED['protocol']}; no CI was given.", "",
        "| method (quoted) | R@500 |", "|---|---|"]
        + [f"| {name} | {value:.2f} |" for name, value in r.items()])


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.recall",
                                description=__doc__.split("\n")[0])
    p.add_argument("--bank", default="artifacts/wikipedia_vital_bank.npz",
                   help="bank .npz (make: BANK=)")
    p.add_argument("--pairs", default=None,
                   help="pairs .npz whose split is scored (default: "
                        "artifacts/twotower/<bank stem>/pairs_v4.npz)")
    p.add_argument("--ckpt", action="append", default=None, metavar="NAME=PATH",
                   help="a trained checkpoint to score (repeatable; default: the bank's v4 and "
                        "v3 runs under runs/<bank stem>/, those that exist); one trained on "
                        "articles of the scored split is refused")
    p.add_argument("--deploy", default=None,
                   help="deploy.json whose cascade (stage 1 -> LVM -> TMD) adds its top-10 row "
                        "(default: runs/<bank stem>/deploy.json, when it names an LVM; 'none' "
                        "leaves the row out)")
    p.add_argument("--split", choices=("test", "val", "train"), default="test",
                   help="which split (report on test; select and tune on val)")
    p.add_argument("--seed", type=int, default=0, help="seed of the bootstrap resampling")
    p.add_argument("--out", default="benchmarks/results/recall.json", help="results JSON")
    p.add_argument("--device", default="auto",
                   help="auto | cpu | cuda | cuda:N | mps: where checkpoints' towers encode "
                        "(auto: cuda, else mps, else cpu); search is exact, on the CPU")
    return p.parse_args(argv)


def choose_deploy(args) -> str:
    """The deploy.json whose cascade adds its row, or "none": only on test (the LVM's head is
    fitted on val and its predictor on train), and by default only when it names an LVM.
    Raises DeployError for a deploy.json that does not read."""
    deploy = args.deploy or bank_defaults(args.bank)[2]
    names_lvm = Path(deploy).exists() and bool(read_deploy(deploy).get("lvm"))
    if deploy != "none" and args.split != "test":
        if args.deploy is not None:
            print(f"note: the cascade's row is scored on the test split only; leaving it out of "
                  f"the {args.split} split", file=sys.stderr)
        return "none"
    if args.deploy is None and not names_lvm:
        if args.ckpt is None:  # all defaults: say what is missing, as for the checkpoints
            print(f"note: {deploy} names no LVM (make train-lvm BANK={args.bank}); scoring "
                  f"without the cascade's row", file=sys.stderr)
        return "none"
    return deploy


def choose_checkpoints(args) -> dict[str, str]:
    """--ckpt as given, else the bank's v4 and v3 runs that exist (a note for each missing)."""
    if args.ckpt is not None:
        return named_checkpoints(args.ckpt)
    defaults = bank_defaults(args.bank)[1]
    ckpts = {name: path for name, path in defaults.items() if Path(path).exists()}
    for name, path in defaults.items():
        if name not in ckpts:
            print(f"note: no {name} checkpoint at {path} (make train-v4 BANK={args.bank}); "
                  f"scoring without it", file=sys.stderr)
    return ckpts


def cascade_ranks(deploy: str, bank, pairs, split) -> tuple[dict[str, np.ndarray], int]:
    """The cascade's final top-k ranks, its contexts sent as vectors and as rows, and k."""
    cascade = Cascade.from_deploy(deploy, bank=bank)
    if cascade.lvm is not None:
        cascade.lvm.check_reported_on(pairs, TEST)
    if cascade.stage1.kind == "v4":
        check_split_of(load_checkpoint(cascade.stage1.checkpoint, bank.fingerprint()),
                       cascade.stage1.checkpoint, pairs, bank, f"{deploy}: stage 1")
    ranks = {}
    for form in ("vectors", "rows"):
        stage = stage_ranks(cascade, split, form, bank.vectors)
        ranks[f"cascade top-{cascade.last_k} ({' -> '.join(stage)}), {form}"] = stage[
            list(stage)[-1]]
    return ranks, cascade.last_k


def original_way_ranks(bank, split, k: int) -> dict[str, np.ndarray]:
    """The heuristics scored the original report's way: the context's rows left in."""
    index = build_index(bank.vectors, "flat")
    ranks = {}
    for name, (kind, alpha) in ORIGINAL_WAY.items():
        _, I = index.search(heuristic_queries(bank.vectors, split, kind, alpha or DEFAULT_ALPHA),
                            k)
        ranks[name] = target_ranks(I, split.target)
    return ranks


def all_ranks(args, bank, pairs_path: str, ckpts: dict[str, str], deploy: str, device
              ) -> tuple[object, dict[str, np.ndarray], dict[str, int]]:
    """(the scored split, {method: ranks}, {cascade row: its list's length}); raises the
    inputs' errors."""
    pairs = load_pairs(pairs_path, bank)
    split = pairs.side(args.split)
    if not len(split):
        raise PairsError(f"{pairs_path}: no {args.split} pairs")
    if args.split != "train":  # a checkpoint trained on these articles would be flattered
        for name, path in ckpts.items():
            check_split_of(load_checkpoint(path, bank.fingerprint()), path, pairs, bank,
                           f"--ckpt {name}")
    methods = dict(FORMATIONS)
    methods.update({name: ("checkpoint", path) for name, path in ckpts.items()})
    methods["oracle"] = ("oracle", None)
    # Recall@k past the bank's size is recall@N: FAISS cannot return more than N rows.
    search_ks = tuple(sorted({min(k, bank.n) for k in KS}))
    _, ranks = compare_methods(bank, split, methods, search_ks, device)
    lengths: dict[str, int] = {}
    if deploy != "none":
        served, last_k = cascade_ranks(deploy, bank, pairs, split)
        ranks.update(served)
        lengths = {name: last_k for name in served}
    ranks.update(original_way_ranks(bank, split, max(search_ks)))
    return split, ranks, lengths


def print_results(args, bank, split, clusters: np.ndarray, table: dict, versus: dict) -> None:
    print(f"{args.split} split: {len(split):,} pairs from {len(np.unique(clusters)):,} articles; "
          f"bank {args.bank} ({bank.n:,} x {bank.dim}); exact search; 95% CIs resample articles")
    print(markdown(table))
    print()
    print(quoted_markdown())
    print()
    for name, comp in versus.items():
        for key, d in comp.items():
            verdict = "beats" if d["significant"] and d["diff"] > 0 else "does not beat"
            print(f"{name} {verdict} the heuristic on {key}: {d['diff']:+.2f} points "
                  f"(95% CI {d['ci95'][0]:+.2f} to {d['ci95'][1]:+.2f}, articles resampled)")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        device = resolve_device(args.device)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    pairs_path = args.pairs or bank_defaults(args.bank)[0]
    try:
        deploy = choose_deploy(args)
    except DeployError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    ckpts = choose_checkpoints(args)
    try:
        bank = load_bank(args.bank)
        split, ranks, lengths = all_ranks(args, bank, pairs_path, ckpts, deploy, device)
    except (BankError, PairsError, CheckpointError, DeployError, LvmError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    clusters = split.articles(bank)
    table = {name: scores(r, clusters, args.seed, lengths.get(name)) for name, r in ranks.items()}
    versus = {name: {f"recall@{k}": paired_difference(ranks[name], ranks[HEURISTIC], k,
                                                      clusters=clusters)
                     for k in (10, 500) if k <= lengths.get(name, k)}
              for name in [*ckpts, *lengths]}
    print_results(args, bank, split, clusters, table, versus)
    save_report(args.out, {
        "benchmark": "recall", "created": created(), "bank": args.bank,
        "bank_fingerprint": bank.fingerprint(), "pairs": pairs_path, "split": args.split,
        "n": len(split), "articles": int(len(np.unique(clusters))), "ks": list(KS),
        "protocol": "exact search; the context's own rows excluded, except the rows named "
                    "'context rows left in' (the original report's protocol)",
        "methods": table, "vs_heuristic": versus, "checkpoints": ckpts, "device": str(device),
        "cascade_deploy": None if deploy == "none" else deploy, "quoted_reference": QUOTED})
    return 0


if __name__ == "__main__":
    sys.exit(main())

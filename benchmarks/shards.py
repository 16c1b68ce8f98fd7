"""Stage 1 across servers: end-to-end front latency and throughput at 1 / 2 / 4 shards.

    python -m benchmarks.shards                  # the default bank and a 1M x 384 synthetic bank
    python -m benchmarks.shards --banks default --shards 1,2 --clients 2 --n 100   # quicker

For each bank and shard count it starts the real serving set (`python -m serving.server`, one
process per server, one torch / FAISS thread each, exact "Flat" stage 1) on loopback, and
measures one Search at a time (p50 / p99 over --n calls, contexts of 8 chunks as vectors) and
searches/s at a few concurrent clients, plus each server's peak resident memory (VmHWM): a shard
loads only its rows. The default bank uses runs/<bank>/deploy.json when it exists, else the
heuristic stage 1; the synthetic bank (generated once into artifacts/, without TMD codes, so the
set is the front and the shards) always uses the heuristic. Shards help when each has its own
cores; on one machine they share its cores: say what machine measured a number.
Writes benchmarks/results/shards.json (strict JSON) beside the printed table.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
from pathlib import Path

import yaml

from benchmarks.common import NOISY, save_report
from benchmarks.latency import bench_contexts, concurrent, sequential
from cascade.bank import save_bank
from cascade.shard import whole_fingerprint
from serving.config import DEFAULT_CONFIG, STAGES
from serving.harness import ServingSet, free_port

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "shards.json"
DEFAULT_BANK = ROOT / "artifacts" / "wikipedia_vital_bank.npz"
SYNTH_ROWS, SYNTH_DIM = 1_000_000, 384


def synthetic_bank(path: Path) -> Path:
    """The 1M x 384 synthetic bank, generated once (about 25 s and 1.5 GB on disk)."""
    if not path.exists():
        from training.synth_bank import SynthConfig, synth_bank

        print(f"generating {path} ({SYNTH_ROWS:,} x {SYNTH_DIM})", flush=True)
        bank = synth_bank(SynthConfig(n=SYNTH_ROWS, dim=SYNTH_DIM, mean_chunks=4, seed=0),
                          progress=True)
        bank.tmd_codes = None
        save_bank(bank, path)
    return path


def heuristic_deploy(bank: Path, root: Path, reason: str) -> str:
    deploy = root / f"{bank.stem}.deploy.json"
    deploy.write_text(json.dumps({
        "stage1": "heuristic", "checkpoint": None, "reason": reason,
        "heuristic": {"kind": "exp_weighted", "alpha": 0.1}, "bank": str(bank),
        "bank_fingerprint": whole_fingerprint(str(bank))}))
    return str(deploy)


def sharded_config(deploy: str, shards: int, path: Path) -> Path:
    """The shipped serving.yaml with fresh loopback ports, `shards` stage-1 shards, one process
    per server and no metrics endpoints."""
    data = yaml.safe_load(DEFAULT_CONFIG.read_text())
    data["deploy"] = deploy
    for name in ("front", *STAGES):
        data[name]["processes"] = 1
        data[name]["metrics_port"] = 0
        if name == "stage1":
            data[name]["shards"] = [[f"127.0.0.1:{free_port()}"] for _ in range(shards)]
        else:
            data[name]["addresses"] = [f"127.0.0.1:{free_port()}"]
    path.write_text(yaml.safe_dump(data))
    return path


def peak_rss_mb(lines: list[str]) -> dict:
    """Peak resident memory (VmHWM) of each server process named in the set's ready lines."""
    out = {}
    for line in lines:
        if "(pid " not in line:
            continue
        # "(pid N)" of a server, "(pid N, in <pid file>)" of the supervisor's ready line
        name, pid = line.split()[0], int(re.search(r"\(pid (\d+)", line).group(1))
        name = "supervisor" if name == "ready;" else name
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        kb = next(int(x.split()[1]) for x in status.splitlines() if x.startswith("VmHWM"))
        key = name if name != "stage1" else f"stage1_{sum(k.startswith('stage1') for k in out)}"
        out[key] = round(kb / 1024, 1)
    return out


def measure(deploy: str, shards: int, contexts, clients: list[int], seconds: float, n: int,
            tmp: Path) -> dict:
    running = ServingSet(sharded_config(deploy, shards, tmp / f"shards{shards}.yaml"),
                         ready_timeout=None)
    try:
        one = sequential(running.cfg, contexts, n)
        curve = [concurrent(running.cfg, contexts, c, seconds) for c in clients]
        rss = peak_rss_mb(running.lines)
    finally:
        running.stop()
    shard_rss = [v for k, v in rss.items() if k.startswith("stage1")]
    return {"shards": shards, "one_search": one, "curve": curve, "peak_rss_mb": rss,
            "stage1_peak_rss_mb_max": max(shard_rss) if shard_rss else None,
            "stage1_peak_rss_mb_sum": round(sum(shard_rss), 1) if shard_rss else None}


def print_table(name: str, rows: list[dict], clients: list[int]) -> None:
    head = f"{'shards':>6} {'p50 ms':>8} {'p99 ms':>8} {'stage1 ms':>9} " + " ".join(
        f"{f'{c} cl/s':>8}" for c in clients) + f" {'shard RSS MB':>13} {'front RSS MB':>13}"
    print(f"\n{name}\n{head}")
    for r in rows:
        one = r["one_search"]
        rates = " ".join(f"{p['searches_per_s']:>8.1f}" for p in r["curve"])
        print(f"{r['shards']:>6} {one['p50_ms']:>8} {one['p99_ms']:>8} "
              f"{one['front_median_ms'].get('stage1', float('nan')):>9} {rates} "
              f"{r['stage1_peak_rss_mb_max']:>13} {r['peak_rss_mb'].get('front'):>13}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.shards",
                                description=__doc__.split("\n")[0])
    p.add_argument("--banks", default="default,synthetic",
                   help="comma list: default (artifacts/wikipedia_vital_bank.npz), synthetic "
                        "(1M x 384)")
    p.add_argument("--shards", default="1,2,4", help="shard counts to measure")
    p.add_argument("--clients", default="2,4,8", help="concurrent clients for searches/s")
    p.add_argument("--seconds", type=float, default=5.0, help="per point of the curve")
    p.add_argument("--n", type=int, default=200, help="sequential searches for p50 / p99")
    p.add_argument("--synthetic-path", default=str(ROOT / "artifacts" / "shards_synth_1m.npz"))
    p.add_argument("--out", default=str(RESULTS))
    args = p.parse_args(argv)
    shard_counts = [int(s) for s in args.shards.split(",")]
    clients = [int(c) for c in args.clients.split(",")]
    report = {"cpus": os.cpu_count(), "load_avg_at_start": list(os.getloadavg()),
              "layout": "one process per server, threads 1, exact Flat stage 1, vectors in",
              "banks": {}}
    with tempfile.TemporaryDirectory(prefix="bench_shards_") as tmp:
        tmp = Path(tmp)
        for name in args.banks.split(","):
            if name == "default":
                if not DEFAULT_BANK.exists():
                    print(f"shards: no {DEFAULT_BANK} (make ingest writes it)", file=sys.stderr)
                    return 2
                trained = ROOT / "runs" / DEFAULT_BANK.stem / "deploy.json"
                deploy = (str(trained) if trained.exists() else
                          heuristic_deploy(DEFAULT_BANK, tmp, "no trained deploy.json: the "
                                                              "heuristic stage 1"))
            elif name == "synthetic":
                bank = synthetic_bank(Path(args.synthetic_path))
                deploy = heuristic_deploy(bank, tmp, "synthetic benchmark bank")
            else:
                print(f"shards: unknown bank {name!r} (default, synthetic)", file=sys.stderr)
                return 2
            contexts = bench_contexts(deploy)
            rows = bank_size(deploy)
            print(f"{name}: {deploy} ({rows:,} rows)", flush=True)
            results = []
            for s in shard_counts:
                r = measure(deploy, s, contexts, clients, args.seconds, args.n, tmp)
                results.append(r)
                print(f"  {s} shard(s): p50 {r['one_search']['p50_ms']} ms, p99 "
                      f"{r['one_search']['p99_ms']} ms, "
                      + ", ".join(f"{c['clients']} clients {c['searches_per_s']}/s "
                                  f"(errors {c['errors'] or 0})" for c in r["curve"])
                      + f"; peak RSS {r['peak_rss_mb']}", flush=True)
            report["banks"][name] = {"deploy": deploy, "rows": rows, "results": results}
            print_table(f"{name} ({rows:,} rows)", results, clients)
    report["load_avg_at_end"] = list(os.getloadavg())
    print()
    save_report(args.out, report, NOISY.format(report["load_avg_at_start"][0]))
    return 0


def bank_size(deploy: str) -> int:
    from cascade.deploy import read_deploy, resolve
    from cascade.shard import bank_rows

    return bank_rows(resolve(deploy, read_deploy(deploy)["bank"]))


if __name__ == "__main__":
    raise SystemExit(main())

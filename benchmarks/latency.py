"""Serving latency and throughput: the real gRPC set on loopback, vectors as input.

    python -m benchmarks.latency --deploy runs/wikipedia_vital_bank/deploy.json   # (make bench)
    python -m benchmarks.latency --synthetic 36000     # no trained deploy: a synthetic bank of
                                                        # the default bank's size, heuristic +
                                                        # an LVM at initial weights
    python -m benchmarks.latency --compare              # also: one process per server vs
                                                        # SO_REUSEPORT processes vs replicas
                                                        # vs every stage in the front
    python -m benchmarks.latency --layouts in_process   # front.stages: in_process alone
    python -m benchmarks.latency --batching             # each layout with the stages'
                                                        # micro-batching off, then on
    python -m benchmarks.latency --scale runs/synth_500k_768/deploy.json [--scale ...]
                                                        # large banks beside the default one
                                                        # (the yardstick, same run): a table
                                                        # per bank, see scale_main
    python -m benchmarks.latency --bank artifacts/X.npz # a bank without a deploy: heuristic
                                                        # stage 1 (exact) + an untrained LVM

Measures one Search's p50/p99 (one client, sequential), throughput and latency with 1, 2, 4, 8
and 16 concurrent clients (each its own connection) with the CPU each server spent per search
(/proc: their sum bounds searches/s on the machine's cores), and text-input latency (embedding
included). Targets (issue 11): p50 <= 8 ms, p99 <= 20 ms, >= 200 searches/s at 8 clients with
zero errors. Timings depend on what else runs on the machine: say so beside every number.
Writes benchmarks/results/latency.json (strict JSON) beside the printed table.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import yaml

from benchmarks.common import NOISY, save_report
from cascade.bank import load_bank
from cascade.deploy import read_deploy, resolve
from serving.client import CascadeClient
from serving.config import DEFAULT_CONFIG, STAGES, ServingConfig, load_config
from serving.harness import ServingSet, free_port, free_ports

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "latency.json"
BATCHING = ("stage1", "lvm")  # the stages with max_batch / max_wait_ms
LAYOUTS = ("single", "reuseport", "replicas", "mixed", "in_process")  # see layout_config
TARGETS = {"p50_ms": 8.0, "p99_ms": 20.0, "searches_per_s_at_8": 200.0}
TEXTS = ["The Moon is Earth's only natural satellite.",
         "It orbits at an average distance of 384,400 km.",
         "The Moon's gravity causes the tides on Earth."]


# ---------------------------------------------------------------------------------------------
# the set under test


def layout_config(base: ServingConfig, layout: str, path: Path,
                  batching: tuple[int, float] | None = None) -> Path:
    """`base` with fresh loopback ports, laid out one way: `single` (one process per server),
    `reuseport` (two processes per server sharing its port), `replicas` (two servers per
    stage, balanced per call by gRPC round_robin; the clients balance over two fronts), or
    `mixed` (two front processes sharing its port, two replicas of each stage). `batching`
    (max_batch, max_wait_ms) of the batching stages (stage 1, LVM); None: the YAML's. Or
    `in_process`: no stage servers, the front runs the whole cascade (front.stages), in two
    processes sharing its port (one per core)."""
    data = yaml.safe_load(DEFAULT_CONFIG.read_text())
    data["deploy"] = base.deploy
    if layout == "in_process":
        data["front"].update(stages="in_process", processes=2, metrics_port=free_ports(2),
                             addresses=[f"127.0.0.1:{free_port()}"])
        if batching is not None:
            data["front"]["max_batch"], data["front"]["max_wait_ms"] = batching
        path.write_text(yaml.safe_dump(data))
        return path
    if batching is not None:
        for name in BATCHING:
            data[name]["max_batch"], data[name]["max_wait_ms"] = batching
    for name in ("front", *STAGES):
        shared = layout == "reuseport" or (layout == "mixed" and name == "front")
        copies = 2 if layout == "replicas" or (layout == "mixed" and name != "front") else 1
        addresses = [f"127.0.0.1:{free_port()}" for _ in range(copies)]
        if name == "stage1":
            data[name]["shards"] = [addresses]  # one shard, its replicas
        else:
            data[name]["addresses"] = addresses
        data[name]["processes"] = 2 if shared else 1
        # The batching stages' metrics say how many calls ran together (batch_sizes).
        data[name]["metrics_port"] = (free_ports(copies * data[name]["processes"])
                                      if name in BATCHING else 0)
    path.write_text(yaml.safe_dump(data))
    return path


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of a process so far (Linux /proc), None elsewhere."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_snapshot(pids: dict[str, list[int]]) -> dict[str, float | None]:
    """CPU seconds so far of each server (its processes summed) and of this process, the
    clients'."""
    out = {}
    for name, ps in pids.items():
        times = [cpu_seconds(p) for p in ps]
        out[name] = None if None in times else sum(times)
    out["clients"] = cpu_seconds(os.getpid())
    return out


# ---------------------------------------------------------------------------------------------
# measurements


def percentiles(ms: list[float]) -> dict:
    if not ms:
        return {"p50_ms": None, "p99_ms": None, "mean_ms": None}
    a = np.asarray(ms)
    return {"p50_ms": round(float(np.percentile(a, 50)), 3),
            "p99_ms": round(float(np.percentile(a, 99)), 3), "mean_ms": round(float(a.mean()), 3)}


def new_client(cfg: ServingConfig) -> CascadeClient:
    # A connection of its own per client (gRPC shares one per target across a process unless
    # told not to), so SO_REUSEPORT can spread clients over processes.
    return CascadeClient.from_config(cfg, timeout=5.0, retries=0,
                                     extra_options=[("grpc.use_local_subchannel_pool", 1)])


def sequential(cfg: ServingConfig, contexts: list[np.ndarray], n: int, texts: bool = False
               ) -> dict:
    """One client, one call at a time: latency percentiles."""
    ms, errors, steps = [], 0, {}
    with new_client(cfg) as client:
        for i in range(n + 5):
            t = time.perf_counter()
            try:
                if texts:
                    r = client.search_texts(TEXTS[: 1 + i % len(TEXTS)])
                else:
                    r = client.search_vectors(contexts[i % len(contexts)])
            except grpc.RpcError:
                errors += 1
                continue
            if i >= 5:  # the first calls warm connections and caches
                ms.append(1000 * (time.perf_counter() - t))
                for k, v in r.stage_ms.items():
                    steps.setdefault(k, []).append(v)
    # What the front saw per step (a stage's time includes its gRPC round trip).
    front_ms = {k: round(float(np.median(v)), 3) for k, v in sorted(steps.items())}
    return {"calls": n, "errors": errors, **percentiles(ms), "front_median_ms": front_ms}


def in_process(deploy: str, contexts: list[np.ndarray], n: int) -> dict:
    """The same searches through the library in this process, one thread: what gRPC adds is
    the difference (both measured under the same machine load)."""
    from benchmarks.reference import reference_ops
    from cascade.pipeline import Cascade, set_threads

    set_threads(1)
    cascade = Cascade.from_deploy(deploy)
    ms = []
    for i in range(n + 5):
        t = time.perf_counter()
        cascade.search(contexts[i % len(contexts)])
        if i >= 5:
            ms.append(1000 * (time.perf_counter() - t))
    return {"calls": n, **percentiles(ms), "reference": reference_ops(cascade)}


def concurrent(cfg: ServingConfig, contexts: list[np.ndarray], clients: int, seconds: float
               ) -> dict:
    """`clients` threads, each its own connection, calling back to back for `seconds`."""
    stop = 0.0  # set when every client is connected
    results: list[tuple[list[float], dict[str, int]]] = []

    def run(c: int) -> None:
        ms, errors = [], {}
        with new_client(cfg) as client:
            client.search_vectors(contexts[c % len(contexts)])  # connect before the clock
            start.wait()
            i = c
            while time.perf_counter() < stop:
                t = time.perf_counter()
                try:
                    client.search_vectors(contexts[i % len(contexts)])
                    ms.append(1000 * (time.perf_counter() - t))
                except grpc.RpcError as e:
                    errors[e.code().name] = errors.get(e.code().name, 0) + 1
                i += clients
        results.append((ms, errors))

    start = threading.Event()
    with ThreadPoolExecutor(clients) as pool:
        futures = [pool.submit(run, c) for c in range(clients)]
        time.sleep(0.5)
        t0 = time.perf_counter()
        stop = t0 + seconds
        start.set()
        for f in futures:
            f.result()
    wall = time.perf_counter() - t0
    ms = [m for r in results for m in r[0]]
    errors: dict[str, int] = {}
    for _, e in results:
        for k, v in e.items():
            errors[k] = errors.get(k, 0) + v
    return {"clients": clients, "seconds": round(wall, 2), "searches": len(ms),
            "searches_per_s": round(len(ms) / wall, 1), "errors": errors, **percentiles(ms)}


def bench_contexts(deploy_path: str, n: int = 200, length: int = 8, seed: int = 0
                   ) -> list[np.ndarray]:
    """`n` contexts of `length` consecutive chunks of random articles, as raw vectors."""
    bank = load_bank(resolve(deploy_path, read_deploy(deploy_path)["bank"]), mmap=True)
    starts, ends = bank.article_bounds()
    rng = np.random.default_rng(seed)
    out = []
    for a in rng.choice(len(starts), size=n):
        s, e = starts[a], ends[a]
        lo = max(s, e - 1 - length) if e - s > 1 else s
        # A copy: a view would keep the whole bank alive as long as the contexts.
        out.append(bank.vectors[lo:max(lo + 1, e - 1)][:length].copy())
    return out


def batch_sizes(cfg: ServingConfig) -> dict[str, list[float]]:
    """[batches run, calls answered] so far per batching stage, over all its processes."""
    from prometheus_client.parser import text_string_to_metric_families

    out = {}
    for name in BATCHING if cfg.front.stages == "servers" else ("front",):
        sc = cfg.server(name)
        total = [0.0, 0.0]
        for p in range(len(sc.addresses) * sc.processes):
            url = f"http://127.0.0.1:{sc.metrics_port + p}/metrics"
            with urllib.request.urlopen(url, timeout=5) as r:
                text = r.read().decode()
            for family in text_string_to_metric_families(text):
                for sample in family.samples:
                    if sample.labels.get("stage") == name:
                        if sample.name == "cascade_batch_size_count":
                            total[0] += sample.value
                        elif sample.name == "cascade_batch_size_sum":
                            total[1] += sample.value
        out[name] = total
    return out


def mean_batch(before: dict, after: dict) -> dict[str, float | None]:
    """Calls per library call of each batching stage between two batch_sizes()."""
    out = {}
    for name in before:
        ran, calls = (a - b for a, b in zip(after[name], before[name], strict=True))
        out[name] = round(calls / ran, 2) if ran else None
    return out


def measure(cfg: ServingConfig, contexts, clients: list[int], seconds: float, n: int,
            texts: bool, pids: dict[str, list[int]] | None = None) -> dict:
    out = {"one_search": sequential(cfg, contexts, n)}
    print(f"  one search (vectors): p50 {out['one_search']['p50_ms']} ms, "
          f"p99 {out['one_search']['p99_ms']} ms; front's median per step "
          f"{out['one_search']['front_median_ms']}", flush=True)
    out["curve"] = []
    for c in clients:
        before, cpu = batch_sizes(cfg), cpu_snapshot(pids or {})
        r = concurrent(cfg, contexts, c, seconds)
        r["mean_batch"] = mean_batch(before, batch_sizes(cfg))
        # Where the machine's CPU goes: ms of CPU per search in each server (all its
        # processes) and in the clients; the sum bounds searches/s on the machine's cores.
        after = cpu_snapshot(pids or {})
        r["cpu_ms_per_search"] = {
            name: round(1000 * (after[name] - cpu[name]) / max(r["searches"], 1), 2)
            if after[name] is not None and cpu[name] is not None else None for name in after}
        out["curve"].append(r)
        print(f"  {c:>2} clients: {r['searches_per_s']:>7.1f} searches/s, p50 {r['p50_ms']} ms,"
              f" p99 {r['p99_ms']} ms, errors {r['errors'] or 0}, calls per batch "
              f"{r['mean_batch']}, CPU ms per search {r['cpu_ms_per_search']}", flush=True)
    if texts:
        out["texts"] = sequential(cfg, contexts, max(n // 5, 20), texts=True)
        print(f"  one search (1-3 texts, embedding included): p50 {out['texts']['p50_ms']} ms,"
              f" p99 {out['texts']['p99_ms']} ms", flush=True)
    return out


# ---------------------------------------------------------------------------------------------


def synthetic_deploy(n: int, root: Path) -> str:
    """A synthetic bank of n x 384 rows and a deploy.json choosing the heuristic, with an LVM of
    the default size at its initial weights: the serving cost of the default bank without its
    data or a training run (latency only; never a quality number)."""
    import torch

    from cascade.bank import save_bank, sha256_file
    from cascade.lvm import Lvm, LvmConfig, save_lvm
    from training.synth_bank import SynthConfig, synth_bank

    bank = synth_bank(SynthConfig(n=n, dim=384, mean_chunks=4, topics=12, seed=0))
    save_bank(bank, root / "bank.npz")
    torch.manual_seed(0)
    save_lvm(root / "lvm.pt", Lvm(LvmConfig(dim=384)), bank.fingerprint())
    deploy = root / "deploy.json"
    deploy.write_text(json.dumps({
        "stage1": "heuristic", "checkpoint": None, "reason": "synthetic benchmark bank",
        "heuristic": {"kind": "exp_weighted", "alpha": 0.1}, "bank": str(root / "bank.npz"),
        "bank_fingerprint": bank.fingerprint(),
        "lvm": {"checkpoint": str(root / "lvm.pt"), "sha256": sha256_file(root / "lvm.pt")}}))
    return str(deploy)


def bank_deploy(bank_path: str, root: Path) -> str:
    """A deploy.json for a bank that has none: the heuristic, exact stage 1, an LVM of the
    default size at its initial weights (a serving cost; never a quality number)."""
    import torch

    from cascade.bank import sha256_file
    from cascade.lvm import Lvm, LvmConfig, save_lvm

    bank = load_bank(bank_path, mmap=True)
    torch.manual_seed(0)
    lvm = root / f"{Path(bank_path).stem}.lvm.pt"
    save_lvm(lvm, Lvm(LvmConfig(dim=bank.dim)), bank.fingerprint())
    deploy = root / f"{Path(bank_path).stem}.deploy.json"
    deploy.write_text(json.dumps({
        "stage1": "heuristic", "checkpoint": None, "reason": "benchmark bank",
        "heuristic": {"kind": "exp_weighted", "alpha": 0.1}, "bank": str(bank_path),
        "bank_fingerprint": bank.fingerprint(),
        "lvm": {"checkpoint": str(lvm), "sha256": sha256_file(lvm)}}))
    return str(deploy)


def scale_row(base: ServingConfig, deploy_path: str, layout: str, tmp: Path,
              clients: list[int], seconds: float, n: int) -> dict:
    """One bank, one layout: start-up seconds (cached index), one search p50/p99 at 1 client,
    searches/s at each client count, the serving set's PSS and RSS, and its PSS of the bank
    file (counted once however many processes map it)."""
    from cascade.memory import descendants, file_memory, set_memory

    deploy = read_deploy(deploy_path)
    bank_path = resolve(deploy_path, deploy["bank"])
    cfg = dataclasses.replace(base, deploy=deploy_path)
    contexts = bench_contexts(deploy_path)
    t0 = time.perf_counter()
    running = ServingSet(layout_config(cfg, layout, tmp / "scale.yaml"), ready_timeout=None)
    startup = time.perf_counter() - t0
    try:
        out = {"startup_s": round(startup, 1), **measure(running.cfg, contexts, clients,
                                                         seconds, n, texts=False,
                                                         pids=running.pids())}
        pids = descendants(running.proc.pid)
        out["memory"] = set_memory(pids)
        bank_map = [file_memory(p, bank_path) for p in pids]
        out["memory"]["bank_file_pss"] = sum(m["pss"] for m in bank_map)
        out["memory"]["bank_file_rss"] = sum(m["rss"] for m in bank_map)
        out["load_avg"] = list(os.getloadavg())
    finally:
        running.stop()
    return out


def scale_main(args, base: ServingConfig, tmp: Path) -> dict:
    """A table per bank: the default bank first (the yardstick, in the same run), then each
    --scale deploy and --bank. Containment, index, build seconds and bytes come from the
    deploy's `stage1_index` record (training.tune_index); an exact stage 1 contains 100%."""
    deploys = [base.deploy] + list(args.scale or []) + [bank_deploy(b, tmp)
                                                        for b in args.bank or []]
    layouts = args.layouts.split(",") if args.layouts else ["reuseport", "in_process"]
    clients = [int(c) for c in args.clients.split(",")] if args.clients_given else [1, 8, 16]
    report = {"cpus": os.cpu_count(), "load_avg_at_start": list(os.getloadavg()), "banks": []}
    for deploy_path in deploys:
        deploy = read_deploy(deploy_path)
        bank = load_bank(resolve(deploy_path, deploy["bank"]), mmap=True)
        cascade = deploy.get("cascade") or {}
        rec = deploy.get("stage1_index") or {}
        entry = {"deploy": deploy_path, "rows": bank.n, "dim": bank.dim,
                 "vector_bytes": int(bank.vectors.nbytes),
                 "index": f"{cascade.get('index_factory', 'Flat')}|"
                          f"{cascade.get('index_params', '')}",
                 "build_s": rec.get("build_seconds"), "index_bytes": rec.get("index_bytes", 0),
                 "containment": rec.get("containment") or {"val": 1.0, "test": 1.0},
                 "layouts": {}}
        del bank
        print(f"bank {entry['rows']:,} x {entry['dim']} ({deploy_path}), stage 1 "
              f"{entry['index']}:", flush=True)
        for layout in layouts:
            print(f" layout {layout}:", flush=True)
            entry["layouts"][layout] = scale_row(base, deploy_path, layout, tmp, clients,
                                                 args.seconds, args.n)
        report["banks"].append(entry)
    report["load_avg_at_end"] = list(os.getloadavg())
    print_scale(report)
    return report


def print_scale(report: dict) -> None:
    yard = report["banks"][0]
    for entry in report["banks"]:
        c = entry["containment"]
        print(f"\n{entry['rows']:,} x {entry['dim']}  index {entry['index']}  build "
              f"{entry['build_s'] if entry['build_s'] is not None else '-'} s  index "
              f"{entry['index_bytes'] / 1e6:.0f} MB  containment@500 val {c.get('val')} test "
              f"{c.get('test')}")
        print(f"  {'layout':<11} {'start s':>7} {'p50 ms':>7} {'p99 ms':>7} {'/s @1':>7} "
              f"{'/s @8':>7} {'/s @16':>7} {'PSS MB':>7} {'RSS MB':>7} {'bank PSS':>8} "
              f"{'x p50':>6} {'x /s@8':>6}")
        for layout, r in entry["layouts"].items():
            rate = {x["clients"]: x["searches_per_s"] for x in r["curve"]}
            y = yard["layouts"].get(layout)
            yrate = {x["clients"]: x["searches_per_s"] for x in y["curve"]} if y else {}
            ratio_p50 = r["one_search"]["p50_ms"] / y["one_search"]["p50_ms"] if y else None
            ratio_8 = rate.get(8, 0) / yrate[8] if yrate.get(8) else None
            m = r["memory"]
            print(f"  {layout:<11} {r['startup_s']:>7.1f} {r['one_search']['p50_ms']:>7.1f} "
                  f"{r['one_search']['p99_ms']:>7.1f} {rate.get(1, 0):>7.1f} "
                  f"{rate.get(8, 0):>7.1f} {rate.get(16, 0):>7.1f} {m['pss'] / 1e6:>7.0f} "
                  f"{m['rss'] / 1e6:>7.0f} {m['bank_file_pss'] / 1e6:>8.0f} "
                  f"{ratio_p50 or 0:>6.2f} {ratio_8 or 0:>6.2f}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.latency",
                                description=__doc__.split("\n")[0])
    p.add_argument("--deploy", default=None, help="deploy.json (default: the YAML's)")
    p.add_argument("--config", default=str(DEFAULT_CONFIG), help="serving YAML to start from")
    p.add_argument("--synthetic", type=int, default=0,
                   help="bench a synthetic bank of this many rows instead of --deploy")
    p.add_argument("--clients", default="1,2,4,8,16", help="concurrent clients to measure")
    p.add_argument("--seconds", type=float, default=5.0, help="per point of the curve")
    p.add_argument("--n", type=int, default=300, help="sequential searches for p50/p99")
    p.add_argument("--compare", action="store_true",
                   help="also measure the SO_REUSEPORT and replica layouts")
    p.add_argument("--batching", action="store_true",
                   help="measure each layout with micro-batching off (max_batch 1), then on")
    p.add_argument("--max-batch", type=int, default=16, help="with --batching: max_batch on")
    p.add_argument("--max-wait-ms", default="0,1",
                   help="with --batching: max_wait_ms values to measure (comma-separated)")
    p.add_argument("--layouts", default=None,
                   help="layouts to measure, of single, reuseport, replicas, mixed, in_process "
                        "(default: single; --compare: all five)")
    p.add_argument("--scale", action="append", default=None, metavar="DEPLOY",
                   help="a large bank's deploy.json (repeatable), measured beside the default "
                        "deploy (the yardstick) in the same run: a table per bank")
    p.add_argument("--bank", action="append", default=None, metavar="BANK",
                   help="a bank without a deploy (repeatable): heuristic, exact stage 1, an "
                        "untrained LVM; implies the --scale tables")
    p.add_argument("--out", default=str(RESULTS))
    args = p.parse_args(argv)
    args.clients_given = "--clients" in (argv if argv is not None else sys.argv)
    return args


def run_scale(args, base: ServingConfig) -> int:
    """The --scale / --bank tables, written to scale.json (unless --out names another file)."""
    with tempfile.TemporaryDirectory(prefix="bench_scale_") as tmp:
        if args.synthetic:
            base.deploy = synthetic_deploy(args.synthetic, Path(tmp))
        elif args.deploy:
            base.deploy = args.deploy
        report = scale_main(args, base, Path(tmp))
    out = Path(args.out if args.out != str(RESULTS) else RESULTS.with_name("scale.json"))
    save_report(out, report, NOISY.format(report["load_avg_at_start"][0]))
    return 0


def layout_runs(args, layouts: list[str]) -> list[tuple[str, str, tuple | None]]:
    """(name, layout, batching) to measure: batching None keeps the YAML's max_batch /
    max_wait_ms; with --batching each layout off, then at each --max-wait-ms."""
    if not args.batching:
        return [(layout, layout, None) for layout in layouts]
    return [(f"{layout}, batching {'off' if b[0] == 1 else f'{b[0]}/{b[1]:g}ms'}", layout, b)
            for layout in layouts for b in
            [(1, 0.0)] + [(args.max_batch, float(w)) for w in args.max_wait_ms.split(",")]]


def measure_layouts(args, base: ServingConfig, runs: list, layouts: list[str], contexts,
                    tmp: Path) -> dict:
    """A serving set per run, measured in turn: the first layout (or every one, with
    --batching) over all --clients, the others at 8 clients; texts in the first run only."""
    clients = [int(c) for c in args.clients.split(",")]
    out = {}
    for name, layout, batching in runs:
        print(f"layout {name}:", flush=True)
        running = ServingSet(layout_config(base, layout, tmp / "set.yaml", batching),
                             ready_timeout=None)
        full = layout == layouts[0] or args.batching
        try:
            out[name] = measure(running.cfg, contexts, clients if full else [8], args.seconds,
                                args.n, texts=name == runs[0][0], pids=running.pids())
            out[name]["load_avg"] = list(os.getloadavg())
        finally:
            running.stop()
    return out


def print_reference(report: dict, runs: list) -> None:
    """The in-process cascade and each layout's p50 against this machine's reference ops."""
    from benchmarks.reference import describe, relative

    print(f"in-process cascade (same searches, 1 thread, no gRPC): p50 "
          f"{report['in_process']['p50_ms']} ms, p99 {report['in_process']['p99_ms']} ms")
    ref = report["in_process"]["reference"]
    print(describe(ref))
    for name, *_ in runs:
        p50 = report["layouts"][name]["one_search"]["p50_ms"]
        print(relative(f"one search ({name}), p50", p50, 8.0, ref))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    base = load_config(args.config)
    if args.scale or args.bank:
        return run_scale(args, base)
    layouts = (args.layouts.split(",") if args.layouts else
               list(LAYOUTS) if args.compare else ["single"])
    unknown = [x for x in layouts if x not in LAYOUTS]
    if unknown:
        print(f"latency: unknown layout {unknown[0]!r} (--layouts takes {', '.join(LAYOUTS)})",
              file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="bench_latency_") as tmp:
        tmp = Path(tmp)
        if args.synthetic:
            print(f"a synthetic {args.synthetic} x 384 bank, heuristic + an untrained LVM",
                  flush=True)
            base.deploy = synthetic_deploy(args.synthetic, tmp)
        elif args.deploy:
            base.deploy = args.deploy
        if not Path(base.deploy).exists():
            print(f"latency: no {base.deploy} (make train-v4 and make train-lvm write it; or "
                  f"--synthetic 36000)", file=sys.stderr)
            return 2
        contexts = bench_contexts(base.deploy)
        runs = layout_runs(args, layouts)
        report = {"deploy": base.deploy, "synthetic_rows": args.synthetic or None,
                  "cpus": os.cpu_count(), "load_avg_at_start": list(os.getloadavg()),
                  "targets": TARGETS, "layouts": {}}
        report["layouts"] = measure_layouts(args, base, runs, layouts, contexts, tmp)
        report["in_process"] = in_process(base.deploy, contexts, args.n)
        print_reference(report, runs)
        report["load_avg_at_end"] = list(os.getloadavg())
    save_report(args.out, report, NOISY.format(report["load_avg_at_start"][0]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Chaos: the serving set under load while its processes are killed and its deploy swapped.

    python -m benchmarks.chaos --deploy runs/wikipedia_vital_bank/deploy.json     (make chaos)
    python -m benchmarks.chaos --deploy A.json --deploy-b B.json --seconds 90
    python -m benchmarks.chaos --synthetic 36000 --seconds 60    # no trained deploy: a dry run

The default layout (serving/serving.yaml: two processes per server, on fresh loopback ports)
serves `--callers` concurrent CascadeClients (retries on) sending contexts as vectors, for
`--seconds`, while this SIGKILLs, in turn, one LVM process, one TMD process, one stage-1
process, one front process, then both LVM processes, and swaps the deploy to B and back to A
(SIGHUP to the supervisor after replacing the deploy.json it serves). Deploy B, unless given:
deploy A with its other stage 1, the trained v4 checkpoint its gate judged against the
heuristic (`gate.json` best_checkpoint) when A serves the heuristic, else the heuristic.

Targets (issue 23): zero failed calls while one process of each server is alive; after both
LVM processes die, degraded answers only, then full answers within 10 s (the restart's load
included); zero failed calls across both swaps, each answer naming the deploy that served it;
the set's PSS after the run within 10% of before. Prints a timeline (calls/s, degraded/s,
errors/s) and writes it with the verdicts to benchmarks/results/chaos.json and chaos.png.
Timings depend on what else runs on the machine: say so beside every number.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import yaml

from benchmarks.latency import bench_contexts, synthetic_deploy
from cascade.bank import write_json
from cascade.deploy import read_deploy, resolve
from serving.client import CascadeClient
from serving.config import DEFAULT_CONFIG, STAGES, load_config
from serving.harness import ServingSet, free_port
from serving.swap import deploy_id

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "chaos.json"
# (fraction of the run, what happens): each kill in turn, then the two swaps.
EVENTS = ((0.10, "kill one lvm"), (0.22, "kill one tmd"), (0.34, "kill one stage1"),
          (0.46, "kill one front"), (0.58, "kill both lvm"), (0.72, "swap to B"),
          (0.86, "swap to A"))
TARGETS = {"failed_calls": 0, "full_again_after_both_lvm_s": 10.0, "failed_calls_in_swaps": 0,
           "pss_growth": 0.10}


def absolute_deploy(src: str, out: Path, **changes) -> Path:
    """deploy.json `src` written to `out` with every file it names as an absolute path (so it
    reads the same from another folder), and `changes` applied."""
    d = read_deploy(src)
    d["bank"] = str(resolve(src, d["bank"]).resolve())
    if d.get("checkpoint"):
        d["checkpoint"] = str(resolve(src, d["checkpoint"]).resolve())
    if isinstance(d.get("lvm"), dict) and d["lvm"].get("checkpoint"):
        d["lvm"] = dict(d["lvm"], checkpoint=str(resolve(src, d["lvm"]["checkpoint"]).resolve()))
    d.update(changes)
    out.write_text(json.dumps(d, indent=1))
    return out


def other_stage1(src: str, out: Path) -> tuple[Path, str]:
    """Deploy A with its other stage 1 (v4 <-> heuristic) and what that is."""
    from cascade.bank import sha256_file

    d = read_deploy(src)
    if d["stage1"] == "v4":
        return (absolute_deploy(src, out, stage1="heuristic", checkpoint=None,
                                checkpoint_sha256=None, reason="chaos: the heuristic swapped "
                                "in for v4"), "A with the heuristic in place of v4")
    gate = json.loads(resolve(src, d.get("gate", "")).read_text()) if d.get("gate") else {}
    ckpt = gate.get("best_checkpoint")
    if not ckpt or not resolve(src, ckpt).exists():
        raise SystemExit(f"chaos: {src} serves the heuristic and names no v4 checkpoint "
                         f"(gate.json best_checkpoint); give --deploy-b")
    path = str(resolve(src, ckpt).resolve())
    return (absolute_deploy(src, out, stage1="v4", checkpoint=path,
                            checkpoint_sha256=sha256_file(path),
                            reason="chaos: the trained v4 its gate judged, swapped in"),
            f"A with its trained v4 checkpoint {ckpt} in place of the heuristic")


def set_config(deploy: Path, work: Path) -> Path:
    """The shipped serving.yaml (two processes per server) on fresh loopback ports."""
    data = yaml.safe_load(DEFAULT_CONFIG.read_text())
    data["deploy"] = str(deploy)
    data["supervisor"]["pid_file"] = str(work / "serving.pid")
    for name in ("front", *STAGES):
        addresses = [f"127.0.0.1:{free_port()}"]
        if name == "stage1":
            data[name]["shards"] = [addresses]
        else:
            data[name]["addresses"] = addresses
        data[name]["metrics_port"] = 0
    path = work / "serving.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def children(pid: int) -> dict[str, list[int]]:
    """The supervisor's server processes now, by server name (from /proc)."""
    out: dict[str, list[int]] = {}
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            ppid = int((p / "stat").read_text().rsplit(")", 1)[1].split()[1])
            cmd = (p / "cmdline").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        if ppid == pid and b"--serve" in cmd:
            out.setdefault(cmd[cmd.index(b"--serve") + 1].decode(), []).append(int(p.name))
    return out


def pss_mb(pids: list[int]) -> float:
    """Proportional set size of these processes together (shared pages split), MiB."""
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total / 1024


def set_pss(pid: int) -> float:
    return pss_mb([pid, *[c for cs in children(pid).values() for c in cs]])


def replace(src: Path, dst: Path) -> None:
    tmp = dst.with_suffix(".tmp")
    shutil.copy(src, tmp)
    os.replace(tmp, dst)


def deploys(args, work: Path) -> tuple[Path, Path, str]:
    """Deploys A and B (absolute paths, in `work`) and what B is."""
    if not args.synthetic:
        a = absolute_deploy(args.deploy, work / "a.json")
        if args.deploy_b:
            return a, absolute_deploy(args.deploy_b, work / "b.json"), f"--deploy-b {args.deploy_b}"
        return (a, *other_stage1(args.deploy, work / "b.json"))
    src = synthetic_deploy(args.synthetic, work)
    a = absolute_deploy(src, work / "a.json")
    # Dry run only: B differs from A by its LVM's initial weights (not trained).
    import torch

    from cascade.bank import load_bank, sha256_file
    from cascade.lvm import Lvm, LvmConfig, save_lvm
    torch.manual_seed(1)
    save_lvm(work / "lvm_b.pt", Lvm(LvmConfig(dim=384)),
             load_bank(read_deploy(src)["bank"]).fingerprint())
    b = absolute_deploy(src, work / "b.json", lvm={"checkpoint": str(work / "lvm_b.pt"),
                                                   "sha256": sha256_file(work / "lvm_b.pt")})
    return a, b, "synthetic dry run: A's LVM at other initial weights (NOT trained)"


def call_loop(seed: int, cfg, contexts: list[np.ndarray], timeout: float,
              stop: threading.Event, records: list[tuple]) -> None:
    """One caller: random contexts as vectors until `stop`, each call recorded as (start, end,
    "ok" | "degraded" | status code, deploy, reason)."""
    rng = np.random.default_rng(seed)
    with CascadeClient.from_config(cfg, timeout=timeout, retries=2) as client:
        while not stop.is_set():
            ctx = contexts[rng.integers(len(contexts))]
            t = time.monotonic()
            try:
                r = client.search_vectors(ctx)
                records.append((t, time.monotonic(), "degraded" if r.degraded else "ok",
                                r.deploy, r.degraded_reason))
            except grpc.RpcError as e:
                records.append((t, time.monotonic(), e.code().name, "", e.details()))


def fire(what: str, s: ServingSet, swap_to: dict[str, Path], live: Path, ids: dict[str, str],
         t0: float, seconds: float) -> dict:
    """One event of EVENTS on the running set: SIGKILL one or both processes of a server, or
    a deploy swapped in under `live` and SIGHUP (waiting up to `seconds` for its verdict)."""
    at = time.monotonic()
    event = {"t": round(at - t0, 2), "event": what}
    if what.startswith("kill"):
        pids = children(s.proc.pid).get(what.split()[-1], [])
        victims = pids if what.startswith("kill both") else pids[:1]
        for pid in victims:
            os.kill(pid, signal.SIGKILL)
        event["pids"] = victims
        return event
    to = what.split()[-1]
    replace(swap_to[to], live)
    os.kill(s.proc.pid, signal.SIGHUP)
    done = s.wait_for_any(("swap done", "swap REFUSED"), at, seconds)
    event.update(deploy=ids[to], done_t=round(done[0] - t0, 2) if done else None,
                 line=done[1] if done else "no answer")
    return event


def run(args) -> dict:
    work = Path(tempfile.mkdtemp(prefix="chaos-"))
    a, b, b_is = deploys(args, work)
    ids = {"A": deploy_id(a), "B": deploy_id(b)}
    (work / "live").mkdir()
    live = work / "live" / "deploy.json"
    shutil.copy(a, live)
    config = set_config(live, work)
    cfg = load_config(config)
    contexts = bench_contexts(str(a), n=200)
    print(f"deploy A {ids['A']} ({read_deploy(a)['stage1']}), B {ids['B']} "
          f"({read_deploy(b)['stage1']}: {b_is}); {args.callers} callers, {args.seconds:.0f} s, "
          f"contexts as vectors; work folder {work}", flush=True)
    try:
        s = ServingSet(config, ready_timeout=None, echo=True)
    except RuntimeError as e:
        raise SystemExit(f"chaos: {e}") from None
    records: list[tuple] = []  # (start, end, "ok"|"degraded"|code, deploy, reason)
    stop = threading.Event()
    events: list[dict] = []
    try:
        for c in range(args.callers):
            threading.Thread(target=call_loop, args=(c, cfg, contexts, args.timeout, stop,
                                                     records), daemon=True).start()
        time.sleep(args.warmup)
        pss_before = set_pss(s.proc.pid)
        t0 = time.monotonic()
        for frac, what in EVENTS:
            time.sleep(max(0.0, t0 + frac * args.seconds - time.monotonic()))
            events.append(fire(what, s, {"A": a, "B": b}, live, ids, t0, args.seconds))
            print(f"{events[-1]['t']:7.2f} s  {what}", flush=True)
        time.sleep(max(0.0, t0 + args.seconds - time.monotonic()))
    finally:
        stop.set()
        time.sleep(args.timeout + 0.5)  # the calls in flight end
        pss_after = set_pss(s.proc.pid)
        s.stop(120)
    return analyse(records, events, t0, args, ids, b_is, pss_before, pss_after, s.stamped)


def analyse(records, events, t0, args, ids, b_is, pss_before, pss_after, lines) -> dict:
    recs = sorted((r for r in records if r[0] >= t0), key=lambda r: r[0])
    seconds = int(np.ceil(args.seconds))
    timeline = [{"t": i, "calls": 0, "degraded": 0, "errors": 0} for i in range(seconds + 1)]
    for _, end, status, *_ in recs:  # by the second each call ended in
        row = timeline[min(int(end - t0), seconds)]
        row["calls"] += 1
        row["degraded"] += status == "degraded"
        row["errors"] += status not in ("ok", "degraded")
    failed = [r for r in recs if r[2] not in ("ok", "degraded")]
    both = next(e for e in events if e["event"] == "kill both lvm")
    kill_t = t0 + both["t"]
    nxt = next((t0 + e["t"] for e in events if e["t"] > both["t"]), t0 + args.seconds)
    lvm_degraded = [r for r in recs if kill_t <= r[0] < nxt and r[2] == "degraded"
                    and "lvm" in r[4]]
    full_after = next((r for r in recs if r[0] > (lvm_degraded[-1][0] if lvm_degraded
                                                   else kill_t) and r[2] == "ok"), None)
    full_again_s = (full_after[1] - kill_t) if full_after else None
    swaps = []
    for e in (e for e in events if e["event"].startswith("swap")):
        start = t0 + e["t"]
        end = t0 + (e["done_t"] if e["done_t"] is not None else args.seconds) + 1.0
        until = next((t0 + x["t"] for x in events if x["t"] > e["t"]), t0 + args.seconds)
        within = [r for r in recs if start <= r[0] <= end]
        # Every answer begun after "swap done" and before the next event names the new deploy.
        after = [r for r in recs if e["done_t"] is not None and t0 + e["done_t"] < r[0] < until
                 and r[2] in ("ok", "degraded")]
        swaps.append({**e, "calls": len(within),
                      "failed": sum(r[2] not in ("ok", "degraded") for r in within),
                      "answers_after_done_naming_the_old_deploy":
                          sum(r[3] != e["deploy"] for r in after)})
    answered = [r for r in recs if r[2] in ("ok", "degraded")]
    growth = (pss_after - pss_before) / pss_before if pss_before else None
    result = {
        "benchmark": "chaos", "machine": f"{os.cpu_count()} cores, shared with other work",
        "callers": args.callers, "seconds": args.seconds, "timeout_s": args.timeout,
        "form": "vectors", "layout": "serving/serving.yaml (2 processes per server)",
        "deploys": ids, "deploy_b_is": b_is,
        "calls": len(recs), "answered": len(answered),
        "degraded": sum(r[2] == "degraded" for r in recs),
        "failed": len(failed), "failed_by_code": {c: sum(r[2] == c for r in failed)
                                                   for c in sorted({r[2] for r in failed})},
        "failed_examples": [{"t": round(r[0] - t0, 2), "code": r[2], "details": r[4][:200]}
                            for r in failed[:10]],
        "answers_naming_no_deploy": sum(not r[3] for r in answered),
        "answers_by_deploy": {k: sum(r[3] == v for r in answered) for k, v in ids.items()},
        "both_lvm": {"degraded_answers": len(lvm_degraded),
                     "failed": sum(kill_t <= r[0] < nxt for r in failed),
                     "full_again_after_s": None if full_again_s is None
                     else round(full_again_s, 2)},
        "swaps": swaps, "pss_mb": {"before": round(pss_before, 1), "after": round(pss_after, 1),
                                   "growth": None if growth is None else round(growth, 4)},
        "events": events, "timeline": timeline, "targets": TARGETS,
        "supervisor": [f"{t - t0:.2f} {x}" for t, x in lines if t >= t0],
    }
    result["verdicts"] = {
        "failed_calls": len(failed) <= TARGETS["failed_calls"],
        "full_again_after_both_lvm_s": full_again_s is not None
        and full_again_s <= TARGETS["full_again_after_both_lvm_s"],
        "failed_calls_in_swaps": sum(x["failed"] for x in swaps) <= 0
        and all(x["done_t"] is not None for x in swaps)
        and not result["answers_naming_no_deploy"],
        "pss_growth": growth is not None and growth <= TARGETS["pss_growth"],
    }
    return result


def report(r: dict) -> None:
    print("\n   t  calls/s  degraded/s  errors/s")
    marks = {int(e["t"]): e["event"] for e in r["events"]}
    for row in r["timeline"]:
        print(f"{row['t']:4d}  {row['calls']:7d}  {row['degraded']:10d}  {row['errors']:8d}"
              f"  {marks.get(row['t'], '')}")
    print(f"\ncalls {r['calls']}, answered {r['answered']} ({r['degraded']} degraded), failed "
          f"{r['failed']} {r['failed_by_code']}")
    b = r["both_lvm"]
    print(f"both LVM killed: {b['degraded_answers']} degraded answers, {b['failed']} failed, "
          f"full answers again after {b['full_again_after_s']} s (target <= "
          f"{TARGETS['full_again_after_both_lvm_s']:.0f} s)")
    for sw in r["swaps"]:
        print(f"{sw['event']}: done at {sw['done_t']} s ({sw['line']}); {sw['calls']} calls "
              f"around it, {sw['failed']} failed, "
              f"{sw['answers_after_done_naming_the_old_deploy']} answers after it naming the "
              f"old deploy")
    p = r["pss_mb"]
    print(f"PSS of the set: {p['before']} MiB before, {p['after']} MiB after ({p['growth']:+.1%}"
          f"; target within {TARGETS['pss_growth']:.0%})" if p["growth"] is not None else "")
    print("verdicts: " + ", ".join(f"{k} {'PASS' if v else 'MISS'}"
                                   for k, v in r["verdicts"].items()))


def plot(r: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = [x["t"] for x in r["timeline"]]
    fig, ax = plt.subplots(figsize=(11, 4))
    for key, colour in (("calls", "tab:blue"), ("degraded", "tab:orange"),
                        ("errors", "tab:red")):
        ax.plot(t, [x[key] for x in r["timeline"]], label=f"{key}/s", color=colour)
    for e in r["events"]:
        ax.axvline(e["t"], color="grey", lw=0.8, ls="--")
        ax.text(e["t"], ax.get_ylim()[1] * 0.98, e["event"], rotation=90, va="top",
                fontsize=7)
    ax.set_xlabel("seconds")
    ax.set_ylabel("per second")
    ax.set_title(f"chaos: {r['callers']} callers, deploys {r['deploys']['A']} / "
                 f"{r['deploys']['B']}")
    ax.legend(loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.chaos",
                                description=__doc__.split("\n")[0])
    p.add_argument("--deploy", default="runs/wikipedia_vital_bank/deploy.json")
    p.add_argument("--deploy-b", help="the deploy to swap to and back from (default: A with "
                                      "its other stage 1)")
    p.add_argument("--synthetic", type=int, default=0,
                   help="dry run on a synthetic bank of this many rows (not a trained deploy)")
    p.add_argument("--seconds", type=float, default=90.0)
    p.add_argument("--callers", type=int, default=8)
    p.add_argument("--timeout", type=float, default=5.0, help="each call's deadline, s")
    p.add_argument("--warmup", type=float, default=5.0, help="load before the clock starts, s")
    p.add_argument("--out", default=str(RESULTS))
    args = p.parse_args(argv)
    if not args.synthetic and not Path(args.deploy).exists():
        print(f"chaos: no {args.deploy} (make train-v4, make train-lvm)", file=sys.stderr)
        return 2
    r = run(args)
    report(r)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json(out, r)
    plot(r, out.with_suffix(".png"))
    print(f"wrote {out} and {out.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

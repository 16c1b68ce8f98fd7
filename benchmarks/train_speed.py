"""Training cost as the work grows: pairs/s and peak RSS of one v4 epoch at the checklist's
configuration, across synthetic banks of 50k / 500k / 1M rows and contexts of 8 / 100 vectors.

    python -m benchmarks.train_speed                                  # the grid (make bench-scale)
    python -m benchmarks.train_speed --rows 50000 --contexts 8 --pairs 256    # a quick look

Each cell runs the real trainer (`python -m training.train_v4 --config v4_checklist.yaml`:
GRU query tower, batch 32 x 16, memory bank 50k, the near-duplicate filter on) for one epoch in
its own child process, with 16 hard negatives mined that epoch over the whole bank (the cos window
0-1, so every pair gets its 16), and reads the child's own peak RSS from the OS (`wait4`). The
trainer's history splits the epoch into query encoding, mining (search + filter), forward/backward
and eval (exact search + metrics); building the mining index happens once per run (IVF above
200k rows) and is shown apart.

An epoch is bounded to --pairs pairs (80/10/10 by article, as every pairs file), so the grid fits
in minutes on 2 cores. Costs per pair do not depend on how many pairs an epoch has, except the
memory bank's share of the loss: it holds at most the pairs seen so far, so a bounded epoch
under-counts the loss against a full 50k memory bank. `--memory-fill` measures that term with the
trainer's own towers and loss (one optimizer micro-batch with the memory bank empty and full) and
the table gives the steady-state estimate beside the measured figure.

Banks and pairs are cached under --work (synthetic data, never reported as real data).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks.common import created
from cascade.bank import load_bank, write_json
from cascade.pairs import Pairs, save_pairs
from cascade.split import SplitSpec, row_sides

ROWS = (50_000, 500_000, 1_000_000)
CONTEXTS = (8, 100)
PARTS = ("encode", "mine", "train", "eval")
MEAN_CHUNKS = 150  # synthetic articles long enough for 100-vector contexts
SCHEDULE = "1-1:16@0-1"  # one epoch with 16 mined negatives per pair
CONFIG = "v4_checklist.yaml"
MEMORY, BATCH = 50_000, 32  # the checklist config's memory bank and micro-batch
# The original system's trainer on this 2-core machine, 768-d, contexts of 8, our default data
# (quoted from the issue, not measured here).
REFERENCE = {"pairs_per_s": 92.0, "peak_rss_gb": 2.1, "dim": 768, "context": 8}


def bank_path(work: Path, rows: int, dim: int) -> Path:
    return work / f"synth_{rows}x{dim}.npz"


def ensure_bank(work: Path, rows: int, dim: int) -> Path:
    """The synthetic bank, generated in a child process (the parent stays small) if missing."""
    path = bank_path(work, rows, dim)
    if not path.exists():
        cmd = [sys.executable, "-m", "training.synth_bank", "--n", str(rows), "--dim", str(dim),
               "--mean-chunks", str(MEAN_CHUNKS), "--seed", "0", "--out", str(path)]
        print(f"building {path} ...", flush=True)
        subprocess.run(cmd, check=True)
    return path


def build_pairs(bank_file: Path, context: int, n_pairs: int, seed: int = 0) -> Path:
    """`n_pairs` pairs with full `context`-vector windows, drawn uniformly over the eligible
    targets of the bank (sampled directly: expanding every window of a 1M-row bank and filtering
    its near-duplicates costs minutes and is not what is measured here)."""
    path = bank_file.with_name(f"{bank_file.stem}_ctx{context}_{n_pairs}.npz")
    if path.exists():
        return path
    bank = load_bank(bank_file)
    starts, ends = bank.article_bounds()
    eligible = np.maximum(0, ends - starts - context)  # targets at positions context..len-1
    rng = np.random.default_rng(seed)
    flat = np.sort(rng.choice(int(eligible.sum()), size=n_pairs, replace=False))
    article = np.searchsorted(np.cumsum(eligible), flat, side="right")
    offset = flat - np.concatenate([[0], np.cumsum(eligible)])[article]
    target = starts[article] + context + offset
    spec = SplitSpec(key="article_index")  # synthetic articles have no source id
    split = row_sides(bank, spec)[target]
    pairs = Pairs(target - context, target, target.astype(np.int64), split, bank.fingerprint(),
                  {"benchmark": "train_speed", "context": context, "split": spec.to_dict()})
    save_pairs(pairs, path)
    return path


def run_cell(work: Path, bank_file: Path, pairs_file: Path, tag: str, threads: int) -> dict:
    """One epoch of the real trainer in a child process: its history and its own peak RSS."""
    out = work / "runs" / tag
    shutil.rmtree(out, ignore_errors=True)  # a fresh run, never the rest of an earlier one
    log = work / "logs" / f"{tag}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "training.train_v4", "--config", CONFIG, "--bank",
           str(bank_file), "--pairs", str(pairs_file), "--out", str(out), "--log-dir",
           str(work / "logs"), "--epochs", "1", "--mine-schedule", SCHEDULE, "--name", tag]
    env = {**os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {})}
    load_before = os.getloadavg()[0]
    t0 = time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env)
        _, status, usage = os.wait4(proc.pid, 0)  # this child's own rusage, not all children's
        proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - t0
    cpu = usage.ru_utime + usage.ru_stime
    if proc.returncode != 0:
        raise SystemExit(f"{tag}: training failed (exit {proc.returncode}), see {log}:\n"
                         + log.read_text()[-2000:])
    h = json.loads((out / "history.json").read_text())[0]
    train_n = round(h["pairs_per_s"] * h["seconds_train"])
    return {"train_pairs": train_n, "wall_s": round(wall, 1),
            "peak_rss_gb": round(usage.ru_maxrss / 1024 / 1024, 3),  # Linux: kilobytes
            **{f"{p}_s": round(h[f"seconds_{p}"], 2) for p in PARTS},
            "epoch_s": round(h["seconds"], 2), "index_build_s": round(h["seconds_index"], 2),
            "pairs_per_s_train": round(h["pairs_per_s"], 1),
            "pairs_per_s_all_in": round(train_n / h["seconds"], 1),
            "mined_per_pair": h.get("mined_per_pair"),
            # On a shared machine: the CPU the child got (2.0 = both cores of a 2-core machine
            # all the time) and the 1-minute load average around it.
            "cpu_s": round(cpu, 1), "cpu_share": round(cpu / wall, 2),
            "load_avg_before": round(load_before, 1),
            "load_avg_after": round(os.getloadavg()[0], 1), "log": str(log),
            "command": " ".join(cmd[1:])}


def memory_term(dim: int, context: int, sizes: tuple[int, ...], repeats: int = 2) -> dict:
    """Seconds of one micro-batch through the checklist config's own towers and loss, forward +
    backward (32 pairs, 16 hard negatives each), with the memory bank holding each of `sizes`
    rows: {size: median seconds}."""
    import torch

    from cascade.towers import build_towers
    from training.config import load_config
    from training.losses import contrastive_loss

    cfg = load_config(CONFIG)
    cfg.model.dim = dim
    query, doc = build_towers(cfg.model)
    g = torch.Generator().manual_seed(0)

    def unit(*shape: int) -> torch.Tensor:
        x = torch.randn(*shape, generator=g)
        return x / x.norm(dim=-1, keepdim=True)

    b = cfg.bs
    ctx, mask = unit(b, context, dim), torch.ones(b, context, dtype=torch.bool)
    pos_rows = torch.arange(b) * 1000 + context
    starts, ends = pos_rows - context, pos_rows
    hard, hard_rows = unit(b, 16, dim), pos_rows[:, None] + 1 + torch.arange(16)
    out = {}
    for size in sizes:
        mem, mem_rows = unit(size, dim), 10**7 + torch.arange(size)
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            parts = contrastive_loss(query(ctx, mask), doc(unit(b, dim)), pos_rows, starts, ends,
                                     mem, mem_rows, doc(hard.reshape(-1, dim)).reshape(b, 16, dim),
                                     hard_rows, cfg.tau, cfg.margin, cfg.margin_weight)
            parts["loss"].backward()
            times.append(time.perf_counter() - t)
        out[size] = float(np.median(times))
    return out


def steady_state(cell: dict, term: dict, memory_size: int, bs: int) -> float:
    """Forward/backward pairs/s with the memory bank full: the measured epoch's memory held
    on average half of its train pairs; add the measured cost of the rows it lacked."""
    mean_fill = min(memory_size, cell["train_pairs"] / 2)
    per_row = (term[memory_size] - term[0]) / memory_size  # seconds per memory row, per batch
    extra = cell["train_pairs"] / bs * per_row * (memory_size - mean_fill)
    return cell["train_pairs"] / (cell["train_s"] + extra)


def growth(cells: list[dict]) -> list[str]:
    """Plain sentences on how pairs/s changes with bank rows and context, and what dominates."""
    lines = []
    by = {(c["rows"], c["context"]): c for c in cells}
    rows = sorted({c["rows"] for c in cells})
    contexts = sorted({c["context"] for c in cells})
    for ctx in contexts:
        have = [r for r in rows if (r, ctx) in by]
        if len(have) > 1:
            a, b = by[(have[0], ctx)], by[(have[-1], ctx)]
            slope = np.log(b["pairs_per_s_all_in"] / a["pairs_per_s_all_in"]) / np.log(
                have[-1] / have[0])
            lines.append(f"context {ctx}: {have[0]:,} -> {have[-1]:,} rows, all-in pairs/s "
                         f"{a['pairs_per_s_all_in']:.1f} -> {b['pairs_per_s_all_in']:.1f} "
                         f"(log-log slope {slope:+.2f}); peak RSS {a['peak_rss_gb']:.2f} -> "
                         f"{b['peak_rss_gb']:.2f} GB; one-time index build "
                         f"{a['index_build_s']:.0f} -> {b['index_build_s']:.0f} s")
    for r in rows:
        have = [c for c in contexts if (r, c) in by]
        if len(have) > 1:
            a, b = by[(r, have[0])], by[(r, have[-1])]
            lines.append(f"{r:,} rows: context {have[0]} -> {have[-1]}: forward/backward "
                         f"pairs/s {a['pairs_per_s_train']:.1f} -> {b['pairs_per_s_train']:.1f} "
                         f"({b['pairs_per_s_train'] / a['pairs_per_s_train']:.2f}x)")
    for c in cells:
        part = max(PARTS, key=lambda p: c[f"{p}_s"])
        share = c[f"{part}_s"] / c["epoch_s"]
        lines.append(f"{c['rows']:,} rows x context {c['context']}: {part} dominates "
                     f"({100 * share:.0f}% of the epoch)")
    return lines


def table(cells: list[dict]) -> str:
    head = ("| bank rows | context | train pairs | encode s | mine s | fwd/bwd s | eval s | "
            "epoch s | pairs/s fwd/bwd | pairs/s all-in | all-in, memory bank full (est.) | "
            "index build s (once per run) | peak RSS GB | CPU share, load |")
    rows = [head, "|" + "---|" * 14]
    for c in cells:
        rows.append(f"| {c['rows']:,} | {c['context']} | {c['train_pairs']:,} | "
                    f"{c['encode_s']:.1f} | {c['mine_s']:.1f} | {c['train_s']:.1f} | "
                    f"{c['eval_s']:.1f} | {c['epoch_s']:.1f} | {c['pairs_per_s_train']:.1f} | "
                    f"{c['pairs_per_s_all_in']:.1f} | "
                    f"{c.get('pairs_per_s_all_in_full_memory_est', '-')} | "
                    f"{c['index_build_s']:.1f} | {c['peak_rss_gb']:.2f} | "
                    f"{c.get('cpu_share', float('nan')):.2f}, {c.get('load_avg_before', 0):.0f} |")
    rows.append(f"| original trainer, our default data (quoted, not measured here) | "
                f"{REFERENCE['context']} | | | | | | | | ~{REFERENCE['pairs_per_s']:.0f} | | | "
                f"{REFERENCE['peak_rss_gb']} | |")
    return "\n".join(rows)


def plot(cells: list[dict], path: Path) -> None:
    """Log-log: pairs/s (all-in and forward/backward only) and peak RSS against bank rows."""
    from matplotlib.ticker import LogLocator, NullFormatter, ScalarFormatter

    from training.plots import legend_below, new_figure, save_figure
    fig, (ax1, ax2) = new_figure(ncols=2, width=11, height=4.8)
    for i, ctx in enumerate(sorted({c["context"] for c in cells})):
        colour = f"C{i}"
        sub = sorted((c for c in cells if c["context"] == ctx), key=lambda c: c["rows"])
        x = [c["rows"] for c in sub]
        ax1.plot(x, [c["pairs_per_s_all_in"] for c in sub], "o-", color=colour,
                 label=f"context {ctx}: all-in (encode + mine + fwd/bwd + eval)")
        ax1.plot(x, [c["pairs_per_s_train"] for c in sub], "s--", color=colour,
                 label=f"context {ctx}: forward/backward only")
        ax2.plot(x, [c["peak_rss_gb"] for c in sub], "o-", color=colour, label=f"context {ctx}")
    ax1.axhline(REFERENCE["pairs_per_s"], color="grey", linestyle=":",
                label="original trainer, context 8, all-in (quoted)")
    ax2.axhline(REFERENCE["peak_rss_gb"], color="grey", linestyle=":",
                label="original trainer, context 8 (quoted)")
    for ax, ylabel, title in ((ax1, "training pairs / s", "Throughput of one epoch"),
                              (ax2, "peak RSS (GB)", "Peak memory of the trainer process")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        rows = sorted({c["rows"] for c in cells})
        ax.set_xticks(rows, [f"{r / 1e6:g}M" if r >= 1e6 else f"{r / 1e3:g}k" for r in rows])
        ax.set_xlim(min(rows) / 1.5, max(rows) * 1.5)
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.yaxis.set_major_formatter(ScalarFormatter())
        ax.yaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("bank rows (768-d, synthetic)")
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
        legend_below(ax, ncol=1)
    save_figure(fig, path)


def replot(json_path: Path) -> Path:
    """The plot again from a results JSON (no re-measuring)."""
    cells = json.loads(json_path.read_text())["cells"]
    plot(cells, json_path.with_suffix(".png"))
    return json_path.with_suffix(".png")


def run_grid(args, rows: list[int], contexts: list[int], work: Path, out: Path) -> list[dict]:
    """One trainer run per (bank size, context length) cell; each finished cell is written to
    `out` at once (a partial JSON), so a grid stopped half-way keeps what it measured."""
    cells = []
    for n in rows:
        bank_file = ensure_bank(work, n, args.dim)
        for ctx in contexts:
            pairs_file = build_pairs(bank_file, ctx, args.pairs)
            tag = f"speed_{n}_ctx{ctx}"
            print(f"cell {n:,} rows x context {ctx} ...", flush=True)
            cell = {"rows": n, "context": ctx, "dim": args.dim,
                    **run_cell(work, bank_file, pairs_file, tag, args.threads)}
            cells.append(cell)
            partial = {"benchmark": "train_speed", "complete": False, "cells": cells}
            write_json(out, partial)
            print(f"  {cell['pairs_per_s_all_in']:.1f} pairs/s all-in, "
                  f"{cell['pairs_per_s_train']:.1f} fwd/bwd, peak RSS {cell['peak_rss_gb']:.2f} "
                  f"GB, {cell['wall_s']:.0f} s wall", flush=True)
    return cells


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.train_speed",
                                description=__doc__.split("\n")[0])
    p.add_argument("--rows", default=",".join(map(str, ROWS)), help="bank sizes, comma-separated")
    p.add_argument("--contexts", default=",".join(map(str, CONTEXTS)),
                   help="context lengths (vectors), comma-separated")
    p.add_argument("--dim", type=int, default=768, help="vector dimension")
    p.add_argument("--pairs", type=int, default=256,
                   help="pairs per cell (80/10/10 train/val/test by article)")
    p.add_argument("--threads", type=int, default=0,
                   help="OMP_NUM_THREADS of each trainer child (0: torch's default)")
    p.add_argument("--work", default="artifacts/bench_scale", help="cache of banks, pairs, runs")
    p.add_argument("--out", default="benchmarks/results/train_speed.json", help="results JSON")
    p.add_argument("--no-memory-term", action="store_true",
                   help="skip measuring the full memory bank's share of the loss")
    p.add_argument("--replot", metavar="JSON", default=None,
                   help="only redraw the plot of an earlier results JSON")
    args = p.parse_args(argv)
    if args.replot:
        print(f"wrote {replot(Path(args.replot))}")
        return 0
    try:
        rows = [int(x) for x in args.rows.split(",")]
        contexts = [int(x) for x in args.contexts.split(",")]
    except ValueError:
        print(f"error: --rows {args.rows!r} / --contexts {args.contexts!r}: integers, "
              f"comma-separated", file=sys.stderr)
        return 2
    if min(rows) < 1000 or min(contexts) < 1 or args.pairs < 16:
        print("error: need --rows >= 1000, --contexts >= 1, --pairs >= 16", file=sys.stderr)
        return 2
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    cells = run_grid(args, rows, contexts, work, out)
    # The memory bank's term, measured once per context length with the trainer's own loss.
    terms = {} if args.no_memory_term else {
        ctx: memory_term(args.dim, ctx, (0, MEMORY)) for ctx in contexts}
    for c in (c for c in cells if c["context"] in terms):
        steady = steady_state(c, terms[c["context"]], MEMORY, BATCH)
        c["pairs_per_s_train_full_memory_est"] = round(steady, 1)
        c["pairs_per_s_all_in_full_memory_est"] = round(
            c["train_pairs"] / (c["epoch_s"] - c["train_s"] + c["train_pairs"] / steady), 1)
    notes = growth(cells) + [
        f"context {ctx}: one micro-batch of {BATCH} forward/backward takes {t[0]:.3f} s with an "
        f"empty memory bank, {t[MEMORY]:.3f} s with {MEMORY:,} rows"
        for ctx, t in terms.items()]
    print()
    print(table(cells))
    print()
    for line in notes:
        print(f"- {line}")
    plot_path = out.with_suffix(".png")
    plot(cells, plot_path)
    report = {"benchmark": "train_speed", "complete": True,
              "created": created(),
              "cpus": os.cpu_count(), "config": CONFIG, "mine_schedule": SCHEDULE,
              "pairs_per_cell": args.pairs, "cells": cells, "growth": notes,
              "memory_term_s": {str(ctx): {str(k): v for k, v in t.items()}
                                for ctx, t in terms.items()},
              "reference_quoted": REFERENCE, "plot": str(plot_path),
              "grid_wall_s": round(time.perf_counter() - t0, 1),
              "note": "synthetic banks; timings depend on the machine's load"}
    write_json(out, report)
    print(f"wrote {out} and {plot_path} ({report['grid_wall_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

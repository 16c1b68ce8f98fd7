"""The run's report.md: the final gate's methods side by side (scored by `cascade.methods`),
the history, plots, pre-flight and post-mortem.

    python -m training.report RUN_DIR      # re-render report.md and its plots from a finished run
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from cascade.bank import atomic_write
from training import plots
from training.config import ConfigError, load_config
from training.curriculum import parse_schedule
from training.postmortem import summary_table
from training.preflight import CheckResult, format_table

RANKS_FILE = "final_ranks.npz"  # the final gate's per-query target ranks, by method
CURVE_METHODS = ("heuristic", "last-vector", "oracle")  # drawn beside the trained model


def methods_markdown(table: dict, ks: tuple[int, ...]) -> str:
    head = "| method | " + " | ".join(f"R@{k} (95% CI)" for k in ks) + " | MRR | Δ |"
    sep = "|---" * (len(ks) + 3) + "|"
    rows = [head, sep]
    for name, m in table.items():
        cells = " | ".join(f"{m[f'recall@{k}']:.2f} ({m[f'recall@{k}_ci95'][0]:.1f}-"
                           f"{m[f'recall@{k}_ci95'][1]:.1f})" for k in ks)
        rows.append(f"| {name} | {cells} | {m['mrr']:.4f} | {m['margin']:.4f} |")
    return "\n".join(rows)


def write_report(path: Path, cfg, history: list[dict], result: dict) -> None:
    ks = tuple(cfg.eval_ks)
    lines = [f"# {cfg.name} report", "",
             f"Bank `{cfg.bank}`, pairs `{cfg.pairs}`, {cfg.epochs} epochs, "
             f"{cfg.model.kind} query tower, schedule `{cfg.mine_schedule}`.", ""]
    if result.get("verdict") == "aborted":
        lines += [f"**Aborted** at epoch {result['epoch']}: {result['reason']}.", ""]
    else:
        lines += [f"**Verdict: {result['verdict']}** ({result['metric']} {result['value']:.2f}%, "
                  f"best epoch {result['best_epoch']}). Stage 1: **{result['stage1']}**: "
                  f"{result['reason']}.", ""]
        if "methods" in result:
            lines += [f"## Test split ({result['test_pairs']:,} pairs from "
                      f"{result['test_articles']:,} articles), context rows excluded", "",
                      "best.pt was selected on the val split; the test split judges only. "
                      "95% CIs: bootstrap over articles (pairs of one article are correlated).",
                      "", methods_markdown(result["methods"], ks), ""]
        for key, d in result.get("vs_heuristic", {}).items():
            lines.append(f"- {cfg.label} vs heuristic on test, {key}: {d['diff']:+.2f} points "
                         f"(paired 95% CI over {d.get('clusters', d['n']):,} articles "
                         f"{d['ci95'][0]:+.2f} to {d['ci95'][1]:+.2f}, "
                         f"{'significant' if d['significant'] else 'not significant'})")
        lines.append("")
    if "mid_gate" in result:
        mg = result["mid_gate"]
        lines += [f"Mid-gate (epoch {mg['epoch']}): {mg['metric']} {mg['value']:.2f}% vs "
                  f"{mg['threshold']}%: {mg['status']} ({mg['note']}).", ""]
    lines += ["## Next actions", ""] + [f"- {a}" for a in result.get("actions", [])] + [""]
    lines += plot_section(path.parent, cfg, history, result)
    lines += checks_section(path.parent, cfg)
    lines += ["## History (val split: what selected best.pt)", "",
              "| epoch | loss | R@10 | R@500 | MRR | Δ | curriculum | s |",
              "|---|---|---|---|---|---|---|---|"]
    for h in history:
        lines.append(f"| {h['epoch']} | {h['loss']:.4f} | {h.get('recall@10', float('nan')):.2f} "
                     f"| {h.get('recall@500', float('nan')):.2f} | {h['mrr']:.4f} | "
                     f"{h['margin']:.4f} | {h['curriculum']} | {h['seconds']:.1f} |")
    text = "\n".join(lines) + "\n"
    atomic_write(path, lambda f: f.write(text.encode()))


def save_ranks(path: Path, ranks: dict[str, np.ndarray]) -> None:
    atomic_write(path, lambda f: np.savez(f, **ranks))


def plot_section(run_dir: Path, cfg, history: list[dict], result: dict) -> list[str]:
    """Draw the plots and return report.md's lines that show them."""
    ranks = None
    if (run_dir / RANKS_FILE).exists() and result.get("verdict") != "aborted":
        with np.load(run_dir / RANKS_FILE) as z:
            ranks = {name: z[name] for name in (cfg.label, *CURVE_METHODS) if name in z.files}
    links = plots.render(run_dir, history, parse_schedule(cfg.mine_schedule), cfg.gates,
                         cfg.abort, tuple(cfg.eval_ks), result.get("split", "val"), ranks)
    if not links:
        return []
    lines = ["## Plots", ""]
    for caption, rel in links:
        lines += [f"{caption}:", "", f"![{caption}]({rel})", ""]
    return lines


def checks_section(run_dir: Path, cfg) -> list[str]:
    """The pre-flight results (beside the pairs, where `training.preflight` writes them) and the
    post-mortem of the baseline run beside this one, when they exist."""
    lines = []
    preflight = Path(cfg.pairs).with_name("preflight_results.json")
    results = ([CheckResult(**r) for r in json.loads(preflight.read_text())]
               if preflight.exists() else [])
    checked = next((r.values.get("pairs", {}).get("path") for r in results
                    if r.name == "manifest"), None)
    # Several pairs files share a directory (pairs_v3, pairs_v4): show only this run's check.
    if results and checked and Path(checked).resolve() == Path(cfg.pairs).resolve():
        counts = {s: sum(r.status == s for r in results) for s in ("pass", "warning", "blocker")}
        lines += ["## Pre-flight", "",
                  f"`{preflight}`: {counts['pass']} pass, {counts['warning']} warning(s), "
                  f"{counts['blocker']} blocker(s).", "", "```", format_table(results), "```", ""]
    for postmortem in sorted(run_dir.parent.glob("*/postmortem.json")):
        try:
            table = summary_table(json.loads(postmortem.read_text()))
        except (KeyError, TypeError, ValueError) as e:  # a post-mortem of another format
            table = f"{postmortem}: not summarized ({type(e).__name__}: {e})"
        lines += [f"## Post-mortem of `{postmortem.parent.name}`", "", "```", table, "```", ""]
    return lines


def rerender(run_dir: Path) -> Path:
    """report.md and its plots again from a run directory's config, history and gate."""
    cfg = load_config(run_dir / "config.yaml")
    history = json.loads((run_dir / "history.json").read_text())
    result = json.loads((run_dir / "gate.json").read_text())
    write_report(run_dir / "report.md", cfg, history, result)
    return run_dir / "report.md"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.report",
                                description="Re-render a finished run's report.md and plots.")
    p.add_argument("run_dir", help="run directory (config.yaml, history.json, gate.json)")
    args = p.parse_args(argv)
    run_dir = Path(args.run_dir)
    missing = [f for f in ("config.yaml", "history.json", "gate.json")
               if not (run_dir / f).exists()]
    if missing:
        print(f"error: {run_dir}: no {missing[0]} (not a finished run directory)",
              file=sys.stderr)
        return 2
    try:
        out = rerender(run_dir)
    except (ConfigError, json.JSONDecodeError, KeyError) as e:
        print(f"error: {run_dir}: {e}", file=sys.stderr)
        return 2
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

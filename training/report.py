"""Side-by-side comparison of stage-1 methods on one split, and the run's report.md."""

from __future__ import annotations

from pathlib import Path

from cascade.bank import Bank, atomic_write
from cascade.evaluation import evaluate
from cascade.index import build_index
from cascade.pairs import Pairs
from cascade.stage1 import Stage1


def method_stage1(kind: str, source, bank: Bank) -> Stage1:
    """Stage 1 for one method over an exact index: a checkpoint's towers or a heuristic."""
    if kind == "checkpoint":
        return Stage1.from_checkpoint(source, bank)
    return Stage1(bank, heuristic=kind)


def compare_methods(bank: Bank, pairs: Pairs, methods: dict[str, tuple], ks: tuple[int, ...]
                    ) -> tuple[dict, dict]:
    """Evaluate each method on `pairs` with exact search: -> ({name: metrics}, {name: ranks}).

    Methods are ("checkpoint", path), ("exp_weighted" | "last_vector", None), or ("oracle",
    None): the target itself as the query, the ceiling any stage 1 could reach."""
    table, ranks = {}, {}
    for name, (kind, source) in methods.items():
        if kind == "oracle":
            table[name], ranks[name] = evaluate(bank.vectors[pairs.target], pairs, bank,
                                                build_index(bank.vectors, "flat"), ks)
        else:
            table[name], ranks[name] = method_stage1(kind, source, bank).evaluate(pairs, ks)
    return table, ranks


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
    lines += ["## History (val split: what selected best.pt)", "",
              "| epoch | loss | R@10 | R@500 | MRR | Δ | curriculum | s |",
              "|---|---|---|---|---|---|---|---|"]
    for h in history:
        lines.append(f"| {h['epoch']} | {h['loss']:.4f} | {h.get('recall@10', float('nan')):.2f} "
                     f"| {h.get('recall@500', float('nan')):.2f} | {h['mrr']:.4f} | "
                     f"{h['margin']:.4f} | {h['curriculum']} | {h['seconds']:.1f} |")
    text = "\n".join(lines) + "\n"
    atomic_write(path, lambda f: f.write(text.encode()))

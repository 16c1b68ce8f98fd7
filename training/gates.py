"""Recall gates and the verdict: success, partial, or data wall, and what to do next.

v4 passes only if it reaches the thresholds *and* beats the exp-weighted heuristic on the same
test split by more than the 95% CI (a bootstrap over articles); otherwise serving falls back to
the heuristic. The test split judges only: best.pt was selected on val.
"""

from __future__ import annotations

import numpy as np

from cascade.metrics import paired_difference
from training.config import GateConfig

# The checklist's post-v4 actions.
ACTIONS = {
    "success": [
        "Generate the v4 report (report.md in the run directory).",
        "Deploy: Query -> Two-Tower (v4) -> Top-500 -> LVM re-rank -> Top-50 -> TMD re-rank "
        "-> Top-10 (deploy.json names v4 as stage 1).",
        "Integration testing, then ship.",
    ],
    "partial": [
        "Generate the v4 report.",
        "Scale data to 100k pairs: ingest more articles, or lower --stride to 20 and raise "
        "--max-per-seq to 50.",
        "Run v5 with the same curriculum, starting from v4: --init-from <run>/checkpoints/best.pt.",
        "Target: cross the success threshold.",
    ],
    "data_wall": [
        "Generate the v4 report.",
        "Ship the exp-weighted heuristic as stage 1 in the interim (deploy.json does).",
        "Massive ingestion (10k -> 50k articles) and 200k-500k pairs.",
        "Longer term: alternative architectures (ColBERT, cross-encoder) or a two-tower + "
        "heuristic fusion.",
    ],
}
ABORT_ADVICE = [
    "Tighten the cos window: 0.84-0.96 -> 0.84-0.94 (--mine-schedule).",
    "Reduce the hard-negative count: 16 -> 8.",
    "Lower the temperature: --tau 0.05 -> 0.045.",
]


def mid_gate(value: float, gates: GateConfig) -> dict:
    if value >= gates.mid:
        status, note = "pass", "on track"
    elif value >= gates.mid - 5.0:
        status, note = "watch", "on track if the curriculum keeps working"
    else:
        status, note = "fail", "data volume issue: more pairs needed (100k+)"
    return {"epoch": gates.mid_epoch, "metric": gates.metric, "value": value,
            "threshold": gates.mid, "status": status, "note": note}


def final_verdict(value: float, gates: GateConfig) -> str:
    if value >= gates.success:
        return "success"
    if value >= gates.partial:
        return "partial"
    return "data_wall"


def decide(value: float, v4_ranks: np.ndarray, heuristic_ranks: np.ndarray, gates: GateConfig,
           ks: list[int], clusters: np.ndarray | None = None) -> dict:
    """The final gate: verdict by thresholds, and whether v4 beats the heuristic beyond the CI
    on the gated metric (and on recall@10, reported). `clusters` (the article of each query's
    target) makes the CI resample articles."""
    verdict = final_verdict(value, gates)
    gate_k = int(gates.metric.split("@")[1])  # config validation: gates.metric is a recall@k
    comparisons = {f"recall@{k}": paired_difference(v4_ranks, heuristic_ranks, k, clusters)
                   for k in sorted({gate_k, min(ks)})}
    gated = comparisons[f"recall@{gate_k}"]
    beats = gated["significant"] and gated["diff"] > 0
    stage1 = "v4" if verdict in ("success", "partial") and beats else "heuristic"
    if stage1 == "v4":
        reason = (f"v4 {gates.metric} {value:.2f}% reached the {verdict} gate and beats the "
                  f"heuristic by {gated['diff']:+.2f} points (95% CI {gated['ci95'][0]:+.2f} to "
                  f"{gated['ci95'][1]:+.2f})")
    elif not beats:
        reason = (f"v4 does not beat the heuristic beyond the 95% CI on {gates.metric} "
                  f"({gated['diff']:+.2f} points, CI {gated['ci95'][0]:+.2f} to "
                  f"{gated['ci95'][1]:+.2f}): serve the heuristic")
    else:
        reason = (f"v4 {gates.metric} {value:.2f}% is below the partial gate "
                  f"({gates.partial}%): data wall, serve the heuristic")
    actions = ACTIONS[verdict]
    if stage1 == "heuristic" and verdict != "data_wall":
        # Thresholds met but no significant win over the heuristic: it stays in service.
        actions = ["Serve the exp-weighted heuristic as stage 1 (deploy.json does): v4 does not "
                   "beat it beyond the 95% CI."] + ACTIONS["partial"][1:]
    return {"verdict": verdict, "metric": gates.metric, "value": value,
            "thresholds": {"success": gates.success, "partial": gates.partial},
            "beats_heuristic": beats, "vs_heuristic": comparisons, "stage1": stage1,
            "reason": reason, "actions": actions}

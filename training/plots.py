"""The v4 report's PNG plots, drawn headless (matplotlib's Agg backend).

Per epoch: the loss; Recall@10 and Recall@500 with the mid and final gate lines; the separation
margin Δ with the abort line; the curriculum's phases shaded on each. After the final gate:
Recall@K for K = 1..max(eval_ks) on a log axis for v4, the heuristic, last vector and the oracle.
Legends sit below the axes and phase labels above them, so neither hides a curve.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: no display on servers and CI

import matplotlib.pyplot as plt  # noqa: E402  (after the backend is chosen)
import numpy as np  # noqa: E402

from cascade.bank import atomic_write  # noqa: E402
from training.curriculum import Segment  # noqa: E402

PHASE_COLOURS = ("#f2f2f2", "#dce9f5", "#f7e3cf", "#e2f0d9")


def new_figure(nrows: int = 1, ncols: int = 1, width: float = 7.5, height: float = 4.6):
    fig, axes = plt.subplots(nrows, ncols, figsize=(width, height), layout="constrained")
    return fig, axes


def save_figure(fig, path: Path) -> None:
    """Write the PNG atomically (a reader never sees half a file) and free the figure."""
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=110))
    plt.close(fig)


def legend_below(ax, ncol: int = 2) -> None:
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=ncol, fontsize=8,
              frameon=False)


def shade_phases(ax, segments: list[Segment], last_epoch: int) -> None:
    """One shaded band per curriculum segment that the run reached, labelled above the axes."""
    for i, seg in enumerate(segments):
        first, last = max(1, seg.first), min(seg.last, last_epoch)
        if first > last:
            continue
        ax.axvspan(first - 0.5, last + 0.5, color=PHASE_COLOURS[i % len(PHASE_COLOURS)],
                   zorder=0, linewidth=0)
        label = "no mining" if seg.count == 0 else (
            f"{seg.count} neg @ {seg.cos_min:g}-{seg.cos_max:g}")
        ax.text((first + last) / 2, 1.01, label, transform=ax.get_xaxis_transform(),
                ha="center", va="bottom", fontsize=7, color="#444444")


def _epoch_axis(ax, history: list[dict], ylabel: str, title: str) -> None:
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    ax.set_title(title, pad=16)  # room for the phase labels
    ax.set_xlim(0.5, max(h["epoch"] for h in history) + 0.5)
    ax.grid(True, alpha=0.3)
    ax.xaxis.get_major_locator().set_params(integer=True)


def plot_loss(history: list[dict], segments: list[Segment], path: Path) -> None:
    epochs = [h["epoch"] for h in history]
    fig, ax = new_figure()
    shade_phases(ax, segments, epochs[-1])
    ax.plot(epochs, [h["loss"] for h in history], "o-", label="total loss (train)")
    if all("nce" in h for h in history):
        ax.plot(epochs, [h["nce"] for h in history], "s--", label="InfoNCE part", alpha=0.8)
    _epoch_axis(ax, history, "mean loss per pair", "Training loss per epoch")
    legend_below(ax)
    save_figure(fig, path)


def plot_recalls(history: list[dict], segments: list[Segment], gates, ks: tuple[int, ...],
                 split: str, path: Path) -> None:
    """Recall@10 and Recall@500 (or the smallest and largest eval k) with the gate lines."""
    epochs = [h["epoch"] for h in history]
    gate_k = int(gates.metric.split("@")[1])
    shown = sorted({k for k in (10, 500) if k in ks} | {gate_k})
    fig, ax = new_figure()
    shade_phases(ax, segments, epochs[-1])
    for k, marker in zip(shown, "os^", strict=False):
        ax.plot(epochs, [h[f"recall@{k}"] for h in history], marker + "-", label=f"Recall@{k}")
    metric = gates.metric.replace("recall@", "R@")
    ax.axhline(gates.success, color="tab:green", linestyle="--", linewidth=1,
               label=f"final gate: success {metric} >= {gates.success:g}%")
    ax.axhline(gates.partial, color="tab:orange", linestyle="--", linewidth=1,
               label=f"final gate: partial {metric} >= {gates.partial:g}%")
    if gates.mid_epoch <= epochs[-1] + 1:
        ax.plot([gates.mid_epoch - 0.45, gates.mid_epoch + 0.45], [gates.mid, gates.mid],
                color="tab:red", linewidth=3,
                label=f"mid gate: {metric} >= {gates.mid:g}% at epoch {gates.mid_epoch}")
    ax.set_ylim(0, 102)  # a curve at 100% stays visible above the frame
    _epoch_axis(ax, history, f"recall, % ({split} split, context rows excluded)",
                "Recall per epoch")
    legend_below(ax)
    save_figure(fig, path)


def plot_margin(history: list[dict], segments: list[Segment], abort, path: Path) -> None:
    epochs = [h["epoch"] for h in history]
    fig, ax = new_figure()
    shade_phases(ax, segments, epochs[-1])
    ax.plot(epochs, [h["margin"] for h in history], "o-", label="separation margin Δ")
    ax.axhline(abort.margin, color="tab:red", linestyle="--", linewidth=1,
               label=f"abort: Δ < {abort.margin:g} on {abort.patience} evals in a row "
                     f"after epoch {abort.after_epoch}")
    if abort.after_epoch < epochs[-1]:
        ax.axvline(abort.after_epoch + 0.5, color="tab:red", linestyle=":", linewidth=1)
    _epoch_axis(ax, history, "Δ = E[cos(q, pos)] - E[cos(q, hard neg)]",
                "Separation margin per epoch")
    legend_below(ax, ncol=1)
    save_figure(fig, path)


def recall_curve(ranks: np.ndarray, max_k: int) -> np.ndarray:
    """Recall@K in percent for K = 1..max_k from (P,) 0-based target ranks (-1: absent)."""
    found = ranks[(ranks >= 0) & (ranks < max_k)]
    return 100 * np.cumsum(np.bincount(found, minlength=max_k)[:max_k]) / max(1, len(ranks))


def plot_recall_curves(ranks: dict[str, np.ndarray], max_k: int, split: str, path: Path) -> None:
    fig, ax = new_figure()
    k = np.arange(1, max_k + 1)
    for name, r in ranks.items():
        style = {"color": "black", "linestyle": "--"} if name == "oracle" else {}
        ax.plot(k, recall_curve(r, max_k), label=f"{name} (n = {len(r):,})", **style)
    ax.set_xscale("log")
    ax.set_xlim(1, max_k)
    ax.set_ylim(0, 102)  # the oracle's 100% stays visible above the frame
    ax.set_xlabel("K (log scale)")
    ax.set_ylabel(f"Recall@K, % ({split} split, context rows excluded)")
    ax.set_title("Recall@K after training")
    ax.grid(True, which="both", alpha=0.3)
    legend_below(ax)
    save_figure(fig, path)


def render(run_dir: Path, history: list[dict], segments: list[Segment], gates, abort,
           ks: tuple[int, ...], split: str, ranks: dict[str, np.ndarray] | None
           ) -> list[tuple[str, str]]:
    """Draw every plot the run has data for under run_dir/plots: -> [(caption, relative path)]."""
    out: list[tuple[str, str]] = []
    if history:
        plot_loss(history, segments, run_dir / "plots" / "loss.png")
        # Each epoch is evaluated on val (it selects best.pt); the final gate judges on `split`.
        plot_recalls(history, segments, gates, ks, "val", run_dir / "plots" / "recall.png")
        plot_margin(history, segments, abort, run_dir / "plots" / "margin.png")
        out += [("Loss per epoch", "plots/loss.png"),
                ("Recall per epoch, with the gates", "plots/recall.png"),
                ("Separation margin Δ per epoch, with the abort line", "plots/margin.png")]
    if ranks:
        plot_recall_curves(ranks, max(ks), split, run_dir / "plots" / "recall_at_k.png")
        out.append((f"Recall@K, K = 1..{max(ks)}", "plots/recall_at_k.png"))
    return out

"""Where a training run stands: latest epoch, Recall@500, separation margin Δ, alive or not.

    python -m training.monitor [--run runs/wikipedia_vital_bank/twotower_v4]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from cascade.bank import json_text


def alive(pid_file: Path) -> tuple[bool, int | None]:
    try:
        pid = int(pid_file.read_text().strip())
    except (OSError, ValueError):
        return False, None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False, pid
    except PermissionError:
        return True, pid
    return True, pid


def status(run: Path) -> dict:
    out: dict = {"run": str(run)}
    history_path = run / "history.json"
    if history_path.exists():
        history = json.loads(history_path.read_text() or "[]")
        if history:
            h = history[-1]
            out.update({"epoch": h["epoch"], "recall@500": h.get("recall@500"),
                        "recall@10": h.get("recall@10"), "margin": h["margin"],
                        "loss": h["loss"], "curriculum": h.get("curriculum")})
    out["alive"], out["pid"] = alive(run / "train.pid")
    gate = run / "gate.json"
    if gate.exists():
        g = json.loads(gate.read_text())
        out["verdict"], out["stage1"] = g.get("verdict"), g.get("stage1")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.monitor",
                                description=__doc__.split("\n")[0])
    p.add_argument("--run", default="runs/wikipedia_vital_bank/twotower_v4")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    run = Path(args.run)
    if not run.exists():
        print(f"error: {run}: no such run directory", file=sys.stderr)
        return 2
    s = status(run)
    if args.json:
        print(json_text(s))
        return 0
    state = f"running (pid {s['pid']})" if s["alive"] else "not running"
    if "epoch" not in s:
        print(f"{run}: no epoch finished yet; {state}")
        return 0
    r500 = s["recall@500"]
    r500_text = f"R@500={r500:.2f}%" if r500 is not None else "R@500=n/a"
    print(f"Epoch {s['epoch']}: {r500_text}, Δ={s['margin']:.4f}, loss {s['loss']:.4f} "
          f"[{s['curriculum']}]; {state}")
    if s.get("verdict"):
        print(f"verdict {s['verdict']}; stage 1 = {s['stage1']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

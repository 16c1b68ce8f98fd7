"""Where a training run stands: latest epoch, Recall@500, separation margin Δ, alive or not.

    python -m training.monitor [--run runs/wikipedia_vital_bank/twotower_v4]
    python -m training.monitor --profile smoke [--bank BANK]    # the run `make train-v4` makes
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from cascade.bank import json_text


def alive(pid_file: Path) -> tuple[bool, int | None]:
    """Whether the pid in `pid_file` runs; a zombie (exited, not yet reaped) does not."""
    try:
        pid = int(pid_file.read_text().strip())
    except (OSError, ValueError):
        return False, None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False, pid
    except PermissionError:
        pass
    try:  # Linux: the state letter follows the ")" that closes the command name
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True, pid
    return state not in ("Z", "X"), pid


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
    gate, pid_file = run / "gate.json", run / "train.pid"
    # A verdict older than the running process's start belongs to an earlier run.
    current = not pid_file.exists() or gate.exists() and (
        gate.stat().st_mtime_ns >= pid_file.stat().st_mtime_ns)
    if gate.exists() and current:
        g = json.loads(gate.read_text())
        out["verdict"], out["stage1"] = g.get("verdict"), g.get("stage1")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.monitor",
                                description=__doc__.split("\n")[0])
    p.add_argument("--run", default=None,
                   help="run directory (default: the v4 run of --profile and --bank)")
    p.add_argument("--profile", default="default", help="default | smoke | a profile YAML")
    p.add_argument("--bank", default=None, help="the bank the profile's run trained on")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    if args.run:
        run = Path(args.run)
    else:
        from training.checklist import load_profile
        from training.config import ConfigError

        try:
            profile, _ = load_profile(args.profile, args.bank)
        except ConfigError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        run = Path(profile.path(profile.v4_out))
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

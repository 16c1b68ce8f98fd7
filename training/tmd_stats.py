"""The distribution of a bank's TMD codes: domains, tasks, modifiers and the most frequent codes.

    python -m training.tmd_stats artifacts/wikipedia_vital_bank.npz
    python -m training.tmd_stats BANK --top 30 --json runs/tmd_stats.json
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cascade.bank import BankError, load_bank, write_json
from cascade.tmd import distribution


def table(title: str, counts: dict[str, int], rows: int) -> list[str]:
    lines = [f"{title} ({len(counts)} used)"]
    lines += [f"  {name:<40s} {n:>8,d}  {100 * n / rows:5.1f}%" for name, n in counts.items()]
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.tmd_stats", description=__doc__.split(
        "\n")[0])
    p.add_argument("bank", help="bank .npz with tmd_codes")
    p.add_argument("--top", type=int, default=20, help="how many of the most frequent codes")
    p.add_argument("--json", default=None, metavar="PATH",
                   help="also write the distribution as JSON to PATH")
    args = p.parse_args(argv)
    try:
        bank = load_bank(args.bank)
    except BankError as e:
        print(f"tmd_stats: error: {e}", file=sys.stderr)
        return 2
    if bank.tmd_codes is None:
        print(f"tmd_stats: error: {args.bank}: the bank has no key 'tmd_codes'", file=sys.stderr)
        return 2
    dist = distribution(bank.tmd_codes, top=args.top)
    dist["bank"] = str(args.bank)
    dist["tmd"] = bank.meta.get("tmd")
    n = dist["rows"]
    lines = [f"bank {args.bank}: {n:,} rows, {dist['distinct_codes']:,} distinct codes "
             f"of 32,768"]
    lines += table("domains", dist["domains"], n)
    lines += table("tasks", dist["tasks"], n)
    lines += table("modifiers", dist["modifiers"], n)
    lines += table(f"top {args.top} codes", dist["top_codes"], n)
    print("\n".join(lines))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        write_json(args.json, dist)
        print(f"json {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

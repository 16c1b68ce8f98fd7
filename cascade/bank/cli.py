"""`python -m cascade.bank`: validate a bank and print its summary, or convert a bank saved by the
original system (`python -m cascade.bank convert ...`, cascade.bank.original). The command line
lives here, not in the library module, so the library never imports its converter back."""

from __future__ import annotations

import argparse
import logging
import sys

from cascade.bank import BankError, json_text, load_bank, summary
from cascade.bank import __doc__ as bank_doc
from cascade.bank.original import main as convert_main


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["convert"]:
        return convert_main(argv[1:], prog="python -m cascade.bank convert")
    p = argparse.ArgumentParser(prog="python -m cascade.bank", description=bank_doc.split("\n")[0])
    p.add_argument("path", help="bank .npz")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        bank = load_bank(args.path)
    except BankError as e:
        print(f"invalid bank: {e}", file=sys.stderr)
        return 2
    s = summary(bank)
    for key in ("synthetic", "corpus", "encoder"):
        if key in bank.meta:
            s[key] = bank.meta[key]
    if args.json:
        print(json_text(s))
        return 0
    c = s["chunks_per_article"]
    print(f"bank        {args.path}")
    print(f"rows        {s['rows']:,}   dim {s['dim']}")
    print(f"articles    {s['articles']:,}   chunks/article min {c['min']} mean {c['mean']} "
          f"median {c['median']} max {c['max']}   single-chunk {s['single_chunk_articles']:,}")
    print(f"texts       {'yes' if s['texts'] else 'no'}   tmd_codes "
          f"{'yes' if s['tmd_codes'] else 'no'}   cpe_ids {'yes' if s['cpe_ids'] else 'no'}")
    if "corpus" in s or "encoder" in s:
        print(f"corpus      {s.get('corpus', '?')}   encoder {s.get('encoder', '?')}")
    if s.get("synthetic"):
        print("synthetic   yes (for tests and scale benchmarks; not real data)")
    print(f"fingerprint {s['fingerprint']}")
    return 0

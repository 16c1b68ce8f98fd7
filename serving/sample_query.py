"""Ask the served cascade about a context drawn from a bank's own test split (`make query`
without TEXT=): prints what the context is, the hits, and where the true next chunk landed.

    python -m serving.sample_query --bank artifacts/my_bank.npz \
        --pairs artifacts/twotower/my_bank/pairs_v4.npz [--seed 0] [--config serving/serving.yaml]

The context goes as texts (the bank's chunk texts), the form a text client sends; the server
must serve this bank (`make serve BANK=...`) for the true next chunk's row to mean anything.
"""

from __future__ import annotations

import argparse
import sys

import grpc
import numpy as np

from cascade.bank import BankError, load_bank
from cascade.pairs import PairsError, load_pairs
from serving.client import CascadeClient, print_table
from serving.config import ConfigError, load_config


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m serving.sample_query",
                                description=__doc__.split("\n")[0])
    p.add_argument("--bank", required=True, help="the bank .npz the server serves")
    p.add_argument("--pairs", required=True, help="its pairs .npz (make train-v4 writes it)")
    p.add_argument("--seed", type=int, default=0, help="which test pair: a seeded draw")
    p.add_argument("--k", type=int, default=0, help="hits (0 = the server's default)")
    p.add_argument("--config", default="serving/serving.yaml",
                   help="serving YAML: the front's address and TLS")
    p.add_argument("--address", help="host:port of the front (default: from --config)")
    p.add_argument("--timeout", type=float, default=10.0, help="deadline in seconds")
    args = p.parse_args(argv)
    try:
        cfg = load_config(args.config)
        bank = load_bank(args.bank)
        test = load_pairs(args.pairs, bank).test()
    except (ConfigError, BankError, PairsError) as e:
        print(f"sample_query: {e}", file=sys.stderr)
        return 2
    if bank.concept_texts is None or len(test) == 0:
        print(f"sample_query: {args.bank} has no chunk texts or {args.pairs} no test pairs; "
              f"send a context yourself: make query TEXT=\"...\"", file=sys.stderr)
        return 2
    if args.address:
        cfg.front.addresses = [args.address]

    i = int(np.random.default_rng(args.seed).integers(len(test)))
    rows = list(range(int(test.ctx_start[i]), int(test.ctx_end[i])))
    target = int(test.target[i])
    cpe = bank.cpe_ids[target] if bank.cpe_ids is not None else bank.article_indices[target]
    article = (cpe.decode("utf-8") if isinstance(cpe, bytes) else str(cpe)).rsplit(":", 1)[0]
    span = f"rows {rows[0]}-{rows[-1]}" if len(rows) > 1 else f"row {rows[0]}"
    print(f"context: test pair {i} of {len(test):,} in {args.pairs} (seed {args.seed}), "
          f"article {article}, bank {span}:")
    texts = [bank.text(r) for r in rows]
    for r, text in zip(rows, texts, strict=True):
        print(f"  [{r}] {text}")
    print(f"true next chunk: row {target}: {bank.text(target)}\n")
    try:
        with CascadeClient.from_config(cfg, timeout=args.timeout) as client:
            response = client.search_texts(texts, args.k)
    except grpc.RpcError as e:
        print(f"sample_query: {e.code().name}: {e.details()} (is `make serve BANK={args.bank}` "
              f"running?)", file=sys.stderr)
        return 1
    print_table(response)
    found = [n for n, h in enumerate(response.hits, 1) if h.row == target]
    print(f"\nthe true next chunk (row {target}) is hit #{found[0]}" if found else
          f"\nthe true next chunk (row {target}) is not among the {len(response.hits)} hits")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Convert a bank saved by the original system into this project's bank format.

The original system writes banks with `np.savez_compressed(..., cpe_ids=np.array(ids,
dtype=object), concept_texts=np.array(texts, dtype=object), ...)`, sometimes with `tmd_codes`
int32 beside `domain_codes` / `task_codes` / `modifier_codes` int16, and `lane_indices`,
`tmd_lanes`, `created_ats`. Object arrays can only be read with pickle, and unpickling a file
runs code chosen by whoever wrote it, so `load_bank` refuses them. This conversion reads such a
file once with pickle allowed (only when the user says `--trust-pickle`), keeps what the bank
format has, packs the TMD components into the 15-bit `tmd_codes`, and writes a pickle-free bank
with its sidecar.

    python -m cascade.bank convert ORIGINAL.npz OUT.npz --trust-pickle
    python -m cascade.bank.original ORIGINAL.npz OUT.npz --trust-pickle     (the same)
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

import numpy as np

from cascade.bank import (
    OPTIONAL_KEYS,
    REQUIRED_KEYS,
    Bank,
    BankError,
    save_bank,
    sha256_file,
    validate,
)
from cascade.tmd import CODE_MAX, PARTS

# The original's per-part columns (domain_codes, ...), each with its size and shift in our codes.
TMD_FIELDS = tuple((f"{part}_codes", size, shift) for part, size, shift in PARTS)
DROPPED_KNOWN = ("lane_indices", "tmd_lanes", "created_ats")


def _strings(values: np.ndarray, key: str, source: str) -> np.ndarray:
    """An object (or bytes/str) column -> a str array; refuses anything but text."""
    out = []
    for row, v in enumerate(values.tolist()):
        if isinstance(v, bytes):
            try:
                v = v.decode("utf-8")
            except UnicodeDecodeError:
                raise BankError(f"{source}: key '{key}' row {row}: bytes that are not UTF-8"
                                ) from None
        elif not isinstance(v, str):
            raise BankError(f"{source}: key '{key}' row {row}: expected text, got "
                            f"{type(v).__name__} {v!r:.60}")
        out.append(v)
    return np.asarray(out, dtype=str)


def _int_codes(values: np.ndarray, key: str, limit: int, source: str) -> np.ndarray:
    a = np.asarray(values)
    if a.dtype == object or not np.issubdtype(a.dtype, np.integer):
        raise BankError(f"{source}: key '{key}' must hold integers, got dtype {a.dtype}")
    bad = np.flatnonzero((a < 0) | (a >= limit))
    if len(bad):
        raise BankError(f"{source}: key '{key}' row {bad[0]}: value {a[bad[0]]} is outside "
                        f"0..{limit - 1}")
    return a.astype(np.int64)


def pack_tmd_codes(arrays: dict, n: int, source: str) -> tuple[np.ndarray | None, dict]:
    """The 15-bit codes from the per-field columns (preferred) or a packed `tmd_codes`; and
    notes for the sidecar."""
    notes: dict = {}
    present = [key for key, _, _ in TMD_FIELDS if key in arrays]
    if present:
        code = np.zeros(n, np.int64)
        for key, limit, shift in TMD_FIELDS:
            if key in arrays:
                col = _int_codes(arrays[key], key, limit, source)
                if len(col) != n:
                    raise BankError(f"{source}: key '{key}' has {len(col)} rows, 'vectors' {n}")
                code |= col << shift
        notes["tmd_from"] = present
        if "tmd_codes" in arrays:
            packed = np.asarray(arrays["tmd_codes"]).astype(np.int64)
            notes["tmd_codes_disagreeing_rows"] = int((packed != code).sum())
        return code.astype(np.uint16), notes
    if "tmd_codes" in arrays:
        code = _int_codes(arrays["tmd_codes"], "tmd_codes", CODE_MAX, source)
        notes["tmd_from"] = ["tmd_codes"]
        return code.astype(np.uint16), notes
    return None, notes


def convert_original(src: str | os.PathLike, out: str | os.PathLike,
                     trust_pickle: bool = False) -> dict:
    """Read an original-system bank (pickle allowed only with `trust_pickle`) and write it in
    this project's format at `out`; returns the new sidecar."""
    src, out = str(src), str(out)
    if not trust_pickle:
        raise BankError(f"{src}: converting reads object arrays with pickle, which runs code "
                        f"stored in the file; pass --trust-pickle only for a file you trust")
    if Path(out).resolve() == Path(src).resolve():
        raise BankError(f"{out}: the output must not overwrite the original bank")
    try:
        with np.load(src, allow_pickle=True) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except FileNotFoundError:
        raise BankError(f"{src}: no such file") from None
    except (OSError, ValueError, EOFError) as e:
        raise BankError(f"{src}: not a readable .npz ({str(e).splitlines()[0][:200]})") from None
    missing = [k for k in REQUIRED_KEYS if k not in arrays]
    if missing:
        raise BankError(f"{src}: missing key '{missing[0]}' (a bank needs "
                        f"{', '.join(REQUIRED_KEYS)}; found {', '.join(arrays) or 'none'})")
    vectors = np.asarray(arrays["vectors"])
    if vectors.dtype == object:
        try:
            vectors = np.stack(list(vectors)).astype(np.float32)
        except (ValueError, TypeError):
            raise BankError(f"{src}: key 'vectors' is an object array that is not a stack of "
                            f"equal-length float rows") from None
    n = len(vectors)
    columns: dict = {}
    for key in ("article_indices", "chunk_indices"):
        a = np.asarray(arrays[key])
        if a.dtype == object:
            try:
                a = a.astype(np.int64)
            except (ValueError, TypeError):
                raise BankError(f"{src}: key '{key}' must hold integers") from None
        columns[key] = a
    for key in ("concept_texts", "cpe_ids"):
        if key in arrays:
            columns[key] = _strings(np.asarray(arrays[key]).reshape(-1), key, src)
    tmd, notes = pack_tmd_codes(arrays, n, src)
    kept = set(REQUIRED_KEYS) | set(OPTIONAL_KEYS) | {k for k, _, _ in TMD_FIELDS}
    dropped = sorted(k for k in arrays if k not in kept)
    bank = Bank(vectors=vectors, tmd_codes=tmd, path=out, **columns)
    bank = validate(bank, source=src)
    meta = {"converted_from": {"path": src, "sha256": sha256_file(src), "format": "original",
                               "dropped_keys": dropped, **notes},
            "encoder": "unknown (converted bank)", "synthetic": False}
    return save_bank(bank, out, meta)


def main(argv: list[str] | None = None, prog: str = "python -m cascade.bank.original") -> int:
    p = argparse.ArgumentParser(
        prog=prog,
        description="Convert a bank saved by the original system (object arrays for cpe_ids / "
                    "concept_texts, TMD as domain/task/modifier codes) into this format.")
    p.add_argument("original", help="the original system's bank .npz")
    p.add_argument("out", help="the converted bank .npz (a sidecar .json is written beside it)")
    p.add_argument("--trust-pickle", action="store_true",
                   help="required: the original file is read ONCE with pickle allowed. "
                        "Unpickling runs code stored in the file, so pass this only for a file "
                        "you trust (one your own system wrote). The output needs no pickle.")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        side = convert_original(args.original, args.out, trust_pickle=args.trust_pickle)
    except BankError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    conv = side["converted_from"]
    print(f"wrote {args.out}: {side['rows']:,} rows x {side['dim']}, {side['articles']:,} "
          f"articles; texts {'yes' if side['texts'] else 'no'}, tmd_codes "
          f"{'from ' + '+'.join(conv['tmd_from']) if conv.get('tmd_from') else 'none'}; "
          f"dropped keys: {', '.join(conv['dropped_keys']) or 'none'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

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
"""

from __future__ import annotations

import os
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

# [domain 4 bits | task 5 bits | modifier 6 bits]
TMD_FIELDS = (("domain_codes", 16, 11), ("task_codes", 32, 6), ("modifier_codes", 64, 0))
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
        code = _int_codes(arrays["tmd_codes"], "tmd_codes", 1 << 15, source)
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

"""Checkpoints: state dicts + config + metrics + bank fingerprint, written atomically.

Loadable with `torch.load(..., weights_only=True)`: only tensors, numbers, strings, lists and
dicts go in. The model's architecture comes from the checkpoint's own MODEL_CONFIG.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from cascade.bank import atomic_write
from cascade.bank import Bank
from cascade.pairs import Pairs
from cascade.split import SplitSpec, leaked_rows
from cascade.towers import DocTower, QueryTower, TowerConfig, build_towers

FORMAT_VERSION = 1
# Checkpoint keys, named once.
FORMAT = "format_version"
QUERY_TOWER = "query_tower"
DOC_TOWER = "doc_tower"
MODEL_CONFIG = "model_config"
CONFIG = "config"
EPOCH = "epoch"
METRICS = "metrics"
BEST_METRIC = "best_metric"
BANK_FINGERPRINT = "bank_fingerprint"
SPLIT = "split"  # the article split (cascade.split.SplitSpec as a dict) the run trained with
TRAIN_STATE = "train_state"  # optimizer, step, memory bank, RNG, history: only in last.pt


class CheckpointError(ValueError):
    """A checkpoint that is missing, unreadable, or for another bank or format."""


def save_checkpoint(path: str | os.PathLike, state: dict) -> None:
    """torch.save through a temp file and a rename: never a half-written checkpoint."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda f: torch.save({FORMAT: FORMAT_VERSION, **state}, f))


def load_checkpoint(path: str | os.PathLike, bank_fingerprint: str | None = None) -> dict:
    path = str(path)
    if not os.path.exists(path):
        raise CheckpointError(f"{path}: no such checkpoint")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for a corrupt or foreign file
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(e).__name__}: "
                              f"{str(e).splitlines()[0][:200]})") from None
    version = ckpt.get(FORMAT) if isinstance(ckpt, dict) else None
    if version != FORMAT_VERSION:
        raise CheckpointError(f"{path}: not a v{FORMAT_VERSION} tower checkpoint "
                              f"(key '{FORMAT}' is {version})")
    for key in (QUERY_TOWER, DOC_TOWER, MODEL_CONFIG):
        if key not in ckpt:
            raise CheckpointError(f"{path}: missing key '{key}'")
    if bank_fingerprint and ckpt.get(BANK_FINGERPRINT) not in (None, bank_fingerprint):
        raise CheckpointError(f"{path}: trained on another bank ({ckpt[BANK_FINGERPRINT][:19]}..., "
                              f"this bank is {bank_fingerprint[:19]}...)")
    return ckpt


def load_towers(path: str | os.PathLike, bank_fingerprint: str | None = None
                ) -> tuple[QueryTower, DocTower, dict]:
    """Rebuild both towers from a checkpoint's own config; returns them in eval mode."""
    ckpt = load_checkpoint(path, bank_fingerprint)
    try:
        cfg = TowerConfig.from_dict(ckpt[MODEL_CONFIG])
        query, doc = build_towers(cfg)
        query.load_state_dict(ckpt[QUERY_TOWER])
        doc.load_state_dict(ckpt[DOC_TOWER])
    except (ValueError, TypeError, RuntimeError) as e:
        raise CheckpointError(f"{path}: weights do not match its model config "
                              f"({str(e).splitlines()[0][:200]})") from None
    return query.eval(), doc.eval(), ckpt


def split_spec_of(ckpt: dict) -> SplitSpec | None:
    """The article split a checkpoint trained with; None when it records none (older runs)."""
    spec = ckpt.get(SPLIT)
    return SplitSpec.from_dict(spec) if isinstance(spec, dict) else None


def check_split_of(ckpt: dict, path: str | os.PathLike, pairs: Pairs, bank: Bank,
                   role: str) -> None:
    """Refuse a checkpoint whose train articles include val/test articles of these pairs: as a
    baseline it would be scored on articles it trained on; continued, it would select and be
    judged on them."""
    spec = split_spec_of(ckpt)
    if spec is None:
        raise CheckpointError(f"{role} {path}: records no article split (trained before splits "
                              f"were pinned); retrain it on pairs of this bank")
    leaked = leaked_rows(bank, pairs.target, pairs.split, spec)
    if len(leaked):
        n_art = len(np.unique(bank.article_indices[pairs.target[leaked]]))
        raise CheckpointError(
            f"{role} {path}: {len(leaked):,} val/test pairs ({n_art:,} articles) of {pairs.path} "
            f"are train articles of that checkpoint (its split: seed {spec.seed}, key "
            f"{spec.key}, train {spec.train}, test {spec.test}); use pairs with its split or "
            f"retrain it")

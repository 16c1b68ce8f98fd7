"""The in-process cascade: stage 1 (top k_stage1) -> LVM (top k_lvm) -> TMD (top k_tmd).

Everything serving needs is named in deploy.json (`make train-v4` then `make train-lvm`), each
file pinned by sha256. One context or a batch goes through every stage as one batch; each stage
reports its own ids, scores and wall time. The gRPC servers wrap this and add no ranking logic.

Latency depends on threads: for one context, one torch thread and one FAISS (OpenMP) thread are
fastest (thread start-up costs more than the work); `set_threads` sets both.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import faiss
import numpy as np
import torch

from cascade.bank import Bank, load_bank
from cascade.deploy import CascadeConfig, DeployError, check_pinned, read_deploy, resolve
from cascade.lvm import LvmReranker
from cascade.result import StageResult
from cascade.stage1 import ContextRows, Stage1

__all__ = ["Cascade", "CascadeResult", "ContextRows", "StageResult", "set_threads"]


@dataclass
class CascadeResult:
    ids: np.ndarray  # (B, k) int64 bank rows, best first
    scores: np.ndarray  # (B, k) float32, the last stage's scores
    stages: dict[str, StageResult] = field(default_factory=dict)  # "stage1", "lvm", "tmd"
    stage1_kind: str = ""  # "v4" | "heuristic"
    seconds: float = 0.0  # the whole search


def set_threads(n: int) -> None:
    """Torch and FAISS threads (1 is fastest for one context on a shared CPU)."""
    torch.set_num_threads(n)
    faiss.omp_set_num_threads(n)


class Cascade:
    def __init__(self, stage1: Stage1, lvm: LvmReranker | None = None,
                 config: CascadeConfig | None = None):
        self.stage1 = stage1
        self.lvm = lvm
        self.config = config or CascadeConfig()
        self.config.validate()

    @property
    def bank(self) -> Bank:
        return self.stage1.bank

    @classmethod
    def from_deploy(cls, deploy_path, *, bank: Bank | None = None) -> Cascade:
        """Stage 1 as deploy.json chose it, and the LVM it names (sha256 checked)."""
        deploy = read_deploy(deploy_path)
        cfg = CascadeConfig.from_dict(deploy.get("cascade"), f"{deploy_path}: cascade")
        if bank is None:
            path = resolve(deploy_path, deploy["bank"])
            if not path.exists():
                raise DeployError(f"{deploy_path}: 'bank' names {deploy['bank']}, which does "
                                  f"not exist")
            bank = load_bank(path)
        stage1 = Stage1.from_deploy(deploy_path, bank=bank, config=cfg)
        lvm = None
        if deploy.get("lvm"):
            entry = deploy["lvm"]
            if not isinstance(entry, dict) or "sha256" not in entry:
                raise DeployError(f"{deploy_path}: 'lvm' must name a checkpoint and its sha256")
            path = check_pinned(deploy_path, "lvm.checkpoint", entry.get("checkpoint"),
                                entry["sha256"])
            lvm = LvmReranker.load(path, bank)
        return cls(stage1, lvm, cfg)

    def search(self, contexts, k: int | None = None, *, context_codes=None) -> CascadeResult:
        """The top-k (default and at most the last stage's K) for one context or a batch:
        (L, D) vectors, a list of them, or ContextRows."""
        t0 = time.perf_counter()
        cfg = self.config
        last_k = cfg.k_tmd if self.lvm is not None else cfg.k_lvm
        k = last_k if k is None else k
        if isinstance(k, bool) or not isinstance(k, int | np.integer) or not 1 <= k <= last_k:
            raise ValueError(f"k must be an integer in [1, {last_k}] (the last stage's K), "
                             f"got {k!r}")
        vectors, rows = self.stage1.contexts(contexts)
        stages = {"stage1": self.stage1.search_checked(vectors, rows, min(cfg.k_stage1,
                                                                          self.bank.n), t0)}
        final = stages["stage1"]
        if self.lvm is not None:
            keep = min(cfg.k_lvm, final.ids.shape[1])
            stages["lvm"] = final = self.lvm.rerank(vectors, final.ids, final.scores, keep)
        return CascadeResult(final.ids[:, :k], final.scores[:, :k], stages, self.stage1.kind,
                             time.perf_counter() - t0)

"""The in-process cascade: stage 1 (top k_stage1) -> LVM (top k_lvm) -> TMD (top k_tmd).

Everything serving needs is named in deploy.json (`make train-v4` then `make train-lvm`), each
file pinned by sha256. One context or a batch goes through every stage as one batch; each stage
reports its own ids, scores and wall time. The gRPC servers wrap this and add no ranking logic.

Latency depends on threads: for one context, one torch thread and one FAISS (OpenMP) thread are
fastest (thread start-up costs more than the work); `set_threads` (cascade.threads) sets both,
in every thread that searches. The LVM's prediction and the TMD query lanes read only the
context, so they are computed in a second thread while stage 1 forms its query and searches.
Torch and FAISS release the GIL inside their operations, but two threads on this machine's 2
vCPUs slow each other: on the default bank the side thread saves 1.3 ms of a one-context search
(9.8 ms median against 11.1 inline) for 0.4 ms more CPU.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import torch

from cascade.bank import Bank, load_bank
from cascade.context import ContextRows
from cascade.deploy import (
    MIN_CONTAINMENT,
    CascadeConfig,
    DeployError,
    check_pinned,
    read_deploy,
    resolve,
)
from cascade.lvm import LvmReranker
from cascade.result import StageResult
from cascade.stage1 import Stage1
from cascade.tagger import DomainCentroids, DomainClassifier, bank_centroids
from cascade.threads import set_threads
from cascade.tmd_rerank import Lanes, TmdReranker, lanes_of_codes, tagged_lanes

__all__ = ["Cascade", "CascadeResult", "ContextRows", "StageResult", "set_threads"]


@dataclass
class CascadeResult:
    ids: np.ndarray  # (B, k) int64 bank rows, best first
    scores: np.ndarray  # (B, k) float32, the last stage's scores
    stages: dict[str, StageResult] = field(default_factory=dict)  # "stage1", "lvm", "tmd"
    stage1_kind: str = ""  # "v4" | "heuristic"
    seconds: float = 0.0  # the whole search


class Cascade:
    """Stage 1, then the LVM (when deploy.json names one), then TMD (when the bank has TMD
    codes). Stage 3 with w = 0 keeps stage 2's order: it runs, and says so in its scores."""

    def __init__(self, stage1: Stage1, lvm: LvmReranker | None = None,
                 config: CascadeConfig | None = None, tmd: TmdReranker | None = None,
                 centroids: DomainCentroids | None = None,
                 classifier: DomainClassifier | None = None):
        self.stage1 = stage1
        self.lvm = lvm
        self.tmd = tmd
        self.centroids = centroids  # tags the domain of contexts sent as raw vectors
        self.classifier = classifier  # or, when deploy.json names one, P(domain) of them
        self.config = config or CascadeConfig()
        self.config.validate()
        self.device = torch.device("cpu")  # where embed() runs the encoder
        self._encoder = None
        # One thread for the rerankers' inputs, computed while stage 1 searches (module doc).
        self._inputs_pool = ThreadPoolExecutor(1, thread_name_prefix="reranker-inputs") \
            if lvm is not None or tmd is not None else None

    @property
    def last_k(self) -> int:
        """The most rows the last stage keeps: what `search` can return."""
        cfg = self.config
        return cfg.k_tmd if self.tmd is not None else cfg.k_lvm if self.lvm is not None \
            else cfg.k_stage1

    @property
    def bank(self) -> Bank:
        return self.stage1.bank

    @classmethod
    def from_deploy(cls, deploy_path, *, bank: Bank | None = None, device="cpu",
                    min_containment: float = MIN_CONTAINMENT,
                    stage1_index: bool = True) -> Cascade:
        """Stage 1 as deploy.json chose it, and the LVM it names (sha256 checked); the query
        tower, the LVM and the encoder on `device` (FAISS and TMD stay on the CPU). The bank's
        vectors are memory-mapped: every process of a machine shares one copy. An approximate
        stage 1 needs a recorded containment >= `min_containment`; `stage1_index=False` opens
        no index (a process that never searches stage 1: the LVM server)."""
        deploy = read_deploy(deploy_path)
        cfg = CascadeConfig.from_dict(deploy.get("cascade"), f"{deploy_path}: cascade")
        if bank is None:
            path = resolve(deploy_path, deploy["bank"])
            if not path.exists():
                raise DeployError(f"{deploy_path}: 'bank' names {deploy['bank']}, which does "
                                  f"not exist")
            bank = load_bank(path, mmap=True)
        stage1 = Stage1.from_deploy(deploy_path, bank=bank, config=cfg, device=device,
                                    min_containment=min_containment, with_index=stage1_index)
        lvm = None
        if deploy.get("lvm"):
            entry = deploy["lvm"]
            if not isinstance(entry, dict) or "sha256" not in entry:
                raise DeployError(f"{deploy_path}: 'lvm' must name a checkpoint and its sha256")
            path = check_pinned(deploy_path, "lvm.checkpoint", entry.get("checkpoint"),
                                entry["sha256"])
            lvm = LvmReranker.load(path, bank, device=device)
        tmd = centroids = classifier = None
        if bank.tmd_codes is not None:
            tmd = TmdReranker(bank.tmd_codes, cfg.tmd_w)  # w is chosen per call by lane source
            centroids = bank_centroids(bank.path, bank.meta) if bank.path else None
            if deploy.get("domain_classifier"):
                entry = deploy["domain_classifier"]
                if not isinstance(entry, dict) or "sha256" not in entry:
                    raise DeployError(f"{deploy_path}: 'domain_classifier' must name a file and "
                                      f"its sha256")
                path = check_pinned(deploy_path, "domain_classifier.file", entry.get("file"),
                                    entry["sha256"])
                try:
                    classifier = DomainClassifier.load(path)
                except ValueError as e:
                    raise DeployError(str(e)) from None
        cascade = cls(stage1, lvm, cfg, tmd, centroids, classifier)
        cascade.device = torch.device(device)
        return cascade

    def context_lanes(self, vectors: list[np.ndarray], rows: list[np.ndarray] | None,
                      context_codes) -> Lanes:
        """The query lanes: from the codes given per context chunk, else the bank's codes of
        the context's rows (source "codes"), else tagged from the vectors (source "tagged":
        P(domain) by deploy.json's domain classifier, else the bank's nearest centroid)."""
        if context_codes is not None:
            if len(context_codes) != len(vectors):
                raise ValueError(f"context_codes: {len(context_codes)} entries for "
                                 f"{len(vectors)} contexts")
            codes = [np.asarray(c, np.int64).reshape(-1) for c in context_codes]
            for b, (c, v) in enumerate(zip(codes, vectors, strict=True)):
                if len(c) != len(v):
                    raise ValueError(f"context_codes {b}: {len(c)} codes for {len(v)} chunks")
        elif rows is not None:
            codes = [self.bank.tmd_codes[r].astype(np.int64) for r in rows]
        else:
            return tagged_lanes(vectors, self.centroids, self.classifier)
        return Lanes(lanes_of_codes(codes), "codes")

    def reranker_inputs(self, vectors: list[np.ndarray], rows: list[np.ndarray] | None,
                      context_codes) -> tuple:
        """What stages 2 and 3 need of the contexts alone, so it can run while stage 1 searches:
        (the LVM's predictions or None, the TMD query lanes or None)."""
        pred = self.lvm.predict(vectors) if self.lvm is not None else None
        lanes = (self.context_lanes(vectors, rows, context_codes) if self.tmd is not None
                 else None)
        return pred, lanes

    def embed(self, texts: list[str]) -> np.ndarray:
        """(len(texts), D) unit vectors of new text, by the bank's encoder (loaded once)."""
        from cascade.encoder import encode, encoder_dim, load_encoder

        if self._encoder is None:
            self._encoder = load_encoder(self.device)
            if encoder_dim(self._encoder) != self.bank.dim:
                raise ValueError(f"the encoder gives {encoder_dim(self._encoder)}-d vectors, "
                                 f"the bank holds {self.bank.dim}-d")
        return encode(list(texts), self._encoder)

    def search(self, contexts, k: int | None = None, *, context_codes=None,
               after_stage1: Callable[[StageResult], StageResult] | None = None
               ) -> CascadeResult:
        """The top-k (default k_tmd, at most the last stage's K) for one context or a batch:
        (L, D) vectors, a list of them, or ContextRows. `context_codes`: the TMD codes of each
        context's chunks (a list of (L,)), for stage 3; without them, the bank's codes of the
        rows, or the domain tagged from the vectors. `after_stage1`: a function of stage 1's
        result that returns the list the rerankers get (benchmarks strike rows with it)."""
        t0 = time.perf_counter()
        cfg = self.config
        last_k = self.last_k
        k = min(cfg.k_tmd, last_k) if k is None else k
        if isinstance(k, bool) or not isinstance(k, int | np.integer) or not 1 <= k <= last_k:
            raise ValueError(f"k must be an integer in [1, {last_k}] (the last stage's K), "
                             f"got {k!r}")
        vectors, rows = self.stage1.contexts(contexts)
        inputs = (self._inputs_pool.submit(self.reranker_inputs, vectors, rows, context_codes)
                  if self._inputs_pool is not None else None)
        stages = {"stage1": self.stage1.search_checked(vectors, rows, min(cfg.k_stage1,
                                                                          self.bank.n), t0)}
        final = stages["stage1"]
        if after_stage1 is not None:
            final = after_stage1(final)
        pred = lanes = None
        waited = 0.0  # the inputs' time not hidden by stage 1: counted in the next stage
        if inputs is not None:
            t = time.perf_counter()
            pred, lanes = inputs.result()
            waited = time.perf_counter() - t
        if self.lvm is not None:
            keep = min(cfg.k_lvm, final.ids.shape[1])
            res = self.lvm.rerank(vectors, final.ids, final.scores, keep, pred=pred)
            stages["lvm"] = final = StageResult(res.ids, res.scores, res.seconds + waited)
            waited = 0.0
        if self.tmd is not None:
            t = time.perf_counter()
            keep = min(cfg.k_tmd, final.ids.shape[1])
            ids, scores = self.tmd.rerank(lanes.codes, final.ids, final.scores, keep,
                                          w=cfg.tmd_w_for(lanes.source),
                                          domain_probs=lanes.domain_probs)
            stages["tmd"] = final = StageResult(ids, scores, time.perf_counter() - t + waited)
        return CascadeResult(final.ids[:, :k], final.scores[:, :k], stages, self.stage1.kind,
                             time.perf_counter() - t0)


def tmd_from_deploy(deploy_path) -> tuple[TmdReranker, CascadeConfig] | None:
    """Stage 3 alone, as `Cascade.from_deploy` builds it, from the bank's `tmd_codes` only (the
    TMD server reads nothing else of the bank), with the cascade's config (its w per lane
    source); None when the bank has no codes. The bank file must be the one deploy.json pins
    (its fingerprint, from the sidecar when it is current)."""
    from cascade.bank import BankError, load_columns
    from cascade.shard import whole_fingerprint

    deploy = read_deploy(deploy_path)
    cfg = CascadeConfig.from_dict(deploy.get("cascade"), f"{deploy_path}: cascade")
    path = resolve(deploy_path, deploy["bank"])
    if not path.exists():
        raise DeployError(f"{deploy_path}: 'bank' names {deploy['bank']}, which does not exist")
    try:
        fingerprint = whole_fingerprint(str(path))
    except BankError:  # vectors not mappable in place: the converted copy's, via load_bank
        fingerprint = load_bank(path, mmap=True).fingerprint()
    if fingerprint != deploy["bank_fingerprint"]:
        raise DeployError(f"{deploy_path}: bank {path} has fingerprint {fingerprint[:19]}..., "
                          f"deploy.json pins {str(deploy['bank_fingerprint'])[:19]}...")
    codes = load_columns(path, ("tmd_codes",)).get("tmd_codes")
    return None if codes is None else (TmdReranker(codes, cfg.tmd_w), cfg)

"""The stage servicers: Stage1 (context -> top-K rows), LvmReranker, TmdReranker.

Each only converts messages to the library's types, calls `cascade/`, and converts back. The
library raises ValueError naming what is wrong with an input; that becomes INVALID_ARGUMENT.
"""

from __future__ import annotations

import functools
import logging
import time

import grpc
import numpy as np

from serving.config import ServingConfig
from serving.convert import (
    candidates_from_proto,
    candidates_to_proto,
    context_kind,
    vectors_from_proto,
)
from serving.protos import pb, rpc

log = logging.getLogger("serving")


def guarded(method):
    """Calls before loading -> UNAVAILABLE; the library's ValueError -> INVALID_ARGUMENT."""

    @functools.wraps(method)
    def call(self, request, context):
        if not self.loaded:
            context.abort(grpc.StatusCode.UNAVAILABLE, f"{self.name}: still loading")
        try:
            return method(self, request, context)
        except ValueError as e:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))

    return call


def stage_contexts(msgs, field: str = "contexts"):
    """repeated Context (all vectors or all rows) -> a list of (L, D) arrays or ContextRows."""
    from cascade.stage1 import ContextRows

    if not msgs:
        raise ValueError(f"{field}: empty (no context given)")
    kinds = {context_kind(c, f"{field}[{i}]", ("vectors", "rows")) for i, c in enumerate(msgs)}
    if len(kinds) > 1:
        raise ValueError(f"{field}: a mix of vectors and rows; send one form per call")
    if kinds == {"rows"}:
        return ContextRows([np.asarray(c.rows.rows, dtype=np.int64) for c in msgs])
    return [vectors_from_proto(c.vectors, f"{field}[{i}].vectors") for i, c in enumerate(msgs)]


class _Stage:
    name = "stage"

    def __init__(self, cfg: ServingConfig):
        self.cfg = cfg
        self.cascade = None

    @property
    def loaded(self) -> bool:
        return self.cascade is not None

    def load(self) -> None:
        # Every reranker loads the cascade deploy.json names (sha256s checked) and serves its
        # part: the bank, stage 1's exact index (no copy of the bank) and the models are small
        # beside the process itself, and the stages cannot disagree on what was deployed.
        from cascade.device import resolve_device
        from cascade.pipeline import Cascade
        self.cascade = Cascade.from_deploy(self.cfg.deploy, device=resolve_device(self.cfg.device))

    def describe(self) -> str:
        return ""


class Stage1Servicer(_Stage, rpc.Stage1Servicer):
    """Stage 1 over the whole bank, or shard `shard` of the config's stage1.shards: that shard's
    rows only (cascade.shard), answering in the bank's row ids."""
    name = "stage1"

    def __init__(self, cfg: ServingConfig, shard: int = 0):
        super().__init__(cfg)
        self.shard = shard
        self.stage1 = None

    @property
    def loaded(self) -> bool:
        return self.stage1 is not None

    def load(self) -> None:
        from cascade.device import resolve_device
        from cascade.stage1 import Stage1

        shards = len(self.cfg.stage1.shards)
        self.stage1 = Stage1.from_deploy(self.cfg.deploy,
                                         shard=(self.shard, shards) if shards > 1 else None,
                                         device=resolve_device(self.cfg.device))

    def describe(self) -> str:
        s1 = self.stage1
        shard = (f", shard {self.shard} of {len(self.cfg.stage1.shards)}: rows "
                 f"[{s1.row_start}, {s1.row_end})" if s1.sharded else "")
        return f" stage 1 = {s1.kind}" + (f" ({s1.reason})" if s1.kind != "v4" else "") + shard

    @guarded
    def Search(self, request, context):
        s1 = self.stage1
        queries = (vectors_from_proto(request.queries, "queries")
                   if request.HasField("queries") else None)
        result = s1.search(stage_contexts(request.contexts), k=request.k, queries=queries)
        return pb.Stage1Response(results=candidates_to_proto(result.ids, result.scores),
                                 kind=s1.kind, reason=s1.reason, seconds=result.seconds,
                                 row_start=s1.row_start, row_end=s1.row_end)


class LvmServicer(_Stage, rpc.LvmRerankerServicer):
    name = "lvm"

    def load(self) -> None:
        super().load()
        if self.cascade.lvm is None:
            raise ValueError(f"{self.cfg.deploy}: names no LVM checkpoint ('lvm'); run "
                             f"`make train-lvm`, or leave the lvm server out")

    @guarded
    def Rerank(self, request, context):
        vectors, _ = self.cascade.stage1.contexts(stage_contexts(request.contexts))
        ids, scores = candidates_from_proto(request.candidates, "candidates")
        result = self.cascade.lvm.rerank(vectors, ids, scores, keep=request.keep)
        return pb.RerankResponse(results=candidates_to_proto(result.ids, result.scores),
                                 seconds=result.seconds)


class TmdServicer(_Stage, rpc.TmdRerankerServicer):
    name = "tmd"

    def load(self) -> None:
        super().load()
        if self.cascade.tmd is None:
            raise ValueError(f"{self.cfg.deploy}: its bank has no TMD codes, so the cascade "
                             f"has no TMD stage; leave the tmd server out")

    @guarded
    def Rerank(self, request, context):
        t0 = time.perf_counter()
        ids, scores = candidates_from_proto(request.candidates, "candidates")
        codes = np.asarray(request.query_codes, dtype=np.int64)
        if len(codes) != len(ids):
            raise ValueError(f"query_codes: {len(codes)} codes for {len(ids)} candidate lists")
        ids, scores = self.cascade.tmd.rerank(codes, ids, scores, keep=request.keep)
        return pb.RerankResponse(results=candidates_to_proto(ids, scores),
                                 seconds=time.perf_counter() - t0)

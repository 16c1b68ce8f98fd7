"""The cascade front: `Cascade.Search` chains the stage servers as the in-process cascade chains
its stages, and adds the hits' bank data (text, cpe id, article, position).

Stage 1 may be split by rows across shard servers (`stage1.shards`): the front forms each query
once, sends it to every shard in parallel and merges their top-K exactly (cascade.shard). Forming
the query here, not on each shard, costs one tower pass instead of S, lets a shard answer a
context given as rows it does not hold, and has every shard score the very same vector, so the
merge compares like with like even when the shards run on different hardware.

Stage 1 is required: when every shard is down the call fails with UNAVAILABLE. A shard that is
down or overloaded while others answer leaves its rows unsearched: the answer is the merge of the
shards that answered, flagged `degraded` with the shard and its rows, as a reranker that is down,
overloaded or past its share of the deadline is skipped and flagged instead of failing the call.

Each step has its share of the caller's deadline (serving.yaml `front`): embedding texts its
`embed_share`, stage 1 what is left less the rerankers' shares (late: DEADLINE_EXCEEDED), each
reranker its own (late: skipped). A stage call that meets a dying process (UNAVAILABLE) is
retried once, waiting at most `channel.retry_wait_ms` for a live process, within its share.

One answer is computed by one deploy: a call reads the live deploy once (serving.swap) and sends
its id to every stage it calls, and each stage answers with that deploy's models (it keeps the
one before a swap), so a swap never mixes two deploys in one answer; `deploy` names it.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout

import grpc
import numpy as np

from serving import prometheus
from serving.batcher import Batcher
from serving.channels import SERVICE_NAMES, stage_channel
from serving.config import STAGES, ServingConfig
from serving.proto_arrays import (
    candidates_from_proto,
    candidates_to_proto,
    context_kind,
    vectors_from_proto,
    vectors_to_proto,
)
from serving.protos import pb, rpc
from serving.stages import guarded, warm_cascade
from serving.swap import Deploys, Loaded, deploy_id, same_bank

log = logging.getLogger("serving")

# Stage-1 errors passed on as they are: the caller's input, or the caller's own deadline.
_PASS_ON = (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.DEADLINE_EXCEEDED,
            grpc.StatusCode.CANCELLED)


def call_with_retry(method, request, until: float, retry_wait_s: float):
    """`method(request)` within `until` (perf_counter); on UNAVAILABLE (the process died under
    the call, or the connection is down) once more (`retry`)."""
    try:
        return method(request, timeout=max(until - time.perf_counter(), 0.001))
    except grpc.RpcError as e:
        return retry(method, request, until, retry_wait_s, e)


def retry(method, request, until: float, retry_wait_s: float, error: grpc.RpcError):
    """After `error`: once more when it is UNAVAILABLE and time is left, waiting at most
    `retry_wait_s` for a process to take the call (Search and Rerank are idempotent); raises
    `error` itself when no process takes it."""
    left = until - time.perf_counter()
    if error.code() != grpc.StatusCode.UNAVAILABLE or left <= 0 or retry_wait_s <= 0:
        raise error
    wait = min(left, retry_wait_s)
    try:
        return method(request, timeout=wait, wait_for_ready=True)
    except grpc.RpcError as e:
        if e.code() == grpc.StatusCode.DEADLINE_EXCEEDED and wait < left:
            raise error from None  # no process took it within retry_wait: still unavailable
        raise


class EveryNSeconds:
    """Logs a warning per cause at most once per `seconds`, with how many happened since."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.lock = threading.Lock()
        self.last: dict[str, float] = {}
        self.count: dict[str, int] = {}

    def warn(self, cause: str, message: str) -> None:
        now = time.monotonic()
        with self.lock:
            self.count[cause] = self.count.get(cause, 0) + 1
            if now - self.last.get(cause, -1e18) < self.seconds:
                return
            n = self.count.pop(cause)
            self.last[cause] = now
        log.warning("degraded (%d answer%s since the last line of this cause): %s", n,
                    "s" if n > 1 else "", message)


def _why(stage: str, err: grpc.RpcError, share_ms: float) -> str:
    code = err.code()
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return f"{stage} missed its deadline share ({share_ms:.3g} ms)"
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        return f"{stage} overloaded ({err.details()})"
    if code == grpc.StatusCode.UNAVAILABLE:
        return f"{stage} unavailable ({err.details()})"
    return f"{stage} failed: {code.name} {err.details()}"


LANE_SOURCE = {"codes": pb.LANE_SOURCE_CODES, "tagged": pb.LANE_SOURCE_TAGGED}


class CascadeServicer(rpc.CascadeServicer):
    name = "front"

    def __init__(self, cfg: ServingConfig):
        self.cfg = cfg
        self.deploys = Deploys()
        self.degraded_log = EveryNSeconds(cfg.front.degraded_log_s)
        self.embed_lock = threading.Lock()
        self.stage_up: dict[str, bool] = {}  # by the last health check of each stage (watch)

    @property
    def loaded(self) -> bool:
        return self.deploys.live is not None

    def retry_wait(self, stage: str) -> float:
        """How long a retried call to `stage` waits for a process: channel.retry_wait_ms, or 0
        while the last health check found none of its processes answering (a stage down waits
        for its restart; its calls should not each wait for it too)."""
        return self.cfg.channel.retry_wait_ms / 1000 if self.stage_up.get(stage, True) else 0.0

    @property
    def cascade(self):
        """The live deploy's cascade."""
        return self.deploys.live.model

    def load(self) -> None:
        """Everything a call uses, then the deploy: `loaded` (and SERVING) only once whole."""
        from cascade.shard import shard_bounds

        f = self.cfg.front
        # Concurrent calls' texts embedded as one encoder call, one batch at a time: the
        # tokenizer is not thread-safe (benchmarks/README.md: batched vs a lock).
        self.embedder = Batcher("embed", self.run_embed, f.embed_max_batch, 0.0)
        if f.stages == "in_process":  # no stage servers to call
            self.batcher = Batcher("front", self.run_batch, f.max_batch, f.max_wait_ms)
        else:
            # The rerankers' inputs (Cascade.reranker_inputs) of every call in flight, computed
            # while its stage 1 searches.
            self.inputs_pool = ThreadPoolExecutor(f.workers, thread_name_prefix="reranker-inputs")
            shards = self.cfg.stage1.shards
            self.channels = {"stage1": [stage_channel(self.cfg, "stage1", a) for a in shards],
                             "lvm": [stage_channel(self.cfg, "lvm")],
                             "tmd": [stage_channel(self.cfg, "tmd")]}
            self.shards = [rpc.Stage1Stub(ch) for ch in self.channels["stage1"]]
            self.lvm = rpc.LvmRerankerStub(self.channels["lvm"][0])
            self.tmd = rpc.TmdRerankerStub(self.channels["tmd"][0])
        loaded = Loaded(deploy_id(self.cfg.deploy), self.build(None))
        if f.stages != "in_process":
            self.bounds = shard_bounds(loaded.model.bank.n, len(self.cfg.stage1.shards))
        self.deploys.put(loaded)

    def build(self, old):
        """The cascade deploy.json names now, warmed; the bank and encoder of `old` (the live
        cascade) when they are the same."""
        from cascade.device import resolve_device
        from cascade.pipeline import Cascade

        # The front checks contexts with the library before any stage sees them, forms stage
        # 1's queries, computes the TMD lanes of contexts, embeds texts, and holds the bank's
        # texts and ids for the hits.
        bank = same_bank(self.cfg.deploy, old.bank if old is not None else None)
        # Stage 1's index only where this process searches it (in_process).
        cascade = Cascade.from_deploy(self.cfg.deploy, bank=bank,
                                      device=resolve_device(self.cfg.device),
                                      min_containment=self.cfg.stage1.min_containment,
                                      stage1_index=self.cfg.front.stages == "in_process")
        if old is not None and old.device == cascade.device and old.bank.dim == cascade.bank.dim:
            cascade._encoder = old._encoder  # one encoder whatever the deploy: not loaded twice
        try:
            cascade.embed(["load the encoder before reporting SERVING"])
        except ValueError as e:  # a bank of another encoder's dimension (e.g. a 768-d scale
            # bank beside MiniLM): it serves vector and row contexts; texts are refused
            log.warning("front: %s: text contexts will be refused", e)
        if self.cfg.front.stages == "in_process":
            warm_cascade(cascade)  # what stage 1 builds on first use, before SERVING
        elif old is not None and cascade.bank.n != old.bank.n:
            raise ValueError(f"{self.cfg.deploy}: its bank has {cascade.bank.n} rows, the "
                             f"served one {old.bank.n}: stage-1 shards split rows by the bank "
                             f"size, so a new bank needs a restart of the set, not a swap")
        return cascade

    def reload(self) -> str:
        """Swap to what deploy.json names now (SIGHUP); raises (and keeps the live deploy)
        when it does not load. -> the deploy id now served."""
        with self.deploys.swapping:
            new_id = deploy_id(self.cfg.deploy)
            if new_id != self.deploys.live.id:
                self.deploys.put(Loaded(new_id, self.build(self.cascade)))
            return new_id

    def describe(self) -> str:
        s1 = self.cascade.stage1
        return (f" deploy {self.deploys.live.id}: stage 1 = {s1.kind}"
                + (f" ({s1.reason})" if s1.kind != "v4" else "")
                + ("; every stage in this process" if self.cfg.front.stages == "in_process"
                   else ""))

    # -- health of the stages ------------------------------------------------------------------

    def watch(self, health_servicer) -> None:
        """Reports each stage's service on this front's health: SERVING while one of its
        processes answers a health check, NOT_SERVING while none does; the front's own status
        is NOT_SERVING while stage 1 (which no answer can do without) is."""
        if self.cfg.front.stages == "in_process":
            return
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        stubs = {name: [health_pb2_grpc.HealthStub(ch) for ch in self.channels[name]]
                 for name in STAGES}
        status = health_pb2.HealthCheckResponse

        def up(stub, service: str) -> bool:
            try:
                r = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=1.0)
                return r.status == status.SERVING
            except grpc.RpcError:
                return False

        def loop() -> None:
            while True:
                s1 = False
                cascade = self.cascade
                used = {"stage1": True, "lvm": cascade.lvm is not None,
                        "tmd": cascade.tmd is not None}
                for name in (n for n in STAGES if used[n]):
                    ok = any(up(stub, SERVICE_NAMES[name]) for stub in stubs[name])
                    self.stage_up[name] = ok
                    s1 = ok if name == "stage1" else s1
                    health_servicer.set(SERVICE_NAMES[name],
                                        status.SERVING if ok else status.NOT_SERVING)
                for svc in ("", SERVICE_NAMES["front"]):
                    health_servicer.set(svc, status.SERVING if s1 else status.NOT_SERVING)
                time.sleep(self.cfg.front.health_interval_s)

        threading.Thread(target=loop, name="watch-stages", daemon=True).start()

    # -- the call ------------------------------------------------------------------------------

    @guarded
    def Search(self, request, context):
        t0 = time.perf_counter()
        d = self.deploys.live  # this call's deploy, end to end
        cascade = d.model
        deadline_s = context.time_remaining()
        if deadline_s is None or deadline_s > 1e6:  # the caller set none
            deadline_s = self.cfg.front.deadline_ms / 1000
        end = t0 + deadline_s
        k = self.check_k(cascade, request.k)
        stage_ms: dict[str, float] = {}
        ctx, vectors, rows = self.stage_context(d, request.context, stage_ms, context,
                                                t0 + deadline_s * self.cfg.front.embed_share)
        if self.cfg.front.stages == "in_process":
            return self.search_in_process(d, vectors, rows, k, stage_ms, t0, context)

        degraded: list[str] = []
        share = self.cfg.front
        cfg = cascade.config
        # Stage 1 may not take the rerankers' shares: late, it is the call's DEADLINE_EXCEEDED.
        reserve = deadline_s * ((share.lvm_share if cascade.lvm is not None else 0)
                                + (share.tmd_share if cascade.tmd is not None else 0))
        ranking, kind, reason, inputs = self.call_stage1(d, ctx, vectors, rows, end - reserve,
                                                         stage_ms, degraded, context)
        try:
            pred, lanes = inputs.result(timeout=max(end - time.perf_counter(), 0.0))
        except FutureTimeout:
            context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, "the LVM's prediction and the TMD "
                          "lanes were not ready within the deadline")
        if cascade.lvm is not None:
            ranking = self.rerank("lvm", self.lvm.Rerank, pb.LvmRequest(
                contexts=[ctx], candidates=ranking, keep=min(cfg.k_lvm, len(ranking[0].ids)),
                predictions=None if pred is None else vectors_to_proto(pred.cpu().numpy()),
                deploy=d.id), end, deadline_s * share.lvm_share, stage_ms, degraded) or ranking
        if cascade.tmd is not None:
            ranking = self.rerank("tmd", self.tmd.Rerank, pb.TmdRequest(
                query_codes=lanes.codes.tolist(), candidates=ranking,
                keep=min(cfg.k_tmd, len(ranking[0].ids)), deploy=d.id,
                lane_source=LANE_SOURCE[lanes.source],
                domain_probs=None if lanes.domain_probs is None else
                lanes.domain_probs.ravel().tolist()),
                end, deadline_s * share.tmd_share, stage_ms, degraded) or ranking
        stage_ms["total"] = 1000 * (time.perf_counter() - t0)
        return pb.SearchResponse(hits=self.hits(cascade, ranking[0], k), stage1=kind,
                                 stage1_reason=reason, stage_ms=stage_ms,
                                 degraded=bool(degraded), degraded_reason="; ".join(degraded),
                                 deploy=d.id)

    def search_in_process(self, d: Loaded, vectors: list[np.ndarray],
                          rows: list[np.ndarray] | None, k: int, stage_ms: dict, t0: float,
                          context) -> pb.SearchResponse:
        """`front.stages: in_process`: the library's cascade in this process, no stage calls
        (so nothing to degrade: a failure is the call's). Concurrent calls of one form (rows or
        vectors) and one deploy share one batched search (front.max_batch)."""
        ids, scores, stages = self.batcher.submit((d.model, vectors, rows, k),
                                                  (d.id, rows is None), context)
        for name, seconds in stages.items():
            stage_ms[name] = 1000 * seconds
            prometheus.STAGE.labels(name).observe(seconds)
        stage_ms["total"] = 1000 * (time.perf_counter() - t0)
        s1 = d.model.stage1
        return pb.SearchResponse(hits=self.hits(d.model, candidates_to_proto(
                                     ids[None], scores[None])[0], k),
                                 stage1=s1.kind, stage1_reason=s1.reason, stage_ms=stage_ms,
                                 deploy=d.id)

    def run_batch(self, calls: list[tuple]) -> list[tuple]:
        """One `Cascade.search` of the calls' contexts with their largest k: each call's
        (ids, scores, seconds per stage of the batch), cut to its k."""
        from cascade.context import ContextRows

        cascade = calls[0][0]  # one deploy per batch (the batch key)
        k = max(c[3] for c in calls)
        if calls[0][2] is None:
            res = cascade.search([v for c in calls for v in c[1]], k)
        else:
            res = cascade.search(ContextRows([r for c in calls for r in c[2]]), k)
        stages = {name: st.seconds for name, st in res.stages.items()}
        return [(res.ids[b, :c[3]], res.scores[b, :c[3]], stages) for b, c in enumerate(calls)]

    def run_embed(self, calls: list[tuple]) -> list[np.ndarray]:
        """The texts of concurrent calls embedded in one encoder call, one call at a time."""
        texts = [t for _, ts in calls for t in ts]
        with self.embed_lock:  # max_batch 1 runs each call in its own thread: still one at a time
            vectors = calls[0][0].embed(texts)
        out, at = [], 0
        for _, ts in calls:
            out.append(vectors[at:at + len(ts)])
            at += len(ts)
        return out

    def check_k(self, cascade, k: int) -> int:
        """As Cascade.search: 0 (proto3's unset) is its default, min(k_tmd, last_k)."""
        last_k = cascade.last_k
        k = k or min(cascade.config.k_tmd, last_k)
        if not 1 <= k <= last_k:
            raise ValueError(f"k must be an integer in [1, {last_k}] (the last stage's K), "
                             f"got {k}")
        return k

    def stage_context(self, d: Loaded, msg, stage_ms: dict, context, embed_end: float):
        """The request's context as the stages take it (texts embedded here, within the
        embedding's share of the deadline), and the library's checked (vectors, rows) of it: a
        bad input is refused before any stage works on it."""
        from cascade.context import ContextRows

        cascade = d.model
        kind = context_kind(msg, "context", ("vectors", "texts", "rows"))
        if kind == "texts":
            texts = list(msg.texts.texts)
            self.check_texts(cascade, texts)
            t = time.perf_counter()
            embedded = self.embedder.submit((cascade, texts), d.id, context)
            stage_ms["embed"] = 1000 * (time.perf_counter() - t)
            prometheus.STAGE.labels("embed").observe(stage_ms["embed"] / 1000)
            if time.perf_counter() > embed_end:
                context.abort(grpc.StatusCode.DEADLINE_EXCEEDED,
                              f"embedding took {stage_ms['embed']:.0f} ms, past its share of "
                              f"the deadline (front.embed_share {self.cfg.front.embed_share})")
            msg = pb.Context(vectors=vectors_to_proto(embedded))
        if msg.WhichOneof("kind") == "rows":
            vectors, rows = cascade.stage1.contexts(
                ContextRows(np.asarray(msg.rows.rows, np.int64)))
        else:
            vectors, rows = cascade.stage1.contexts(
                vectors_from_proto(msg.vectors, "context.vectors"))
        return msg, vectors, rows

    def check_texts(self, cascade, texts: list[str]) -> None:
        f = self.cfg.front
        if not texts:
            raise ValueError("context.texts: empty (no text given)")
        if len(texts) > f.max_texts:
            raise ValueError(f"context.texts: {len(texts)} texts, more than the maximum "
                             f"{f.max_texts} (front.max_texts)")
        most = cascade.stage1.max_context  # checked again after embedding; fail cheap
        if len(texts) > most:
            raise ValueError(f"context.texts: {len(texts)} chunks, longer than the configured "
                             f"maximum {most} (cascade.max_context)")
        for i, t in enumerate(texts):
            if not t.strip():
                raise ValueError(f"context.texts[{i}]: empty text")
            if len(t) > f.max_text_chars:
                raise ValueError(f"context.texts[{i}]: {len(t)} characters, more than the "
                                 f"maximum {f.max_text_chars} (front.max_text_chars)")

    def call_stage1(self, d: Loaded, ctx: pb.Context, vectors: list[np.ndarray],
                    rows: list[np.ndarray] | None, until: float, stage_ms: dict,
                    degraded: list[str], context):
        """Stage 1's top k_stage1 by `until`: the query formed here, every shard searched in
        parallel, their answers merged; a shard that fails while others answer is named in
        `degraded`. Also returns the future of the rerankers' inputs (Cascade.reranker_inputs:
        the LVM's prediction and the TMD lanes read only the context), started once the query is
        formed (not before: the two would share the CPU) and done while the shards search."""
        from cascade.shard import merge_topk

        cascade = d.model
        k1 = min(cascade.config.k_stage1, cascade.bank.n)
        t = time.perf_counter()
        if until <= t:
            context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, "no time left for stage 1 within "
                          "the deadline after embedding (and the rerankers' shares)")
        queries = vectors_to_proto(cascade.stage1.queries(vectors))
        request = pb.Stage1Request(contexts=[ctx], k=k1, queries=queries, deploy=d.id)
        retry_s = self.retry_wait("stage1")
        calls = [stub.Search.future(request, timeout=max(until - time.perf_counter(), 0.001))
                 for stub in self.shards]
        inputs = self.inputs_pool.submit(cascade.reranker_inputs, vectors, rows, None)
        parts, failed, answered, answer = [], [], [], None
        for s, call in enumerate(calls):
            try:
                try:
                    resp = call.result()
                except grpc.RpcError as e:  # a process died under it: once more on another
                    resp = retry(self.shards[s].Search, request, until, retry_s, e)
            except grpc.RpcError as e:
                if e.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                    context.abort(e.code(), f"stage 1 missed its share of the deadline "
                                            f"({1000 * (until - t):.0f} ms)")
                if e.code() in _PASS_ON:
                    context.abort(e.code(), f"stage 1: {e.details()}")
                failed.append((s, e))
                continue
            if (resp.row_start, resp.row_end) != self.bounds[s]:
                failed.append((s, f"holds rows [{resp.row_start}, {resp.row_end}), the config's "
                                  f"{len(self.shards)} shards give it {list(self.bounds[s])}"))
                continue
            ids, scores = candidates_from_proto(resp.results, "stage 1 results")
            parts.append((scores, ids))
            answered.append(resp)
            answer = resp
        if answer is None:
            context.abort(grpc.StatusCode.UNAVAILABLE, "stage 1 cannot answer: " + "; ".join(
                self.shard_failure(s, e) for s, e in failed))
        for s, e in failed:
            why = self.shard_failure(s, e) + (f": rows [{self.bounds[s][0]}, "
                                              f"{self.bounds[s][1]}) not searched")
            degraded.append(why)
            cause = e.code().name if isinstance(e, grpc.RpcError) else "MISCONFIGURED"
            prometheus.DEGRADED.labels("stage1", cause).inc()
            self.degraded_log.warn(f"stage1 shard {s} {cause}", why)
        D, I = merge_topk(parts, k1)
        stage_ms["stage1"] = 1000 * (time.perf_counter() - t)
        # The servers' own time (the slowest shard's): the rest of a step is the round trip.
        stage_ms["stage1_server"] = 1000 * max(r.seconds for r in answered)
        prometheus.STAGE.labels("stage1").observe(stage_ms["stage1"] / 1000)
        return candidates_to_proto(I, D), answer.kind, answer.reason, inputs

    def shard_failure(self, s: int, e) -> str:
        """'stage1 shard s of S (addresses) <why>'; one shard is just 'stage 1 (addresses)'."""
        shards = self.cfg.stage1.shards
        where = (f"stage 1 ({', '.join(shards[s])})" if len(shards) == 1 else
                 f"stage1 shard {s} of {len(shards)} ({', '.join(shards[s])})")
        if isinstance(e, str):
            return f"{where} {e}"
        if e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
            return f"{where} overloaded ({e.details()})"
        return f"{where} unavailable: {e.code().name} {e.details()}"

    def rerank(self, stage: str, call, request, end: float, share_s: float, stage_ms: dict,
               degraded: list[str]):
        """The reranker's candidates, or None (and a reason in `degraded`) when it failed."""
        t = time.perf_counter()
        timeout = min(share_s, end - t)
        try:
            resp = call_with_retry(call, request, t + max(timeout, 0.001), self.retry_wait(stage))
        except grpc.RpcError as e:
            return self.skip(stage, e.code().name, _why(stage, e, 1000 * timeout), degraded)
        took = time.perf_counter() - t
        if took > timeout:
            # gRPC lets an answer through that lands before its timer fires, even past the
            # deadline; a late answer would eat the next stage's share, so it is skipped.
            why = (f"{stage} missed its deadline share ({1000 * timeout:.3g} ms; "
                   f"answered in {1000 * took:.3g} ms)")
            return self.skip(stage, "DEADLINE_EXCEEDED", why, degraded)
        stage_ms[stage] = 1000 * took
        stage_ms[f"{stage}_server"] = 1000 * resp.seconds
        prometheus.STAGE.labels(stage).observe(stage_ms[stage] / 1000)
        return resp.results

    def skip(self, stage: str, code: str, why: str, degraded: list[str]) -> None:
        """Records that `stage` was left out of this answer, and why."""
        degraded.append(why)
        prometheus.DEGRADED.labels(stage, code).inc()
        self.degraded_log.warn(f"{stage} {code}", why)

    def hits(self, cascade, cands: pb.Candidates, k: int) -> list[pb.Hit]:
        bank = cascade.bank
        out = []
        for row, score in zip(list(cands.ids)[:k], list(cands.scores)[:k], strict=True):
            if row < 0:  # padding: fewer candidates than k
                break
            out.append(pb.Hit(
                row=row, score=score, text=bank.text(row) or "",
                cpe_id="" if bank.cpe_ids is None else str(bank.cpe_ids[row]),
                article=int(bank.article_indices[row]), position=int(bank.chunk_indices[row])))
        return out

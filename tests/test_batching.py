"""Dynamic micro-batching in the stage servers (serving.batcher): real stage-1 and LVM gRPC
servers on 127.0.0.1 free ports, in this process. Concurrent calls answer exactly as unbatched
in-process calls (mixed k, keep and context forms), a bad call fails alone, a call whose deadline
passed while waiting is not run, a stopping server still answers what is queued, and the
batch-size histogram counts what ran together; `max_batch: 1` is the unbatched server."""

from __future__ import annotations

import dataclasses
import threading
import time

import grpc
import numpy as np
import pytest
from prometheus_client import REGISTRY

from cascade.context import ContextRows
from cascade.lvm import LvmReranker
from cascade.pipeline import Cascade
from cascade.stage1 import Stage1
from serving.config import ServingConfig, Stage1Config, StageConfig
from serving.harness import free_port
from serving.proto_arrays import candidates_from_proto, candidates_to_proto, vectors_to_proto
from serving.protos import pb, rpc
from serving.server import build_server
from serving.stages import LvmServicer, Stage1Servicer
from tests.test_serving import deployed  # noqa: F401 (a fixture)

CALLS = 10
WAIT_MS = 400.0  # long enough that the concurrent calls of a test meet in one batch


def start(cfg: ServingConfig, name: str):
    servicer = {"stage1": Stage1Servicer, "lvm": LvmServicer}[name](cfg)
    servicer.load()
    address = f"127.0.0.1:{free_port()}"
    server, _ = build_server(cfg, name, address, servicer)
    channel = grpc.insecure_channel(address)
    stub = (rpc.Stage1Stub if name == "stage1" else rpc.LvmRerankerStub)(channel)
    return server, stub, channel


def config(root, max_batch: int, max_wait_ms: float = WAIT_MS) -> ServingConfig:
    stage = {"metrics_port": 0, "processes": 1, "workers": 32, "max_batch": max_batch,
             "max_wait_ms": max_wait_ms}
    return ServingConfig(deploy=str(root / "deploy.json"),
                         stage1=Stage1Config(shards=[["127.0.0.1:1"]], **stage),
                         lvm=StageConfig(addresses=["127.0.0.1:1"], **stage))


@pytest.fixture(scope="module")
def stage1(deployed):  # noqa: F811
    root, bank = deployed
    return Stage1.from_deploy(root / "deploy.json"), bank


def batches(name: str) -> tuple[float, float]:
    """(batches run, calls answered) so far by `name`'s batcher in this process."""
    get = REGISTRY.get_sample_value
    return (get("cascade_batch_size_count", {"stage": name}) or 0.0,
            get("cascade_batch_size_sum", {"stage": name}) or 0.0)


def at_once(calls: list) -> list:
    """Run the zero-argument `calls` in threads released together: answers or RpcErrors."""
    out: list = [None] * len(calls)
    go = threading.Barrier(len(calls))

    def run(i):
        go.wait()
        try:
            out[i] = calls[i]()
        except grpc.RpcError as e:
            out[i] = e

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return out


def stage1_requests(s1: Stage1, bank) -> list[tuple[pb.Stage1Request, tuple]]:
    """Calls of every form (rows or vectors, queries sent or not) and k: each with the
    (contexts, k, queries) an unbatched `Stage1.search` takes."""
    starts, ends = bank.article_bounds()
    out = []
    for i in range(CALLS):
        s = starts[i]
        rows = np.arange(s, min(ends[i] - 1, s + 1 + i % 4))
        k = (5, 37, 100)[i % 3]
        with_queries = i % 2 == 1
        as_rows = i % 4 < 2
        vectors, _ = s1.contexts(ContextRows(rows))
        q = s1.queries(vectors) if with_queries else None
        ctx = (pb.Context(rows=pb.Rows(rows=rows.tolist())) if as_rows else
               pb.Context(vectors=vectors_to_proto(bank.vectors[rows])))
        req = pb.Stage1Request(contexts=[ctx], k=k)
        if with_queries:
            req.queries.CopyFrom(vectors_to_proto(q))
        out.append((req, (ContextRows(rows) if as_rows else bank.vectors[rows], k, q)))
    return out


def assert_answer(resp, expected, rtol: float = 0.0) -> None:
    ids, scores = candidates_from_proto(resp.results, "results")
    assert ids.tolist() == expected.ids.tolist()
    np.testing.assert_allclose(scores, expected.scores, rtol=rtol, atol=1e-6)


@pytest.mark.parametrize("max_batch", [CALLS, 1])
def test_concurrent_stage1_calls_answer_as_unbatched_calls(deployed, stage1,  # noqa: F811
                                                           max_batch):
    root, _ = deployed
    s1, bank = stage1
    server, stub, channel = start(config(root, max_batch), "stage1")
    try:
        requests = stage1_requests(s1, bank)
        before = batches("stage1")
        answers = at_once([lambda r=r: stub.Search(r, timeout=30) for r, _ in requests])
        ran, answered = np.subtract(batches("stage1"), before)
    finally:
        channel.close()
        server.stop(None)
    for resp, (_, (ctx, k, q)) in zip(answers, requests, strict=True):
        assert not isinstance(resp, grpc.RpcError), resp
        assert_answer(resp, s1.search(ctx, k=k, queries=q))
    assert answered == CALLS
    # Four forms (rows or vectors, queries or not): batched, at least 4 batches, far fewer
    # than the calls; unbatched, one per call.
    assert 4 <= ran < CALLS if max_batch > 1 else ran == CALLS


def test_a_bad_call_fails_alone_and_leaves_the_batch_alone(deployed, stage1):  # noqa: F811
    root, _ = deployed
    s1, bank = stage1
    server, stub, channel = start(config(root, CALLS), "stage1")
    nan = bank.vectors[:3].copy()
    nan[1, 5] = np.nan
    bad = [pb.Stage1Request(contexts=[pb.Context(vectors=vectors_to_proto(nan))], k=10),
           pb.Stage1Request(contexts=[pb.Context(rows=pb.Rows(rows=[1, bank.n]))], k=10),
           pb.Stage1Request(contexts=[pb.Context(rows=pb.Rows(rows=[1, 2]))], k=0)]
    try:
        good = [(r, e) for r, e in stage1_requests(s1, bank) if e[2] is None]
        answers = at_once([lambda r=r: stub.Search(r, timeout=30) for r, _ in good] +
                          [lambda r=r: stub.Search(r, timeout=30) for r in bad])
    finally:
        channel.close()
        server.stop(None)
    for resp, (_, (ctx, k, q)) in zip(answers[:len(good)], good, strict=True):
        assert_answer(resp, s1.search(ctx, k=k, queries=q))
    errors = answers[len(good):]
    assert all(e.code() == grpc.StatusCode.INVALID_ARGUMENT for e in errors), errors
    assert "NaN" in errors[0].details() and "out of range" in errors[1].details()
    assert "k must be" in errors[2].details()


def test_concurrent_lvm_calls_answer_as_unbatched_reranks(deployed, stage1):  # noqa: F811
    root, _ = deployed
    s1, bank = stage1
    lvm: LvmReranker = Cascade.from_deploy(root / "deploy.json").lvm
    server, stub, channel = start(config(root, CALLS), "lvm")
    calls = []
    for i, (_, (ctx, _, _)) in enumerate(stage1_requests(s1, bank)):
        width = 40 if i < 7 else 60  # two widths: two batches
        found = s1.search(ctx, k=width)
        vectors, _ = s1.contexts(ctx)
        keep = (5, 20, 40)[i % 3]
        req = pb.LvmRequest(contexts=[pb.Context(vectors=vectors_to_proto(vectors[0]))],
                            candidates=candidates_to_proto(found.ids, found.scores), keep=keep)
        calls.append((req, (vectors, found, keep)))
    try:
        before = batches("lvm")
        answers = at_once([lambda r=r: stub.Rerank(r, timeout=30) for r, _ in calls])
        ran, answered = np.subtract(batches("lvm"), before)
    finally:
        channel.close()
        server.stop(None)
    for resp, (_, (vectors, found, keep)) in zip(answers, calls, strict=True):
        assert not isinstance(resp, grpc.RpcError), resp
        # LVM logits reach ~10: a batched product rounds them within a few float32 ulps.
        assert_answer(resp, lvm.rerank(vectors, found.ids, found.scores, keep=keep), rtol=1e-5)
    assert answered == CALLS and 2 <= ran < CALLS


def test_a_call_past_its_deadline_while_waiting_is_not_run(deployed, stage1):  # noqa: F811
    root, _ = deployed
    s1, bank = stage1
    server, stub, channel = start(config(root, CALLS, max_wait_ms=1500), "stage1")
    req = stage1_requests(s1, bank)[0][0]
    try:
        before = batches("stage1")
        with pytest.raises(grpc.RpcError) as e:
            stub.Search(req, timeout=0.2)  # alone: it waits 1.5 s for a batch to fill
        assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        time.sleep(1.8)
        assert batches("stage1") == before  # dropped, not searched
        assert stub.Search(req, timeout=30).results  # the batcher serves on
    finally:
        channel.close()
        server.stop(None)


def test_a_stopping_server_answers_the_calls_it_queued(deployed, stage1):  # noqa: F811
    root, _ = deployed
    s1, bank = stage1
    server, stub, channel = start(config(root, CALLS), "stage1")
    requests = stage1_requests(s1, bank)[:4]
    try:
        futures = [stub.Search.future(r, timeout=30) for r, _ in requests]
        time.sleep(0.1)  # queued: the batch waits 400 ms for more
        stopped = server.stop(10)  # as SIGTERM's drain: no new calls, these finish
        for f, (_, (ctx, k, q)) in zip(futures, requests, strict=True):
            assert_answer(f.result(), s1.search(ctx, k=k, queries=q))
        stopped.wait(10)
    finally:
        channel.close()


def test_the_config_validates_batching(tmp_path):
    from serving.config import ConfigError, load_config

    (tmp_path / "s.yaml").write_text("stage1:\n  max_batch: 0\n")
    with pytest.raises(ConfigError, match="stage1.max_batch must be >= 1"):
        load_config(tmp_path / "s.yaml")
    (tmp_path / "s.yaml").write_text("tmd:\n  max_batch: 4\n")
    with pytest.raises(ConfigError, match="tmd.max_batch: unknown key|unknown key 'max_batch'"):
        load_config(tmp_path / "s.yaml")
    assert dataclasses.asdict(load_config().stage1)["max_batch"] >= 1

"""A serving set that heals itself and swaps deploys without dropping a call, on real servers
(127.0.0.1, free ports): 16 concurrent text callers, a swap under load and a bad deploy refused
while the old one serves, a restart loop stopped at its cap, a port free again at once after a
kill; and in this process: UNAVAILABLE before load, INTERNAL (counted) for an unexpected error,
`cascade.bank convert` refusing in one line."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import prometheus_client
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from cascade.pipeline import Cascade, ContextRows
from serving.config import load_config
from serving.harness import ServingSet, free_port
from serving.protos import pb, rpc
from serving.server import build_server, check_free
from serving.stages import guarded
from serving.swap import deploy_id
from tests.test_serving import (
    ROOT,
    assert_same,
    contexts,
    deployed,  # noqa: F401  (the module's bank, pairs, LVM and deploy.json)
    write_config,
    write_v4_deploy,
)


@pytest.fixture(scope="module")
def heal(deployed, tmp_path_factory):  # noqa: F811
    """A set serving live/deploy.json (first a copy of the heuristic deploy), quick to restart
    and quick to give up (two restarts in two minutes); deploy B (v4) beside it."""
    root, bank = deployed
    work = tmp_path_factory.mktemp("heal")
    (work / "live").mkdir()
    (work / "b").mkdir()
    shutil.copy(root / "deploy.json", work / "a.json")
    shutil.copy(root / "deploy.json", work / "live" / "deploy.json")
    write_v4_deploy(root, bank, work / "b")
    config = write_config(root, "heal")
    data = yaml.safe_load(config.read_text())
    data["deploy"] = str(work / "live" / "deploy.json")
    data["supervisor"].update(restart_backoff_s=0.2, max_restarts=2, restart_window_s=300.0)
    config.write_text(yaml.safe_dump(data))
    s = ServingSet(config)
    yield s, work
    s.stop()


def replace(src: Path, dst: Path) -> None:
    """dst becomes src's content in one rename (a server never reads half a deploy.json)."""
    tmp = dst.with_suffix(".tmp")
    shutil.copy(src, tmp)
    os.replace(tmp, dst)


def test_16_concurrent_text_callers_all_succeed(heal, deployed):  # noqa: F811
    s, _ = heal
    texts = [[f"Sentence {i} about rivers.", f"Another one, number {i}, about the sea."]
             for i in range(16)]

    def one(i: int):
        with s.client(timeout=120) as client:
            return client.search_texts(texts[i])

    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(one, range(16)))
    assert all(a.hits and not a.degraded for a in answers)
    cascade = Cascade.from_deploy(deployed[0] / "deploy.json")
    for i in (0, 15):
        assert_same(answers[i], cascade.search(cascade.embed(texts[i])))


def test_a_late_stage1_is_deadline_exceeded_not_a_starved_reranker(heal, deployed):  # noqa: F811
    """A front (in this process) whose rerankers' shares leave stage 1 0.01% of the deadline:
    with 1 s, stage 1 has 0.1 ms (less than any round trip) and the call is DEADLINE_EXCEEDED
    naming stage 1, answered by the front itself long before the caller's deadline; with
    3,000 s (stage 1: 300 ms) the same front's answer is whole."""
    import dataclasses

    from serving.front import CascadeServicer

    s, _ = heal
    _, bank = deployed
    cfg = dataclasses.replace(s.cfg, front=dataclasses.replace(
        s.cfg.front, lvm_share=0.4999, tmd_share=0.5, metrics_port=0))
    address = f"127.0.0.1:{free_port()}"
    servicer = CascadeServicer(cfg)
    server, _ = build_server(cfg, "front", address, servicer)
    servicer.load()
    rows = contexts(bank, 1)[0].tolist()
    try:
        with grpc.insecure_channel(address) as ch:
            stub = rpc.CascadeStub(ch)
            request = pb.SearchRequest(context=pb.Context(rows=pb.Rows(rows=rows)))
            with pytest.raises(grpc.RpcError) as e:
                stub.Search(request, timeout=1.0)
            assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            assert "stage 1" in e.value.details(), e.value.details()
            whole = stub.Search(request, timeout=3000)
            assert whole.hits and not whole.degraded, whole.degraded_reason
    finally:
        server.stop(0)


def test_swap_under_load_drops_nothing_and_a_bad_deploy_is_refused(heal, deployed):  # noqa: F811
    s, work = heal
    _, bank = deployed
    live = work / "live" / "deploy.json"
    a, b = deploy_id(work / "a.json"), deploy_id(work / "b" / "deploy.json")
    expected = {a: Cascade.from_deploy(work / "a.json"),
                b: Cascade.from_deploy(work / "b" / "deploy.json")}
    rows = contexts(bank, 4)
    log: list[tuple[float, str, object]] = []  # (start, context index, answer or error code)
    stop = threading.Event()

    def load(i: int) -> None:
        with s.client(timeout=60) as client:
            while not stop.is_set():
                t = time.monotonic()
                try:
                    log.append((t, i, client.search_rows(rows[i].tolist())))
                except grpc.RpcError as e:
                    log.append((t, i, e.code().name))

    pid = int(Path(s.cfg.supervisor.pid_file).read_text())
    assert pid == s.proc.pid
    threads = [threading.Thread(target=load, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    try:
        time.sleep(1.0)
        replace(work / "b" / "deploy.json", live)
        os.kill(pid, signal.SIGHUP)
        done = s.wait_for("swap done")
        swapped_at = time.monotonic()
        assert b in done
        time.sleep(1.0)
        # A bad deploy: its checkpoint is not the one it pins.
        bad = json.loads((work / "b" / "deploy.json").read_text())
        bad["checkpoint_sha256"] = "0" * 64
        (work / "bad.json").write_text(json.dumps(bad))
        replace(work / "bad.json", live)
        os.kill(pid, signal.SIGHUP)
        refused = s.wait_for("swap REFUSED")
        assert "sha256" in refused
        time.sleep(1.0)
    finally:
        stop.set()
        for t in threads:
            t.join()
    errors = [x for x in log if not isinstance(x[2], pb.SearchResponse)]
    assert not errors, errors[:5]
    assert {r.deploy for _, _, r in log} == {a, b}
    for t, i, r in log:  # each answer is the one its deploy computes, end to end
        assert not r.degraded, r.degraded_reason
        assert_same(r, expected[r.deploy].search(ContextRows(rows[i])))
        if t > swapped_at:
            assert r.deploy == b
        assert r.stage1 == ("v4" if r.deploy == b else "heuristic")


def test_a_killed_stage_comes_back_on_the_served_deploy_and_a_loop_stops_at_its_cap(
        heal, deployed):  # noqa: F811
    """live/deploy.json is the refused one now: a killed LVM comes back on the deploy the set
    serves (B, from the supervisor's copy), and answers are whole again; killed each time it
    comes back, the supervisor gives up on it at its cap and answers go on without it."""
    s, work = heal
    _, bank = deployed
    rows = contexts(bank, 1)[0].tolist()
    b = deploy_id(work / "b" / "deploy.json")
    assert deploy_id(work / "live" / "deploy.json") != b  # the refused one
    os.kill(s.pid("lvm"), signal.SIGKILL)
    back = s.wait_for("lvm restarted")
    assert f"deploy {b}" in back, back
    copy = work / "live" / f".deploy.json.serving-{b}"
    assert deploy_id(copy) == b
    end = time.monotonic() + 30  # the front's channel reconnects with its own backoff
    with s.client(timeout=30) as client:
        while (r := client.search_rows(rows)).degraded and time.monotonic() < end:
            time.sleep(0.2)
    assert not r.degraded and r.deploy == b, r.degraded_reason
    os.kill(int(back.split("(pid ")[1].split(")")[0]), signal.SIGKILL)
    back = s.wait_for("lvm restarted")
    os.kill(int(back.split("(pid ")[1].split(")")[0]), signal.SIGKILL)
    line = s.wait_for("GIVING UP on lvm")
    assert "2 restarts" in line and "supervisor.max_restarts 2" in line
    with s.client(timeout=30) as client:
        r = client.search_rows(rows)
    assert r.degraded and "lvm unavailable" in r.degraded_reason
    assert r.deploy == deploy_id(work / "b" / "deploy.json")
    # The front's health says so per stage; the front itself still serves (stage 1 is up).
    with grpc.insecure_channel(s.cfg.front.addresses[0]) as ch:
        health = health_pb2_grpc.HealthStub(ch)
        status = health_pb2.HealthCheckResponse
        for service, want in (("cascade.v1.LvmReranker", status.NOT_SERVING),
                              ("cascade.v1.Stage1", status.SERVING),
                              ("cascade.v1.Cascade", status.SERVING)):
            assert health.Check(health_pb2.HealthCheckRequest(service=service),
                                timeout=5).status == want, service
    # The supervisor itself killed: its servers drain and exit with it, and the set starts
    # again on the same ports at once (TIME_WAIT left behind or not).
    replace(work / "b" / "deploy.json", work / "live" / "deploy.json")
    os.kill(s.proc.pid, signal.SIGKILL)
    s.proc.wait(10)
    addresses = [*s.cfg.front.addresses, *s.cfg.stage1.addresses, *s.cfg.lvm.addresses,
                 *s.cfg.tmd.addresses]
    end = time.monotonic() + 60
    while True:
        try:
            check_free(addresses)
            break
        except OSError:
            assert time.monotonic() < end, "the servers outlived their supervisor"
            time.sleep(0.2)
    again = ServingSet(s.config)
    try:
        with again.client(timeout=30) as client:
            assert client.search_rows(rows).hits
    finally:
        assert again.stop() == 0


# ---------------------------------------------------------------------------------------------
# in this process


def test_check_free_passes_over_time_wait_but_not_a_listener():
    with socket.socket() as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gRPC's listeners
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        address = f"127.0.0.1:{listener.getsockname()[1]}"
        client = socket.create_connection(listener.getsockname())
        conn, _ = listener.accept()
        conn.close()  # the server side closes first: its end waits in TIME_WAIT
        with pytest.raises(OSError, match=f"cannot listen on {address}"):
            check_free([address])
    client.close()
    check_free([address])  # the listener is gone; the TIME_WAIT connection is not


def test_a_call_before_load_is_unavailable_and_health_not_serving(deployed):  # noqa: F811
    from serving.front import CascadeServicer

    root, _ = deployed
    cfg = load_config(write_config(root, "before_load"))
    address = f"127.0.0.1:{free_port()}"
    server, _ = build_server(cfg, "front", address, CascadeServicer(cfg))
    try:
        with grpc.insecure_channel(address) as ch:
            with pytest.raises(grpc.RpcError) as e:
                rpc.CascadeStub(ch).Search(pb.SearchRequest(
                    context=pb.Context(rows=pb.Rows(rows=[1, 2]))), timeout=5)
            assert e.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "front: still loading" in e.value.details()
            r = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=5)
            assert r.status == health_pb2.HealthCheckResponse.NOT_SERVING
    finally:
        server.stop(0)


def test_in_process_front_swaps_its_one_cascade(deployed, tmp_path):  # noqa: F811
    """`front.stages: in_process`: a swap replaces the front's one cascade; answers name the
    deploy and are its cascade's; a deploy that does not load leaves the old one serving."""
    import dataclasses

    from serving.front import CascadeServicer

    root, bank = deployed
    (tmp_path / "b").mkdir()
    b = write_v4_deploy(root, bank, tmp_path / "b")
    live = tmp_path / "deploy.json"
    shutil.copy(root / "deploy.json", live)
    cfg = load_config(write_config(root, "in_process_swap", stages="in_process"))
    cfg = dataclasses.replace(cfg, deploy=str(live), front=dataclasses.replace(
        cfg.front, metrics_port=0))
    servicer = CascadeServicer(cfg)
    address = f"127.0.0.1:{free_port()}"
    server, _ = build_server(cfg, "front", address, servicer)
    servicer.load()
    rows = contexts(bank, 1)[0]
    request = pb.SearchRequest(context=pb.Context(rows=pb.Rows(rows=rows.tolist())))
    try:
        with grpc.insecure_channel(address) as ch:
            stub = rpc.CascadeStub(ch)
            r = stub.Search(request, timeout=30)
            assert r.deploy == deploy_id(root / "deploy.json") and r.stage1 == "heuristic"
            replace(b, live)
            assert servicer.reload() == deploy_id(b)
            r = stub.Search(request, timeout=30)
            assert r.deploy == deploy_id(b) and r.stage1 == "v4"
            assert_same(r, Cascade.from_deploy(b).search(ContextRows(rows)))
            live.write_text("{not json")
            with pytest.raises(ValueError, match="not valid JSON"):
                servicer.reload()
            assert stub.Search(request, timeout=30).deploy == deploy_id(b)
    finally:
        server.stop(0)


class Failing(rpc.TmdRerankerServicer):
    """A servicer whose work meets an error no check foresaw (what `guarded` is for)."""
    name = "tmd"
    loaded = True

    @guarded
    def Rerank(self, request, context):
        return {}[request.keep]  # KeyError


def test_an_unexpected_error_is_internal_with_a_short_message_and_counted(deployed):  # noqa: F811
    root, _ = deployed
    cfg = load_config(write_config(root, "internal"))
    address = f"127.0.0.1:{free_port()}"
    server, _ = build_server(cfg, "tmd", address, Failing())
    labels = {"method": "TmdReranker.Rerank", "code": "INTERNAL"}
    before = prometheus_client.REGISTRY.get_sample_value("cascade_errors_total", labels) or 0
    try:
        with grpc.insecure_channel(address) as ch:
            with pytest.raises(grpc.RpcError) as e:
                rpc.TmdRerankerStub(ch).Rerank(pb.TmdRequest(keep=3), timeout=5)
    finally:
        server.stop(0)
    assert e.value.code() == grpc.StatusCode.INTERNAL
    assert e.value.details() == "tmd: internal error (KeyError: 3)"
    assert prometheus_client.REGISTRY.get_sample_value("cascade_errors_total", labels) \
        == before + 1


def test_bank_convert_without_trust_pickle_is_one_line_exit_2(tmp_path):
    original = tmp_path / "orig.npz"
    np.savez(original, vectors=np.ones((2, 4), np.float32))
    r = subprocess.run([sys.executable, "-m", "cascade.bank", "convert", str(original),
                        str(tmp_path / "out.npz")], cwd=ROOT, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 2, r.stderr
    assert r.stderr.count("\n") == 1 and "--trust-pickle" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr


def test_the_served_copy_is_written_once_and_a_folder_that_refuses_it_is_no_crash(tmp_path):
    """Supervisor.serving_copy: None while deploy.json is what the set serves; else a copy of
    the served bytes beside it (same id); where it cannot be written, None (deploy.json)."""
    from serving.config import ServingConfig
    from serving.server import Supervisor

    served = tmp_path / "deploy.json"
    served.write_text('{"served": true}')
    sup = Supervisor.__new__(Supervisor)  # its restart bookkeeping only: no processes
    sup.cfg, sup.good = ServingConfig(deploy=str(served)), served.read_bytes()
    assert sup.serving_copy("lvm") is None
    served.write_text('{"refused": true}')
    copy = sup.serving_copy("lvm")
    assert Path(copy).read_bytes() == sup.good and Path(copy).parent == tmp_path
    assert deploy_id(copy) == hashlib.sha256(sup.good).hexdigest()[:12]
    sup.cfg = ServingConfig(deploy=str(tmp_path / "gone" / "deploy.json"))
    assert sup.serving_copy("lvm") is None

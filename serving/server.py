"""Start the serving set: each stage as its own gRPC server process, then the cascade front.

    python -m serving.server --config serving/serving.yaml            # the whole set (make serve)
    python -m serving.server --config serving/serving.yaml --only lvm  # one stage, e.g. on its host
    python -m serving.server --config serving/serving.yaml --only stage1 --shard 1
                                       # one stage-1 shard (stage1.shards[1]) on its host

Every process loads its models before it reports SERVING (grpc.health.v1, per service); on
SIGTERM it stops taking calls, lets the calls in flight finish (`grace_seconds`) and exits. The
supervisor stops the front first, then the stages, so no call in flight loses a stage under it.
"""

from __future__ import annotations

import argparse
import logging
import os
import select
import signal
import subprocess
import sys
import threading
import time
from concurrent import futures
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from serving import metrics
from serving.config import STAGES, ConfigError, ServingConfig, TlsConfig, load_config
from serving.protos import pb, rpc

log = logging.getLogger("serving")

SERVICE_NAMES = {name: pb.DESCRIPTOR.services_by_name[svc].full_name for name, svc in
                 (("front", "Cascade"), ("stage1", "Stage1"), ("lvm", "LvmReranker"),
                  ("tmd", "TmdReranker"))}
EXIT_BAD_CONFIG = 2
READY_TIMEOUT_S = 600  # loading the bank, index, models and encoder on a busy machine


# ---------------------------------------------------------------------------------------------
# one server


def _read(path: str | None) -> bytes | None:
    return Path(path).read_bytes() if path else None


def server_credentials(tls: TlsConfig) -> grpc.ServerCredentials | None:
    """TLS when a certificate and key are set; mutual TLS when a client CA is set too."""
    if tls.cert is None:
        return None
    return grpc.ssl_server_credentials([(_read(tls.key), _read(tls.cert))],
                                       root_certificates=_read(tls.client_ca),
                                       require_client_auth=tls.client_ca is not None)


def channel_credentials(tls: TlsConfig) -> grpc.ChannelCredentials | None:
    """How the front (and the supervisor's readiness checks) reach TLS stages."""
    if tls.cert is None:
        return None
    mutual = tls.client_ca is not None
    return grpc.ssl_channel_credentials(
        root_certificates=_read(tls.ca or tls.cert),
        private_key=_read(tls.client_key or tls.key) if mutual else None,
        certificate_chain=_read(tls.client_cert or tls.cert) if mutual else None)


def message_options(cfg: ServingConfig) -> list[tuple[str, int]]:
    size = cfg.max_message_mb * 1024 * 1024
    return [("grpc.max_receive_message_length", size), ("grpc.max_send_message_length", size)]


def make_servicer(cfg: ServingConfig, name: str, shard: int = 0):
    """The servicer of `name` (of stage-1 shard `shard`); its models load in `.load()`, after
    the port is open."""
    if name == "front":
        from serving.front import CascadeServicer
        return CascadeServicer(cfg)
    from serving import stages
    if name == "stage1":
        return stages.Stage1Servicer(cfg, shard)
    return {"lvm": stages.LvmServicer, "tmd": stages.TmdServicer}[name](cfg)


_ADD = {"front": rpc.add_CascadeServicer_to_server, "stage1": rpc.add_Stage1Servicer_to_server,
        "lvm": rpc.add_LvmRerankerServicer_to_server,
        "tmd": rpc.add_TmdRerankerServicer_to_server}


def build_server(cfg: ServingConfig, name: str, address: str, servicer
                 ) -> tuple[grpc.Server, health.HealthServicer]:
    """A started gRPC server for one service: health NOT_SERVING until `servicer` is loaded."""
    sc = cfg.server(name)
    # SO_REUSEPORT only where processes are meant to share the port: otherwise a second server
    # started by mistake on a busy port must fail, not silently take half the calls.
    options = message_options(cfg) + [("grpc.so_reuseport", int(sc.processes > 1))]
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=sc.workers),
                         interceptors=[metrics.MetricsInterceptor()], options=options,
                         maximum_concurrent_rpcs=sc.max_concurrent_rpcs)
    _ADD[name](servicer, server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    service = SERVICE_NAMES[name]
    for svc in ("", service):  # "" is the whole server's status
        health_servicer.set(svc, health_pb2.HealthCheckResponse.NOT_SERVING)
    reflection.enable_server_reflection(
        (service, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
    creds = server_credentials(cfg.tls)
    port = (server.add_secure_port(address, creds) if creds else
            server.add_insecure_port(address))
    if port == 0:
        raise OSError(f"{name}: cannot listen on {address} (in use, or not an address here)")
    server.start()
    return server, health_servicer


def serve(cfg: ServingConfig, name: str, address: str, process: int = 0,
          ready_fd: int | None = None, shard: int = 0) -> int:
    """Run one server until SIGTERM/SIGINT: listen, load, report SERVING, drain on signal."""
    from cascade.threads import set_threads  # imports torch and FAISS: only servers need them

    sc = cfg.server(name)
    set_threads(sc.threads)
    if sc.metrics_port:
        metrics.start(sc.metrics_port + process, host=address.rpartition(":")[0] or "127.0.0.1")
    servicer = make_servicer(cfg, name, shard)
    server, health_servicer = build_server(cfg, name, address, servicer)
    stopped = threading.Event()

    def drain(signum, frame):
        log.info("%s %s: signal %d, draining (grace %.0fs)", name, address, signum,
                 cfg.grace_seconds)
        health_servicer.enter_graceful_shutdown()
        server.stop(cfg.grace_seconds).wait()
        log.info("%s %s: stopped", name, address)
        stopped.set()

    signal.signal(signal.SIGTERM, lambda s, f: threading.Thread(target=drain, args=(s, f)).start())
    signal.signal(signal.SIGINT, lambda s, f: threading.Thread(target=drain, args=(s, f)).start())
    t0 = time.perf_counter()
    servicer.load()
    for svc in ("", SERVICE_NAMES[name]):
        health_servicer.set(svc, health_pb2.HealthCheckResponse.SERVING)
    log.info("%s serving on %s (pid %d, loaded in %.1fs)%s", name, address, os.getpid(),
             time.perf_counter() - t0, servicer.describe())
    if ready_fd is not None:
        os.write(ready_fd, f"{name} {address} {os.getpid()}{servicer.describe()}\n".encode())
        os.close(ready_fd)
    while not stopped.wait(1.0):
        pass
    return 0


# ---------------------------------------------------------------------------------------------
# the set


def deployed(cfg: ServingConfig) -> list[str]:
    """The stages of the cascade deploy.json describes, as the library builds it."""
    import numpy as np

    from cascade.deploy import read_deploy, resolve

    deploy = read_deploy(cfg.deploy)
    bank = resolve(cfg.deploy, deploy["bank"])
    with np.load(bank) as z:  # reads the archive's directory only
        has_tmd = "tmd_codes" in z.files
    # As Cascade.from_deploy: the LVM when deploy.json names one, TMD when the bank has codes.
    present = {"stage1": True, "lvm": bool(deploy.get("lvm")), "tmd": has_tmd}
    return [name for name in STAGES if present[name]]


def plan(cfg: ServingConfig, only: str | None, shard: int | None = None
         ) -> list[tuple[str, str, int, int]]:
    """(name, address, process number, stage-1 shard) of every process to start, stages before
    the front; `shard` keeps one stage-1 shard's (a shard on its own host)."""
    if only:
        names = [only]
    elif cfg.front.stages == "in_process":  # the front runs every stage itself
        names = ["front"]
    else:
        names = [*deployed(cfg), "front"]
    out = []
    for name in names:
        sc = cfg.server(name)
        shards = cfg.stage1.shards if name == "stage1" else [sc.addresses]
        r = 0
        for s, addresses in enumerate(shards):
            for address in addresses:
                if shard is None or s == shard:
                    out += [(name, address, r * sc.processes + p, s) for p in range(sc.processes)]
                r += 1
    return out


def check_free(addresses: list[str]) -> None:
    """OSError naming an address something already listens on. With SO_REUSEPORT a second set
    would otherwise bind beside the first and silently take part of its calls."""
    import socket

    for address in dict.fromkeys(addresses):
        host, _, port = address.rpartition(":")
        with socket.socket(socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET) as s:
            try:
                s.bind((host.strip("[]"), int(port)))
            except OSError as e:
                raise OSError(f"cannot listen on {address}: {e.strerror} (another server "
                              f"there? stop it, or change the address in the config)") from None


def _wait_ready(procs: list[subprocess.Popen], read_fd: int, timeout: float) -> list[str]:
    """Lines of the processes that reported SERVING; raises if one exits first."""
    lines, buf, deadline = [], b"", time.monotonic() + timeout
    while len(lines) < len(procs):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{len(procs) - len(lines)} server(s) not SERVING after "
                               f"{timeout:.0f}s")
        for p in procs:
            if p.poll() is not None:
                raise RuntimeError(f"server process {p.pid} ({' '.join(p.args[-4:])}) exited "
                                   f"with code {p.returncode} before SERVING; see its log above")
        r, _, _ = select.select([read_fd], [], [], 0.2)
        if r:
            buf += os.read(read_fd, 65536)
            *done, buf = buf.split(b"\n")
            lines += [d.decode() for d in done]
    return lines


def run_set(cfg: ServingConfig, config_path: str, only: str | None, shard: int | None = None
            ) -> int:
    """Start every server process, print where they listen, stop them in order on a signal."""
    read_fd, write_fd = os.pipe()
    env = dict(os.environ)
    procs: list[tuple[str, subprocess.Popen]] = []
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda s, f: stop.set())
    signal.signal(signal.SIGINT, lambda s, f: stop.set())
    try:
        todo = plan(cfg, only, shard)
        check_free([address for _, address, _, _ in todo])
        for name, address, process, s in todo:
            threads = str(cfg.server(name).threads)
            env.update(OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads)
            cmd = [sys.executable, "-m", "serving.server", "--config", config_path,
                   "--deploy", cfg.deploy, "--serve", name, "--address", address,
                   "--process", str(process), "--ready-fd", str(write_fd), "--shard", str(s)]
            procs.append((name, subprocess.Popen(cmd, env=env, pass_fds=(write_fd,))))
        os.close(write_fd)
        for line in _wait_ready([p for _, p in procs], read_fd, READY_TIMEOUT_S):
            name, address, pid, *rest = line.split(" ", 3)
            print(f"{name:>6} listening on {address} (pid {pid}){' ' + rest[0] if rest else ''}",
                  flush=True)
        print(f"ready; stop with SIGTERM or Ctrl-C (pid {os.getpid()})", flush=True)
        while not stop.wait(0.5):
            for name, p in procs:
                if p.poll() is not None and not getattr(p, "_reported", False):
                    p._reported = True
                    log.error("%s (pid %d) exited with code %s%s", name, p.pid, p.returncode,
                              "" if name != "front" else "; stopping the set")
                    if name == "front":
                        stop.set()
    except (RuntimeError, TimeoutError, OSError) as e:
        print(f"serving: {e}", file=sys.stderr)
        return 1
    finally:
        _stop_in_order(procs, cfg.grace_seconds)
    return 0


def _stop_in_order(procs: list[tuple[str, subprocess.Popen]], grace: float) -> None:
    """SIGTERM the front, wait for it, then the stages; SIGKILL what outlives its grace."""
    for group in (["front"], list(STAGES)):
        members = [p for name, p in procs if name in group and p.poll() is None]
        for p in members:
            p.send_signal(signal.SIGTERM)
        for p in members:
            try:
                p.wait(grace + 5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m serving.server", description=__doc__.split("\n")[0])
    p.add_argument("--config", default="serving/serving.yaml", help="serving YAML")
    p.add_argument("--deploy", help="deploy.json to serve (default: the YAML's 'deploy')")
    p.add_argument("--only", choices=("front", *STAGES),
                   help="start this server's processes only (a stage on its own host)")
    p.add_argument("--shard", type=int, default=None,
                   help="with --only stage1: start this shard's processes only (0-based, as "
                        "listed in stage1.shards)")
    # Internal: what the supervisor passes to each server process it starts.
    p.add_argument("--serve", choices=("front", *STAGES), help=argparse.SUPPRESS)
    p.add_argument("--address", help=argparse.SUPPRESS)
    p.add_argument("--process", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--ready-fd", type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    try:
        cfg = load_config(args.config)
    except ConfigError as e:
        print(f"serving: {e}", file=sys.stderr)
        return EXIT_BAD_CONFIG
    if args.deploy:
        cfg.deploy = args.deploy
    from cascade.device import check_device_name
    try:
        check_device_name(cfg.device)
    except ValueError as e:
        print(f"serving: {args.config}: device: {e}", file=sys.stderr)
        return EXIT_BAD_CONFIG
    if args.shard is not None and not (args.serve or args.only == "stage1") or \
            not 0 <= (args.shard or 0) < len(cfg.stage1.shards):
        print(f"serving: --shard {args.shard}: needs --only stage1 and a shard in [0, "
              f"{len(cfg.stage1.shards)})", file=sys.stderr)
        return EXIT_BAD_CONFIG
    if args.serve:
        try:
            rc = serve(cfg, args.serve, args.address, args.process, args.ready_fd,
                       args.shard or 0)
        except (ValueError, OSError) as e:  # a deploy.json or checkpoint that does not load
            print(f"serving {args.serve}: {e}", file=sys.stderr)
            rc = EXIT_BAD_CONFIG
        # Drained and stopped: nothing is left to write. Skip the interpreter's teardown of
        # torch, FAISS and gRPC, which took 7 s on a busy 2-core machine after a 10 ms drain.
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(rc)
    try:
        return run_set(cfg, args.config, args.only, args.shard)
    except ValueError as e:  # deploy.json unreadable
        print(f"serving: {e}", file=sys.stderr)
        return EXIT_BAD_CONFIG


if __name__ == "__main__":
    raise SystemExit(main())

"""Start the serving set: each stage as its own gRPC server process, then the cascade front.

    python -m serving.server --config serving/serving.yaml            # the whole set (make serve)
    python -m serving.server --config serving/serving.yaml --only lvm  # one stage, e.g. on its host
    python -m serving.server --config serving/serving.yaml --only stage1 --shard 1
                                       # one stage-1 shard (stage1.shards[1]) on its host

Every process loads its models before it reports SERVING (grpc.health.v1, per service); on
SIGTERM it stops taking calls, lets the calls in flight finish (`grace_seconds`) and exits. The
supervisor stops the front first, then the stages, so no call in flight loses a stage under it.

The supervisor starts again any process that exits (`supervisor` in serving.yaml: backoff
doubling per restart, and a cap after which it gives up on that process and says so). SIGHUP to
it (its pid is printed and written to `supervisor.pid_file`) swaps the deploy: every stage
process loads what deploy.json names now, checks its sha256 pins and warms it, then the fronts
do; calls in flight finish on the deploy they began with (serving.swap); a deploy that any
process refuses is not swapped in by the fronts, which keep serving the old one, and a process
that exits after such a refusal is started again on a copy of the deploy the set serves rather
than on the refused deploy.json (`Supervisor.serving_copy`). A server
started on its own (`--only`, one unit per stage under systemd or Kubernetes) swaps on its own
SIGHUP.
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

from serving import prometheus
from serving.channels import SERVICE_NAMES, message_options, server_credentials
from serving.config import STAGES, ConfigError, ServingConfig, load_config
from serving.protos import rpc
from serving.swap import content_id

log = logging.getLogger("serving")

EXIT_BAD_CONFIG = 2
READY_TIMEOUT_S = 600  # loading the bank, index, models and encoder on a busy machine


# ---------------------------------------------------------------------------------------------
# one server


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
                         interceptors=[prometheus.MetricsInterceptor(sc.max_concurrent_rpcs)],
                         options=options,
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


def _tell(fd: int | None, line: str) -> None:
    """One line to the supervisor (one write below PIPE_BUF: lines never interleave)."""
    if fd is not None:
        os.write(fd, (" ".join(line.split())[:1000] + "\n").encode())


def serve(cfg: ServingConfig, name: str, address: str, process: int = 0,
          ready_fd: int | None = None, shard: int = 0, start_deploy: str | None = None) -> int:
    """Run one server until SIGTERM/SIGINT: listen, load, report SERVING, swap the deploy on
    SIGHUP, drain on SIGTERM. `start_deploy`: load that file first instead of `cfg.deploy`
    (the supervisor's copy of the deploy the set serves); a swap reads `cfg.deploy` as always."""
    from cascade.threads import set_threads  # imports torch and FAISS: only servers need them

    sc = cfg.server(name)
    set_threads(sc.threads)
    if sc.metrics_port:
        prometheus.start(sc.metrics_port + process, host=address.rpartition(":")[0] or "127.0.0.1")
    servicer = make_servicer(cfg, name, shard)
    server, health_servicer = build_server(cfg, name, address, servicer)
    stopped = threading.Event()
    me = f"{name} {address} {os.getpid()}"

    def drain(signum, frame):
        log.info("%s %s: signal %d, draining (grace %.0fs)", name, address, signum,
                 cfg.grace_seconds)
        health_servicer.enter_graceful_shutdown()
        server.stop(cfg.grace_seconds).wait()
        log.info("%s %s: stopped", name, address)
        stopped.set()

    def swap():
        t = time.perf_counter()
        try:
            new = servicer.reload()
        except Exception as e:  # a bad deploy: refused, the live one keeps serving
            log.error("%s %s: deploy %s refused, still serving %s: %s", name, address,
                      cfg.deploy, servicer.deploys.live.id, e)
            _tell(ready_fd, f"refused {me} {type(e).__name__}: {e}")
            return
        log.info("%s %s: serving deploy %s (swapped in %.1fs)", name, address, new,
                 time.perf_counter() - t)
        _tell(ready_fd, f"swapped {me} {new}")

    signal.signal(signal.SIGTERM, lambda s, f: threading.Thread(target=drain, args=(s, f)).start())
    signal.signal(signal.SIGINT, lambda s, f: threading.Thread(target=drain, args=(s, f)).start())
    hup_while_loading = threading.Event()  # SIGHUP's default would kill a loading server
    signal.signal(signal.SIGHUP, lambda s, f: hup_while_loading.set())
    t0 = time.perf_counter()
    swap_to, cfg.deploy = cfg.deploy, start_deploy or cfg.deploy
    try:
        servicer.load()
    finally:
        cfg.deploy = swap_to
    for svc in ("", SERVICE_NAMES[name]):
        health_servicer.set(svc, health_pb2.HealthCheckResponse.SERVING)
    if hasattr(servicer, "watch"):
        servicer.watch(health_servicer)
    signal.signal(signal.SIGHUP, lambda s, f: threading.Thread(target=swap).start())
    if hup_while_loading.is_set():
        threading.Thread(target=swap).start()
    log.info("%s serving on %s (pid %d, loaded in %.1fs)%s", name, address, os.getpid(),
             time.perf_counter() - t0, servicer.describe())
    _tell(ready_fd, f"ready {me}{servicer.describe()}")
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
    would otherwise bind beside the first and silently take part of its calls. SO_REUSEADDR
    (as gRPC binds) lets the check pass over the TIME_WAIT connections a killed server leaves
    for a minute, while a listener still makes it fail."""
    import socket

    for address in dict.fromkeys(addresses):
        host, _, port = address.rpartition(":")
        with socket.socket(socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((host.strip("[]"), int(port)))
            except OSError as e:
                raise OSError(f"cannot listen on {address}: {e.strerror} (another server "
                              f"there? stop it, or change the address in the config)") from None


def say(message: str, loud: bool = False) -> None:
    """What the supervisor tells its operator: stdout (as the listening lines), and the log."""
    print(message, flush=True)
    if loud:
        log.error(message)


def _read_or_none(path: str | os.PathLike) -> bytes | None:
    try:
        return Path(path).read_bytes()
    except OSError:
        return None


class Slot:
    """One server process of the set, started again when it exits."""

    def __init__(self, name: str, address: str, cmd: list[str], env: dict, write_fd: int):
        self.name, self.address, self.cmd, self.env = name, address, cmd, env
        self.write_fd = write_fd
        self.proc: subprocess.Popen | None = None
        self.restarts: list[float] = []  # when, within the window
        self.due: float | None = None  # when to start it again
        self.given_up = False
        self.up = False  # reported SERVING

    def start(self, start_deploy: str | None = None) -> None:
        cmd = self.cmd + (["--start-deploy", start_deploy] if start_deploy else [])
        self.proc = subprocess.Popen(cmd, env=self.env, pass_fds=(self.write_fd,))
        self.up = False

    def __str__(self) -> str:
        return f"{self.name} {self.address}"


class Lines:
    """The lines server processes write to the supervisor's pipe."""

    def __init__(self, fd: int):
        self.fd, self.buf = fd, b""

    def read(self, timeout: float) -> list[list[str]]:
        r, _, _ = select.select([self.fd], [], [], timeout)
        if not r:
            return []
        self.buf += os.read(self.fd, 65536)
        *done, self.buf = self.buf.split(b"\n")
        return [d.decode().split(" ", 4) for d in done]


class Supervisor:
    """Starts the set's processes, restarts what exits (backoff, cap), swaps on SIGHUP."""

    def __init__(self, cfg: ServingConfig, config_path: str, todo: list[tuple]):
        self.cfg = cfg
        self.read_fd, self.write_fd = os.pipe()
        self.lines = Lines(self.read_fd)
        self.slots: list[Slot] = []
        for name, address, process, s in todo:
            threads = str(cfg.server(name).threads)
            env = dict(os.environ, OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads)
            cmd = [sys.executable, "-m", "serving.server", "--config", config_path,
                   "--deploy", cfg.deploy, "--serve", name, "--address", address,
                   "--process", str(process), "--ready-fd", str(self.write_fd), "--shard",
                   str(s)]
            self.slots.append(Slot(name, address, cmd, env, self.write_fd))
        self.swap: dict | None = None  # the swap under way: phase, pids asked, answers
        self.serving: str | None = None  # the deploy id of the last swap done
        # deploy.json's bytes as the set serves them: a process started again loads these
        # when deploy.json has changed since (a refused swap), not a deploy the set refused.
        self.good: bytes | None = None

    def by_pid(self, pid: str) -> Slot | None:
        return next((x for x in self.slots if x.proc and str(x.proc.pid) == pid), None)

    def start_all(self, stop: threading.Event) -> None:
        """Every process, SERVING; raises if one exits first (a set that cannot start), or on
        `stop` (SIGTERM while loading)."""
        self.good = _read_or_none(self.cfg.deploy)
        for slot in self.slots:
            slot.start()
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not all(x.up for x in self.slots):
            if stop.is_set():
                raise RuntimeError("stopped while the servers were loading")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{sum(not x.up for x in self.slots)} server(s) not SERVING "
                                   f"after {READY_TIMEOUT_S:.0f}s")
            for x in self.slots:
                if x.proc.poll() is not None:
                    raise RuntimeError(f"server process {x.proc.pid} ({x}) exited with code "
                                       f"{x.proc.returncode} before SERVING; see its log above")
            for event, name, address, pid, *rest in self.lines.read(0.2):
                slot = self.by_pid(pid)
                if event == "ready" and slot is not None:
                    slot.up = True
                    print(f"{name:>6} listening on {address} (pid {pid})"
                          f"{' ' + rest[0] if rest else ''}", flush=True)

    def tick(self) -> None:
        """Read what the processes said, restart what exited, move a swap along."""
        sv = self.cfg.supervisor
        for event, name, address, pid, *rest in self.lines.read(0.2):
            slot = self.by_pid(pid)
            if event == "ready" and slot is not None:
                slot.up = True
                say(f"{name:>6} restarted on {address} (pid {pid}){' ' + rest[0] if rest else ''}")
                self.catch_up(slot, rest[0] if rest else "")
            elif event in ("swapped", "refused") and self.swap is not None:
                self.swap["answers"][pid] = (event, name, address, rest[0] if rest else "")
        now = time.monotonic()
        for slot in self.slots:
            if slot.given_up:
                continue
            if slot.proc is not None and slot.proc.poll() is not None:
                code = slot.proc.returncode
                slot.proc, slot.up = None, False
                slot.restarts = [t for t in slot.restarts if now - t < sv.restart_window_s]
                if len(slot.restarts) >= sv.max_restarts:
                    slot.given_up = True
                    say(f"GIVING UP on {slot} (exited with code {code}): {len(slot.restarts)} "
                        f"restarts in {sv.restart_window_s:.0f}s (supervisor.max_restarts "
                        f"{sv.max_restarts}); the set goes on without it: fix it, then "
                        f"restart the set", loud=True)
                    continue
                wait = min(sv.restart_backoff_s * 2 ** len(slot.restarts),
                           sv.restart_backoff_max_s)
                slot.due = now + wait
                say(f"{slot} exited with code {code}; starting it again in {wait:.1f}s "
                    f"(restart {len(slot.restarts) + 1} of at most {sv.max_restarts} in "
                    f"{sv.restart_window_s:.0f}s)", loud=True)
            if slot.proc is None and slot.due is not None and now >= slot.due:
                slot.due = None
                slot.restarts.append(now)
                slot.start(self.serving_copy(slot))
        if self.swap is not None:
            self.move_swap(now)

    def catch_up(self, slot: Slot, describe: str) -> None:
        """A process that started loading before a swap and came up after it serves the deploy
        it read then: SIGHUP swaps it to the one the set serves now."""
        words = describe.replace(":", " ").split()
        has = words[words.index("deploy") + 1] if "deploy" in words[:-1] else None
        if self.serving is not None and has is not None and has != self.serving:
            say(f"{slot} (pid {slot.proc.pid}) came up on deploy {has}, the set serves "
                f"{self.serving}: swapping it")
            slot.proc.send_signal(signal.SIGHUP)

    def serving_copy(self, slot: Slot) -> str | None:
        """None when deploy.json is what the set serves; else a copy of what it serves, beside
        deploy.json (its relative paths resolve the same; same bytes, same deploy id), for a
        process started again to load instead of a deploy the set refused."""
        if self.good is None or _read_or_none(self.cfg.deploy) == self.good:
            return None
        good_id = content_id(self.good)
        copy = Path(self.cfg.deploy).with_name(f".{Path(self.cfg.deploy).name}.serving-{good_id}")
        if _read_or_none(copy) != self.good:
            tmp = copy.with_suffix(".tmp")
            try:
                tmp.write_bytes(self.good)
                os.replace(tmp, copy)
            except OSError as e:  # the supervisor goes on; the process reads deploy.json
                say(f"{slot}: cannot write {copy} ({e.strerror}): starting it on "
                    f"{self.cfg.deploy}", loud=True)
                return None
        say(f"{slot}: {self.cfg.deploy} is not the deploy the set serves ({good_id}, a swap "
            f"to it was refused or not asked for): starting it on {copy}")
        return str(copy)

    def begin_swap(self) -> None:
        if self.swap is not None:
            say("swap: one is under way; SIGHUP ignored")
            return
        say(f"swap: loading {self.cfg.deploy} in every stage process")
        self.swap = {"phase": "stages", "answers": {}, "asked": {},
                     "bytes": _read_or_none(self.cfg.deploy)}
        self.ask("stages")

    def ask(self, phase: str) -> None:
        """SIGHUP to the processes of this phase that are up; their pids are awaited."""
        names = ("front",) if phase == "fronts" else STAGES
        self.swap.update(phase=phase, answers={}, until=time.monotonic() +
                         self.cfg.supervisor.swap_timeout_s)
        self.swap["asked"] = {str(x.proc.pid): x for x in self.slots
                              if x.name in names and x.up and x.proc is not None}
        self.swap.setdefault("ever", set()).update(self.swap["asked"])
        for x in self.swap["asked"].values():
            x.proc.send_signal(signal.SIGHUP)

    def move_swap(self, now: float) -> None:
        sw = self.swap
        alive = {pid for pid, x in sw["asked"].items()
                 if x.proc is not None and str(x.proc.pid) == pid}
        waiting = alive - set(sw["answers"])
        if waiting and now < sw["until"]:
            return
        refused = [f"{n} {a} (pid {pid}): {why}" for pid, (e, n, a, why) in sw["answers"].items()
                   if e == "refused"]
        if waiting:
            refused += [f"{sw['asked'][pid]} (pid {pid}): no answer within "
                        f"{self.cfg.supervisor.swap_timeout_s:.0f}s" for pid in waiting]
        ids = {why for e, _, _, why in sw["answers"].values() if e == "swapped"}
        if refused:
            self.swap = None
            say("swap REFUSED, the fronts keep serving the deploy they had: "
                + "; ".join(refused), loud=True)
        elif sw["phase"] == "stages":
            say(f"swap: stages hold deploy {', '.join(sorted(ids)) or '?'}; now the fronts")
            self.ask("fronts")
        else:
            self.swap = None
            self.serving = next(iter(ids)) if len(ids) == 1 else self.serving
            if sw["bytes"] is not None and \
                    self.serving == content_id(sw["bytes"]):
                self.good = sw["bytes"]
            say(f"swap done: every front serves deploy {', '.join(sorted(ids)) or '?'}")
            for x in self.slots:  # came up during the swap (it may have read the old file)
                if x.up and x.proc is not None and str(x.proc.pid) not in sw["ever"]:
                    say(f"{x} (pid {x.proc.pid}) came up during the swap: swapping it too")
                    x.proc.send_signal(signal.SIGHUP)

    def stop(self) -> None:
        _stop_in_order([(x.name, x.proc) for x in self.slots if x.proc is not None],
                       self.cfg.grace_seconds)


def run_set(cfg: ServingConfig, config_path: str, only: str | None, shard: int | None = None
            ) -> int:
    """Start every server process, print where they listen, keep them running (restarts,
    swaps on SIGHUP), stop them in order on SIGTERM."""
    stop, hup = threading.Event(), threading.Event()
    signal.signal(signal.SIGTERM, lambda s, f: stop.set())
    signal.signal(signal.SIGINT, lambda s, f: stop.set())
    signal.signal(signal.SIGHUP, lambda s, f: hup.set())
    pid_file = Path(cfg.supervisor.pid_file)
    sup = None
    try:
        todo = plan(cfg, only, shard)
        check_free([address for _, address, _, _ in todo])
        pid_file.parent.mkdir(parents=True, exist_ok=True)
        pid_file.write_text(f"{os.getpid()}\n")
        sup = Supervisor(cfg, config_path, todo)
        sup.start_all(stop)
        print(f"ready; stop with SIGTERM or Ctrl-C, swap the deploy with SIGHUP (pid "
              f"{os.getpid()}, in {pid_file})", flush=True)
        while not stop.is_set():
            if hup.is_set():
                hup.clear()
                sup.begin_swap()
            sup.tick()
    except (RuntimeError, TimeoutError, OSError) as e:
        print(f"serving: {e}", file=sys.stderr)
        return 1
    finally:
        if sup is not None:
            sup.stop()
        if pid_file.exists() and pid_file.read_text().strip() == str(os.getpid()):
            pid_file.unlink()
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


def die_with_supervisor() -> None:
    """A server its supervisor started gets SIGTERM (and drains) when the supervisor dies, even
    by SIGKILL: no orphan keeps the set's ports, so the set starts again at once (Linux)."""
    import ctypes

    PR_SET_PDEATHSIG = 1
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):  # not Linux: the supervisor's own stop still applies
        return
    if os.getppid() == 1:  # it died before the line above
        os.kill(os.getpid(), signal.SIGTERM)


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
    p.add_argument("--start-deploy", help=argparse.SUPPRESS)
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
        if args.ready_fd is not None:
            die_with_supervisor()
        try:
            rc = serve(cfg, args.serve, args.address, args.process, args.ready_fd,
                       args.shard or 0, args.start_deploy)
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

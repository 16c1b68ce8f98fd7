"""A serving set started for real, for tests and benchmarks: `python -m serving.server` in a
subprocess on loopback ports, its printed lines kept (they name each server's pid and address,
restarts and swaps), its clients, and a SIGTERM to stop it.

    s = ServingSet(config)  # a serving YAML on free_port()s; returns once the set is ready
    with s.client() as client: ...
    s.stop()
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from serving.client import CascadeClient
from serving.config import load_config

ROOT = Path(__file__).resolve().parent.parent  # where `python -m serving.server` runs
READY_S = 240.0  # four processes importing torch and loading, on a shared 2-core machine


def free_port() -> int:
    """A loopback port free now (the OS's pick)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_ports(n: int) -> int:
    """The first of n consecutive free ports (each process of a server takes port + number)."""
    while True:
        first = free_port()
        try:
            for p in range(first + 1, first + n):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", p))
        except OSError:
            continue
        return first


class ServingSet:
    """`python -m serving.server --config CONFIG` until stopped, its printed lines kept in
    `lines` (stripped) and `stamped` ((time.monotonic() when read, line)).

    `wait` returns from the constructor once the set printed "ready" (else call `wait_ready`);
    `ready_timeout` seconds at most (None: as long as it takes, a large bank's index may take
    minutes); `echo` prints each line as "  | line" as it comes; `cwd` and `env` of the
    process (default: the repository root, this process's environment)."""

    def __init__(self, config: Path, *extra: str, wait: bool = True,
                 ready_timeout: float | None = READY_S, echo: bool = False,
                 cwd: Path = ROOT, env: dict[str, str] | None = None):
        self.config = config
        self.cfg = load_config(config)
        self.lines: list[str] = []
        self.stamped: list[tuple[float, str]] = []
        self.echo = echo
        self.ready_timeout = ready_timeout
        self._ready = threading.Event()
        self.proc = subprocess.Popen([sys.executable, "-m", "serving.server", "--config",
                                      str(config), *extra], cwd=cwd, env=env,
                                     stdout=subprocess.PIPE, text=True)
        self._reader = threading.Thread(target=self._follow, daemon=True)
        self._reader.start()
        if wait:
            self.wait_ready()

    def _follow(self) -> None:
        for line in self.proc.stdout:
            self.stamped.append((time.monotonic(), line.rstrip()))
            self.lines.append(line.strip())
            if self.echo:
                print(f"  | {line.rstrip()}", flush=True)
            if line.startswith("ready"):
                self._ready.set()

    def wait_ready(self) -> None:
        """Until the set printed "ready"; RuntimeError if it exits first, TimeoutError (the set
        stopped) past `ready_timeout`."""
        end = None if self.ready_timeout is None else time.monotonic() + self.ready_timeout
        while not self._ready.wait(0.2):
            if not self._reader.is_alive():  # its output ended: the set exited
                raise RuntimeError(f"the serving set exited with {self.proc.wait()} before "
                                   f"ready")
            if end is not None and time.monotonic() > end:
                self.stop()
                raise TimeoutError("serving set not ready")

    def wait_for(self, text: str, timeout: float = READY_S) -> str:
        """The first line from now on that holds `text`."""
        start, end = len(self.lines), time.monotonic() + timeout
        while time.monotonic() < end:
            hit = next((x for x in self.lines[start:] if text in x), None)
            if hit is not None:
                return hit
            time.sleep(0.1)
        raise TimeoutError(f"no line with {text!r} in {timeout:.0f}s: {self.lines[start:]}")

    def wait_for_any(self, texts: tuple[str, ...], since: float, timeout: float
                     ) -> tuple[float, str] | None:
        """The first (time, line) read at or after `since` (time.monotonic()) holding one of
        `texts`, waiting up to `timeout` seconds; None if none came."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            hit = next(((t, x) for t, x in list(self.stamped)
                        if t >= since and any(k in x for k in texts)), None)
            if hit:
                return hit
            time.sleep(0.05)
        return None

    def pid(self, name: str) -> int:
        """The pid of the first process of server `name` the set printed."""
        line = next(x for x in self.lines if x.split()[0] == name)
        return int(line.split("(pid ")[1].split(")")[0])

    def pids(self) -> dict[str, list[int]]:
        """Each server's process ids, from the "<server> listening on <address> (pid N)"
        lines."""
        out: dict[str, list[int]] = {}
        for line in self.lines:
            if " listening on " in line and "(pid " in line:
                out.setdefault(line.split()[0], []).append(
                    int(line.split("(pid ")[1].split(")")[0]))
        return out

    def client(self, **kw) -> CascadeClient:
        return CascadeClient.from_config(self.cfg, **kw)

    def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM (the set drains its calls in flight) and its exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

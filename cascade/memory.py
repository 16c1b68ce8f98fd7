"""Memory of processes as PSS (proportional set size), read from Linux's /proc.

RSS counts every resident page a process maps, so N processes mapping one bank count it N
times. PSS divides each shared page among the processes mapping it: summed over a set of
processes it counts the bank once. Serving reports PSS (benchmarks.latency) for that reason.
"""

from __future__ import annotations

import os
from pathlib import Path


def _kb_fields(text: str, names: tuple[str, ...]) -> dict[str, int]:
    out = dict.fromkeys(names, 0)
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        if key in out:
            out[key] += int(rest.split()[0]) * 1024
    return out


def process_memory(pid: int) -> dict[str, int]:
    """{"rss", "pss"} in bytes of process `pid` (/proc/PID/smaps_rollup)."""
    text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    f = _kb_fields(text, ("Rss", "Pss"))
    return {"rss": f["Rss"], "pss": f["Pss"]}


def file_memory(pid: int, path: str | os.PathLike) -> dict[str, int]:
    """{"size", "rss", "pss"} in bytes of the mappings of file `path` in process `pid`
    (/proc/PID/smaps): how much of it the process maps, has resident, and pays for."""
    target = os.path.realpath(path)
    out = {"size": 0, "rss": 0, "pss": 0}
    mine = False
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        head = line.split()
        if head and not head[0].endswith(":"):  # a mapping's first line: address range ... path
            mine = len(head) >= 6 and head[5] == target
        elif mine and head[0] in ("Size:", "Rss:", "Pss:"):
            out[head[0][:-1].lower()] += int(head[1]) * 1024
    return out


def descendants(pid: int) -> list[int]:
    """`pid` and every process below it (children of children), from /proc."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        for task in Path(f"/proc/{p}/task").glob("*"):
            try:
                todo.extend(int(c) for c in (task / "children").read_text().split())
            except OSError:
                continue  # the thread ended meanwhile
    return out


def set_memory(pids: list[int]) -> dict[str, int]:
    """Summed {"rss", "pss", "processes"} of processes (ended ones skipped)."""
    total = {"rss": 0, "pss": 0, "processes": 0}
    for p in pids:
        try:
            m = process_memory(p)
        except OSError:
            continue
        total["rss"] += m["rss"]
        total["pss"] += m["pss"]
        total["processes"] += 1
    return total

"""Dynamic micro-batching for the stage servers: concurrent calls share one library call.

A servicer's handler thread checks its own call first (a bad call is refused alone and never
joins a batch), then `submit`s it. Calls queue while a batch runs; the thread of the call that
finds no batch running (or is handed the next one) leads: it takes the queued calls, at most
`max_batch`, waiting at most `max_wait_ms` after the oldest arrived, groups them by `key` (calls
one library call can answer together: the same context form, the same candidate width), runs
`run(items)` once per group (one answer per item), wakes their callers, and hands the next batch
to the oldest call still queued. A lone call thus runs at once in its own thread: no hand-over
between threads, which cost milliseconds per call on a busy machine with a worker thread.

A call whose deadline passed (or whose caller cancelled) while it waited is answered
DEADLINE_EXCEEDED (CANCELLED) and not run. `max_batch: 1` runs each call in its own handler
thread, as without a batcher. Every queued call's handler is in flight until its answer comes,
so a draining server (SIGTERM) answers what is queued.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any

import grpc

from serving import prometheus


@dataclass
class _Call:
    item: Any
    key: Hashable
    context: grpc.ServicerContext
    arrived: float = field(default_factory=time.monotonic)
    done: threading.Event = field(default_factory=threading.Event)
    answer: Any = None
    error: BaseException | None = None
    status: grpc.StatusCode | None = None  # answered with this status, not run
    lead: bool = False  # woken to lead the next batch, not with an answer


class Batcher:
    """Runs `run(list of items) -> list of answers` over the calls of concurrent callers."""

    def __init__(self, name: str, run: Callable[[list], list], max_batch: int = 1,
                 max_wait_ms: float = 0.0):
        if max_batch < 1 or max_wait_ms < 0:
            raise ValueError(f"{name}: max_batch must be >= 1 and max_wait_ms >= 0, got "
                             f"{max_batch}, {max_wait_ms}")
        self.name = name
        self.run = run
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000
        self._queue: deque[_Call] = deque()
        self._ready = threading.Condition()
        self._leading = False  # a handler thread is forming or running a batch

    def submit(self, item, key: Hashable, context: grpc.ServicerContext):
        """This caller's answer to `item`, run alone or in a batch with calls of the same key."""
        if self.max_batch == 1:
            prometheus.BATCH_SIZE.labels(self.name).observe(1)
            return self.run([item])[0]
        call = _Call(item, key, context)
        with self._ready:
            self._queue.append(call)
            lead = not self._leading
            self._leading = True
            self._ready.notify()
        if lead:
            self._lead()
        call.done.wait()
        if call.lead:  # woken to lead the next batch, which holds this call (the oldest)
            call.lead = False
            self._lead()
        if call.status is not None:
            why = ("its deadline passed" if call.status == grpc.StatusCode.DEADLINE_EXCEEDED
                   else "its caller cancelled")
            context.abort(call.status, f"{self.name}: {why} while the call waited for a batch")
        if call.error is not None:
            raise call.error
        return call.answer

    def _lead(self) -> None:
        """Form one batch from the queue and run it in this (a caller's) thread, then hand
        the next batch to the oldest call still queued: its thread wakes up and leads. A call
        alone is run at once in its own thread, with no hand-over between threads."""
        with self._ready:
            until = self._queue[0].arrived + self.max_wait
            while len(self._queue) < self.max_batch:
                left = until - time.monotonic()
                if left <= 0:
                    break
                self._ready.wait(left)
            calls = [self._queue.popleft() for _ in range(min(self.max_batch, len(self._queue)))]
        try:
            self._run_batch(calls)
        finally:
            with self._ready:
                if self._queue:
                    self._queue[0].lead = True
                    self._queue[0].done.set()
                else:
                    self._leading = False

    def _run_batch(self, calls: list[_Call]) -> None:
        live = []
        for c in calls:
            left = c.context.time_remaining()
            if left is not None and left <= 0:
                c.status = grpc.StatusCode.DEADLINE_EXCEEDED
            elif not c.context.is_active():
                c.status = grpc.StatusCode.CANCELLED
            else:
                live.append(c)
                continue
            c.done.set()
        groups: dict[Hashable, list[_Call]] = {}
        for c in live:
            groups.setdefault(c.key, []).append(c)
        for group in groups.values():
            self._run(group)

    def _run(self, group: list[_Call]) -> None:
        prometheus.BATCH_SIZE.labels(self.name).observe(len(group))
        try:
            answers = self.run([c.item for c in group])
        except Exception as e:  # handed to every caller of the group
            for c in group:
                c.error = e
                c.done.set()
            return
        for c, a in zip(group, answers, strict=True):
            c.answer = a
            c.done.set()

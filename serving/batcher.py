"""Dynamic micro-batching for the stage servers: concurrent calls share one library call.

A servicer's handler thread checks its own call first (a bad call is refused alone and never
joins a batch), then `submit`s it and waits. One worker thread per process forms batches: the
calls queued, at most `max_batch`, waiting at most `max_wait_ms` after the oldest arrived. It
groups them by `key` (calls one library call can answer together: the same context form, the
same candidate width) and runs `run(items)` once per group, which returns one answer per item.
Calls queue while a batch runs, so under load batches form without any waiting.

A call whose deadline passed (or whose caller cancelled) while it waited is answered
DEADLINE_EXCEEDED (CANCELLED) and not run. `max_batch: 1` runs each call in its own handler
thread, as without a batcher. The worker is a daemon thread: a draining server (SIGTERM) still
answers what is queued, since each handler stays in flight until its answer comes back.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any

import grpc

from serving import metrics


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
        if max_batch > 1:
            threading.Thread(target=self._work, name=f"{name}-batcher", daemon=True).start()

    def submit(self, item, key: Hashable, context: grpc.ServicerContext):
        """This caller's answer to `item`, run alone or in a batch with calls of the same key."""
        if self.max_batch == 1:
            metrics.BATCH_SIZE.labels(self.name).observe(1)
            return self.run([item])[0]
        call = _Call(item, key, context)
        with self._ready:
            self._queue.append(call)
            self._ready.notify()
        call.done.wait()
        if call.status is not None:
            why = ("its deadline passed" if call.status == grpc.StatusCode.DEADLINE_EXCEEDED
                   else "its caller cancelled")
            context.abort(call.status, f"{self.name}: {why} while the call waited for a batch")
        if call.error is not None:
            raise call.error
        return call.answer

    def _take(self) -> list[_Call]:
        """The next batch: wait for a call, then up to max_wait after it arrived for more."""
        with self._ready:
            while not self._queue:
                self._ready.wait()
            until = self._queue[0].arrived + self.max_wait
            while len(self._queue) < self.max_batch:
                left = until - time.monotonic()
                if left <= 0:
                    break
                self._ready.wait(left)
            return [self._queue.popleft() for _ in range(min(self.max_batch, len(self._queue)))]

    def _work(self) -> None:
        while True:
            calls = self._take()
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
        metrics.BATCH_SIZE.labels(self.name).observe(len(group))
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

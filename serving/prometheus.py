"""Prometheus metrics of a serving process: requests, errors by status code, latency per method
and per stage, degraded answers. Each process exposes its own on 127.0.0.1:<metrics_port>."""

from __future__ import annotations

import threading
import time

import grpc
import prometheus_client as prom

# Buckets from 0.5 ms to 2.5 s: a search's steps take milliseconds; the tail is what matters.
_BUCKETS = (0.0005, 0.001, 0.002, 0.004, 0.006, 0.008, 0.012, 0.02, 0.035, 0.05, 0.1, 0.25, 0.5,
            1.0, 2.5)

REQUESTS = prom.Counter("cascade_requests_total", "calls served", ["method"])
ERRORS = prom.Counter("cascade_errors_total", "calls that ended with a status other than OK",
                      ["method", "code"])
LATENCY = prom.Histogram("cascade_request_seconds", "wall time of a call, by method", ["method"],
                         buckets=_BUCKETS)
STAGE = prom.Histogram("cascade_stage_seconds", "wall time of a step as the front saw it "
                       "(embed, stage1, lvm, tmd)", ["stage"], buckets=_BUCKETS)
BATCH_SIZE = prom.Histogram("cascade_batch_size", "calls answered by one library call in a stage "
                            "server (serving.batcher; 1 when batching is off)", ["stage"],
                            buckets=(1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64))
DEGRADED = prom.Counter("cascade_degraded_total", "answers returned without a stage",
                        ["stage", "cause"])
IN_FLIGHT = prom.Gauge("cascade_in_flight", "calls this process has taken and not yet answered")
LIMIT = prom.Gauge("cascade_max_concurrent_rpcs", "calls in flight beyond which gRPC refuses "
                   "new ones (max_concurrent_rpcs)")
REJECTED = prom.Counter("cascade_rejected_total", "calls refused with RESOURCE_EXHAUSTED because "
                        "max_concurrent_rpcs were in flight (before any handler runs)",
                        ["method"])


def start(port: int, host: str = "127.0.0.1") -> None:
    """Serve /metrics on host:port (nothing when port is 0)."""
    if port:
        prom.start_http_server(port, addr=host)


class MetricsInterceptor(grpc.ServerInterceptor):
    """Counts and times every unary call of our services (not health or reflection), and counts
    the calls gRPC refuses for overload. gRPC asks interceptors for a call's handler in its
    polling thread just before it compares the calls in flight with max_concurrent_rpcs, so this
    keeps the same count (every unary call taken, until its handler returns) and, at that
    limit, counts the call it is about to see refused. The count leaves a call when its handler
    returns, a moment before gRPC's does: `cascade_rejected_total` may miss a refusal at that
    moment, never counts one that did not happen."""

    def __init__(self, limit: int | None = None):
        self.limit = limit
        self.in_flight = 0
        self.lock = threading.Lock()
        if limit:
            LIMIT.set(limit)

    def intercept_service(self, continuation, details):
        handler = continuation(details)
        if handler is None or handler.unary_unary is None:
            return handler
        ours = not details.method.startswith("/grpc.")
        method = details.method.rsplit("/", 2)[-2].rsplit(".", 1)[-1] + "." + \
            details.method.rsplit("/", 1)[-1]
        with self.lock:
            if self.limit and self.in_flight >= self.limit:  # gRPC refuses it next
                if ours:
                    REJECTED.labels(method).inc()
                return handler
            self.in_flight += 1
            IN_FLIGHT.set(self.in_flight)
        inner = handler.unary_unary

        def timed(request, context):
            t0 = time.perf_counter()
            try:
                return inner(request, context)
            finally:
                with self.lock:
                    self.in_flight -= 1
                    IN_FLIGHT.set(self.in_flight)
                if ours:
                    LATENCY.labels(method).observe(time.perf_counter() - t0)
                    REQUESTS.labels(method).inc()
                    code = context.code()
                    if code is not None and code != grpc.StatusCode.OK:
                        ERRORS.labels(method, code.name).inc()

        return grpc.unary_unary_rpc_method_handler(
            timed, request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer)

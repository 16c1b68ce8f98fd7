"""A client of the cascade front, for programs and the command line.

    python -m serving.client "First sentence." "Second sentence."      # next-chunk candidates
    python -m serving.client --json --k 5 "First sentence."            # the response as JSON
    python -m serving.client --rows 120 121 122                        # a context of bank rows

    with CascadeClient("127.0.0.1:50051", timeout=1.0) as client:
        response = client.search_texts(["First sentence.", "Second sentence."], k=10)

Calls retry on UNAVAILABLE only (a front process that died under the call, a server restarting,
a connection not up yet), within the call's deadline, waiting for a connection to a live
process (Search is idempotent); every other status is the answer.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import grpc
import numpy as np
from google.protobuf.json_format import MessageToDict

from serving.config import ConfigError, ServingConfig, load_config
from serving.proto_arrays import vectors_to_proto
from serving.protos import pb, rpc


class CascadeClient:
    """Search the cascade front. `timeout` is each call's deadline in seconds (retries
    included); `retries` more tries are made on UNAVAILABLE, `backoff` seconds apart, doubling."""

    def __init__(self, address: str = "127.0.0.1:50051", *, timeout: float = 1.0,
                 retries: int = 2, backoff: float = 0.05,
                 credentials: grpc.ChannelCredentials | None = None,
                 options: list[tuple[str, int | str]] | None = None):
        self.address = address
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.channel = (grpc.secure_channel(address, credentials, options=options)
                        if credentials else grpc.insecure_channel(address, options=options))
        self.stub = rpc.CascadeStub(self.channel)

    @classmethod
    def from_config(cls, cfg: ServingConfig, extra_options: list | None = None,
                    **kw) -> CascadeClient:
        """A client of the fronts that `cfg` describes (balanced per call over several), with
        its TLS settings."""
        from serving.channels import channel_credentials, channel_options, message_options
        options = message_options(cfg) + channel_options(cfg) + (extra_options or [])
        address = cfg.front.addresses[0]
        if len(cfg.front.addresses) > 1:
            address = "ipv4:" + ",".join(cfg.front.addresses)
            options.append(("grpc.lb_policy_name", "round_robin"))
        return cls(address, credentials=channel_credentials(cfg.tls), options=options, **kw)

    def __enter__(self) -> CascadeClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.channel.close()

    def search(self, context: pb.Context, k: int = 0,
               timeout: float | None = None) -> pb.SearchResponse:
        request = pb.SearchRequest(context=context, k=k)
        end = time.monotonic() + (self.timeout if timeout is None else timeout)
        wait = self.backoff
        for attempt in range(self.retries + 1):
            try:
                # A retry waits for the channel to reconnect (to another process sharing the
                # port, or a restarted one) instead of failing at once while it is down.
                return self.stub.Search(request, timeout=max(end - time.monotonic(), 0.001),
                                        wait_for_ready=attempt > 0 or None)
            except grpc.RpcError as e:
                last = attempt == self.retries or time.monotonic() + wait >= end
                if e.code() != grpc.StatusCode.UNAVAILABLE or last:
                    raise
            time.sleep(wait)
            wait *= 2
        raise AssertionError("unreachable")

    def search_texts(self, texts: list[str], k: int = 0, **kw) -> pb.SearchResponse:
        return self.search(pb.Context(texts=pb.Texts(texts=texts)), k, **kw)

    def search_vectors(self, vectors: np.ndarray, k: int = 0, **kw) -> pb.SearchResponse:
        """`vectors`: the context's (L, D) float32 chunk vectors, oldest first."""
        return self.search(pb.Context(vectors=vectors_to_proto(vectors)), k, **kw)

    def search_rows(self, rows: list[int], k: int = 0, **kw) -> pb.SearchResponse:
        return self.search(pb.Context(rows=pb.Rows(rows=rows)), k, **kw)


def to_dict(response: pb.SearchResponse) -> dict:
    return MessageToDict(response, preserving_proto_field_name=True,
                         always_print_fields_with_no_presence=True)


def print_table(response: pb.SearchResponse) -> None:
    print(f"stage 1: {response.stage1}" +
          (f" ({response.stage1_reason})" if response.stage1 != "v4" else ""))
    if response.degraded:
        print(f"DEGRADED: {response.degraded_reason}")
    times = ", ".join(f"{k} {v:.1f} ms" for k, v in sorted(response.stage_ms.items()))
    print(f"timings: {times}")
    print(f"{'#':>3} {'score':>8} {'row':>8} {'article:pos':>12}  text")
    for i, h in enumerate(response.hits, 1):
        text = h.text if len(h.text) <= 100 else h.text[:97] + "..."
        print(f"{i:>3} {h.score:8.4f} {h.row:8d} {f'{h.article}:{h.position}':>12}  {text}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m serving.client",
                                description="Next-chunk candidates for a context.")
    p.add_argument("texts", nargs="*", help="the context's chunks, oldest first")
    p.add_argument("--rows", type=int, nargs="+", help="a context of bank rows instead of texts")
    p.add_argument("--k", type=int, default=0, help="hits (0 = the server's default)")
    p.add_argument("--config", default="serving/serving.yaml",
                   help="serving YAML: the front's address and TLS")
    p.add_argument("--address", help="host:port of the front (default: from --config)")
    p.add_argument("--timeout", type=float, default=10.0, help="deadline in seconds")
    p.add_argument("--json", action="store_true", help="print the response as JSON")
    args = p.parse_args(argv)
    if bool(args.texts) == bool(args.rows):
        p.error("give the context as texts or as --rows, one of the two")
    try:
        cfg = load_config(args.config)
    except ConfigError as e:
        print(f"client: {e}", file=sys.stderr)
        return 2
    if args.address:
        cfg.front.addresses = [args.address]
    try:
        with CascadeClient.from_config(cfg, timeout=args.timeout) as client:
            response = (client.search_rows(args.rows, args.k) if args.rows else
                        client.search_texts(args.texts, args.k))
    except grpc.RpcError as e:
        print(f"client: {e.code().name}: {e.details()}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(to_dict(response), indent=2))
    else:
        print_table(response)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

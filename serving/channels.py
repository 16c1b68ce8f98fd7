"""How the serving set's processes reach each other: gRPC service names, TLS credentials for
servers and channels (serving.yaml `tls`), message-size and reconnect options, and the one
channel per stage that the front and clients use."""

from __future__ import annotations

from pathlib import Path

import grpc

from serving.config import ServingConfig, TlsConfig
from serving.protos import pb

SERVICE_NAMES = {name: pb.DESCRIPTOR.services_by_name[svc].full_name for name, svc in
                 (("front", "Cascade"), ("stage1", "Stage1"), ("lvm", "LvmReranker"),
                  ("tmd", "TmdReranker"))}


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


def channel_options(cfg: ServingConfig) -> list[tuple[str, int]]:
    """gRPC's reconnect backoff from the config (`channel`): a restarted server is reached
    again within max_reconnect_backoff_ms, not gRPC's default of up to 120 s."""
    c = cfg.channel
    return [("grpc.initial_reconnect_backoff_ms", c.initial_reconnect_backoff_ms),
            ("grpc.min_reconnect_backoff_ms", c.min_reconnect_backoff_ms),
            ("grpc.max_reconnect_backoff_ms", c.max_reconnect_backoff_ms)]


def stage_channel(cfg: ServingConfig, name: str, addresses: list[str] | None = None
                  ) -> grpc.Channel:
    """One channel over all of a stage's replicas (or the given ones: a stage-1 shard's),
    balanced per call (gRPC round_robin), reconnecting on its own."""
    target = "ipv4:" + ",".join(addresses or cfg.server(name).addresses)
    options = message_options(cfg) + channel_options(cfg) + [
        ("grpc.lb_policy_name", "round_robin")]
    creds = channel_credentials(cfg.tls)
    if creds is None:
        return grpc.insecure_channel(target, options=options)
    return grpc.secure_channel(target, creds, options=options)

"""The serving config: one dataclass per server, loaded strictly from YAML (`serving/serving.yaml`
shows every default). Unknown keys and wrong types are errors naming the file and the key
(cascade.config_loader, the one loader of every config)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from cascade.config_loader import ConfigError, build, load_yaml
from cascade.deploy import MIN_CONTAINMENT
from cascade.index import EXACT_MAX_SIZE

DEFAULT_CONFIG = Path(__file__).parent / "serving.yaml"
STAGES = ("stage1", "lvm", "tmd")


@dataclass
class ProcessConfig:
    metrics_port: int  # prometheus on 127.0.0.1:<port + process number>; 0 = off
    # Processes per address sharing its port (SO_REUSEPORT): 2 gave more searches/s than one
    # process or two round_robin replicas (python -m benchmarks.latency --compare).
    processes: int = 2
    workers: int = 8  # threads per process taking gRPC calls (calls one process holds at once)
    max_concurrent_rpcs: int = 32  # beyond this, callers get RESOURCE_EXHAUSTED at once
    threads: int = 1  # torch / FAISS (OpenMP) threads per process that one search or rerank uses


@dataclass
class ServerConfig(ProcessConfig):
    # host:port of each replica; the front balances over them with gRPC round_robin.
    addresses: list[str] = field(default_factory=list)


@dataclass
class StageConfig(ServerConfig):
    # Dynamic micro-batching (serving.batcher): concurrent calls, up to max_batch, waiting at
    # most max_wait_ms after the first, run as one batched library call. 1 = off. 16 with no
    # wait gave ~1.5x the searches/s of off at 8 clients (benchmarks.latency --batching).
    max_batch: int = 16
    max_wait_ms: float = 0.0


@dataclass
class Stage1Config(ProcessConfig):
    # The bank split by rows into len(shards) contiguous ranges, in order (cascade.shard
    # .shard_bounds); each shard is a list of replica addresses (round_robin). The front sends
    # every query to all shards and merges their top-K exactly. One shard = the whole bank.
    shards: list[list[str]] = field(default_factory=lambda: [["127.0.0.1:50061"]])
    max_batch: int = 16  # as StageConfig
    max_wait_ms: float = 0.0
    # An ANN stage 1 (cascade.index_factory other than "Flat") is refused unless deploy.json
    # records its containment@500 (share of exact search's top 500 it returns) >= this on
    # val and test, measured on this bank (python -m training.tune_index).
    min_containment: float = MIN_CONTAINMENT
    # rows x dims above which an exact stage 1 logs that it is slow and names tune_index:
    # the size where one exact search costs ~2x the default bank's (benchmarks.latency).
    exact_max_size: int = EXACT_MAX_SIZE

    @property
    def addresses(self) -> list[str]:
        """Every stage-1 address, shard after shard."""
        return [a for shard in self.shards for a in shard]


@dataclass
class FrontConfig(ServerConfig):
    addresses: list[str] = field(default_factory=lambda: ["127.0.0.1:50051"])
    metrics_port: int = 9400
    workers: int = 16
    max_concurrent_rpcs: int = 64
    deadline_ms: float = 1000.0  # deadline of a call that brings none
    # Each step's share of the call's deadline. Embedding texts may take embed_share; stage 1
    # gets what is left less the rerankers' shares (late: DEADLINE_EXCEEDED); each reranker
    # its own share (late: skipped, degraded).
    embed_share: float = 0.25
    lvm_share: float = 0.3  # the LVM stage's share of the call's deadline
    tmd_share: float = 0.2  # the TMD stage's share of the call's deadline
    # Texts of concurrent calls embedded as one encoder call (one at a time: the tokenizer is
    # not thread-safe); 1 = each call alone, still one at a time.
    embed_max_batch: int = 16
    health_interval_s: float = 1.0  # how often the front checks the stages it calls
    degraded_log_s: float = 1.0  # degraded answers: one log line per cause per this many s
    max_texts: int = 64  # most chunk texts in one context
    max_text_chars: int = 4000  # longest chunk text
    # "servers": each stage is its own gRPC server (stages may run on other hosts) and the front
    # chains them. "in_process": the front runs the whole cascade itself and no stage server is
    # started: one hop instead of four, for one host (benchmarks/README.md, served latency).
    stages: str = "servers"
    # in_process only: concurrent searches, up to max_batch, run as one batched cascade search
    # (serving.batcher, as the stage servers batch); 1 = off.
    max_batch: int = 16
    max_wait_ms: float = 0.0


def _stage(port: int, metrics_port: int) -> StageConfig:
    return StageConfig(addresses=[f"127.0.0.1:{port}"], metrics_port=metrics_port)


@dataclass
class TlsConfig:
    cert: str | None = None  # PEM certificate chain; with key: every server speaks TLS
    key: str | None = None  # PEM private key
    client_ca: str | None = None  # PEM CA of client certificates: set -> mutual TLS
    ca: str | None = None  # PEM CA the front (and clients) trust; default: cert itself
    client_cert: str | None = None  # the front's own certificate toward the stages (mutual TLS)
    client_key: str | None = None


@dataclass
class ChannelConfig:
    # How the front reaches the stages (and CascadeClient.from_config the fronts): a restarted
    # server is reconnected within max_reconnect_backoff_ms (gRPC's own default is 120 s).
    initial_reconnect_backoff_ms: int = 100
    min_reconnect_backoff_ms: int = 100
    max_reconnect_backoff_ms: int = 1000
    # A call that met a dying process is retried once (Search and Rerank are idempotent),
    # waiting at most this long, within its deadline, for another process to take it.
    retry_wait_ms: float = 500.0


@dataclass
class SupervisorConfig:
    # python -m serving.server writes its pid here (SIGHUP to it: swap to what deploy.json
    # names now; SIGTERM: stop). Relative to the working directory.
    pid_file: str = "logs/serving.pid"
    # A process that exits is started again after restart_backoff_s, doubling with each
    # restart within restart_window_s up to restart_backoff_max_s; more than max_restarts
    # restarts within the window: the supervisor gives up on that process and says so.
    restart_backoff_s: float = 0.5
    restart_backoff_max_s: float = 10.0
    max_restarts: int = 5
    restart_window_s: float = 60.0
    swap_timeout_s: float = 300.0  # every process must load, check and warm a new deploy in this


@dataclass
class ServingConfig:
    deploy: str = "runs/wikipedia_vital_bank/deploy.json"  # what stage 1 serves, and from what
    # Torch device of the models in every server process (encoder, towers, LVM): auto, cpu,
    # cuda, cuda:N or mps (cascade.device). FAISS search stays on the CPU.
    device: str = "cpu"
    max_message_mb: int = 16  # largest request or response a server accepts or sends
    grace_seconds: float = 10.0  # on SIGTERM, calls in flight get this long to finish
    front: FrontConfig = field(default_factory=FrontConfig)
    stage1: Stage1Config = field(default_factory=lambda: Stage1Config(metrics_port=9410))
    lvm: StageConfig = field(default_factory=lambda: _stage(50062, 9420))
    # TMD's rerank is a few numpy operations on 50 candidates: no batching (no gain to share).
    tmd: ServerConfig = field(default_factory=lambda: ServerConfig(
        addresses=["127.0.0.1:50063"], metrics_port=9430))
    tls: TlsConfig = field(default_factory=TlsConfig)
    channel: ChannelConfig = field(default_factory=ChannelConfig)
    supervisor: SupervisorConfig = field(default_factory=SupervisorConfig)

    def server(self, name: str) -> ServerConfig:
        return getattr(self, name)

    @property
    def tls_on(self) -> bool:
        return self.tls.cert is not None


def validate(cfg: ServingConfig, where: str) -> None:
    if not cfg.stage1.shards or not all(cfg.stage1.shards):
        raise ConfigError(f"{where}: stage1.shards needs at least one shard, each with at least "
                          f"one address, got {cfg.stage1.shards}")
    for name in ("front", *STAGES):
        s = cfg.server(name)
        if not s.addresses:
            raise ConfigError(f"{where}: {name}.addresses is empty")
        for a in s.addresses:
            host, _, port = a.rpartition(":")
            if not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ConfigError(f"{where}: {name}.addresses: {a!r} is not host:port "
                                  f"(a fixed port: the front and the clients must know it)")
        for key in ("processes", "workers", "max_concurrent_rpcs", "threads"):
            if getattr(s, key) < 1:
                raise ConfigError(f"{where}: {name}.{key} must be >= 1, got {getattr(s, key)}")
        if hasattr(s, "max_batch") and (s.max_batch < 1 or s.max_wait_ms < 0):
            raise ConfigError(f"{where}: {name}.max_batch must be >= 1 and {name}.max_wait_ms "
                              f">= 0, got {s.max_batch}, {s.max_wait_ms}")
    if not 0.0 <= cfg.stage1.min_containment <= 1.0 or cfg.stage1.exact_max_size < 1:
        raise ConfigError(f"{where}: stage1.min_containment must be in [0, 1] and "
                          f"stage1.exact_max_size >= 1, got {cfg.stage1.min_containment}, "
                          f"{cfg.stage1.exact_max_size}")
    f = cfg.front
    if f.stages not in ("servers", "in_process"):
        raise ConfigError(f"{where}: front.stages must be 'servers' or 'in_process', got "
                          f"{f.stages!r}")
    if f.lvm_share <= 0 or f.tmd_share <= 0 or f.lvm_share + f.tmd_share >= 1:
        raise ConfigError(f"{where}: front.lvm_share and front.tmd_share must be > 0 with a "
                          f"sum < 1 (stage 1 needs the rest), got {f.lvm_share}, {f.tmd_share}")
    if not 0 < f.embed_share < 1 or f.embed_max_batch < 1 or f.health_interval_s <= 0:
        raise ConfigError(f"{where}: front.embed_share must be in (0, 1), embed_max_batch >= 1 "
                          f"and health_interval_s > 0, got {f.embed_share}, "
                          f"{f.embed_max_batch}, {f.health_interval_s}")
    sv = cfg.supervisor
    if sv.max_restarts < 0 or sv.restart_backoff_s < 0 or sv.restart_window_s <= 0 or \
            sv.restart_backoff_max_s < sv.restart_backoff_s:
        raise ConfigError(f"{where}: supervisor: need max_restarts >= 0, restart_backoff_s >= 0"
                          f", restart_backoff_max_s >= restart_backoff_s and restart_window_s > "
                          f"0, got {sv}")
    if (cfg.tls.cert is None) != (cfg.tls.key is None):
        raise ConfigError(f"{where}: tls.cert and tls.key go together")
    for key in ("cert", "key", "client_ca", "ca", "client_cert", "client_key"):
        path = getattr(cfg.tls, key)
        if path is not None and not Path(path).is_file():
            raise ConfigError(f"{where}: tls.{key}: no file {path}")


def load_config(path: str | os.PathLike = DEFAULT_CONFIG) -> ServingConfig:
    where = str(path)
    cfg = build(ServingConfig(), load_yaml(path), where)
    validate(cfg, where)
    return cfg

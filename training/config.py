"""The two-tower training config: one dataclass per concern, loaded from YAML, overridden by flags.

Unknown keys and wrong types are errors naming the file and key. The resolved config (every
setting, defaults included) is written to the run directory as `config.yaml`.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from cascade.device import AMP_MODES
from cascade.towers import TowerConfig

CONFIG_DIR = Path(__file__).parent / "configs"


class ConfigError(ValueError):
    """A config file or flag with an unknown key, a wrong type or an impossible value."""


@dataclass
class AbortConfig:
    margin: float = 0.04  # abort when the separation margin Δ stays below this...
    patience: int = 2  # ...for this many consecutive evals...
    after_epoch: int = 10  # ...after this epoch (the checklist's trigger)


@dataclass
class GateConfig:
    metric: str = "recall@500"  # the gated val metric (percent)
    mid_epoch: int = 10  # mid-gate epoch (checked if the run reaches it)
    mid: float = 35.0  # mid-gate target
    success: float = 55.0  # final: >= success -> success (if it also beats the heuristic)
    partial: float = 40.0  # final: >= partial -> partial success; below -> data wall


@dataclass
class TrainConfig:
    pairs: str = "artifacts/twotower/pairs_v4.npz"  # pairs .npz (index windows)
    bank: str = "artifacts/wikipedia_vital_bank.npz"  # the bank the pairs index
    out: str = "runs/twotower_v4"  # run directory
    name: str = "twotower_v4"  # run name: log file prefix and report title
    label: str = "v4"  # this model's short name in comparison tables and gate.json
    log_dir: str = "logs"  # where logs/<name>_<timestamp>.log goes (the checklist's tail -f)
    bs: int = 32  # micro-batch size (in-batch negatives come from it)
    accum: int = 16  # micro-batches per optimizer step: bs x accum = effective batch
    epochs: int = 30
    lr: float = 5e-5  # peak learning rate
    lr_min: float = 1e-6  # cosine decay floor
    warmup_steps: int = 0  # linear warmup optimizer steps
    wd: float = 0.01  # AdamW weight decay
    tau: float = 0.05  # InfoNCE temperature
    margin: float = 0.03  # margin penalty, in cosine units: relu(margin - (cos_pos - cos_neg))
    margin_weight: float = 1.0  # weight of the margin penalty beside InfoNCE
    memory_bank_size: int = 50_000  # FIFO of recent doc vectors used as extra negatives
    mine_schedule: str = "0-5:none;6-10:8@0.82-0.92;11-30:16@0.84-0.96"
    filter_threshold: float = 0.98  # drop mined negatives with cos > this to the positive
    mine_pool: int = 64  # candidates searched per pair when mining (before filtering)
    index: str = "auto"  # FAISS index for mining: auto | flat | ivf | ivf_sq8 (eval is exact)
    grad_clip: float = 1.0
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps (auto: cuda, else mps, else cpu)
    amp: str = "off"  # off | bf16: bf16 autocast in the training steps (cuda only)
    seed: int = 42
    threads: int = 0  # torch threads; 0 = torch's default
    eval_ks: list[int] = field(default_factory=lambda: [10, 100, 500, 1000])
    select_metric: str = "recall@500"  # best.pt is the epoch with the highest value of this
    checkpoint_every: int = 10  # also keep epoch_XXX.pt every this many epochs
    max_train_pairs: int = 0  # use at most this many train pairs (0 = all); for quick runs
    model: TowerConfig = field(default_factory=TowerConfig)
    abort: AbortConfig = field(default_factory=AbortConfig)
    gates: GateConfig = field(default_factory=GateConfig)


def _check_type(value, tp, where: str):
    """Return value converted to `tp` where that is lossless (int -> float), else raise."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            try:
                return _check_type(value, arg, where)
            except ConfigError:
                continue
        raise ConfigError(f"{where}: {value!r} is not {tp}")
    if tp is type(None):
        if value is None:
            return None
        raise ConfigError(f"{where}: expected null, got {value!r}")
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        (arg,) = typing.get_args(tp)
        return [_check_type(v, arg, f"{where}[{i}]") for i, v in enumerate(value)]
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp in (int, float, str, bool) and (not isinstance(value, tp) or
                                          (tp is int and isinstance(value, bool))):
        raise ConfigError(f"{where}: expected {tp.__name__}, got {value!r}")
    return value


def from_dict(cls, data: dict, where: str):
    """Build dataclass `cls` from a dict, recursing into nested dataclasses; strict keys/types."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"{where}: unknown key '{unknown[0]}' "
                          f"(known: {', '.join(sorted(names))})")
    kwargs = {}
    for key, value in data.items():
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            kwargs[key] = from_dict(tp, value, f"{where}.{key}")
        else:
            kwargs[key] = _check_type(value, tp, f"{where}.{key}")
    return cls(**kwargs)


def merge(cfg, overrides: dict, where: str = "flags"):
    """A copy of dataclass `cfg` with `overrides` (nested dicts for nested dataclasses) applied."""
    data = dataclasses.asdict(cfg)

    def deep(base: dict, new: dict) -> dict:
        for k, v in new.items():
            if isinstance(base.get(k), dict) and not isinstance(v, dict):
                raise ConfigError(f"{where}.{k}: expected a mapping, got {v!r}")
            base[k] = deep(dict(base[k]), v) if isinstance(v, dict) and isinstance(
                base.get(k), dict) else v
        return base

    return from_dict(type(cfg), deep(data, overrides), where)


def load_config(path: str | os.PathLike | None, overrides: dict | None = None) -> TrainConfig:
    """Defaults <- YAML file <- overrides (flags), validated."""
    cfg = TrainConfig()
    if path is not None:
        p = Path(path)
        if not p.exists() and (CONFIG_DIR / p).exists():
            p = CONFIG_DIR / p
        if not p.exists():
            raise ConfigError(f"{path}: no such config file")
        try:
            data = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{p}: not valid YAML ({str(e).splitlines()[0]})") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{p}: expected a mapping of settings at the top level, "
                              f"got a {type(data).__name__}")
        cfg = merge(cfg, data, str(p))
    if overrides:
        cfg = merge(cfg, overrides, "flags")
    validate(cfg)
    return cfg


def validate(cfg: TrainConfig) -> None:
    positive = {"bs": cfg.bs, "accum": cfg.accum, "epochs": cfg.epochs, "lr": cfg.lr,
                "tau": cfg.tau, "mine_pool": cfg.mine_pool,
                "checkpoint_every": cfg.checkpoint_every}
    for key, value in positive.items():
        if value <= 0:
            raise ConfigError(f"config: '{key}' must be > 0, got {value}")
    if not 0 <= cfg.lr_min <= cfg.lr:
        raise ConfigError(f"config: need 0 <= lr_min <= lr, got lr_min {cfg.lr_min}, lr {cfg.lr}")
    if cfg.memory_bank_size < 0:
        raise ConfigError(f"config: 'memory_bank_size' must be >= 0, got {cfg.memory_bank_size}")
    if not 0.0 < cfg.filter_threshold <= 1.0:
        raise ConfigError(f"config: 'filter_threshold' must be in (0, 1], got "
                          f"{cfg.filter_threshold}")
    recalls = {f"recall@{k}" for k in cfg.eval_ks}
    if cfg.select_metric not in recalls | {"mrr"}:
        raise ConfigError(f"config: 'select_metric' is {cfg.select_metric!r}, not one of "
                          f"{sorted(recalls | {'mrr'})}")
    # Gate thresholds are percents and the comparison with the heuristic is a paired recall
    # difference, so the gate is a recall@k.
    if cfg.gates.metric not in recalls:
        raise ConfigError(f"config: 'gates.metric' is {cfg.gates.metric!r}, not one of "
                          f"{sorted(recalls)} (a recall@k among eval_ks)")
    if cfg.abort.patience < 1:
        raise ConfigError(f"config: 'abort.patience' must be >= 1, got {cfg.abort.patience}")
    g = cfg.gates
    if not 0.0 <= g.partial <= g.success <= 100.0 or not 0.0 <= g.mid <= 100.0:
        raise ConfigError(f"config: gates need 0 <= partial <= success <= 100 and 0 <= mid <= "
                          f"100 (percent), got partial {g.partial}, success {g.success}, "
                          f"mid {g.mid}")
    if 0.0 < g.success < 1.0:
        raise ConfigError(f"config: 'gates.success' is {g.success}: gate thresholds are percents "
                          f"(55.0 means 55%), not fractions")
    try:
        cfg.model.validate()
    except ValueError as e:
        raise ConfigError(f"config: {e}") from None
    if cfg.amp not in AMP_MODES:
        raise ConfigError(f"config: 'amp' is {cfg.amp!r} ({', '.join(AMP_MODES)})")
    if cfg.index not in ("auto", "flat", "ivf", "ivf_sq8"):
        raise ConfigError(f"config: 'index' is {cfg.index!r} (auto, flat, ivf, ivf_sq8)")


def to_yaml(cfg) -> str:
    return yaml.safe_dump(dataclasses.asdict(cfg), sort_keys=False)

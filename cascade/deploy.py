"""deploy.json: what serving runs (stage 1 = v4 or the heuristic, the LVM, TMD's w), pinned.

Every file it names carries a sha256, and the bank its fingerprint, so a server refuses to start
on a checkpoint or bank that is not the one the gate judged. `CascadeConfig` holds the cascade's
settings (K per stage, the FAISS index string, the longest context accepted); its defaults are the
ones below, and deploy.json's "cascade" mapping overrides them (checked by cascade.config_loader).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from cascade.bank import sha256_file
from cascade.config_loader import build
from cascade.tmd_rerank import LANE_SOURCES

EXACT_PREFILTERS = ("int8", "none")  # CascadeConfig.exact_prefilter
# What index_params said of the exact index's prefilter before it had its own key.
LEGACY_PREFILTER = {"prefilter=int8": "int8", "prefilter=none": "none"}
# Serving's floor for an ANN stage 1's measured containment@500 (serving.yaml
# stage1.min_containment overrides it): the share of exact search's top 500 the index returns.
MIN_CONTAINMENT = 0.99


class DeployError(ValueError):
    """A deploy.json that is unreadable, incomplete, or names files that do not match it."""


@dataclass
class CascadeConfig:
    k_stage1: int = 500  # stage 1 (query + FAISS) keeps this many rows
    k_lvm: int = 50  # the LVM reranker keeps this many
    k_tmd: int = 10  # the TMD reranker keeps this many: the cascade's answer
    index_factory: str = "Flat"  # FAISS index_factory string; "Flat" = exact, no copy of the bank
    # An approximate index's search parameters: FAISS's ParameterSpace string (e.g. "nprobe=32")
    # plus "shortlist=N", how many of its candidates are rescored exactly (tune_index picks both).
    index_params: str = ""
    # "Flat" only: "int8" scans one context's query over an 8-bit copy of the bank (a quarter of
    # its bytes) and rescores its shortlist exactly: the same top k, ~3x faster
    # (cascade.index.Int8Prefilter); "none" scans the floats alone and saves the copy.
    exact_prefilter: str = "int8"
    max_context: int = 512  # longest context (chunks) a request may send
    # Stage 3's blend weight for each source of the context's TMD lane, both tuned on val by
    # `make train-lvm`: lanes from TMD codes (the bank's codes of a context sent as rows, or codes
    # the caller sends) and lanes tagged from the vectors (contexts sent as vectors or texts).
    # A deploy.json written before the split has only tmd_w: tagged lanes then get 0.
    tmd_w: float = 0.0
    tmd_w_tagged: float = 0.0
    # A bank row this close (cos) to a chunk of a context sent as vectors or texts is that chunk
    # again, not its continuation: stage 1 leaves it out. 0.9999 (exact duplicates) unless
    # `make train-lvm` lowered it to just above the highest target-to-context cos on val.
    dup_cos: float = 0.9999

    @classmethod
    def from_dict(cls, d: dict | None, where: str = "cascade") -> CascadeConfig:
        d = dict(d or {})
        # Before exact_prefilter had its own key, deploy.json said it in index_params
        # ("prefilter=int8" / "prefilter=none" with "Flat"); such files keep loading.
        params = d.get("index_params")
        legacy = LEGACY_PREFILTER.get(params) if isinstance(params, str) else None
        if legacy is not None and d.get("index_factory", "Flat") == "Flat":
            if d.setdefault("exact_prefilter", legacy) != legacy:
                raise DeployError(f"{where}: index_params {d['index_params']!r} and "
                                  f"exact_prefilter {d['exact_prefilter']!r} disagree")
            d["index_params"] = ""
        cfg = build(cls, d, where, DeployError)
        cfg.validate(where)
        return cfg

    def validate(self, where: str = "cascade") -> None:
        for key in ("k_stage1", "k_lvm", "k_tmd", "max_context"):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise DeployError(f"{where}.{key} must be an integer >= 1, got {value!r}")
        if not self.k_stage1 >= self.k_lvm >= self.k_tmd:
            raise DeployError(f"{where}: need k_stage1 >= k_lvm >= k_tmd, got {self.k_stage1}, "
                              f"{self.k_lvm}, {self.k_tmd}")
        for key in ("tmd_w", "tmd_w_tagged"):
            value = getattr(self, key)
            if not isinstance(value, int | float) or isinstance(value, bool) or \
                    not 0.0 <= value <= 1.0:
                raise DeployError(f"{where}.{key} must be in [0, 1], got {value!r}")
        if not isinstance(self.dup_cos, int | float) or isinstance(self.dup_cos, bool) or \
                not 0.5 <= self.dup_cos <= 1.0:
            raise DeployError(f"{where}.dup_cos must be in [0.5, 1], got {self.dup_cos!r}")
        if not isinstance(self.index_factory, str) or not self.index_factory:
            raise DeployError(f"{where}.index_factory must be a FAISS index_factory string")
        if self.exact_prefilter not in EXACT_PREFILTERS:
            raise DeployError(f"{where}.exact_prefilter must be one of "
                              f"{', '.join(EXACT_PREFILTERS)}, got {self.exact_prefilter!r}")

    def tmd_w_for(self, lane_source: str) -> float:
        """Stage 3's w for lanes from `lane_source`: "codes" or "tagged" (LANE_SOURCES)."""
        if lane_source not in LANE_SOURCES:
            raise ValueError(f"lane source {lane_source!r}: expected one of {LANE_SOURCES}")
        return self.tmd_w if lane_source == "codes" else self.tmd_w_tagged

    def to_dict(self) -> dict:
        return asdict(self)


def read_deploy(path: str | os.PathLike) -> dict:
    path = Path(path)
    if not path.exists():
        raise DeployError(f"{path}: no such deploy.json (make train-v4 writes it)")
    try:
        deploy = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DeployError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(deploy, dict):
        raise DeployError(f"{path}: expected a JSON object")
    for key in ("stage1", "bank", "bank_fingerprint"):
        if key not in deploy:
            raise DeployError(f"{path}: missing key '{key}'")
    if deploy["stage1"] not in ("v4", "heuristic"):
        raise DeployError(f"{path}: key 'stage1' is {deploy['stage1']!r} (v4, heuristic)")
    return deploy


def resolve(deploy_path: str | os.PathLike, file: str) -> Path:
    """A path named in deploy.json: as written if it exists (relative to the working directory,
    as `make` writes them), else relative to deploy.json's folder."""
    p = Path(file)
    if p.is_absolute() or p.exists():
        return p
    return Path(deploy_path).parent / p


def check_pinned(deploy_path: str | os.PathLike, what: str, file: str | None,
                 sha256: str | None) -> Path:
    """The file `what` names, refused when missing or when its sha256 is not the pinned one."""
    if not file:
        raise DeployError(f"{deploy_path}: '{what}' names no file")
    p = resolve(deploy_path, file)
    if not p.exists():
        raise DeployError(f"{deploy_path}: '{what}' names {file}, which does not exist")
    if sha256 is not None and sha256_file(p) != sha256:
        raise DeployError(f"{deploy_path}: '{what}' {file} has sha256 {sha256_file(p)[:19]}..., "
                          f"deploy.json pins {sha256[:19]}... (retrain or rewrite deploy.json)")
    return p


def check_ann_record(deploy_path: str | os.PathLike, deploy: dict, cfg: CascadeConfig,
                     fingerprint: str, min_containment: float = MIN_CONTAINMENT) -> dict:
    """The `stage1_index` record `python -m training.tune_index` wrote for an approximate
    `cfg.index_factory`, refused (one line naming the numbers) when missing, measured for other
    settings or another bank, or when its containment@500 on val or test is below the floor."""
    spec = f"{cfg.index_factory}|{cfg.index_params}"
    rec = deploy.get("stage1_index")
    if not isinstance(rec, dict):
        raise DeployError(f"{deploy_path}: cascade.index_factory {spec!r} is approximate and "
                          f"deploy.json records no measured containment ('stage1_index'); run "
                          f"python -m training.tune_index --deploy {deploy_path}")
    measured = f"{rec.get('index_factory')}|{rec.get('index_params')}"
    if measured != spec:
        raise DeployError(f"{deploy_path}: containment was measured for {measured!r}, cascade "
                          f"serves {spec!r}; rerun python -m training.tune_index")
    if rec.get("bank_fingerprint") != fingerprint:
        raise DeployError(f"{deploy_path}: containment was measured on bank "
                          f"{str(rec.get('bank_fingerprint'))[:19]}..., the bank is now "
                          f"{fingerprint[:19]}... (it moved); rerun python -m training.tune_index")
    contained = rec.get("containment") or {}
    for split in ("val", "test"):
        c = contained.get(split)
        if not isinstance(c, int | float) or c < min_containment:
            raise DeployError(f"{deploy_path}: ANN stage 1 {spec!r} has containment@"
                              f"{rec.get('k', 500)} {c} on {split}, below "
                              f"stage1.min_containment {min_containment}; refusing it (retune "
                              f"with python -m training.tune_index, or serve 'Flat')")
    return rec

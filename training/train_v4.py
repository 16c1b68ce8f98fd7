"""Checklist step 4: the v4 two-tower trainer.

    python -m training.train_v4 --config v4_default.yaml \
        --pairs artifacts/twotower/pairs_v4.npz --bank artifacts/wikipedia_vital_bank.npz \
        --out runs/twotower_v4 --bs 32 --accum 16 --epochs 30 --lr 5e-5 --lr-min 1e-6 \
        --tau 0.05 --margin 0.03 --memory-bank-size 50000 \
        --mine-schedule "0-5:none;6-10:8@0.82-0.92;11-30:16@0.84-0.96" --filter-threshold 0.98

InfoNCE over in-batch, memory-bank and curriculum hard negatives plus a cosine margin penalty;
every epoch evaluates val Recall@k, MRR and the separation margin Δ, appends to history.json and
writes last.pt (resumable exactly with --resume); best.pt holds the best val `select_metric`.
Val selects; the final gate judges best.pt on the test split, which nothing else looks at.
Δ below the abort threshold on consecutive evals after the abort epoch saves abort.pt and exits
with code 3. The final gate writes gate.json: success / partial / data wall, and whether v4
beats the exp-weighted heuristic beyond the 95% CI.

--device picks where the towers train (FAISS stays on the CPU); under torchrun
(`torchrun --standalone --nproc_per_node N -m training.train_v4 ...`) it trains data-parallel,
see training/distributed.py.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import logging
import math
import os
import re
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from cascade import checkpoint as ck
from cascade.bank import Bank, BankError, atomic_write, load_bank, write_json
from cascade.device import autocast, check_amp, resolve_device, rng_state, set_rng_state
from cascade.index import build_index
from cascade.methods import compare_methods
from cascade.pairs import Pairs, PairsError, context_windows, load_pairs
from cascade.runtime import deterministic_torch, log_to_file, silence
from cascade.split import SIDE_NAMES, SplitSpec
from cascade.stage1 import Stage1
from cascade.tower_batches import encode_docs
from cascade.towers import TowerConfig, build_towers
from training import distributed as ddp
from training.cli import add_config_flags, parse_overrides
from training.config import ConfigError, TrainConfig, load_config, to_yaml
from training.curriculum import ScheduleError, check_covers, parse_schedule, segment_for
from training.gates import abort_advice, decide, mid_gate
from training.losses import contrastive_loss
from training.lr_schedule import lr_at, set_lr
from training.memory_bank import MemoryBank
from training.mining import mine
from training.report import RANKS_FILE, save_ranks, write_report

EXIT_BAD_INPUT = 2
EXIT_ABORT = 3
log = logging.getLogger("train_v4")


@dataclass
class RunPaths:
    out: Path

    @property
    def checkpoints(self) -> Path:
        return self.out / "checkpoints"

    def ckpt(self, name: str) -> Path:
        return self.checkpoints / name

    @property
    def history(self) -> Path:
        return self.out / "history.json"

    @property
    def gate(self) -> Path:
        return self.out / "gate.json"


def load_inputs(cfg: TrainConfig) -> tuple[Bank, Pairs, list]:
    """Bank, pairs and schedule, refused before any training starts if anything is wrong."""
    bank = load_bank(cfg.bank)
    pairs = load_pairs(cfg.pairs, bank)
    segments = parse_schedule(cfg.mine_schedule)
    check_covers(segments, cfg.epochs)
    counts = {name: len(pairs.side(name)) for name in SIDE_NAMES.values()}
    if not all(counts.values()) or pairs.split_spec is None:
        raise PairsError(f"{cfg.pairs}: needs train, val and test pairs drawn by article key "
                         f"(has {', '.join(f'{k} {v}' for k, v in counts.items())}"
                         f"{'' if pairs.split_spec else '; no recorded split'}): re-expand "
                         f"them with python -m training.expand_pairs")
    return bank, pairs, segments


def tower_state(query, doc, cfg: TrainConfig, bank: Bank, split: SplitSpec, pairs_fp: str,
                epoch: int, metrics: dict, best: float) -> dict:
    """What every checkpoint holds. EPOCH_METRIC is this epoch's val `select_metric`;
    BEST_METRIC the best value of it over the run so far (this epoch included)."""
    return {ck.QUERY_TOWER: query.state_dict(), ck.DOC_TOWER: doc.state_dict(),
            ck.MODEL_CONFIG: cfg.model.to_dict(), ck.CONFIG: dataclasses.asdict(cfg),
            ck.EPOCH: epoch, ck.METRICS: metrics,
            ck.EPOCH_METRIC: {"name": cfg.select_metric, "value": metrics[cfg.select_metric]},
            ck.BEST_METRIC: best, ck.BANK_FINGERPRINT: bank.fingerprint(),
            ck.SPLIT: split.to_dict(), ck.PAIRS_FINGERPRINT: pairs_fp}


def pairs_fingerprint(pairs: Pairs) -> str:
    """sha256 of the pairs' windows, targets and split: what --resume checks it trains on."""
    h = hashlib.sha256()
    for col in (pairs.ctx_start, pairs.ctx_end, pairs.target, pairs.split):
        h.update(f"{col.dtype.str}{col.shape}".encode())
        h.update(memoryview(np.ascontiguousarray(col)).cast("B"))
    return "sha256:" + h.hexdigest()


def selection_key(metrics: dict, cfg: TrainConfig) -> tuple[float, float]:
    # Recall@500 saturates on small banks: ties go to the better MRR.
    return (round(metrics[cfg.select_metric], 6), metrics["mrr"])


# Settings that may change on --resume without changing what the run computes. A resume on
# another device continues the run from the same weights, but is not bit-identical to an
# uninterrupted run (it says so in the log); on the same device it is exact.
RESUME_MAY_CHANGE = ("log_dir", "threads", "device")


def check_resume_config(saved: dict, cfg: TrainConfig, where: Path) -> None:
    """Refuse to resume with settings other than the interrupted run's: it would not be exact."""
    now = dataclasses.asdict(cfg)

    def diff(a: dict, b: dict, prefix: str = "") -> str | None:
        for key in sorted(set(a) | set(b)):
            if not prefix and key in RESUME_MAY_CHANGE:
                continue
            x, y = a.get(key), b.get(key)
            if isinstance(x, dict) and isinstance(y, dict):
                found = diff(x, y, f"{prefix}{key}.")
                if found:
                    return found
            elif x != y:
                return f"{prefix}{key}: {x!r} in {where}, {y!r} now"
        return None

    changed = diff(saved, now)
    if changed:
        raise ConfigError(f"--resume with other settings than the interrupted run ({changed}); "
                          f"resume with the same config and flags, or train into a new --out")


def should_abort(history: list[dict], cfg: TrainConfig) -> bool:
    recent = history[-cfg.abort.patience:]
    return (len(recent) == cfg.abort.patience
            and all(h["epoch"] > cfg.abort.after_epoch and h["margin"] < cfg.abort.margin
                    for h in recent))


def train_epoch(query, doc, optimizer, memory: MemoryBank, vectors: torch.Tensor, train: Pairs,
                negatives: np.ndarray | None, cfg: TrainConfig, epoch: int, step: int,
                total_steps: int, world: ddp.World = ddp.ONE,
                model: torch.nn.Module | None = None) -> tuple[dict, int]:
    """One pass over `train` in a seeded order; returns mean loss parts and the new step.

    `vectors` is the bank as a tensor on the training device (on the CPU, a view of the numpy
    array): batches are gathered where the towers are. Under DistributedDataParallel (`world`
    enabled, `model` the DDP-wrapped `ddp.TwoTowers`) the micro-batches and optimizer steps are
    the same; each micro-batch is split across the ranks (`_ddp_micro_batch`) and gradients are
    reduced across them at a group's last micro-batch only."""
    for module in (query, doc, model):
        if module is not None:
            module.train()
    order = np.random.default_rng([cfg.seed, epoch]).permutation(len(train))
    micro = [order[i:i + cfg.bs] for i in range(0, len(order), cfg.bs)]
    groups = [micro[i:i + cfg.accum] for i in range(0, len(micro), cfg.accum)]
    sums: dict[str, float] = {}
    bar = tqdm(groups, desc=f"epoch {epoch}", unit="step", leave=False,
               disable=not (sys.stderr.isatty() and world.main))
    for group in bar:
        lr = lr_at(step, total_steps, cfg.lr, cfg.lr_min, cfg.warmup_steps)
        set_lr(optimizer, lr)
        for j, idx in enumerate(group):
            last = j == len(group) - 1
            with contextlib.nullcontext() if last or model is None else model.no_sync():
                if world.enabled:
                    loss, parts, pos, pos_rows, n = _ddp_micro_batch(
                        model, memory, vectors, train, negatives, cfg, idx, world)
                else:
                    loss, parts, pos, pos_rows, n = _micro_batch(
                        query, doc, memory, vectors, train, negatives, cfg, idx)
                (loss / len(group)).backward()
            memory.push(pos.detach(), pos_rows)
            for key, value in parts.items():
                sums[key] = sums.get(key, 0.0) + float(value.detach()) * n
        torch.nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]],
                                       cfg.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        if not doc.is_identity:
            memory.refresh(lambda rows: doc(vectors[rows]))
        if "loss" in parts:
            bar.set_postfix(loss=f"{float(parts['loss'].detach()):.3f}")
    if world.enabled:
        sums = ddp.all_sum({k: sums.get(k, 0.0) for k in LOSS_PARTS})
    means = {k: v / len(train) for k, v in sums.items()}
    means["lr"] = lr
    return means, step


# The loss parts an epoch reports (contrastive_loss's keys).
LOSS_PARTS = ("loss", "nce", "margin_penalty", "cos_pos", "cos_hardest")


def _micro_batch(query, doc, memory: MemoryBank, vectors: torch.Tensor, train: Pairs,
                 negatives: np.ndarray | None, cfg: TrainConfig, idx: np.ndarray):
    """Forward one micro-batch in one process -> (loss, its parts, the positives and their bank
    rows for the memory bank, the pairs counted)."""
    device = vectors.device
    sub = train.subset(idx)
    rows, mask = context_windows(sub, cfg.model.max_len)
    ctx = vectors[torch.from_numpy(rows).to(device)]
    mask = torch.from_numpy(mask).to(device)
    pos_rows = torch.from_numpy(sub.target).to(device)
    hard = hard_rows = None
    with autocast(device, cfg.amp):
        pos = doc(vectors[pos_rows])
        if negatives is not None:
            hard_rows = torch.from_numpy(negatives[idx]).to(device)
            hard = doc(vectors[hard_rows.clamp(min=0).flatten()]).reshape(
                len(idx), -1, vectors.shape[1])
        mem, mem_rows = memory.get()
        parts = contrastive_loss(query(ctx, mask), pos, pos_rows,
                                 torch.from_numpy(sub.ctx_start).to(device),
                                 torch.from_numpy(sub.ctx_end).to(device), mem, mem_rows,
                                 hard, hard_rows, cfg.tau, cfg.margin, cfg.margin_weight)
    return parts["loss"], parts, pos, pos_rows, len(idx)


def _ddp_micro_batch(model, memory: MemoryBank, vectors: torch.Tensor, train: Pairs,
                     negatives: np.ndarray | None, cfg: TrainConfig, idx: np.ndarray,
                     world: ddp.World):
    """`_micro_batch` on this rank's share of the micro-batch (rank r takes its r-th contiguous
    share).

    Every rank gathers all ranks' positives, so its queries see the micro-batch's in-batch
    negatives, and pushes them all to its memory bank (the same on every rank). A rank's loss is
    scaled by its share of the micro-batch times the world size: DDP averages gradients over the
    ranks, and the average is then the gradient of the single process's micro-batch mean."""
    device = vectors.device
    sizes = ddp.split_sizes(len(idx), world.size)
    lo = sum(sizes[:world.rank])
    local = idx[lo:lo + sizes[world.rank]]
    # A rank with no pair in a short last micro-batch runs one at weight 0, so that it joins
    # every collective of the step.
    run = local if len(local) else idx[:1]
    sub = train.subset(run)
    rows, mask = context_windows(sub, cfg.model.max_len)
    all_rows = torch.from_numpy(train.target[idx]).to(device)
    hard_rows = hard_in = None
    if negatives is not None:
        hard_rows = torch.from_numpy(negatives[run]).to(device)
        hard_in = vectors[hard_rows.clamp(min=0).flatten()]
    with autocast(device, cfg.amp):
        q, pos, hard = model(vectors[torch.from_numpy(rows).to(device)],
                             torch.from_numpy(mask).to(device),
                             vectors[torch.from_numpy(sub.target).to(device)], hard_in)
        if hard is not None:
            hard = hard.reshape(len(run), -1, vectors.shape[1])
        every_pos = ddp.gather_rows(pos[:len(local)], sizes, world.rank)
        if len(local):
            mem, mem_rows = memory.get()
            parts = contrastive_loss(q, every_pos, all_rows,
                                     torch.from_numpy(sub.ctx_start).to(device),
                                     torch.from_numpy(sub.ctx_end).to(device), mem, mem_rows,
                                     hard, hard_rows, cfg.tau, cfg.margin, cfg.margin_weight,
                                     offset=lo)
            loss = parts["loss"] * (len(local) * world.size / len(idx))
        else:
            parts = {}
            loss = 0.0 * (q.sum() + pos.sum() + every_pos.sum()
                          + (hard.sum() if hard is not None else 0.0))
    return loss, parts, every_pos, all_rows, len(local)


def log_epoch(h: dict, cfg: TrainConfig) -> None:
    recalls = " | ".join(f"Recall@{k} {h[f'recall@{k}']:.2f}%" for k in cfg.eval_ks)
    log.info(f"Epoch {h['epoch']}/{cfg.epochs} | loss {h['loss']:.4f} (nce {h['nce']:.4f}, "
             f"margin penalty {h['margin_penalty']:.4f}) | lr {h['lr']:.2e} | "
             f"{h['seconds']:.1f}s | {h['pairs_per_s']:.0f} pairs/s | {h['curriculum']}")
    log.info(f"  {recalls} | MRR {h['mrr']:.4f}")
    log.info(f"  Separation Δ {h['margin']:.4f} (cos pos {h['pos_cos']:.3f}, hard neg "
             f"{h['neg_cos']:.3f})")


@dataclass
class Progress:
    """Where a run stands between epochs: what last.pt carries besides weights and optimizer."""
    history: list[dict] = field(default_factory=list)
    step: int = 0  # optimizer steps taken
    epoch: int = 0  # last finished epoch
    best: tuple[float, float] = (-1.0, -1.0)  # selection_key of best.pt
    best_epoch: int = 0


def resume_state(paths: RunPaths, cfg: TrainConfig, bank: Bank, pairs: Pairs, pairs_fp: str,
                 world: ddp.World = ddp.ONE) -> dict | None:
    """last.pt of the run --resume continues, checked against this invocation; None when there
    is none yet. Refuses an aborted run, other settings and other pairs."""
    if paths.ckpt("abort.pt").exists():
        raise ConfigError(f"{paths.out} was aborted ({paths.ckpt('abort.pt')}; gate.json says "
                          f"why): --resume would train on past the abort. Start over into a new "
                          f"--out (or delete {paths.out}), with the changes the abort advice names")
    if not paths.ckpt("last.pt").exists():
        return None
    state = ck.load_checkpoint(paths.ckpt("last.pt"), bank.fingerprint())
    check_resume_config(state[ck.CONFIG], cfg, paths.ckpt("last.pt"))
    if ck.split_spec_of(state) != pairs.split_spec:
        raise ck.CheckpointError(f"--resume: {paths.ckpt('last.pt')} trained with another "
                                 f"article split than {cfg.pairs}; start a new run")
    saved = state.get(ck.PAIRS_FINGERPRINT)
    if saved != pairs_fp:
        raise ConfigError(f"--resume with other pairs than the interrupted run: {cfg.pairs} is "
                          f"{pairs_fp[:19]}..., {paths.ckpt('last.pt')} trained on "
                          f"{(saved or 'unrecorded pairs')[:19]}...; resume with the run's own "
                          f"pairs file, or train into a new --out")
    trained_by = state[ck.TRAIN_STATE].get("world_size", 1)
    if trained_by != world.size:
        launch = (f"torchrun --nproc_per_node {trained_by}" if trained_by > 1
                  else "python -m training.train_v4, without torchrun")
        raise ck.CheckpointError(
            f"--resume: {paths.ckpt('last.pt')} was trained by {trained_by} process(es), this "
            f"run has {world.size}; resume with the same count ({launch})")
    return state


# What a run writes into its directory; a fresh run there removes the previous run's.
RUN_FILES = ("history.json", "gate.json", "report.md", "config.yaml")
CHECKPOINT_FILES = re.compile(r"(best|last|abort|epoch_\d+)\.pt")
# atomic_write's temp names: ".<name>.<random>.tmp"; a killed write leaves one behind.
TEMP_FILE = re.compile(r"\.(?P<name>.+)\.[^.]+\.tmp")


def prepare_run_dir(paths: RunPaths, fresh: bool) -> list[Path]:
    """Create the run directory; remove temp files that killed writes of this run left, and on
    a fresh start the previous run's checkpoints and results (so nothing of it is taken for this
    run's, by --resume or by the monitor). Returns the removed paths."""
    paths.checkpoints.mkdir(parents=True, exist_ok=True)
    removed = []
    for folder, ours in ((paths.out, lambda n: n in RUN_FILES),
                         (paths.checkpoints, lambda n: CHECKPOINT_FILES.fullmatch(n))):
        for f in sorted(folder.iterdir()):
            temp = TEMP_FILE.fullmatch(f.name)
            if f.is_file() and ((temp and ours(temp["name"])) or (fresh and ours(f.name))):
                f.unlink()
                removed.append(f)
    return removed


def restore(cfg: TrainConfig, query, doc, optimizer, memory: MemoryBank, last: dict | None,
            init: tuple[str, dict] | None, device: torch.device,
            world: ddp.World = ddp.ONE) -> Progress:
    """Continue from `last` (last.pt, for --resume), start from another run's weights (`init`:
    its path and loaded checkpoint), or start fresh."""
    if last is not None:
        query.load_state_dict(last[ck.QUERY_TOWER])
        doc.load_state_dict(last[ck.DOC_TOWER])
        ts = last[ck.TRAIN_STATE]
        optimizer.load_state_dict(ts["optimizer"])
        memory.load_state_dict(ts["memory"])
        set_rng_state({"cpu": ts["torch_rng"], **ts.get("device_rng", {})}, device)
        if world.enabled:  # each rank continues from its own generators
            set_rng_state(ts["rank_rng"][world.rank], device)
        log.info(f"Resumed from {Path(cfg.out) / 'checkpoints' / 'last.pt'} after epoch "
                 f"{last[ck.EPOCH]}")
        trained_on = ts.get("device", "cpu")
        if trained_on != str(device):
            log.info(f"  (it trained on {trained_on}, this run is on {device}: it continues from "
                     f"the same state, but not bit-identically to an uninterrupted run)")
        return Progress(ts["history"], ts["step"], last[ck.EPOCH], tuple(ts["best"]),
                        ts["best_epoch"])
    if init:
        init_from, state = init
        query.load_state_dict(state[ck.QUERY_TOWER])
        doc.load_state_dict(state[ck.DOC_TOWER])
        log.info(f"Initialized from {init_from} (epoch {state[ck.EPOCH]})")
    return Progress()


def save_epoch(paths: RunPaths, cfg: TrainConfig, bank: Bank, split: SplitSpec, pairs_fp: str,
               query, doc, optimizer, memory: MemoryBank, progress: Progress,
               metrics: dict, device: torch.device, extra: dict | None = None) -> dict:
    """best.pt when the selection metric improved, epoch_XXX.pt every `checkpoint_every`, and
    last.pt (with everything --resume needs) every epoch; then history.json. Returns the state."""
    epoch = progress.epoch
    key = selection_key(metrics, cfg)
    improved = key > progress.best
    if improved:
        progress.best, progress.best_epoch = key, epoch
    state = tower_state(query, doc, cfg, bank, split, pairs_fp, epoch, metrics,
                        progress.best[0])
    if improved:
        ck.save_checkpoint(paths.ckpt("best.pt"), state)
    if epoch % cfg.checkpoint_every == 0:
        ck.save_checkpoint(paths.ckpt(f"epoch_{epoch:03d}.pt"), state)
    rng = rng_state(device)
    state[ck.TRAIN_STATE] = {"optimizer": optimizer.state_dict(), "memory": memory.state_dict(),
                             "torch_rng": rng.pop("cpu"), "device_rng": rng,
                             "device": str(device), "history": progress.history,
                             "step": progress.step, "best": list(progress.best),
                             "best_epoch": progress.best_epoch, "world_size": 1, **(extra or {})}
    ck.save_checkpoint(paths.ckpt("last.pt"), state)
    write_json(paths.history, progress.history, indent=1)
    return state


def abort_run(paths: RunPaths, cfg: TrainConfig, state: dict, history: list[dict],
              result: dict) -> dict:
    """Margin collapse: abort.pt, the checklist's recommendations, gate.json saying why."""
    ck.save_checkpoint(paths.ckpt("abort.pt"), state)
    reason = (f"separation margin Δ < {cfg.abort.margin} for {cfg.abort.patience} "
              f"consecutive evals after epoch {cfg.abort.after_epoch} "
              f"(last {history[-1]['margin']:.4f} at epoch {history[-1]['epoch']})")
    log.info(f"ABORT: {reason}. Saved {paths.ckpt('abort.pt')}. Recommendations:")
    advice = abort_advice(parse_schedule(cfg.mine_schedule), history[-1]["epoch"], cfg.tau)
    for line in advice:
        log.info(f"  - {line}")
    result.update({"verdict": "aborted", "reason": reason, "epoch": history[-1]["epoch"],
                   "stage1": "heuristic", "actions": advice})
    write_json(paths.gate, result)
    return result


def train(cfg: TrainConfig, resume: bool = False, init_from: str | None = None,
          baselines: dict[str, str] | None = None) -> dict:
    """Run the whole training; returns gate.json's content (or the abort record). Under torchrun
    every rank runs this; rank 0 writes the run's files."""
    world = ddp.world_from_env()
    try:  # an unusable device is refused before anything is written
        device = resolve_device(cfg.device)
        check_amp(cfg.amp, device)
        if world.enabled:
            device = ddp.rank_device(world, device)
            if cfg.bs < world.size:
                raise ValueError(f"--bs {cfg.bs} with {world.size} processes: every rank takes "
                                 f"a share of each micro-batch (bs >= world size)")
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if not world.enabled:
        return _train(cfg, resume, init_from, baselines, device, world)
    ddp.init(world, device)
    try:
        return _train(cfg, resume, init_from, baselines, device, world)
    finally:
        ddp.shutdown()


@dataclass
class Inputs:
    """What a run trains on and starts from, all checked before anything is written."""
    bank: Bank
    pairs: Pairs
    segments: list
    pairs_fp: str
    train: Pairs
    val: Pairs
    test: Pairs
    init: tuple[str, dict] | None  # --init-from: its path and loaded checkpoint
    last: dict | None  # --resume: last.pt


def check_inputs(cfg: TrainConfig, paths: RunPaths, resume: bool, init_from: str | None,
                 baselines: dict[str, str], world: ddp.World) -> Inputs:
    """Bank, pairs, schedule, --init-from, baselines and --resume's last.pt, refused before
    any training starts if anything is wrong. Sets cfg.model from --init-from's checkpoint."""
    bank, pairs, segments = load_inputs(cfg)
    pairs_fp = pairs_fingerprint(pairs)
    train_pairs, val, test = pairs.train(), pairs.val(), pairs.test()
    if cfg.max_train_pairs and len(train_pairs) > cfg.max_train_pairs:
        keep = np.random.default_rng(cfg.seed).choice(len(train_pairs), cfg.max_train_pairs,
                                                      replace=False)
        train_pairs = train_pairs.subset(np.sort(keep))
    init = None
    if init_from:  # the architecture comes from the checkpoint the run starts from
        init = (init_from, ck.load_checkpoint(init_from, bank.fingerprint()))
        ck.check_split_of(init[1], init_from, pairs, bank, "--init-from")
        try:
            cfg.model = TowerConfig.from_dict(init[1][ck.MODEL_CONFIG])
        except (ValueError, TypeError) as e:
            raise ck.CheckpointError(f"{init_from}: {e}") from None
    cfg.model.dim = bank.dim
    for name, path in baselines.items():
        ck.check_split_of(ck.load_checkpoint(path, bank.fingerprint()), path, pairs, bank,
                          f"--baseline {name}")
    last = resume_state(paths, cfg, bank, pairs, pairs_fp, world) if resume else None
    return Inputs(bank, pairs, segments, pairs_fp, train_pairs, val, test, init, last)


def start_run(paths: RunPaths, cfg: TrainConfig, resume: bool, last: dict | None,
              world: ddp.World) -> Path | None:
    """The run directory, log and pid file (rank 0's, under torchrun); -> the log's path."""
    removed = prepare_run_dir(paths, fresh=last is None) if world.main else []
    if world.main:
        log_path = log_to_file(log, cfg.log_dir, cfg.name)
        (paths.out / "train.pid").write_text(str(os.getpid()))
    else:
        log_path = None
        silence(log)
    if removed:
        log.info(f"Removed {len(removed)} file(s) of an earlier run or killed write in "
                 f"{paths.out}: {', '.join(str(p.relative_to(paths.out)) for p in removed)}")
    if resume and last is None:
        log.info(f"--resume: no {paths.ckpt('last.pt')} yet, starting from scratch")
    return log_path


@dataclass
class Trainer:
    """The towers, optimizer, memory bank and schedule of a run, and where it stands."""
    query: torch.nn.Module
    doc: torch.nn.Module
    optimizer: torch.optim.Optimizer
    memory: MemoryBank
    vectors: torch.Tensor  # the bank on the training device (a view on the CPU)
    steps_per_epoch: int
    total_steps: int
    progress: Progress
    model: torch.nn.Module | None = None  # the DDP-wrapped towers under torchrun


def build_trainer(cfg: TrainConfig, inputs: Inputs, device: torch.device,
                  world: ddp.World) -> Trainer:
    """Model, optimizer, memory bank; then resume / init-from; the DDP wrapper under torchrun."""
    bank = inputs.bank
    query, doc = build_towers(cfg.model)
    query, doc = query.to(device), doc.to(device)
    params = list(query.parameters()) + list(doc.parameters())
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.wd)
    memory = MemoryBank(cfg.memory_bank_size, bank.dim, device)
    vectors = torch.from_numpy(bank.vectors).to(device)  # a view on the CPU, a copy elsewhere
    steps_per_epoch = math.ceil(math.ceil(len(inputs.train) / cfg.bs) / cfg.accum)
    progress = restore(cfg, query, doc, optimizer, memory, inputs.last, inputs.init, device,
                       world)
    model = None
    if world.enabled:
        model = torch.nn.parallel.DistributedDataParallel(
            ddp.TwoTowers(query, doc),
            device_ids=[device.index] if device.type == "cuda" else None)
    return Trainer(query, doc, optimizer, memory, vectors, steps_per_epoch,
                   steps_per_epoch * cfg.epochs, progress, model)


def log_start(cfg: TrainConfig, inputs: Inputs, trainer: Trainer, device: torch.device,
              world: ddp.World, log_path: Path | None) -> None:
    bank = inputs.bank
    log.info(f"{cfg.name}: bank {cfg.bank} ({bank.n:,} x {bank.dim}), pairs {cfg.pairs} "
             f"(train {len(inputs.train):,}, val {len(inputs.val):,}, test "
             f"{len(inputs.test):,}), {cfg.model.kind} tower, "
             f"batch {cfg.bs} x {cfg.accum}, {trainer.steps_per_epoch} steps/epoch, on {device}"
             f"{f' x {world.size} processes (DDP)' if world.enabled else ''}"
             f"{' (bf16 autocast)' if cfg.amp == 'bf16' else ''}; log {log_path}")


@dataclass
class MiningIndex:
    """The doc tower's encoding of the bank and the index mining searches, rebuilt after every
    epoch a trainable doc tower trained."""
    doc_vectors: np.ndarray
    index: object
    build_seconds: float  # charged to the first epoch this process runs

    @classmethod
    def build(cls, doc, bank: Bank, cfg: TrainConfig) -> MiningIndex:
        t = time.perf_counter()
        doc_vectors = encode_docs(doc, bank.vectors)
        index = build_index(doc_vectors, cfg.index, seed=cfg.seed)
        return cls(doc_vectors, index, time.perf_counter() - t)


def mine_epoch(cfg: TrainConfig, inputs: Inputs, trainer: Trainer, mining_index: MiningIndex,
               segment, world: ddp.World) -> tuple[np.ndarray | None, dict]:
    """The epoch's curriculum hard negatives (None when the schedule mines none) and what the
    history records about them."""
    if not segment.count:
        return None, {}
    miner = Stage1(inputs.bank, query=trainer.query, doc_vectors=mining_index.doc_vectors,
                   index=mining_index.index)
    if world.enabled:  # sharded by pairs, gathered
        negs = ddp.mine_sharded(miner, inputs.train, segment, cfg.filter_threshold,
                                cfg.mine_pool)
    else:
        negs = mine(miner, inputs.train, segment, cfg.filter_threshold, cfg.mine_pool)
    return negs.rows, {"mined_per_pair": float((negs.rows >= 0).sum(1).mean()),
                       "mining_dropped_fraction": negs.dropped_fraction,
                       "mining_raw_positive_rate": negs.positive_rate,
                       "mining_raw_near_dup_rate": negs.near_dup_rate}


def run_epoch(cfg: TrainConfig, inputs: Inputs, trainer: Trainer, mining_index: MiningIndex,
              segments: list, epoch: int, world: ddp.World) -> MiningIndex:
    """Mine (when scheduled), train, re-encode the bank for a trainable doc tower, evaluate on
    val (rank 0) and append the epoch's record to the history; -> the index for the next."""
    t0 = time.perf_counter()
    # Where the epoch's time goes (benchmarks.train_speed reads these): query-tower
    # encoding without gradient (mining and eval queries), mining search + filter, the
    # forward/backward steps, eval search + metrics, and (re)building the mining index (the
    # first epoch's seconds_index is the build before the loop, outside its `seconds`).
    took = {"encode": 0.0, "mine": 0.0, "train": 0.0, "eval": 0.0,
            "index": mining_index.build_seconds}
    mining_index.build_seconds = 0.0
    segment = segment_for(segments, epoch)
    t = time.perf_counter()  # encoding the train queries and searching them
    negatives, mining = mine_epoch(cfg, inputs, trainer, mining_index, segment, world)
    if segment.count:
        took["mine"] += time.perf_counter() - t
    t_train = time.perf_counter()
    losses, trainer.progress.step = train_epoch(
        trainer.query, trainer.doc, trainer.optimizer, trainer.memory, trainer.vectors,
        inputs.train, negatives, cfg, epoch, trainer.progress.step, trainer.total_steps, world,
        trainer.model)
    train_s = took["train"] = time.perf_counter() - t_train
    if not trainer.doc.is_identity:
        t = time.perf_counter()
        doc_vectors = encode_docs(trainer.doc, inputs.bank.vectors)
        took["encode"] += time.perf_counter() - t
        t = time.perf_counter()
        mining_index = MiningIndex(doc_vectors, build_index(doc_vectors, cfg.index,
                                                            seed=cfg.seed), 0.0)
        took["index"] += time.perf_counter() - t
    # Reported recall is exact whatever cfg.index mines with: an IVF index at its default
    # nprobe found 72% of what exact search finds on a 1M-row bank.
    # Under DDP rank 0 evaluates and every rank takes its record, so all decide alike.
    h = None
    if world.main:
        t = time.perf_counter()  # encoding the val queries, exact search, metrics
        metrics, _ = Stage1(inputs.bank, query=trainer.query,
                            doc_vectors=mining_index.doc_vectors).evaluate(
            inputs.val, tuple(cfg.eval_ks))
        took["eval"] += time.perf_counter() - t
        h = {"epoch": epoch, **losses, **metrics, **mining,
             "curriculum": (f"{segment.count} hard negatives @ {segment.cos_min:g}-"
                            f"{segment.cos_max:g}" if segment.count
                            else "no mining (warm start)"),
             "seconds": time.perf_counter() - t0, "pairs_per_s": len(inputs.train) / train_s,
             **{f"seconds_{part}": value for part, value in took.items()}}
    if world.enabled:
        h = ddp.broadcast(h)
    trainer.progress.history.append(h)
    trainer.progress.epoch = epoch
    log_epoch(h, cfg)
    return mining_index


def end_epoch(paths: RunPaths, cfg: TrainConfig, inputs: Inputs, trainer: Trainer,
              device: torch.device, world: ddp.World, result: dict) -> dict | None:
    """Checkpoint the epoch just run (rank 0), check the mid-gate and the abort trigger;
    -> the abort record when the run aborts, else None."""
    progress = trainer.progress
    metrics, epoch = progress.history[-1], progress.epoch
    rank_rng = ddp.gather_objects(rng_state(device)) if world.enabled else None
    state = None
    if world.main:
        extra = {"world_size": world.size, "rank_rng": rank_rng} if world.enabled else None
        state = save_epoch(paths, cfg, inputs.bank, inputs.pairs.split_spec, inputs.pairs_fp,
                           trainer.query, trainer.doc, trainer.optimizer, trainer.memory,
                           progress, metrics, device, extra)
    if epoch == cfg.gates.mid_epoch:
        mg = mid_gate(metrics[cfg.gates.metric], cfg.gates)
        result["mid_gate"] = mg
        log.info(f"Mid-gate (epoch {epoch}): {cfg.gates.metric} {mg['value']:.2f}% vs "
                 f"{mg['threshold']}%: {mg['status']} ({mg['note']})")
    if should_abort(progress.history, cfg):
        if not world.main:
            return {"verdict": "aborted", "epoch": epoch}
        return abort_run(paths, cfg, state, progress.history, result)
    return None


def finish(paths: RunPaths, cfg: TrainConfig, inputs: Inputs, progress: Progress,
           baselines: dict[str, str], device: torch.device, result: dict) -> dict:
    """The final gate on best.pt (selected on val), judged on test beside the heuristics;
    gate.json and report.md (rank 0)."""
    result.update(final_gate(cfg, inputs.bank, inputs.test, paths, progress.best_epoch,
                             baselines, device))
    if "mid_gate" not in result and cfg.gates.mid_epoch <= cfg.epochs:
        h = next((x for x in progress.history if x["epoch"] == cfg.gates.mid_epoch), None)
        if h:
            result["mid_gate"] = mid_gate(h[cfg.gates.metric], cfg.gates)
    write_json(paths.gate, result)
    write_report(paths.out / "report.md", cfg, progress.history, result)
    return result


def _train(cfg: TrainConfig, resume: bool, init_from: str | None,
           baselines: dict[str, str] | None, device: torch.device, world: ddp.World) -> dict:
    paths = RunPaths(Path(cfg.out))
    baselines = baselines or {}
    # 1) inputs and the starting point, all checked before anything is created: a refused run
    #    leaves no directory, log or pid file behind
    inputs = check_inputs(cfg, paths, resume, init_from, baselines, world)
    # 2) the run directory, log and pid file; deterministic torch
    log_path = start_run(paths, cfg, resume, inputs.last, world)
    deterministic_torch(cfg.seed, cfg.threads)
    # 3) model, optimizer, memory bank; then resume / init-from
    trainer = build_trainer(cfg, inputs, device, world)
    if world.main:
        atomic_write(paths.out / "config.yaml", lambda f: f.write(to_yaml(cfg).encode()))
    log_start(cfg, inputs, trainer, device, world, log_path)
    # 4) epochs: mine (when scheduled), train, evaluate, checkpoint, check abort and mid-gate
    mining_index = MiningIndex.build(trainer.doc, inputs.bank, cfg)
    result: dict = {}
    for epoch in range(trainer.progress.epoch + 1, cfg.epochs + 1):
        mining_index = run_epoch(cfg, inputs, trainer, mining_index, inputs.segments, epoch,
                                 world)
        aborted = end_epoch(paths, cfg, inputs, trainer, device, world, result)
        if aborted is not None:
            return aborted
    # 5) the final gate on best.pt, judged on test beside the heuristics
    del mining_index, trainer.vectors, trainer.model  # the final gate builds its own index
    if world.enabled and not world.main:
        return ddp.broadcast(None)  # rank 0's verdict
    result = finish(paths, cfg, inputs, trainer.progress, baselines, device, result)
    return ddp.broadcast(result) if world.enabled else result


def final_gate(cfg: TrainConfig, bank: Bank, test: Pairs, paths: RunPaths, best_epoch: int,
               baselines: dict[str, str], device: torch.device | str = "cpu") -> dict:
    """Evaluate best.pt beside the heuristics, oracle and baselines on the test split (never
    used for selection); decide the verdict."""
    ks = tuple(cfg.eval_ks)
    methods = {cfg.label: ("checkpoint", paths.ckpt("best.pt"))}
    for name, ckpt_path in baselines.items():
        methods[name] = ("checkpoint", ckpt_path)
    methods.update({"heuristic": ("exp_weighted", None), "last-vector": ("last_vector", None),
                    "oracle": ("oracle", None)})
    table, ranks = compare_methods(bank, test, methods, ks, device)
    save_ranks(paths.out / RANKS_FILE, ranks)  # report.md's Recall@K curves
    value = table[cfg.label][cfg.gates.metric]
    gate = decide(value, ranks[cfg.label], ranks["heuristic"], cfg.gates, list(ks),
                  clusters=test.articles(bank))
    gate.update({"best_epoch": best_epoch, "best_checkpoint": str(paths.ckpt("best.pt")),
                 "methods": table, "split": "test", "test_pairs": len(test),
                 "test_articles": int(len(np.unique(test.articles(bank)))),
                 "split_spec": test.split_spec.to_dict(),
                 "finished": datetime.now(UTC).isoformat(timespec="seconds")})
    log.info("")
    log.info(_table_text(table, ks))
    log.info(f"Final gate: {gate['verdict']} by thresholds ({cfg.gates.metric} {value:.2f}%; "
             f"success >= {cfg.gates.success}%, partial >= {cfg.gates.partial}%). "
             f"Stage 1: {gate['stage1']} - {gate['reason']}")
    for line in gate["actions"]:
        log.info(f"  - {line}")
    return gate


def _table_text(table: dict, ks: tuple[int, ...]) -> str:
    head = f"{'method':<12}" + "".join(f"{'R@' + str(k):>17}" for k in ks) + f"{'MRR':>8}{'Δ':>8}"
    lines = [head]
    for name, m in table.items():
        cells = "".join(f"{m[f'recall@{k}']:7.2f} [{m[f'recall@{k}_ci95'][0]:5.1f},"
                        f"{m[f'recall@{k}_ci95'][1]:5.1f}]" for k in ks)
        lines.append(f"{name:<12}{cells}{m['mrr']:8.4f}{m['margin']:8.4f}")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m training.train_v4",
                                description=__doc__.split("\n")[0])
    p.add_argument("--config", help="YAML config (a path, or a name under training/configs/)")
    # Each flag overrides the config key of the same name; unset, the YAML's value (or the
    # TrainConfig default) holds. The names are the checklist's launch-script flags.
    flags = {
        "pairs": (str, "pairs .npz (index windows) from training.expand_pairs"),
        "bank": (str, "the bank .npz the pairs index"),
        "out": (str, "run directory: config.yaml, history.json, checkpoints/, gate.json"),
        "bs": (int, "micro-batch size (in-batch negatives come from it)"),
        "accum": (int, "micro-batches per optimizer step: bs x accum = effective batch"),
        "epochs": (int, "epochs"),
        "lr": (float, "peak learning rate (AdamW)"),
        "lr_min": (float, "floor of the cosine decay"),
        "wd": (float, "AdamW weight decay"),
        "tau": (float, "InfoNCE temperature"),
        "margin": (float, "margin penalty in cosine units: relu(margin - (cos_pos - cos_neg))"),
        "memory_bank_size": (int, "FIFO of recent doc vectors used as extra negatives"),
        "mine_schedule": (str, "curriculum, e.g. '0-5:none;6-10:8@0.82-0.92;11-30:16@0.84-0.96'"),
        "filter_threshold": (float, "drop mined negatives with cos > this to the positive"),
        "device": (str, "auto | cpu | cuda | cuda:N | mps (auto: cuda if available, else mps, "
                        "else cpu); FAISS search stays on the CPU"),
        "amp": (str, "off | bf16: bf16 autocast in the training steps, cuda only (evaluation "
                     "stays float32)"),
        "seed": (int, "seed of the split order, mining and initialization"),
        "name": (str, "run name: log file prefix and report title"),
        "log_dir": (str, "where <name>_<timestamp>.log goes"),
        "max_train_pairs": (int, "use at most this many train pairs (0 = all)"),
    }
    add_config_flags(p, {name: (tp, f"{text} (without --config: {getattr(TrainConfig(), name)})")
                         for name, (tp, text) in flags.items()})
    p.add_argument("--init-from", help="start from another run's best.pt (e.g. v5 from v4)")
    p.add_argument("--baseline", action="append", default=[], metavar="NAME=CKPT",
                   help="also compare a checkpoint at the final gate, e.g. v3=runs/v3/.../best.pt")
    return parse_overrides(p, argv, flags)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
        bad = [b for b in args.baseline if "=" not in b]
        if bad:
            raise ConfigError(f"--baseline {bad[0]!r}: expected NAME=CKPT")
        baselines = dict(b.split("=", 1) for b in args.baseline)
        for name, path in baselines.items():
            if not Path(path).exists():
                raise ConfigError(f"--baseline {name}={path}: no such checkpoint")
        result = train(cfg, resume=args.resume, init_from=args.init_from, baselines=baselines)
    except (ConfigError, BankError, PairsError, ScheduleError, ck.CheckpointError) as e:
        if ddp.world_from_env().main:  # under torchrun every rank finds the same problem
            print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    return EXIT_ABORT if result.get("verdict") == "aborted" else 0


if __name__ == "__main__":
    sys.exit(main())

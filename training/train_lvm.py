"""Stage 2: train the LVM reranker on stage 1's own candidates (`make train-lvm`).

    python -m training.train_lvm --config lvm_default.yaml \
        --deploy runs/wikipedia_vital_bank/deploy.json \
        --pairs artifacts/twotower/wikipedia_vital_bank/pairs_v4.npz \
        --out runs/wikipedia_vital_bank/lvm

1. Stage 1 as deploy.json chose it retrieves the top-K (500) of every train and val context,
   context rows left out (the distribution stage 2 will rerank).
2. The predictor (a GRU over the context) learns the next vector with cosine + InfoNCE against
   negatives drawn from that top-K, cleaned like v4's mined negatives (never the positive, a
   near-duplicate of it, or a context row). Every epoch: val Hit@10 of the predictor's own
   ranking of the candidates, history.json, last.pt (exact --resume), best.pt.
3. The head is fitted on the candidates of val contexts: stage 1 and the predictor never
   trained on them, so the head learns how far to trust stage 1 on contexts it did not see (on
   its own train contexts stage 1 is too good). Its val estimate comes from 2-fold cross-fitting
   by article; the final head is then fitted on all of val. The test split is never read here.
4. The LVM checkpoint (predictor + head) is written to <out>/lvm.pt and named, with its sha256,
   in deploy.json; so is stage 3's w when a TMD reranker is available.

--device (auto, cpu, cuda, cuda:N, mps) is where the query tower and the predictor run; FAISS,
the cleaning of negatives and the head (a few hundred full-batch steps on val features) stay on
the CPU. Checkpoints hold CPU tensors. --resume is exact on the same device; on another it
continues from the same weights without being bit-identical (it says so in the log).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from cascade.bank import Bank, BankError, atomic_write, load_bank, sha256_file
from cascade.checkpoint import check_split_of, load_checkpoint
from cascade.config_loader import load_yaml
from cascade.deploy import CascadeConfig, DeployError, read_deploy, resolve
from cascade.device import module_device, resolve_device, rng_state, set_rng_state, to_cpu
from cascade.lvm import SPLIT as LVM_SPLIT
from cascade.lvm import (
    BankStructure,
    Lvm,
    LvmConfig,
    LvmError,
    build_lvm,
    load_lvm_state,
    save_lvm,
)
from cascade.lvm_head import (
    Candidates,
    all_features,
    batch_tensors,
    cross_fit,
    fit_head,
    ranks_by,
    stage1_candidates,
)
from cascade.metrics import hit_percent as hits  # Hit@k in percent
from cascade.metrics import paired_difference, target_ranks
from cascade.negatives import Negatives, clean_negatives
from cascade.pairs import TRAIN, Pairs, PairsError, context_windows, load_pairs
from cascade.runtime import deterministic_torch, log_to_file
from cascade.stage1 import DUP_COS, Stage1
from cascade.tagger import DomainClassifier, bank_centroids
from cascade.tmd import DOMAIN_SHIFT, unpack
from cascade.tmd_rerank import Lanes, TmdReranker, pair_lanes, pair_tagged_lanes
from training.cli import add_config_flags, parse_overrides
from training.config import ConfigError, config_file, merge, to_yaml
from training.lr_schedule import lr_at, set_lr

EXIT_BAD_INPUT = 2
log = logging.getLogger("train_lvm")


@dataclass
class LvmTrainConfig:
    deploy: str = "runs/wikipedia_vital_bank/deploy.json"  # stage 1 (and the bank) to rerank
    pairs: str = "artifacts/twotower/wikipedia_vital_bank/pairs_v4.npz"
    out: str = "runs/wikipedia_vital_bank/lvm"
    name: str = "lvm"  # log file prefix
    log_dir: str = "logs"
    k: int = 500  # stage-1 candidates per context (the cascade's k_stage1)
    epochs: int = 4
    bs: int = 128
    lr: float = 1.0e-3
    lr_min: float = 1.0e-5
    wd: float = 0.01
    tau: float = 0.05  # InfoNCE temperature
    cos_weight: float = 1.0  # weight of (1 - cos(prediction, target)) beside InfoNCE
    negatives: int = 64  # negatives per context, drawn from its cleaned stage-1 top-k
    filter_threshold: float = 0.98  # drop candidates with cos > this to the positive
    head_steps: int = 300  # full-batch Adam steps fitting the head
    head_lr: float = 1.0e-2
    head_wd: float = 1.0e-3
    folds: int = 2  # cross-fitting folds (by article) for the head's val estimate
    # Name the LVM in deploy.json only if it beats stage 1 on val beyond the CI in every context
    # form (the stage-2 gate). false: name it whatever the gate says (experiments, tests of the
    # serving path); the verdict is still logged and written to deploy.json's lvm_gate.
    require_gain: bool = True
    # Vector contexts' TMD lanes: a softmax domain classifier fitted on the train side's rows,
    # its L2 weight decay chosen on val (log-loss against the bank's codes); it replaces the
    # centroid tagger only where its stage-3 Hit@10 on val is higher.
    tagger_weight_decays: list[float] = field(default_factory=lambda: [1.0e-4, 1.0e-3, 1.0e-2])
    grad_clip: float = 1.0
    seed: int = 42
    threads: int = 0  # torch threads; 0 = torch's default
    device: str = "cpu"  # where the towers run: auto, cpu, cuda, cuda:N, mps (FAISS: CPU)
    model: LvmConfig = field(default_factory=LvmConfig)


def load_train_config(path: str | None, overrides: dict) -> LvmTrainConfig:
    cfg = LvmTrainConfig()
    if path:
        p = config_file(path)
        cfg = merge(cfg, load_yaml(p), str(p))
    if overrides:
        cfg = merge(cfg, overrides, "flags")
    for key in ("k", "epochs", "bs", "lr", "tau", "negatives", "head_steps", "folds"):
        if getattr(cfg, key) <= 0:
            raise ConfigError(f"config: '{key}' must be > 0, got {getattr(cfg, key)}")
    if cfg.negatives >= cfg.k:
        raise ConfigError(f"config: 'negatives' ({cfg.negatives}) must be < 'k' ({cfg.k})")
    try:
        cfg.model.validate()
    except ValueError as e:
        raise ConfigError(f"config: {e}") from None
    return cfg


# ---------------------------------------------------------------------------------------------
# the predictor (stage 1's candidates, their features and the head: cascade.lvm_head)


@torch.no_grad()
def predictor_ranks(model: Lvm, bank: Bank, cands: Candidates, batch: int = 256) -> np.ndarray:
    """Rank of the target when the candidates are ordered by cos(prediction, candidate)."""
    ranks = np.empty(len(cands.pairs), np.int64)
    model.eval()
    device = module_device(model)
    V = torch.from_numpy(bank.vectors).to(device)
    for lo in range(0, len(cands.pairs), batch):
        idx = np.arange(lo, min(lo + batch, len(cands.pairs)))
        sub = cands.pairs.subset(idx)
        ctx, mask = batch_tensors(bank, sub, model.cfg.max_len, device)
        pred = model.predict(ctx, mask)
        ids = torch.from_numpy(cands.ids[idx]).to(device)
        s = torch.einsum("bkd,bd->bk", V[ids.clamp(min=0)], pred).masked_fill(ids < 0, -np.inf)
        order = torch.argsort(s, dim=1, descending=True, stable=True).cpu().numpy()
        ranks[idx] = target_ranks(np.take_along_axis(cands.ids[idx], order, 1), sub.target)
    return ranks




def train_epoch(model: Lvm, opt, bank: Bank, cands: Candidates, negs: np.ndarray,
                cfg: LvmTrainConfig, epoch: int, step: int, total: int) -> tuple[dict, int]:
    """One seeded pass; negatives: `cfg.negatives` drawn per pair from its cleaned top-k."""
    model.train()
    rng = np.random.default_rng([cfg.seed, epoch])
    order = rng.permutation(len(cands.pairs))
    device = module_device(model)
    V = torch.from_numpy(bank.vectors).to(device)  # on the CPU a view, elsewhere one copy
    sums = {"loss": 0.0, "nce": 0.0, "cos": 0.0}
    bar = tqdm(range(0, len(order), cfg.bs), desc=f"lvm epoch {epoch}", leave=False,
               disable=not sys.stderr.isatty())
    for lo in bar:
        idx = order[lo:lo + cfg.bs]
        sub = cands.pairs.subset(idx)
        set_lr(opt, lr_at(step, total, cfg.lr, cfg.lr_min))
        # Random draw among the valid cleaned negatives of each pair (padding -1 sorts last).
        pool = negs[idx]
        keys = np.where(pool >= 0, rng.random(pool.shape), 2.0)
        pick = np.take_along_axis(pool, np.argsort(keys, axis=1)[:, :cfg.negatives], 1)
        ctx, mask = batch_tensors(bank, sub, cfg.model.max_len, device)
        pred = model.predict(ctx, mask)
        pos = V[torch.from_numpy(sub.target).to(device)]
        neg_ids = torch.from_numpy(pick).to(device)
        neg = V[neg_ids.clamp(min=0)]
        logits = torch.cat([(pred * pos).sum(1, keepdim=True),
                            torch.einsum("bd,bnd->bn", pred, neg).masked_fill(neg_ids < 0,
                                                                              -np.inf)], 1)
        nce = F.cross_entropy(logits / cfg.tau, torch.zeros(len(idx), dtype=torch.long,
                                                            device=device))
        cos = (1 - (pred * pos).sum(1)).mean()
        loss = nce + cfg.cos_weight * cos
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.predictor.parameters(), cfg.grad_clip)
        opt.step()
        step += 1
        for key, v in (("loss", loss), ("nce", nce), ("cos", cos)):
            sums[key] += float(v.detach()) * len(idx)
    return {k: v / len(order) for k, v in sums.items()}, step


# ---------------------------------------------------------------------------------------------
# stage 3's lanes


def fit_tagger(bank: Bank, train_pairs: Pairs, val: Pairs, cfg: LvmTrainConfig
               ) -> tuple[DomainClassifier, dict]:
    """The domain classifier for vector contexts: fitted on the rows of the train side's
    articles against the bank's domain codes, weight decay chosen by val log-loss (the
    domains of val contexts' own codes)."""
    rows = np.isin(bank.article_indices, bank.article_indices[train_pairs.target])
    domains = unpack(bank.tmd_codes)[0]
    truth = pair_lanes(bank.tmd_codes, val) >> DOMAIN_SHIFT
    contexts = [bank.vectors[s:e] for s, e in zip(val.ctx_start, val.ctx_end, strict=True)]
    best, grid = None, []
    for wd in cfg.tagger_weight_decays:
        clf = DomainClassifier.fit(bank.vectors[rows], domains[rows], wd, seed=cfg.seed)
        p = clf.context_proba(contexts)
        entry = {"weight_decay": wd, "val_log_loss": float(
            -np.log(np.maximum(p[np.arange(len(p)), truth], 1e-9)).mean()),
            "val_accuracy": float(100 * (p.argmax(axis=1) == truth).mean())}
        grid.append(entry)
        if best is None or entry["val_log_loss"] < best[1]["val_log_loss"]:
            best = (clf, entry)
    return best[0], {**best[1], "train_rows": int(rows.sum()), "grid": grid}


def tune_tmd_w(bank: Bank, pairs: Pairs, before: dict[str, tuple[np.ndarray, np.ndarray]],
               keep: int, classifier: DomainClassifier | None) -> dict | None:
    """Stage 3's w on val for each lane source, on the lists stage 3 gets in the form that
    source serves: lanes from the bank's codes on the rows form's list, lanes tagged from the
    vectors (as serving tags them: by the centroids, or by `classifier`, whichever reaches the
    higher Hit@keep) on the vectors form's list. Grid search for Hit@keep, ties to the smaller
    w. None for a bank without TMD codes."""
    if bank.tmd_codes is None:
        return None
    centroids = bank_centroids(bank.path, bank.meta) if bank.path else None
    truth = pair_lanes(bank.tmd_codes, pairs)
    tmd = TmdReranker(bank.tmd_codes, 0.0)

    def fit(lanes, form: str) -> dict:
        ids, scores = before[form]
        w, table = tmd.fit_w(lanes.codes, ids, scores, pairs.target, keep=keep,
                             domain_probs=lanes.domain_probs)
        agree = (lanes.codes >> DOMAIN_SHIFT) == (truth >> DOMAIN_SHIFT)
        return {"w": w, "form": form, "grid": table, f"hit@{keep}": max(
            g[f"hit@{keep}"] for g in table), "domain_agreement": float(100 * agree.mean())}

    out = {"codes": fit(Lanes(truth, "codes"), "rows")}
    taggers = {"centroids": fit(pair_tagged_lanes(bank.vectors, pairs, centroids), "vectors")}
    if classifier is not None:
        taggers["classifier"] = fit(pair_tagged_lanes(bank.vectors, pairs, centroids,
                                                      classifier), "vectors")
    chosen = max(taggers, key=lambda t: (taggers[t][f"hit@{keep}"], t == "centroids"))
    out["tagged"] = {**taggers[chosen], "tagger": chosen,
                     "taggers": {t: {k: v for k, v in r.items() if k != "grid"}
                                 for t, r in taggers.items()}}
    return out


# ---------------------------------------------------------------------------------------------
# the run


@dataclass
class Stage2Inputs:
    """What stage 2 trains on: deploy.json's stage 1 and bank, the pairs, the cascade's K."""
    deploy: dict
    cascade: CascadeConfig
    bank: Bank
    pairs: Pairs
    stage1: Stage1
    train: Pairs
    val: Pairs


def load_stage2_inputs(cfg: LvmTrainConfig, device: torch.device) -> Stage2Inputs:
    deploy = read_deploy(cfg.deploy)
    cascade = CascadeConfig.from_dict({**(deploy.get("cascade") or {}), "k_stage1": cfg.k},
                                      f"{cfg.deploy}: cascade")
    bank = load_bank(deploy["bank"])
    pairs = load_pairs(cfg.pairs, bank)
    if pairs.split_spec is None:
        raise PairsError(f"{cfg.pairs}: records no article split; re-expand the pairs "
                         f"(make train-v4 does)")
    stage1 = Stage1.from_deploy(cfg.deploy, bank=bank, device=device)
    if stage1.kind == "v4":  # candidates of contexts v4 trained on would be too easy
        ckpt = resolve(cfg.deploy, deploy["checkpoint"])
        check_split_of(load_checkpoint(ckpt, bank.fingerprint()), ckpt, pairs, bank,
                       f"{cfg.deploy}: stage-1 checkpoint")
    train_pairs, val = pairs.subset(np.flatnonzero(pairs.split == TRAIN)), pairs.val()
    if not len(train_pairs) or not len(val):
        raise PairsError(f"{cfg.pairs}: needs train and val pairs (train {len(train_pairs)}, "
                         f"val {len(val)})")
    return Stage2Inputs(deploy, cascade, bank, pairs, stage1, train_pairs, val)


def candidates_and_negatives(cfg: LvmTrainConfig, inputs: Stage2Inputs
                             ) -> tuple[Candidates, Candidates, Negatives]:
    """Stage 1's top-k of the train and val contexts, and the train side's cleaned negatives."""
    t0 = time.perf_counter()
    tr = stage1_candidates(inputs.stage1, inputs.train, cfg.k)
    va = stage1_candidates(inputs.stage1, inputs.val, cfg.k)
    bank = inputs.bank
    negs = clean_negatives(tr.queries, tr.scores, tr.ids,
                           bank.vectors, tr.pairs.target, bank.article_indices, cfg.k,
                           threshold=cfg.filter_threshold)
    s1_val = va.ranks
    log.info(f"stage-1 candidates in {time.perf_counter() - t0:.0f}s: Recall@{cfg.k} train "
             f"{hits(tr.ranks, cfg.k):.2f}%, val {hits(s1_val, cfg.k):.2f}%; val Hit@10 "
             f"{hits(s1_val, 10):.2f}%; negatives cleaned away: {negs.dropped_fraction:.2%}")
    return tr, va, negs


@dataclass
class PredictorRun:
    """Where the predictor's training stands between epochs (what last.pt carries)."""
    history: list[dict] = field(default_factory=list)
    step: int = 0
    start: int = 1  # the first epoch this invocation runs
    best: tuple[float, float] = (-1.0, -1.0)


def resume_predictor(cfg: LvmTrainConfig, model: Lvm, opt, last: Path, bank: Bank,
                     device: torch.device) -> PredictorRun:
    """Continue from `last` (--resume), refusing other settings than the interrupted run's."""
    state = load_lvm_state(last, bank.fingerprint())
    saved = state["train_config"]
    now = dataclasses.asdict(cfg)
    for key in sorted(set(saved) | set(now)):
        if key not in ("log_dir", "threads", "device") and saved.get(key) != now.get(key):
            raise ConfigError(f"--resume with other settings than the interrupted run "
                              f"({key}: {saved.get(key)!r} in {last}, {now.get(key)!r} now)")
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["optimizer"])  # moves its state to the parameters' device
    set_rng_state({"cpu": state["torch_rng"], **state.get("device_rng", {})}, device)
    trained_on = state.get("device", "cpu")
    log.info(f"Resumed from {last} after epoch {state['epoch']}" + (
        f" (it trained on {trained_on}, this run is on {device}: it continues from the "
        f"same weights, not bit-identical to an uninterrupted run)"
        if trained_on != str(device) else ""))
    return PredictorRun(state["history"], state["step"], state["epoch"] + 1,
                        tuple(state["best"]))


def train_predictor(cfg: LvmTrainConfig, model: Lvm, opt, run: PredictorRun, bank: Bank,
                    split: dict, tr: Candidates, va: Candidates, negs: Negatives,
                    out: Path, device: torch.device, stop_after: int) -> bool:
    """The predictor's epochs: train, val Hit@k of its own ranking, best.pt / last.pt and
    history.json every epoch; -> False when `stop_after` ended this invocation early."""
    total = cfg.epochs * math.ceil(len(tr.pairs) / cfg.bs)
    s1_val = va.ranks
    last = out / "checkpoints" / "last.pt"
    for epoch in range(run.start, cfg.epochs + 1):
        if stop_after and epoch - run.start >= stop_after:
            log.info(f"stopping after {stop_after} epoch(s); continue with --resume")
            return False
        t = time.perf_counter()
        losses, run.step = train_epoch(model, opt, bank, tr, negs.rows, cfg, epoch, run.step,
                                       total)
        pr = predictor_ranks(model, bank, va)
        h = {"epoch": epoch, **losses, "val_pred_hit@10": hits(pr, 10),
             "val_pred_hit@50": hits(pr, 50), "val_stage1_hit@10": hits(s1_val, 10),
             "val_stage1_hit@50": hits(s1_val, 50), "seconds": time.perf_counter() - t}
        run.history.append(h)
        log.info(f"Epoch {epoch}/{cfg.epochs} | loss {h['loss']:.4f} (nce {h['nce']:.4f}, cos "
                 f"{h['cos']:.4f}) | val Hit@10 by prediction {h['val_pred_hit@10']:.2f}% "
                 f"(stage 1 {h['val_stage1_hit@10']:.2f}%), Hit@50 {h['val_pred_hit@50']:.2f}% "
                 f"| {h['seconds']:.0f}s")
        key = (round(h["val_pred_hit@50"], 6), h["val_pred_hit@10"])
        extra = {"epoch": epoch, "train_config": dataclasses.asdict(cfg),
                 "history": run.history, LVM_SPLIT: split}
        if key > run.best:
            run.best = key
            save_lvm(out / "checkpoints" / "best.pt", model, bank.fingerprint(), extra)
        rngs = rng_state(device)
        save_lvm(last, model, bank.fingerprint(),
                 {**extra, "optimizer": to_cpu(opt.state_dict()), "torch_rng": rngs.pop("cpu"),
                  "device_rng": rngs, "device": str(device), "step": run.step,
                  "best": list(run.best)})
        atomic_write(out / "history.json", lambda f: f.write(json.dumps(run.history, indent=1)
                                                             .encode()))
    return True


def fit_and_deploy(cfg: LvmTrainConfig, inputs: Stage2Inputs, va: Candidates,
                   history: list[dict], out: Path) -> dict:
    """The head on val contexts (never trained on by stage 1 or the predictor), the domain
    classifier, stage 3's w; lvm.pt, result.json, and deploy.json as the stage-2 gate says."""
    bank = inputs.bank
    model = build_lvm(load_lvm_state(out / "checkpoints" / "best.pt", bank.fingerprint()))
    t = time.perf_counter()
    classifier, tagger = (fit_tagger(bank, inputs.train, inputs.val, cfg)
                          if bank.tmd_codes is not None else (None, None))
    if tagger is not None:
        log.info(f"domain classifier for vector contexts: weight decay "
                 f"{tagger['weight_decay']}, val accuracy {tagger['val_accuracy']:.1f}% "
                 f"({tagger['train_rows']:,} train rows)")
    result, settings = fit_on_val(model, bank, inputs.stage1, va, cfg, inputs.cascade,
                                  classifier)
    result["domain_classifier"] = tagger
    result.update({"val_pairs": len(inputs.val), "features": cfg.model.features,
                   f"stage1_recall@{cfg.k}": hits(va.ranks, cfg.k), "folds": cfg.folds,
                   "head_seconds": time.perf_counter() - t, "history": history})
    lvm_path = out / "lvm.pt"
    save_lvm(lvm_path, model, bank.fingerprint(), {"val": {k: v for k, v in result.items()
                                                           if k != "history"},
                                                   LVM_SPLIT: inputs.pairs.split_spec.to_dict()})
    atomic_write(out / "result.json", lambda f: f.write(json.dumps(result, indent=2).encode()))
    gate = result["gate"]
    named = gate["passed"] or not cfg.require_gain
    tagger_path = None
    if result["tmd"] is not None and result["tmd"]["tagged"]["tagger"] == "classifier":
        tagger_path = out / "domain_classifier.npz"
        classifier.save(tagger_path)
    update_deploy(cfg.deploy, lvm_path if named else None, cfg, settings, gate, tagger_path)
    log.info(f"wrote {lvm_path}; {cfg.deploy}: "
             + ("names it as stage 2" if gate["passed"] else
                "names it as stage 2 although it missed the gate (require_gain: false)" if named
                else f"stage 2 left out ({gate['reason']})"))
    return result


def train(cfg: LvmTrainConfig, resume: bool = False, stop_after: int = 0) -> dict | None:
    """The whole stage-2 training; `stop_after` > 0 ends this invocation after that many
    epochs (continue with resume=True); returns result.json's content, None when stopped."""
    out = Path(cfg.out)
    (out / "checkpoints").mkdir(parents=True, exist_ok=True)
    log_path = log_to_file(log, cfg.log_dir, cfg.name)
    device = resolve_device(cfg.device)
    # As train_v4: deterministic kernels and float32 kept float32 in cuDNN's GRU (no TF32), so
    # --resume on cuda is exact and a cuda run stays close to the CPU's.
    deterministic_torch(cfg.seed, cfg.threads)
    inputs = load_stage2_inputs(cfg, device)
    bank = inputs.bank
    cfg.model.dim = bank.dim
    log.info(f"{cfg.name}: stage 1 = {inputs.stage1.kind} ({inputs.deploy.get('reason', '')}) "
             f"on {device}; bank {inputs.deploy['bank']} ({bank.n:,} x {bank.dim}); train "
             f"{len(inputs.train):,}, val {len(inputs.val):,} pairs; top-{cfg.k} candidates; "
             f"log {log_path}")
    tr, va, negs = candidates_and_negatives(cfg, inputs)

    model = Lvm(cfg.model).to(device)
    opt = torch.optim.AdamW(model.predictor.parameters(), lr=cfg.lr, weight_decay=cfg.wd)
    last = out / "checkpoints" / "last.pt"
    run = (resume_predictor(cfg, model, opt, last, bank, device) if resume and last.exists()
           else PredictorRun())
    atomic_write(out / "config.yaml", lambda f: f.write(to_yaml(cfg).encode()))
    if not train_predictor(cfg, model, opt, run, bank, inputs.pairs.split_spec.to_dict(), tr, va,
                           negs, out, device, stop_after):
        return None
    return fit_and_deploy(cfg, inputs, va, run.history, out)


# ---------------------------------------------------------------------------------------------
# what serving will run, chosen on val


FORMS = ("rows", "vectors")  # contexts sent as bank rows; as vectors (texts become vectors)
DUP_COS_MARGIN = 0.01  # the repeat threshold sits this far above the highest val target's cos


def near_dup_cos(bank: Bank, pairs: Pairs, batch: int = 512) -> dict:
    """The cos above which a bank row repeats a chunk of a context sent as vectors (stage 1
    leaves it out): DUP_COS_MARGIN above the highest cos of a val target to any chunk of its
    context, so that no val target is lost; never above the exact-duplicate rule (DUP_COS)."""
    highest = np.empty(len(pairs), np.float32)
    for lo in range(0, len(pairs), batch):
        sub = pairs.subset(np.arange(lo, min(lo + batch, len(pairs))))
        rows, mask = context_windows(sub)
        cos = np.einsum("pld,pd->pl", bank.vectors[rows], bank.vectors[sub.target])
        highest[lo:lo + len(sub)] = np.where(mask, cos, -1.0).max(axis=1)
    top = float(highest.max()) if len(highest) else 1.0
    cos = min(DUP_COS, math.ceil((top + DUP_COS_MARGIN) * 100) / 100)
    return {"dup_cos": cos, "val_target_cos_max": top,
            "val_target_cos_p99": float(np.percentile(highest, 99)) if len(highest) else 1.0}


def vector_candidates(stage1: Stage1, pairs: Pairs, k: int, batch: int = 256) -> Candidates:
    """Stage 1's top-k for every pair's context sent as raw vectors (what a text or vector
    client gets: repeats of its chunks, not its rows, are left out)."""
    ids, scores = [], []
    vectors = stage1.bank.vectors
    for lo in range(0, len(pairs), batch):
        sub = range(lo, min(lo + batch, len(pairs)))
        res = stage1.search([vectors[pairs.ctx_start[i]:pairs.ctx_end[i]] for i in sub], k)
        ids.append(res.ids)
        scores.append(res.scores)
    return Candidates(pairs, np.concatenate(ids), np.concatenate(scores))


def lvm_gate(ranks: dict[str, tuple[np.ndarray, np.ndarray]], clusters: np.ndarray) -> dict:
    """Stage 2 is deployed only if, in every form, its val Hit@10 (cross-fitted head) beats
    stage 1 alone with the paired article-clustered 95% CI above 0."""
    per_form = {form: paired_difference(lvm, s1, 10, clusters=clusters)
                for form, (s1, lvm) in ranks.items()}
    losing = [f for f, d in per_form.items() if not d["ci95"][0] > 0]
    if losing:
        d = per_form[losing[0]]
        reason = (f"the LVM does not beat stage 1 on val in the {losing[0]} form: Hit@10 "
                  f"{d['diff']:+.2f} points, article-clustered 95% CI [{d['ci95'][0]:+.2f}, "
                  f"{d['ci95'][1]:+.2f}] does not exclude 0; stage 1 is served without it")
    else:
        reason = "the LVM beats stage 1 on val beyond the CI in every form: " + ", ".join(
            f"{f} {d['diff']:+.2f} [{d['ci95'][0]:+.2f}, {d['ci95'][1]:+.2f}]"
            for f, d in per_form.items())
    return {"passed": not losing, "reason": reason, "val_hit@10_vs_stage1": per_form}


def fit_on_val(model: Lvm, bank: Bank, stage1: Stage1, va: Candidates, cfg: LvmTrainConfig,
               cascade: CascadeConfig, classifier: DomainClassifier | None
               ) -> tuple[dict, dict]:
    """Fit the head on val, judge stage 2 against stage 1 in each context form, pick the
    repeat threshold and stage 3's w per lane source. -> (result, deploy settings)."""
    dup = near_dup_cos(bank, va.pairs)
    stage1.dup_cos = dup["dup_cos"]
    cands = {"rows": va, "vectors": vector_candidates(stage1, va.pairs, min(cfg.k, bank.n))}
    log.info(f"repeats of a vector context's chunks: cos >= {dup['dup_cos']} (val targets' "
             f"highest cos to their context: p99 {dup['val_target_cos_p99']:.3f}, max "
             f"{dup['val_target_cos_max']:.3f})")
    bs = BankStructure(bank)
    feats = {form: all_features(model, bs, bank, c) for form, c in cands.items()}
    logits = dict(zip(FORMS, cross_fit(model, feats["rows"], va, bank, cfg,
                                       ((feats["vectors"], cands["vectors"].ids),)),
                      strict=True))
    fit_head(model, feats["rows"], va.ids, va.ranks, cfg, cfg.seed)
    ranked = {form: ranks_by(logits[form], cands[form], cascade.k_lvm) for form in FORMS}
    clusters = bank.article_indices[va.pairs.target]
    gate = lvm_gate({f: (cands[f].ranks, ranked[f][0]) for f in FORMS}, clusters)
    log.info(f"stage 2 gate (val): {gate['reason']}")
    # Stage 3 reranks what the served cascade hands it: the LVM's top k_lvm, or stage 1's list.
    served = gate["passed"] or not cfg.require_gain
    before_tmd = {f: (ranked[f][1], ranked[f][2]) if served else
                  (cands[f].ids, cands[f].scores) for f in FORMS}
    tmd = tune_tmd_w(bank, va.pairs, before_tmd, cascade.k_tmd, classifier)
    result = {"forms": {f: {"stage1": {f"hit@{k}": hits(cands[f].ranks, k) for k in (1, 5, 10, 50)},
                            "lvm_cross_fitted": {f"hit@{k}": hits(ranked[f][0], k)
                                                 for k in (1, 5, 10, 50)}} for f in FORMS},
              "gate": gate, "tmd": tmd, "near_duplicates": dup}
    # The rows form under the names earlier reports used.
    result["stage1"] = result["forms"]["rows"]["stage1"]
    result["lvm_cross_fitted"] = result["forms"]["rows"]["lvm_cross_fitted"]
    for f in FORMS:
        r = result["forms"][f]
        log.info(f"Head ({len(cfg.model.features)} features, {cfg.folds}-fold cross-fitted on "
                 f"val by article), contexts as {f}: val Hit@10 "
                 f"{r['lvm_cross_fitted']['hit@10']:.2f}% vs stage 1 {r['stage1']['hit@10']:.2f}%")
    settings = {"dup_cos": dup["dup_cos"]}
    if tmd is not None:
        settings.update({"tmd_w": tmd["codes"]["w"], "tmd_w_tagged": tmd["tagged"]["w"]})
        for source, t in tmd.items():
            at0 = t["grid"][0][f"hit@{cascade.k_tmd}"]
            best = max(g[f"hit@{cascade.k_tmd}"] for g in t["grid"])
            log.info(f"TMD w on val, lanes from {source}"
                     + (f" (by the {t['tagger']}, domain agreement with the codes "
                        f"{t['domain_agreement']:.1f}%)" if source == "tagged" else "")
                     + f": {t['w']} (Hit@{cascade.k_tmd} {best:.2f}% vs {at0:.2f}% at w = 0)")
    return result, settings


def update_deploy(deploy_path: str, lvm_path: Path | None, cfg: LvmTrainConfig, settings: dict,
                  gate: dict, tagger_path: Path | None = None) -> None:
    """Name the LVM (with its sha256) or leave it out, as the gate says; the domain classifier
    of vector contexts when it won on val; stage 3's w per lane source and the repeat
    threshold; keep everything else."""
    deploy = read_deploy(deploy_path)
    for key, path, entry in (("lvm", lvm_path, "checkpoint"),
                             ("domain_classifier", tagger_path, "file")):
        if path is not None:
            deploy[key] = {entry: str(path), "sha256": sha256_file(path)}
        else:
            deploy.pop(key, None)
    deploy["lvm_gate"] = {"passed": gate["passed"], "deployed": lvm_path is not None,
                          "reason": gate["reason"]}
    cascade = dict(deploy.get("cascade") or {})
    cascade["k_stage1"] = cfg.k
    cascade.update(settings)
    deploy["cascade"] = cascade
    atomic_write(deploy_path, lambda f: f.write(json.dumps(deploy, indent=2).encode()))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m training.train_lvm",
                                description=__doc__.split("\n")[0])
    p.add_argument("--config", help="YAML config (a path, or a name under training/configs/)")
    flags = {"deploy": str, "pairs": str, "out": str, "epochs": int, "bs": int, "lr": float,
             "tau": float, "negatives": int, "seed": int, "threads": int, "log_dir": str,
             "device": str}
    add_config_flags(p, {name: (tp, f"overrides the config's '{name}' (default "
                                    f"{getattr(LvmTrainConfig(), name)})")
                         for name, tp in flags.items()})
    p.add_argument("--stop-after", type=int, default=0, metavar="N",
                   help="end after N epochs of this invocation (time-boxed runs; then --resume)")
    return parse_overrides(p, argv, flags)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        cfg = load_train_config(args.config, args.overrides)
        train(cfg, resume=args.resume, stop_after=args.stop_after)
    except (ConfigError, BankError, PairsError, DeployError, LvmError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    return 0


if __name__ == "__main__":
    sys.exit(main())


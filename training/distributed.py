"""Data-parallel training under torchrun: the process group and the collectives the trainer uses.

    torchrun --standalone --nproc_per_node 2 -m training.train_v4 --config ... --bs 32 --accum 16

torchrun starts one process per rank and sets RANK, WORLD_SIZE and LOCAL_RANK; without it the
world is one process and nothing here is used. gloo on the CPU, nccl on CUDA GPUs (one per rank,
cuda:LOCAL_RANK). Each micro-batch of `bs` pairs is split across the ranks; the ranks' positives
are gathered (`gather_rows`), so the loss of every query sees the same in-batch and memory-bank
negatives a single process would.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from cascade.negatives import Negatives
from cascade.pairs import Pairs
from training.mining import mine

# A rank waits in a collective while rank 0 evaluates, checkpoints or runs the final gate.
TIMEOUT = timedelta(hours=2)
_GATHER_GROUP = None  # a group of its own, so the loss's collectives never interleave with DDP's


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.size > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


ONE = World()  # a single process


def world_from_env() -> World:
    """The world torchrun describes in the environment (one process without torchrun)."""
    return World(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
                 int(os.environ.get("LOCAL_RANK", 0)))


def rank_device(world: World, device: torch.device) -> torch.device:
    """The device of this rank, or ValueError (one line) for a device DDP cannot share."""
    if device.type == "mps":
        raise ValueError("data-parallel training runs on cpu (gloo) or cuda (nccl), not mps")
    if device.type == "cuda":
        if device.index not in (None, 0):
            raise ValueError(f"--device {device} with torchrun: each rank takes cuda:LOCAL_RANK; "
                             f"pass --device cuda (or auto)")
        if world.local_rank >= torch.cuda.device_count():
            raise ValueError(f"rank {world.rank} needs cuda:{world.local_rank}, only "
                             f"{torch.cuda.device_count()} CUDA device(s) here")
        return torch.device("cuda", world.local_rank)
    return device


def init(world: World, device: torch.device) -> None:
    global _GATHER_GROUP
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend, timeout=TIMEOUT)
    _GATHER_GROUP = dist.new_group(backend=backend, timeout=TIMEOUT)


def shutdown() -> None:
    global _GATHER_GROUP
    if dist.is_initialized():
        dist.destroy_process_group()
    _GATHER_GROUP = None


def split_sizes(n: int, size: int) -> list[int]:
    """How many of n items each of `size` ranks takes, in rank order (contiguous shares)."""
    return [len(part) for part in np.array_split(np.arange(n), size)]


class _GatherRows(torch.autograd.Function):
    """Concatenate every rank's rows; the gradient of the result, summed over the ranks (each
    rank's loss depends on every rank's rows), flows back to this rank's own rows."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, sizes: list[int], rank: int) -> torch.Tensor:
        ctx.sizes, ctx.rank = sizes, rank
        longest = max(sizes)
        padded = x.new_zeros((longest, *x.shape[1:]))
        padded[:len(x)] = x
        parts = [torch.empty_like(padded) for _ in sizes]
        dist.all_gather(parts, padded.contiguous(), group=_GATHER_GROUP)
        return torch.cat([p[:n] for p, n in zip(parts, sizes, strict=True)])

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, group=_GATHER_GROUP)
        lo = sum(ctx.sizes[:ctx.rank])
        return grad[lo:lo + ctx.sizes[ctx.rank]], None, None


def gather_rows(x: torch.Tensor, sizes: list[int], rank: int) -> torch.Tensor:
    """(sizes[rank], ...) on each rank -> (sum(sizes), ...) in rank order, differentiable."""
    return _GatherRows.apply(x, sizes, rank)


def gather_objects(obj) -> list:
    """Every rank's picklable `obj`, in rank order, on every rank."""
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast(obj):
    """Rank 0's picklable `obj` on every rank."""
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_sum(values: dict[str, float]) -> dict[str, float]:
    """Sum of each named float over the ranks (the same keys on every rank)."""
    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64)
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.all_reduce(t)
    return dict(zip(keys, t.cpu().tolist(), strict=True))


def mine_sharded(stage1, pairs: Pairs, segment, filter_threshold: float,
                 pool: int) -> Negatives:
    """`training.mining.mine` with the pairs split across the ranks and the results gathered:
    the same rows as one process mining them all (the towers are equal on every rank). The
    raw-candidate rates are the ranks' rates weighted by their pairs (dropped_fraction is
    weighted by pairs too, not by candidates considered)."""
    sizes = split_sizes(len(pairs), dist.get_world_size())
    lo = sum(sizes[:dist.get_rank()])
    own = mine(stage1, pairs.subset(np.arange(lo, lo + sizes[dist.get_rank()])), segment,
               filter_threshold, pool)
    parts = gather_objects(own)
    weights = np.array(sizes, dtype=np.float64) / max(len(pairs), 1)

    def mean(name: str) -> float:
        return float(sum(w * getattr(p, name) for w, p in zip(weights, parts, strict=True)))

    return Negatives(rows=np.concatenate([p.rows for p in parts]),
                     cos=np.concatenate([p.cos for p in parts]),
                     positive_rate=mean("positive_rate"),
                     same_article_rate=mean("same_article_rate"),
                     near_dup_rate=mean("near_dup_rate"),
                     dropped_fraction=mean("dropped_fraction"))


class TwoTowers(nn.Module):
    """Both towers behind one forward, so DistributedDataParallel sees every parameter used in
    a step (it reduces the gradients of what its own forward ran)."""

    def __init__(self, query: nn.Module, doc: nn.Module):
        super().__init__()
        self.query, self.doc = query, doc

    def forward(self, ctx: torch.Tensor, mask: torch.Tensor, pos_in: torch.Tensor,
                hard_in: torch.Tensor | None):
        hard = self.doc(hard_in) if hard_in is not None else None
        return self.query(ctx, mask), self.doc(pos_in), hard

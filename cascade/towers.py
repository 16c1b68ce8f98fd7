"""The two towers: a query tower (context -> query vector) and a doc tower (bank row -> vector).

The query tower starts as the exp-weighted heuristic and learns a residual correction: its output
projection is zero at initialization, so an untrained tower *is* the heuristic and training can
only move away from it where the data says so. Variants (GRU, mean-MLP, transformer) implement only
`encode`; the base owns the heuristic start, the residual and the normalization.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from cascade.config_loader import build_checked


@dataclass
class TowerConfig:
    kind: str = "gru"  # query tower: gru | mean_mlp | transformer
    dim: int = 384  # bank vector dimension (input and output); set from the bank
    hidden: int = 512  # hidden width of the encoder
    layers: int = 1  # GRU / transformer layers
    heads: int = 4  # transformer attention heads
    max_len: int = 100  # the tower reads the last max_len context chunks
    dropout: float = 0.0
    residual: bool = True  # add the encoder's output to the exp-weighted heuristic query
    alpha: float = 0.1  # the heuristic's exp(-alpha * age) weighting
    doc: str = "identity"  # doc tower: identity | mlp

    @classmethod
    def from_dict(cls, d: dict) -> TowerConfig:
        """The config a checkpoint stores, checked (ValueError naming the key)."""
        return build_checked(cls, d, "model config", ValueError)

    def validate(self) -> None:
        """Refuse a config no tower can be built from, naming the setting (ValueError)."""
        if self.kind not in ("gru", "mean_mlp", "transformer"):
            raise ValueError(f"model.kind is {self.kind!r} (gru, mean_mlp, transformer)")
        if self.doc not in ("identity", "mlp"):
            raise ValueError(f"model.doc is {self.doc!r} (identity, mlp)")
        for key in ("dim", "hidden", "layers", "heads", "max_len"):
            if getattr(self, key) < 1:
                raise ValueError(f"model.{key} must be >= 1, got {getattr(self, key)}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"model.dropout must be in [0, 1), got {self.dropout}")
        if self.alpha < 0:
            raise ValueError(f"model.alpha must be >= 0, got {self.alpha}")
        if self.kind == "transformer" and self.hidden % self.heads:
            raise ValueError(f"model.hidden ({self.hidden}) must be a multiple of model.heads "
                             f"({self.heads}) for the transformer tower")

    def to_dict(self) -> dict:
        return asdict(self)


def ages(mask: torch.Tensor) -> torch.Tensor:
    """(B, L) left-aligned mask -> chunks back from the last one (0 = last chunk; 0 at padding)."""
    lengths = mask.sum(dim=1, keepdim=True)
    return (lengths - 1 - torch.arange(mask.shape[1], device=mask.device)[None, :]).clamp(min=0)


def age_weighted(ctx: torch.Tensor, mask: torch.Tensor, log_weights: torch.Tensor) -> torch.Tensor:
    """sum_i exp(log_weights[age_i]) * ctx_i, normalized: (B, L, D), (B, L) -> (B, D).

    With log_weights = -alpha * age this is cascade.query.exp_weighted, the heuristic."""
    age = ages(mask).clamp(max=len(log_weights) - 1)
    w = torch.exp(log_weights[age]) * mask.to(ctx.dtype)
    return F.normalize(torch.einsum("bl,bld->bd", w, ctx), dim=-1)


class QueryTower(nn.Module):
    """Base: forward(ctx, mask) -> unit query. Subclasses implement encode -> (B, hidden)."""

    def __init__(self, cfg: TowerConfig):
        super().__init__()
        self.cfg = cfg
        self.out = nn.Linear(cfg.hidden, cfg.dim)
        if cfg.residual:
            nn.init.zeros_(self.out.weight)
            nn.init.zeros_(self.out.bias)
            # The base's weight per age starts at the heuristic's exp(-alpha * age) and is
            # learned: the data decides how much recency matters.
            self.age_log_weights = nn.Parameter(-cfg.alpha * torch.arange(cfg.max_len,
                                                                          dtype=torch.float32))

    def encode(self, ctx: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, ctx: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """ctx (B, L, D) left-aligned context vectors, mask (B, L) True at real chunks."""
        delta = self.out(self.encode(ctx, mask))
        if self.cfg.residual:
            delta = delta + age_weighted(ctx, mask, self.age_log_weights)
        return F.normalize(delta, dim=-1)


class GRUTower(QueryTower):
    def __init__(self, cfg: TowerConfig):
        super().__init__(cfg)
        self.gru = nn.GRU(cfg.dim, cfg.hidden, num_layers=cfg.layers, batch_first=True,
                          dropout=cfg.dropout if cfg.layers > 1 else 0.0)

    def encode(self, ctx: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if bool(mask.all()):  # no padding (one context, say): packing would only cost time
            _, h = self.gru(ctx)
            return h[-1]
        lengths = mask.sum(dim=1).cpu()
        packed = nn.utils.rnn.pack_padded_sequence(ctx, lengths, batch_first=True,
                                                   enforce_sorted=False)
        _, h = self.gru(packed)
        return h[-1]


class MeanMLPTower(QueryTower):
    def __init__(self, cfg: TowerConfig):
        super().__init__(cfg)
        # Mean of the context and its last chunk: the MLP can extrapolate from their difference.
        self.mlp = nn.Sequential(nn.Linear(2 * cfg.dim, cfg.hidden), nn.GELU(),
                                 nn.Dropout(cfg.dropout), nn.Linear(cfg.hidden, cfg.hidden),
                                 nn.GELU())

    def encode(self, ctx: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        m = mask.to(ctx.dtype).unsqueeze(-1)
        mean = (ctx * m).sum(1) / m.sum(1).clamp(min=1)
        last = ctx[torch.arange(len(ctx), device=ctx.device), mask.sum(1) - 1]
        return self.mlp(torch.cat([mean, last], dim=-1))


class TransformerTower(QueryTower):
    def __init__(self, cfg: TowerConfig):
        super().__init__(cfg)
        self.inp = nn.Linear(cfg.dim, cfg.hidden)
        self.pos = nn.Embedding(cfg.max_len, cfg.hidden)
        layer = nn.TransformerEncoderLayer(cfg.hidden, cfg.heads, 2 * cfg.hidden, cfg.dropout,
                                           batch_first=True, norm_first=True)
        self.enc = nn.TransformerEncoder(layer, cfg.layers, enable_nested_tensor=False)

    def encode(self, ctx: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        # Positions count back from the last chunk, so "the last chunk" has one embedding.
        x = self.inp(ctx) + self.pos(ages(mask).clamp(max=self.cfg.max_len - 1))
        x = self.enc(x, src_key_padding_mask=~mask)
        return x[torch.arange(len(x), device=x.device), mask.sum(dim=1) - 1]


class DocTower(nn.Module):
    """identity, or a residual MLP (zero-initialized, so it starts as the identity)."""

    def __init__(self, cfg: TowerConfig):
        super().__init__()
        self.kind = cfg.doc
        if cfg.doc == "mlp":
            self.mlp = nn.Sequential(nn.Linear(cfg.dim, cfg.hidden), nn.GELU(),
                                     nn.Linear(cfg.hidden, cfg.dim))
            nn.init.zeros_(self.mlp[-1].weight)
            nn.init.zeros_(self.mlp[-1].bias)
        elif cfg.doc != "identity":
            raise ValueError(f"unknown doc tower {cfg.doc!r} (identity, mlp)")

    @property
    def is_identity(self) -> bool:
        return self.kind == "identity"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.is_identity:
            return x
        return F.normalize(x + self.mlp(x), dim=-1)


QUERY_TOWERS = {"gru": GRUTower, "mean_mlp": MeanMLPTower, "transformer": TransformerTower}


def build_towers(cfg: TowerConfig) -> tuple[QueryTower, DocTower]:
    cfg.validate()
    return QUERY_TOWERS[cfg.kind](cfg), DocTower(cfg)

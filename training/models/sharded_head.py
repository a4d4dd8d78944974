"""The class-sharded SKU classifier (Partial-FC style): one process's rows of the shared W.

Under ``torchrun --nproc_per_node K`` with ``--sharded-fc``, rank r holds the contiguous rows
``[start, stop)`` of W (and of the bias of a linear head), so W, its gradient and its optimizer
state cost C/K rows per process instead of C.  The rows are a balanced split
(:func:`shard_bounds`); a gathered checkpoint is the dense model's, and resuming slices it
again, for any K.

The module computes this shard's logits only (:meth:`ShardedClassifier.logits`); the softmax
over all C classes is assembled across ranks by :mod:`training.sharded_fc`.  The parameters
keep the dense head's names (``weight``, ``bias``) so checkpoints and optimizer state line up
with the dense model's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

INIT_BLOCK_ROWS = 65536  # rows drawn per seeded block: the initial W does not depend on K


@dataclass(frozen=True)
class Shard:
    """Rows ``[start, stop)`` of a ``num_classes``-row classifier held by ``rank`` of ``world``."""

    num_classes: int
    rank: int = 0
    world: int = 1

    def __post_init__(self) -> None:
        if not 0 <= self.rank < self.world:
            raise ValueError(f"rank {self.rank} outside a world of {self.world}")
        if self.num_classes < self.world:
            raise ValueError(f"{self.num_classes} classes cannot be split over {self.world} ranks")

    @property
    def start(self) -> int:
        return shard_bounds(self.num_classes, self.world)[self.rank]

    @property
    def stop(self) -> int:
        return shard_bounds(self.num_classes, self.world)[self.rank + 1]

    @property
    def rows(self) -> int:
        return self.stop - self.start


def shard_bounds(num_classes: int, world: int) -> list[int]:
    """K + 1 row boundaries; shard sizes differ by at most one row."""
    if world < 1 or num_classes < 1:
        raise ValueError("need num_classes >= 1 and world >= 1")
    return [num_classes * r // world for r in range(world + 1)]


def init_rows(head: str, dim: int, shard: Shard, seed: int,
              block: int = INIT_BLOCK_ROWS) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The shard's initial weight (and bias for ``head="linear"``), drawn from the dense heads'
    distributions (cosine: N(0, 1/d); linear: U(±1/√d), as ``nn.Linear``) block by block, each
    block from its own seeded generator, so the same seed gives the same W for every K."""
    weight = torch.empty(shard.rows, dim)
    bias = torch.empty(shard.rows) if head == "linear" else None
    bound = dim ** -0.5
    for b in range(shard.start // block, math.ceil(shard.stop / block)):
        lo, hi = b * block, min((b + 1) * block, shard.num_classes)
        g = torch.Generator().manual_seed(int(np.random.SeedSequence([seed, b]).generate_state(1)[0]))
        if head == "cosine":
            w, bb = torch.randn(hi - lo, dim, generator=g) * bound, None
        else:
            w = (torch.rand(hi - lo, dim, generator=g) * 2 - 1) * bound
            bb = (torch.rand(hi - lo, generator=g) * 2 - 1) * bound
        a, z = max(lo, shard.start), min(hi, shard.stop)
        weight[a - shard.start:z - shard.start] = w[a - lo:z - lo]
        if bias is not None and bb is not None:
            bias[a - shard.start:z - shard.start] = bb[a - lo:z - lo]
    return weight, bias


class ShardedClassifier(nn.Module):
    """Rows ``shard.start:shard.stop`` of the SKU classifier (``head`` "linear" or "cosine")."""

    def __init__(self, dim: int, shard: Shard, head: str, scale: float, seed: int = 0) -> None:
        super().__init__()
        if head not in ("linear", "cosine"):
            raise ValueError(f"unknown head {head!r}")
        self.shard, self.head, self.scale, self.seed = shard, head, scale, seed
        weight, bias = init_rows(head, dim, shard, seed)
        self.weight = nn.Parameter(weight)
        self.bias = nn.Parameter(bias) if bias is not None else None

    def logits(self, x: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        """(N, d) features → (N, shard rows) logits, or only the columns ``rows`` (local
        indices, sorted) when negative classes are sampled."""
        w = self.weight if rows is None else self.weight.index_select(0, rows)
        if self.head == "cosine":
            # γ·x̂·Wᵀ scaled per column by 1/|W_c|: the same as normalising W (as the dense
            # head does) without a normalised copy of the shard and its gradient temporaries
            inv = w.norm(dim=1).clamp_min(1e-12).reciprocal()
            return (self.scale * F.normalize(x, dim=1)) @ w.t() * inv
        b = self.bias if rows is None or self.bias is None else self.bias.index_select(0, rows)
        return F.linear(x, w, b)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """This shard's logits only (not a softmax-ready row over all classes)."""
        return self.logits(x)

    def sample_rows(self, labels: torch.Tensor, rate: float, step: int) -> torch.Tensor | None:
        """Local rows kept this step for ``rate`` < 1: every class of ``labels`` (the global
        batch) that lives here, plus uniformly drawn negatives up to ``ceil(rate × rows)``;
        sorted.  None for ``rate`` >= 1 (all rows).  Seeded by (seed, rank, step), so a resumed
        run draws the same rows."""
        if rate >= 1.0:
            return None
        local = labels - self.shard.start
        positives = torch.unique(local[(local >= 0) & (local < self.shard.rows)])
        k = min(self.shard.rows, max(math.ceil(rate * self.shard.rows), len(positives), 1))
        seq = np.random.SeedSequence([self.seed, self.shard.rank, step])
        g = torch.Generator(device=self.weight.device).manual_seed(int(seq.generate_state(1)[0]))
        score = torch.rand(self.shard.rows, generator=g, device=self.weight.device)
        score[positives] = 2.0  # above every draw: positives are always kept
        return torch.topk(score, k, sorted=False).indices.sort().values

    def extra_repr(self) -> str:
        s = self.shard
        return (f"rows {s.start}:{s.stop} of {s.num_classes} (rank {s.rank}/{s.world}), "
                f"dim {self.weight.shape[1]}, head {self.head}")


def sharded_classifier(model: nn.Module) -> ShardedClassifier | None:
    """``model.classifier`` when it is a :class:`ShardedClassifier`, else None."""
    fc = getattr(model, "classifier", None)
    return fc if isinstance(fc, ShardedClassifier) else None

"""The SICoT loss over a class-sharded classifier (Partial-FC style), exact across ranks.

Each rank holds rows ``[start, stop)`` of W (:class:`~training.models.sharded_head.
ShardedClassifier`).  One step:

1. the features of both SICoT streams (v and m = max(v, s)) and the labels of every rank are
   all-gathered (:func:`gather_rows`), so each rank scores the *global* batch against its rows;
2. the softmax cross-entropy over all C classes is assembled from the shards
   (:class:`_ShardedCrossEntropy`): all-reduce of the row max, of the sum of exponentials and
   of the target logit (margin and logit adjustment τ·log π applied on the shard that holds
   the class); the gradient of each shard's logits is then local (softmax − one-hot);
3. backward through the gather sums every rank's share of ∂L/∂features and hands each rank
   its own rows, scaled by K because DDP then *averages* the trunk's gradients over ranks
   (insightface's ``partial_fc_v2`` does the same).

The loss is the mean over the global batch (the mixed term over the samples with a title),
so trunk, text encoder and W receive exactly the gradients of the dense model trained on the
global batch in one process (``tests/test_sharded_fc.py`` checks it to 1e-5).  With
``sample_rate`` < 1 each rank keeps its positive classes plus a random share of negatives
(:meth:`ShardedClassifier.sample_rows`): the softmax then runs over the sampled classes only,
which is faster and approximate (Partial FC, An et al. 2021).

Collectives work on the features' device: gloo on CPU, nccl on GPU.  In one process (no
process group) everything reduces to the dense computation.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from training.distributed import unwrap
from training.losses import add_category_term, text_weighted_mean
from training.models.sharded_head import ShardedClassifier, sharded_classifier


def _world() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _all_gather_rows(x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Rows of every rank stacked in rank order (ranks may hold different counts), and where
    this rank's rows start."""
    n = torch.tensor([x.shape[0]], device=x.device)
    sizes = [torch.zeros_like(n) for _ in range(_world())]
    dist.all_gather(sizes, n)
    counts = [int(s) for s in sizes]
    top = max(counts)
    padded = x.new_zeros((top, *x.shape[1:]))
    padded[:x.shape[0]] = x
    bufs = [torch.empty_like(padded) for _ in counts]
    dist.all_gather(bufs, padded.contiguous())
    rank = dist.get_rank()
    return torch.cat([b[:c] for b, c in zip(bufs, counts, strict=True)]), sum(counts[:rank])


class _GatherRows(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        full, offset = _all_gather_rows(x)
        ctx.rows = (offset, x.shape[0])
        return full

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        # every rank scored all rows against its classes: the sum is the whole ∂L/∂x; × K
        # because DDP averages (not sums) the trunk's gradients afterwards
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        offset, n = ctx.rows
        return grad[offset:offset + n] * _world()


def gather_rows(x: torch.Tensor) -> torch.Tensor:
    """All ranks' rows of ``x``; gradients flow back to each rank's own rows (see above)."""
    if _world() == 1:
        return x
    if x.requires_grad:
        out: torch.Tensor = _GatherRows.apply(x)
        return out
    return _all_gather_rows(x)[0]


def _all_reduce(x: torch.Tensor, op: dist.ReduceOp.RedOpType = dist.ReduceOp.SUM) -> torch.Tensor:
    if _world() > 1:
        dist.all_reduce(x, op=op)
    return x


class _ShardedCrossEntropy(torch.autograd.Function):
    """Per-sample CE over classes split across ranks; ``target`` is the local column of the
    true class, or -1 where another rank holds it.  Megatron's vocab-parallel CE, in short."""

    @staticmethod
    def forward(ctx: Any, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        top = _all_reduce(logits.detach().max(dim=1).values, dist.ReduceOp.MAX)
        probs = logits.detach() - top[:, None]
        here = target >= 0
        rows = here.nonzero().squeeze(1)
        picked = probs.new_zeros(len(target))
        picked[rows] = probs[rows, target[rows]]
        probs.exp_()
        total = _all_reduce(probs.sum(dim=1))
        picked = _all_reduce(picked)
        probs /= total[:, None]  # this shard's softmax columns, kept for backward
        ctx.save_for_backward(probs, rows, target[rows])
        return total.log() - picked

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        probs, rows, cols = ctx.saved_tensors
        g = probs.clone()
        g[rows, cols] -= 1.0
        return g * grad[:, None], None


def sharded_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(N,) exact cross-entropy of local logits whose softmax spans every rank's columns."""
    out: torch.Tensor = _ShardedCrossEntropy.apply(logits, target)
    return out


def local_targets(labels: torch.Tensor, fc: ShardedClassifier,
                  rows: torch.Tensor | None) -> torch.Tensor:
    """Global class ids → column in this shard's (sampled) logits, -1 where not here."""
    local = labels - fc.shard.start
    here = (local >= 0) & (local < fc.shard.rows)
    if rows is None:
        return torch.where(here, local, torch.full_like(local, -1))
    pos = torch.searchsorted(rows, local.clamp(0, fc.shard.rows - 1))
    found = here & (rows[pos.clamp_max(len(rows) - 1)] == local)
    return torch.where(found, pos, torch.full_like(local, -1))


def sharded_sicot_loss(
    out: dict[str, Any], y: torch.Tensor, y_cat: torch.Tensor | None, fc: ShardedClassifier, *,
    lam: float = 1.0, tau: float = 0.0, log_prior: torch.Tensor | None = None,
    cat_weight: float = 0.5, margin: float = 0.0, sample_rate: float = 1.0, step: int = 0,
) -> tuple[torch.Tensor, dict[str, float]]:
    """:func:`training.losses.sicot_loss` with W split over ranks: the same terms and parts.

    ``out`` is the model's output with a sharded classifier (``v``, optionally ``m`` and
    ``has_text``, ``category_logits``); ``log_prior`` holds this shard's rows of log π only.
    The two SKU terms are over the global batch (identical on every rank); the category term
    is local, as in the dense DDP loss."""
    mixed_on = "m" in out and lam != 0.0
    feats = gather_rows(torch.cat([out["v"], out["m"]], dim=1) if mixed_on else out["v"])
    has_text = out.get("has_text")
    meta = torch.stack([y, has_text.long() if has_text is not None else torch.ones_like(y)], 1)
    meta = gather_rows(meta)
    labels, has_text_all = meta[:, 0], meta[:, 1].bool() if has_text is not None else None
    rows = fc.sample_rows(labels, sample_rate, step)
    target = local_targets(labels, fc, rows)
    streams = feats.chunk(2, dim=1) if mixed_on else (feats,)
    logits = fc.logits(torch.cat(streams, 0), rows)  # one matmul for both streams
    if tau != 0.0:
        if log_prior is None:
            raise ValueError("tau != 0 needs log_prior")
        lp = log_prior if rows is None else log_prior[rows]
        logits = logits.add_(tau * lp.to(logits.dtype))  # in place: N × C/K floats saved
    target = target.repeat(len(streams))
    if margin != 0.0:
        hit = (target >= 0).nonzero().squeeze(1)
        logits = logits.index_put_((hit, target[hit]), torch.tensor(
            -margin, dtype=logits.dtype, device=logits.device), accumulate=True)
    per = sharded_cross_entropy(logits, target).split(len(labels))
    total = per[0].mean()
    parts = {"visual": float(total.detach())}
    if mixed_on:
        mixed = text_weighted_mean(per[1], has_text_all)
        total = total + lam * mixed
        parts["mixed"] = float(mixed.detach())
    return add_category_term(total, parts, out, y_cat, cat_weight)


def clip_grad_norm(model: nn.Module, max_norm: float) -> torch.Tensor:
    """``clip_grad_norm_`` whose norm covers every rank's rows of a sharded classifier (the
    replicated parameters' gradients are already equal on all ranks after DDP)."""
    fc = sharded_classifier(unwrap(model))
    if fc is None:
        return nn.utils.clip_grad_norm_(model.parameters(), max_norm)
    sharded = {id(p) for p in fc.parameters()}
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    own = [g for p in model.parameters() if (g := p.grad) is not None and id(p) in sharded]
    rest = [g for p in model.parameters() if (g := p.grad) is not None and id(p) not in sharded]
    device = grads[0].device if grads else torch.device("cpu")
    sq = torch.zeros(2, dtype=torch.float64, device=device)
    sq[0] = sum((g.double().pow(2).sum() for g in own), torch.zeros((), device=device))
    sq[1] = sum((g.double().pow(2).sum() for g in rest), torch.zeros((), device=device))
    _all_reduce(sq[:1])
    norm = sq.sum().sqrt()
    scale = (max_norm / (norm + 1e-6)).clamp(max=1.0)
    for g in grads:
        g.mul_(scale.to(g.dtype))
    return norm

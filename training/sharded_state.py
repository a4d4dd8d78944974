"""A class-sharded model's state: gathered to rank 0 for checkpoints, evaluation and export,
and cut again into any number of shards on resume.

A gathered checkpoint is exactly a dense run's (``classifier.weight`` with all C rows, the
optimizer's momentum of W likewise), so a sharded run resumes with another K, or without
sharding, and exports the same ONNX artifact as the dense model.  Gathering uses
point-to-point sends into one buffer on rank 0 (CPU), so rank 0 holds the full W once and
the other ranks never do.  Every function that gathers is a collective: all ranks call it.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from training.models.sharded_head import Shard, ShardedClassifier, shard_bounds, sharded_classifier
from training.models.sicot import SICoTModel, dense_classifier

PREFIX = "classifier."


def ddp_ignored(model: nn.Module) -> list[str]:
    """Names of the parameters DDP must leave alone (each rank's own rows of W)."""
    fc = sharded_classifier(model)
    return [PREFIX + n for n, _ in fc.named_parameters()] if fc is not None else []


def gather_to_rank0(t: torch.Tensor, shard: Shard) -> torch.Tensor | None:
    """The rows of every rank, in order, as one CPU tensor on rank 0; None elsewhere."""
    if shard.world == 1:
        return t
    if shard.rank != 0:
        dist.send(t.detach().contiguous(), dst=0)
        return None
    b = shard_bounds(shard.num_classes, shard.world)
    full = torch.empty((shard.num_classes, *t.shape[1:]), dtype=t.dtype)
    full[b[0]:b[1]] = t.detach().cpu()
    for r in range(1, shard.world):
        buf = torch.empty((b[r + 1] - b[r], *t.shape[1:]), dtype=t.dtype, device=t.device)
        dist.recv(buf, src=r)
        full[b[r]:b[r + 1]] = buf.cpu()
    return full


def _opt_index(opt: torch.optim.Optimizer, fc: ShardedClassifier) -> dict[int, nn.Parameter]:
    """Optimizer state index (as in ``state_dict()``) → the classifier parameter there."""
    mine = {id(p): p for p in fc.parameters()}
    params = [p for g in opt.param_groups for p in g["params"]]
    return {i: mine[id(p)] for i, p in enumerate(params) if id(p) in mine}


def gathered_state(model: nn.Module, opt: torch.optim.Optimizer | None = None
                   ) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """(model state, optimizer state) with the classifier's rows of every rank, on rank 0;
    (None, None) on the other ranks.  A dense model gives its own state dicts."""
    fc = sharded_classifier(model)
    ms, os_ = model.state_dict(), (opt.state_dict() if opt is not None else None)
    if fc is None:
        return ms, os_
    for name, _ in fc.named_parameters():
        ms[PREFIX + name] = gather_to_rank0(ms[PREFIX + name], fc.shard)
    if opt is not None and os_ is not None:
        for i, p in sorted(_opt_index(opt, fc).items()):
            entry = os_["state"].get(i, {})
            for k in sorted(entry):
                v = entry[k]
                if torch.is_tensor(v) and v.shape == p.shape:
                    entry[k] = gather_to_rank0(v, fc.shard)
    return (ms, os_) if fc.shard.rank == 0 else (None, None)


def _rows(t: torch.Tensor, shard: Shard) -> torch.Tensor:
    if t.shape[0] != shard.num_classes:
        raise ValueError(f"a classifier of {t.shape[0]} rows cannot fill rows of {shard.num_classes}")
    return t[shard.start:shard.stop].clone()  # a copy: the full tensor can be freed


def load_state(model: nn.Module, opt: torch.optim.Optimizer | None, model_state: dict[str, Any],
               opt_state: dict[str, Any] | None = None) -> None:
    """Load a gathered (dense) state into ``model`` / ``opt``, cutting this rank's rows of the
    classifier and of its optimizer state when the model is sharded (any K)."""
    fc = sharded_classifier(model)
    if fc is not None:
        names = {PREFIX + n for n, _ in fc.named_parameters()}
        model_state = {k: _rows(v, fc.shard) if k in names else v for k, v in model_state.items()}
    model.load_state_dict(model_state)
    if opt is None or opt_state is None:
        return
    if fc is not None:
        index = _opt_index(opt, fc)
        state = {i: ({k: _rows(v, fc.shard) if torch.is_tensor(v) and v.ndim and i in index
                      and v.shape[1:] == index[i].shape[1:] else v for k, v in entry.items()})
                 for i, entry in opt_state["state"].items()}
        opt_state = {**opt_state, "state": state}
    opt.load_state_dict(opt_state)


def dense_model(model: SICoTModel, model_state: dict[str, Any]) -> SICoTModel:
    """A copy of a sharded ``model`` with the dense classifier of the gathered ``model_state``
    (rank 0): what evaluation and ONNX export use.  A dense model is returned as it is."""
    fc = sharded_classifier(model)
    if fc is None:
        return model
    with torch.device("meta"):  # no draw, no allocation: the weights come from the state
        head = dense_classifier(model.cfg)
    head.load_state_dict({k[len(PREFIX):]: v for k, v in model_state.items()
                          if k.startswith(PREFIX)}, assign=True)
    head.to(fc.weight.device)
    dense: SICoTModel = copy.deepcopy(model, {id(fc): head})
    return dense


def dense_model_on_rank0(model: SICoTModel) -> SICoTModel | None:
    """Collective: the dense model on rank 0 (the model itself when not sharded), None on the
    other ranks."""
    ms, _ = gathered_state(model)
    return dense_model(model, ms) if ms is not None else None

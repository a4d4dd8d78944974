"""The class-sharded classifier (``--sharded-fc``) against the dense model.

Two gloo processes (torch.multiprocessing) each hold half of a 1,000-class W; the real
SICoTModel (tiny CNN, bilinear-attention titles, margin, logit adjustment, category head)
is DDP-wrapped as in training.  Its SICoT loss, every gradient, and the parameters after two
SGD steps (momentum, weight decay, gradient clipping) must equal those of the dense model
trained on the global batch in one process, to 1e-5.  The gathered checkpoint must equal the
dense one, and cut again into K = 1, 2, 3 shards it must give back the same rows.  Sampled
negatives: the loss equals the dense softmax over the sampled classes, positives are kept.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from training.distributed import DistInfo, all_reduce_mean, cleanup, wrap_model
from training.engine import build_optimizer, make_loss_fn
from training.losses import log_prior_from_counts
from training.models import SICoTConfig, SICoTModel
from training.models.sharded_head import Shard, ShardedClassifier, init_rows, shard_bounds
from training.settings import build_config
from training.sharded_fc import clip_grad_norm, sharded_sicot_loss
from training.sharded_state import ddp_ignored, dense_model, gathered_state, load_state

C, D, N, WORLD = 1000, 32, 8, 2  # classes, embedding dim, global batch, ranks
TOL = 1e-5


def _train_cfg(head: str, **over: Any) -> Any:
    return build_config({"train_manifest": "unused.jsonl", "head": head, "lam": 0.7, "tau": 1.0,
                         "cat_weight": 0.5, "cosine_margin": 0.1, "lr": 0.5, "momentum": 0.9,
                         "weight_decay": 1e-3, "grad_clip": 2.0, **over})


def _model_cfg(head: str) -> SICoTConfig:
    return SICoTConfig(backbone="tiny_cnn", embed_dim=D, num_classes=C, num_categories=5,
                       text_encoder="bilinear_attention", vocab_size=40, word_dim=8,
                       dropout=0.0, head=head, seed=1)


def _batch() -> dict[str, torch.Tensor]:
    """The global batch: labels spread over both shards, one repeated, two empty titles."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(2, 40, (N, 6), generator=g) * (torch.rand(N, 6, generator=g) < 0.7)
    ids[[2, 5]] = 0
    return {"image": torch.randn(N, 3, 32, 32, generator=g), "ids": ids, "mask": ids != 0,
            "label": torch.tensor([3, 998, 500, 499, 3, 731, 12, 640]),
            "category": torch.randint(0, 5, (N,), generator=g)}


def _prior() -> torch.Tensor:
    counts = torch.randint(1, 200, (C,), generator=torch.Generator().manual_seed(1))
    return torch.from_numpy(log_prior_from_counts(counts.numpy()))


def _max_diff(a: dict[str, Any], b: dict[str, Any]) -> float:
    """Largest |a − b| over the float tensors, relative to the tensor's largest |b| when that
    is above 1 (the cosine head's gradients reach ~80, where float32 rounds at ~1e-5)."""
    assert a.keys() == b.keys()
    return max((float((a[k].double() - b[k].double()).abs().max()
                      / max(1.0, float(b[k].abs().max())))
                for k in a if torch.is_tensor(a[k]) and a[k].is_floating_point()), default=0.0)


def _compare(head: str, rank: int, tmp: Path) -> dict[str, float]:
    """Dense (global batch, one process) vs sharded (this rank's half, DDP): the largest
    differences of loss, loss parts, gradients, and (rank 0) gathered parameters, momentum
    and served logits."""
    cfg = _train_cfg(head, sharded_fc=True)
    mcfg, batch, prior = _model_cfg(head), _batch(), _prior()
    shard = Shard(C, rank, WORLD)
    dense = SICoTModel(mcfg).eval()  # eval: BatchNorm's running statistics, the same per row
    sharded = SICoTModel(mcfg, classifier=ShardedClassifier(D, shard, head, mcfg.cosine_scale))
    load_state(sharded, None, dense.state_dict())  # cut this rank's rows of the dense W
    sharded.eval()
    ddp = wrap_model(sharded, DistInfo(rank, WORLD), torch.device("cpu"),
                     ignore=ddp_ignored(sharded))
    n = N // WORLD
    local = {k: v[rank * n:(rank + 1) * n] for k, v in batch.items()}
    dense_loss, sharded_loss = make_loss_fn(cfg, dense, prior), make_loss_fn(cfg, ddp, prior)
    opt_d, opt_s = build_optimizer(dense, cfg), build_optimizer(sharded, cfg)
    diffs: dict[str, float] = {"loss": 0.0, "parts": 0.0, "grad": 0.0}
    for step in range(2):
        out_d = dense(batch["image"], batch["ids"], batch["mask"])
        loss_d, parts_d = dense_loss(out_d, batch, step)
        out_s = ddp(local["image"], local["ids"], local["mask"])
        loss_s, parts_s = sharded_loss(out_s, local, step)
        assert "sku_logits" not in out_s  # the logits are the loss's business
        opt_d.zero_grad()
        opt_s.zero_grad()
        loss_d.backward()
        loss_s.backward()
        total = float(all_reduce_mean(loss_s, DistInfo(rank, WORLD)))
        diffs["loss"] = max(diffs["loss"], abs(total - float(loss_d.detach())))
        diffs["parts"] = max(diffs["parts"], *(abs(parts_s[k] - parts_d[k])
                                               for k in ("visual", "mixed")))
        grads_d = {k: p.grad for k, p in dense.named_parameters()}
        grads_d["classifier.weight"] = grads_d["classifier.weight"][shard.start:shard.stop]
        if head == "linear":
            grads_d["classifier.bias"] = grads_d["classifier.bias"][shard.start:shard.stop]
        diffs["grad"] = max(diffs["grad"], _max_diff(
            grads_d, {k: p.grad for k, p in sharded.named_parameters()}))
        clip_grad_norm(dense, cfg.grad_clip)
        clip_grad_norm(ddp, cfg.grad_clip)
        opt_d.step()
        opt_s.step()
    torch.save({"model": sharded.state_dict(), "opt": opt_s.state_dict()},
               tmp / f"{head}-rank{rank}.pt")
    ms, os_ = gathered_state(sharded, opt_s)
    if rank == 0:
        assert ms is not None and os_ is not None
        diffs["params"] = _max_diff(dense.state_dict(), ms)
        diffs["momentum"] = max(_max_diff(os_["state"][i], e)
                                for i, e in opt_d.state_dict()["state"].items())
        torch.save({"model": ms, "opt": os_}, tmp / f"{head}-gathered.pt")
        x = torch.randn(3, 3, 32, 32)  # the gathered dense copy serves like the dense model
        served = dense_model(sharded, ms).eval()(x)["sku_logits"]
        diffs["served"] = _max_diff({"logits": served}, {"logits": dense(x)["sku_logits"]})
    else:
        assert ms is None and os_ is None
    return diffs


def _sampled(rank: int) -> dict[str, float]:
    """rate 0.1: the loss is the exact softmax over the union of every rank's sampled rows."""
    shard, step, rate, margin, tau = Shard(C, rank, WORLD), 7, 0.1, 1.6, 1.0
    fc, full = ShardedClassifier(D, shard, "cosine", 16.0), ShardedClassifier(D, Shard(C), "cosine", 16.0)
    g = torch.Generator().manual_seed(2)
    feats, labels, prior = torch.randn(N, D, generator=g), _batch()["label"], _prior()
    n = N // WORLD
    v = feats[rank * n:(rank + 1) * n].clone().requires_grad_(True)
    loss, _ = sharded_sicot_loss({"v": v, "category_logits": torch.zeros(n, 5)},
                                 labels[rank * n:(rank + 1) * n], None, fc, tau=tau,
                                 log_prior=prior[shard.start:shard.stop], margin=margin,
                                 sample_rate=rate, step=step)
    loss.backward()
    rows = fc.sample_rows(labels, rate, step)
    assert rows is not None
    kept = [torch.zeros(math.ceil(rate * s.rows) + N, dtype=torch.long) for s in
            (Shard(C, r, WORLD) for r in range(WORLD))]
    padded = torch.full_like(kept[0], -1)
    padded[:len(rows)] = rows + shard.start
    dist.all_gather(kept, padded)
    cols = torch.cat(kept)
    cols = cols[cols >= 0]
    ref_x = feats.clone().requires_grad_(True)
    logits = full.logits(ref_x)[:, cols] + tau * prior[cols]
    target = (cols[None, :] == labels[:, None]).float().argmax(1)
    logits = logits - margin * torch.nn.functional.one_hot(target, len(cols))
    ref = torch.nn.functional.cross_entropy(logits, target)
    ref.backward()
    assert ref_x.grad is not None and v.grad is not None and fc.weight.grad is not None
    local = labels - shard.start
    mine = local[(local >= 0) & (local < shard.rows)]
    unsampled = torch.ones(shard.rows, dtype=torch.bool)
    unsampled[rows] = False
    return {"loss": abs(float(loss) - float(ref)),
            # × K: the gather's backward pre-compensates DDP's averaging over ranks
            "feature_grad": float((v.grad - WORLD * ref_x.grad[rank * n:(rank + 1) * n]).abs().max()),
            "positives_missing": float(torch.isin(mine, rows, invert=True).sum()),
            "unsampled_grad": float(fc.weight.grad[unsampled].abs().max()),
            "sampled_share": len(rows) / shard.rows}


def _worker(rank: int, tmp: Path) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{tmp / 'pg'}", rank=rank,
                            world_size=WORLD)
    try:
        result = {head: _compare(head, rank, tmp) for head in ("cosine", "linear")}
        result["sampled"] = _sampled(rank)
        (tmp / f"result{rank}.json").write_text(json.dumps(result))
    finally:
        cleanup()


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict[str, Any]]]:
    tmp = tmp_path_factory.mktemp("sharded")
    mp.spawn(_worker, args=(tmp,), nprocs=WORLD, join=True)
    return tmp, [json.loads((tmp / f"result{r}.json").read_text()) for r in range(WORLD)]


@pytest.mark.parametrize("head", ["cosine", "linear"])
def test_sharded_loss_gradients_and_steps_equal_dense(
        two_ranks: tuple[Path, list[dict[str, Any]]], head: str) -> None:
    _, results = two_ranks
    for rank, res in enumerate(results):
        for key in ("loss", "parts", "grad"):
            assert res[head][key] <= TOL, (rank, key, res[head][key])
    for key in ("params", "momentum", "served"):  # gathered on rank 0, after two steps
        assert results[0][head][key] <= TOL, (key, results[0][head][key])


def test_sampled_negatives_exact_over_sampled_classes(
        two_ranks: tuple[Path, list[dict[str, Any]]]) -> None:
    for res in (r["sampled"] for r in two_ranks[1]):
        assert res["loss"] <= TOL and res["feature_grad"] <= TOL
        assert res["positives_missing"] == 0 and res["unsampled_grad"] == 0.0
        assert 0.1 <= res["sampled_share"] < 0.12


@pytest.mark.parametrize("head", ["cosine", "linear"])
def test_checkpoint_gather_and_reshard_round_trip(
        two_ranks: tuple[Path, list[dict[str, Any]]], head: str) -> None:
    tmp, _ = two_ranks
    full = torch.load(tmp / f"{head}-gathered.pt", weights_only=True)
    cfg, mcfg = _train_cfg(head, sharded_fc=True), _model_cfg(head)
    assert full["model"]["classifier.weight"].shape == (C, D)  # a dense checkpoint
    for world in (1, 2, 3):
        rows: list[torch.Tensor] = []
        moms: list[torch.Tensor] = []
        for rank in range(world):
            model = SICoTModel(mcfg, classifier=ShardedClassifier(
                D, Shard(C, rank, world), head, mcfg.cosine_scale))
            opt = build_optimizer(model, cfg)
            load_state(model, opt, full["model"], full["opt"])
            state = opt.state_dict()["state"]
            w_index = [i for i, p in enumerate(q for g in opt.param_groups for q in g["params"])
                       if p is model.classifier.weight][0]
            rows.append(model.classifier.weight.detach())
            moms.append(state[w_index]["momentum_buffer"])
            if world == WORLD:  # the ranks' own shards, saved before gathering
                own = torch.load(tmp / f"{head}-rank{rank}.pt", weights_only=True)
                assert _max_diff(own["model"], model.state_dict()) == 0.0
                assert all(_max_diff(e, state[i]) == 0.0 for i, e in own["opt"]["state"].items())
        assert torch.equal(torch.cat(rows), full["model"]["classifier.weight"])
        w_full = [e["momentum_buffer"] for e in full["opt"]["state"].values()
                  if e["momentum_buffer"].shape == (C, D)]
        assert len(w_full) == 1 and torch.equal(torch.cat(moms), w_full[0])


def test_shard_bounds_and_initial_rows_do_not_depend_on_world_size() -> None:
    assert shard_bounds(10, 3) == [0, 3, 6, 10]
    assert shard_bounds(C, 1) == [0, C]
    with pytest.raises(ValueError):
        Shard(2, 0, 3)
    n = 70_000  # more than one seeded block of rows
    for head in ("cosine", "linear"):
        w, b = init_rows(head, 4, Shard(n), seed=5)
        for world in (2, 3):
            parts = [init_rows(head, 4, Shard(n, r, world), seed=5) for r in range(world)]
            assert torch.equal(torch.cat([p[0] for p in parts]), w)
            if b is not None:
                assert torch.equal(torch.cat([p[1] for p in parts if p[1] is not None]), b)
    assert not torch.equal(init_rows("cosine", 4, Shard(10), seed=5)[0],
                           init_rows("cosine", 4, Shard(10), seed=6)[0])

"""The class-sharded SKU classifier (``--sharded-fc``) against the dense layer: memory per
rank and step time for C = 100k and 1M classes.

One step is the classifier's share of a SICoT training step under the recipe (cosine head,
margin, logit adjustment τ = 1): both streams' features (v and m, d = 512, ``--batch`` per
rank, inputs standing in for the trunk's output), the loss, backward, and SGD with momentum
on W.  The sharded runs use ``--world`` gloo processes (1 thread each); the dense layer runs
in one process on the same global batch, unless its estimated peak does not fit in the
memory available now (then its row says so).  Each configuration runs in fresh processes, so
the peak RSS is its own.

    nice -n 19 .venv/bin/python bench/sharded_fc.py --classes 100000 1000000 --rates 1 0.1

Columns: peak RSS per rank, W + gradient + momentum bytes per rank, median step time (wall,
the slowest rank) and CPU time per rank, the step time per sample of the global batch (wall)
and the CPU core-milliseconds per sample summed over ranks (what the capacity plan
multiplies by samples × epochs: it does not depend on how busy the machine is), and the
classifier's throughput.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import torch.multiprocessing as mp  # noqa: E402

GiB = 1024 ** 3


def _mem_available() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return 0


def _estimate_dense(classes: int, dim: int, batch: int) -> int:
    """Dense peak: W, gradient, momentum, normalised W and its backward (~3 C×d), and ~10
    (global batch × C) float tensors for two streams' logits, one-hot margin, softmax."""
    return 4 * (6 * classes * dim + 10 * batch * classes) + GiB // 2


def _inputs(rank: int, n: int, dim: int, classes: int, global_batch: int
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(rank)
    v = torch.randn(n, dim, generator=g).requires_grad_(True)
    m = torch.randn(n, dim, generator=g).requires_grad_(True)
    y = torch.randint(0, classes, (global_batch,), generator=torch.Generator().manual_seed(99))
    counts = torch.randint(1, 100, (classes,), generator=torch.Generator().manual_seed(7))
    log_prior = (counts.float() / counts.sum()).log()
    return v, m, y[rank * n:(rank + 1) * n], log_prior


def _worker(rank: int, world: int, cfg: dict[str, Any], out_dir: str) -> None:
    torch.set_num_threads(1)
    from training.distributed import cleanup
    from training.losses import sicot_loss
    from training.models.sharded_head import Shard, ShardedClassifier
    from training.models.sicot import CosineClassifier
    from training.sharded_fc import sharded_sicot_loss

    if world > 1:
        dist.init_process_group("gloo", init_method=f"file://{out_dir}/pg", rank=rank,
                                world_size=world)
    classes, dim, n, rate = cfg["classes"], cfg["dim"], cfg["batch"], cfg["rate"]
    global_batch = n * world if cfg["mode"] == "sharded" else n
    v, m, y, log_prior = _inputs(rank, n, dim, classes, global_batch)
    margin, tau, scale = 1.6, 1.0, 16.0  # the recipe: γ = 16, m = 0.1, τ = 1
    if cfg["mode"] == "sharded":
        shard = Shard(classes, rank, world)
        fc: torch.nn.Module = ShardedClassifier(dim, shard, "cosine", scale)
        prior = log_prior[shard.start:shard.stop].clone()
    else:
        fc, prior = CosineClassifier(dim, classes, scale), log_prior
    del log_prior
    opt = torch.optim.SGD(fc.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    has_text = torch.ones(n, dtype=torch.bool)

    def step(i: int) -> None:
        if isinstance(fc, ShardedClassifier):
            out = {"v": v, "m": torch.maximum(v, m), "has_text": has_text}
            loss, _ = sharded_sicot_loss(out, y, None, fc, tau=tau, log_prior=prior,
                                         margin=margin, sample_rate=rate, step=i)
        else:
            out = {"sku_logits": fc(v), "mixed_logits": fc(torch.maximum(v, m)),
                   "has_text": has_text}
            loss, _ = sicot_loss(out, y, tau=tau, log_prior=prior, margin=margin)
        opt.zero_grad(set_to_none=False)
        loss.backward()
        opt.step()

    times, cpu = [], []
    for i in range(cfg["warmup"] + cfg["steps"]):
        if world > 1:
            dist.barrier()
        t0, c0 = time.perf_counter(), time.process_time()
        step(i)
        if i >= cfg["warmup"]:
            times.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
    state = sum(t.numel() * t.element_size() for p in fc.parameters()
                for t in [p, p.grad, *opt.state[p].values()] if torch.is_tensor(t))
    result = {"rank": rank, "step_s": statistics.median(times), "state_bytes": state,
              "cpu_s": statistics.median(cpu),
              "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps(result))
    if world > 1:
        cleanup()


def run(mode: str, classes: int, rate: float, args: argparse.Namespace) -> dict[str, Any]:
    world = args.world if mode == "sharded" else 1
    batch = args.batch if mode == "sharded" else args.batch * args.world
    cfg = {"mode": mode, "classes": classes, "dim": args.dim, "batch": batch, "rate": rate,
           "steps": args.steps, "warmup": args.warmup}
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(_worker, args=(world, cfg, tmp), nprocs=world, join=True)
        ranks = [json.loads(Path(tmp, f"rank{r}.json").read_text()) for r in range(world)]
    step_s = max(r["step_s"] for r in ranks)  # the step ends when the slowest rank does
    global_batch = args.batch * args.world
    return {"mode": mode, "classes": classes, "ranks": world, "rate": rate,
            "peak_rss_gib": max(r["peak_rss"] for r in ranks) / GiB,
            "state_gib": max(r["state_bytes"] for r in ranks) / GiB, "step_s": step_s,
            "cpu_s": max(r["cpu_s"] for r in ranks),
            "cpu_ms_per_sample": 1e3 * sum(r["cpu_s"] for r in ranks) / global_batch,
            "ms_per_sample": 1e3 * step_s / global_batch, "samples_per_s": global_batch / step_s}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--classes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--batch", type=int, default=64, help="samples per rank")
    parser.add_argument("--world", type=int, default=2, help="sharded ranks (gloo)")
    parser.add_argument("--rates", type=float, nargs="+", default=[1.0, 0.1],
                        help="negative-class sampling rates of the sharded runs")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args(argv)
    rows: list[dict[str, Any]] = []
    for classes in args.classes:
        need, avail = _estimate_dense(classes, args.dim, args.batch * args.world), _mem_available()
        if need < 0.8 * avail:
            rows.append(run("dense", classes, 1.0, args))
        else:
            rows.append({"mode": "dense", "classes": classes, "ranks": 1, "rate": 1.0,
                         "skipped": f"needs ~{need / GiB:.1f} GiB, {avail / GiB:.1f} available"})
        for rate in args.rates:
            rows.append(run("sharded", classes, rate, args))
        print(f"... {classes} classes done", file=sys.stderr, flush=True)
    header = (f"| classifier (d={args.dim}, global batch {args.batch * args.world}, 1 thread/rank) "
              "| classes | ranks | sampled | peak RSS/rank GiB | W+grad+momentum/rank GiB "
              "| step s (wall) | CPU s/step/rank | ms/sample (wall) | CPU core-ms/sample "
              "| samples/s |")
    print(header)
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        name = "dense (1 process)" if r["mode"] == "dense" else "sharded (gloo)"
        if "skipped" in r:
            print(f"| {name} | {r['classes']:,} | 1 | - | skipped: {r['skipped']} | | | | | | |")
            continue
        rate = f"{r['rate']:g}" if r["mode"] == "sharded" else "-"
        print(f"| {name} | {r['classes']:,} | {r['ranks']} | {rate} | "
              f"{r['peak_rss_gib']:.2f} | {r['state_gib']:.2f} | {r['step_s']:.3f} | "
              f"{r['cpu_s']:.3f} | {r['ms_per_sample']:.2f} | {r['cpu_ms_per_sample']:.2f} | "
              f"{r['samples_per_s']:.0f} |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    raise SystemExit(main())

"""``sku-train``: train SICoT (or the visual-only baseline), evaluate, export, report.

One command does the whole run::

    sku-train --config run.yaml                       # train → evaluate → export → report
    sku-train --config run.yaml --text-encoder none   # the baseline: same seed, data, schedule
    sku-train --resume runs/x                         # continue runs/x/checkpoint.pt exactly
    torchrun --nproc_per_node 2 -m training.train --config run.yaml   # DDP (gloo on CPU)
    torchrun --nproc_per_node 4 -m training.train --config run.yaml --sharded-fc true
                                                      # W split over the 4 processes

Outputs in ``output_dir``: ``config.json`` (resolved config), ``train.log``, ``log.jsonl`` (one
line per epoch), ``checkpoint.pt`` (latest) and ``best.pt`` (best held-out top-1),
``eval/<split>.npz`` (logits and labels), ``report.json``, ``report.md``,
``per_class_<split>.png`` and the serving artifact ``artifact/<run name>/``.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from service.settings import SettingsError
from training import builders, checkpoint, finish, sharded_state
from training.augment import BatchAugment
from training.data import ImageSource, eval_loader, steps_per_epoch, train_loader, train_sampler
from training.distributed import DistInfo, barrier, cleanup, init_distributed, unwrap, wrap_model
from training.engine import (
    build_optimizer,
    build_scheduler,
    make_loss_fn,
    predict,
    train_one_epoch,
)
from training.evaluate import accuracy_summary, json_safe
from training.losses import log_prior_from_counts
from training.settings import (
    TrainConfig,
    add_config_flags,
    build_config,
    config_overrides,
    read_config_file,
)

log = logging.getLogger("training.train")


@dataclass
class RunState:
    step: int = 0
    best: float = -math.inf
    history: list[dict[str, Any]] = field(default_factory=list)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="sku-train", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, help="YAML or JSON file of config fields")
    parser.add_argument("--resume", nargs="?", const="auto", metavar="CKPT_OR_DIR",
                        help="continue a run (its config is reused; flags still override); "
                        "without a value: <output_dir>/checkpoint.pt if it exists")
    parser.add_argument("--print-config", action="store_true", help="print the config and exit")
    parser.add_argument("--log-level", default="INFO")
    add_config_flags(parser)
    return parser.parse_args(argv)


def resolve_config(args: argparse.Namespace) -> tuple[TrainConfig, dict[str, Any] | None]:
    """The config (see training.settings for precedence) and the checkpoint to resume, if any."""
    file_layer = read_config_file(args.config) if args.config else {}
    cli = config_overrides(args)
    if not args.resume:
        return build_config(file_layer, cli), None
    if args.resume == "auto":
        out = cli.get("output_dir") or file_layer.get("output_dir")
        out = Path(out or TrainConfig.model_fields["output_dir"].default)
        path = out / checkpoint.CHECKPOINT_FILE
        if not path.is_file():
            log.info("--resume: no checkpoint at %s, starting a new run", path)
            return build_config(file_layer, cli), None
    else:
        path = Path(args.resume)
    ckpt = checkpoint.load_checkpoint(path)
    # a pre-emption limit belongs to the interrupted invocation, not to the run
    saved = {k: v for k, v in ckpt["train_config"].items() if k != "stop_after_steps"}
    return build_config(saved, file_layer, cli), ckpt


def setup_process(cfg: TrainConfig, info: DistInfo, level: str) -> torch.device:
    logging.basicConfig(level=level if info.is_main else "WARNING", stream=sys.stderr,
                        format=f"%(asctime)s [rank {info.rank}] %(levelname)s %(name)s: %(message)s")
    if info.is_main:
        cfg.output_dir.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(cfg.output_dir / "train.log")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logging.getLogger().addHandler(handler)
        (cfg.output_dir / "config.json").write_text(json.dumps(cfg.to_json_dict(), indent=2))
    logging.getLogger("gensim").setLevel(logging.WARNING)  # per-epoch chatter
    threads = cfg.num_threads or max(1, (os.cpu_count() or 1) // info.world_size)
    torch.set_num_threads(threads)
    cuda = cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())
    return torch.device(f"cuda:{info.local_rank}") if cuda else torch.device("cpu")


def make_checkpoint(model: Any, opt: Any, sched: Any, cfg: TrainConfig, text: Any,
                    state: RunState, spe: int, extra: dict[str, Any]) -> dict[str, Any] | None:
    """The checkpoint payload; a collective with a sharded classifier (gathered to rank 0,
    None on the other ranks)."""
    model_state, opt_state = sharded_state.gathered_state(model, opt)
    if model_state is None:
        return None
    return {
        "model_config": model.cfg.model_dump(mode="json"), "model_state": model_state,
        "vocab": text.vocab.to_dict() if text is not None else None,
        "optimizer_state": opt_state, "scheduler_state": sched.state_dict(),
        "epoch": state.step // spe, "step": state.step, "steps_per_epoch": spe,
        "rng_state": checkpoint.get_rng_state(), "train_config": cfg.to_json_dict(),
        "history": state.history, "best": state.best, **extra,
    }


def run(cfg: TrainConfig, info: DistInfo, ckpt: dict[str, Any] | None, device: torch.device) -> int:
    torch.manual_seed(cfg.seed)
    splits = builders.prepare_splits(cfg)
    text = builders.prepare_text(cfg, splits.train, info, ckpt["vocab"] if ckpt else None)
    model = builders.build_model(cfg, splits.labels, text, info)
    pcfg = builders.preprocess_config(cfg, model)
    source = ImageSource(cache=cfg.cache)
    source.preload(splits.train + splits.heldout + splits.queries)
    train_ds = builders.train_dataset(cfg, splits, source, pcfg, text)
    evals = builders.eval_datasets(cfg, splits, source, pcfg) if info.is_main else {}
    sampler = train_sampler(train_ds, rank=info.rank, world=info.world_size, seed=cfg.seed)
    spe = steps_per_epoch(len(sampler), cfg.batch_size)
    model.to(device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    opt = build_optimizer(model, cfg)
    sched = build_scheduler(opt, cfg, spe)
    state = RunState()
    if ckpt is not None:
        if ckpt.get("steps_per_epoch") != spe:
            raise ValueError(f"checkpoint has {ckpt.get('steps_per_epoch')} steps per epoch, "
                             f"this run {spe}: data, batch size or process count changed")
        sharded_state.load_state(model, opt, ckpt["model_state"], ckpt["optimizer_state"])
        sched.load_state_dict(ckpt["scheduler_state"])
        state = RunState(ckpt["step"], ckpt.get("best", -math.inf), list(ckpt.get("history", [])))
        checkpoint.set_rng_state(ckpt["rng_state"])
        log.info("resumed at step %d (epoch %d)", state.step, state.step // spe + 1)
    extra = {"labels": splits.labels.model_dump(), "preprocess": pcfg.model_dump(mode="json")}
    ddp = wrap_model(model, info, device, cfg.ddp_find_unused, sharded_state.ddp_ignored(model))
    augment = BatchAugment(pcfg.mean, pcfg.std, strength=cfg.augment_strength,
                           style=cfg.style_strength, erasing_p=cfg.erasing_p,
                           rand_conv=cfg.rand_conv_p).to(device)
    prior = torch.from_numpy(
        log_prior_from_counts(builders.epoch_class_counts(cfg, splits))).to(device)
    out, total = cfg.output_dir, spe * cfg.epochs

    loss_fn = make_loss_fn(cfg, model, prior if cfg.tau else None)

    def save(name: str = checkpoint.CHECKPOINT_FILE) -> None:  # called on every rank
        payload = make_checkpoint(model, opt, sched, cfg, text, state, spe, extra)
        if payload is not None and info.is_main:
            checkpoint.save_checkpoint(payload, out / name)

    def on_step(step: int) -> bool:
        state.step = step
        if cfg.checkpoint_every_steps and step % cfg.checkpoint_every_steps == 0:
            save()
        return bool(cfg.stop_after_steps) and step >= cfg.stop_after_steps

    t_start = time.perf_counter()
    while state.step < total:
        epoch, skip = divmod(state.step, spe)
        loader = train_loader(train_ds, sampler, batch_size=cfg.batch_size, epoch=epoch,
                              skip_batches=skip, workers=cfg.workers, seed=cfg.seed)
        res = train_one_epoch(ddp, loader, opt, sched, augment, cfg=cfg, info=info, device=device,
                              epoch=epoch, first_step=state.step, step_in_epoch=skip,
                              loss_fn=loss_fn, on_step=on_step)
        if state.step % spe == 0:  # a finished epoch: log, evaluate, checkpoint
            record = {"epoch": epoch + 1, "step": state.step, "lr": sched.get_last_lr()[0],
                      "images_per_s": res.images * info.world_size / max(res.seconds, 1e-9),
                      **res.means()}
            due = cfg.eval_every and (epoch + 1) % cfg.eval_every == 0
            if due and splits.heldout:  # every rank: a sharded W is gathered to rank 0
                dense = sharded_state.dense_model_on_rank0(model)
                if dense is not None and "heldout" in evals:
                    record.update(heldout_metrics(dense, evals["heldout"], cfg, splits, device))
            state.history.append(record)
            log.info("epoch %s", json.dumps(record))
            if info.is_main:
                with (out / "log.jsonl").open("a") as fh:
                    fh.write(json.dumps(json_safe(record)) + "\n")
            save()
            if info.is_main and record.get("heldout_top1", -math.inf) > state.best:
                state.best = float(record["heldout_top1"])
                checkpoint.copy_checkpoint(out / checkpoint.CHECKPOINT_FILE, out / checkpoint.BEST_FILE)
        elif res.stopped:
            save()
        barrier(info)
        if res.stopped and state.step < total:
            log.info("stopped after %d steps (stop_after_steps); resume with --resume", state.step)
            return 0
    payload = make_checkpoint(model, opt, sched, cfg, text, state, spe, extra)
    if payload is not None and info.is_main:
        finish.finish_run(cfg, sharded_state.dense_model(model, payload["model_state"]), payload,
                          splits, evals, pcfg, device, train_seconds=time.perf_counter() - t_start)
    barrier(info)
    return 0


def heldout_metrics(model: Any, ds: Any, cfg: TrainConfig, splits: builders.Splits,
                    device: torch.device) -> dict[str, float]:
    outs = predict(unwrap(model), eval_loader(ds, cfg.eval_batch_size, cfg.workers), device,
                   cfg.channels_last, desc="held-out")
    s = accuracy_summary(outs["sku_logits"], outs["labels"], splits.labels.train_counts,
                         head_threshold=cfg.head_threshold, many_threshold=cfg.many_threshold)
    return {"heldout_top1": s["top1"], "heldout_top3": s["top3"],
            "heldout_head_top1": s["groups"]["head"]["top1"],
            "heldout_tail_top1": s["groups"]["tail"]["top1"]}


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        cfg, ckpt = resolve_config(args)
    except (SettingsError, FileNotFoundError) as exc:
        sys.stderr.write(f"sku-train: {exc}\n")
        return 2
    if args.print_config:
        sys.stdout.write(json.dumps(cfg.to_json_dict(), indent=2) + "\n")
        return 0
    info = init_distributed(cfg.ddp_backend)
    root = logging.getLogger()
    handlers = list(root.handlers)
    try:
        device = setup_process(cfg, info, args.log_level)
        return run(cfg, info, ckpt, device)
    finally:
        for h in [h for h in root.handlers if h not in handlers]:  # the run's train.log
            root.removeHandler(h)
            h.close()
        cleanup()


if __name__ == "__main__":
    raise SystemExit(main())

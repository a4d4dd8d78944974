"""Training throughput of the visual-only baseline vs SICoT, measured in the same run.

Each variant runs in its own subprocess (so its peak RSS is its own) with the same model,
batch, input size and thread count: a real SGD step (forward, SICoT loss, backward, update) on
random images and random titles of a realistic length.  Prints images/s, the time ratio
SICoT / baseline (target ≤ 1.15) and peak memory.

    python bench/train_throughput.py --backbone efficientnet_lite0 --input-size 128
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run_variant(args: argparse.Namespace) -> dict[str, float]:
    sys.path.insert(0, str(REPO))
    import torch

    from training.losses import sicot_loss
    from training.models.sicot import SICoTConfig, SICoTModel

    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    encoder = None if args.variant == "baseline" else args.variant
    cfg = SICoTConfig(backbone=args.backbone, pretrained=False, freeze_blocks=args.freeze_blocks,
                      embed_dim=512, num_classes=args.classes, num_categories=8,
                      text_encoder=encoder, vocab_size=args.vocab, word_dim=128)
    model = SICoTModel(cfg).train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=0.01, momentum=0.9, weight_decay=1e-4)
    b, s = args.batch, args.input_size
    x = torch.randn(b, 3, s, s)
    y = torch.randint(0, args.classes, (b,))
    y_cat = torch.randint(0, 8, (b,))
    ids = torch.randint(2, args.vocab, (b, args.title_len))
    mask = torch.rand(b, args.title_len) < 0.7
    mask[:, 0] = True
    ids = ids * mask

    def step() -> None:
        out = model(x, ids, mask) if encoder else model(x)
        loss, _ = sicot_loss(out, y, y_cat)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(args.warmup):
        step()
    t0 = time.perf_counter()
    for _ in range(args.steps):
        step()
    dt = time.perf_counter() - t0
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    return {"images_per_s": args.steps * b / dt, "s_per_step": dt / args.steps,
            "peak_rss_mb": peak_mb}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backbone", default="efficientnet_lite0")
    p.add_argument("--freeze-blocks", type=int, default=0)
    p.add_argument("--input-size", type=int, default=128)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--classes", type=int, default=1513, help="the emoji-catalog's SKU count")
    p.add_argument("--vocab", type=int, default=5000)
    p.add_argument("--title-len", type=int, default=12)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--variants", default="baseline,bilinear_attention,mean,bilstm")
    p.add_argument("--variant", help=argparse.SUPPRESS)  # internal: run one variant and print
    p.add_argument("--json", type=Path, help="also write the figures here")
    args = p.parse_args(argv)
    if args.variant:
        sys.stdout.write(json.dumps(run_variant(args)) + "\n")
        return 0
    results: dict[str, dict[str, float]] = {}
    base_argv = [a for a in (argv if argv is not None else sys.argv[1:])]
    for variant in args.variants.split(","):
        out = subprocess.run([sys.executable, __file__, *base_argv, "--variant", variant],
                             capture_output=True, text=True, check=True)
        results[variant] = json.loads(out.stdout.strip().splitlines()[-1])
    base = results["baseline"]["s_per_step"]
    print(f"{args.backbone} {args.input_size}px batch {args.batch}, {args.threads} threads, "
          f"freeze_blocks {args.freeze_blocks}, {args.classes} classes")
    print(f"{'variant':<20} {'img/s':>8} {'time/img vs baseline':>22} {'peak RSS MB':>12}")
    for variant, r in results.items():
        r["time_ratio"] = r["s_per_step"] / base
        print(f"{variant:<20} {r['images_per_s']:8.1f} {r['time_ratio']:22.3f} "
              f"{r['peak_rss_mb']:12.0f}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

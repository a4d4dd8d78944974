"""ONNX Runtime latency (batch 1) of the localizer against the alternatives it was chosen over.

Weights do not change latency, so the graphs are exported from randomly initialised models:
the localizer (EfficientNet-Lite0 blocks up to stride 16 + FPN-lite neck + CenterNet head at
stride 8) at several input sizes, and the whole Lite0 trunk (pooled features, what a
classifier-style box regressor would run) for reference. Rounds are interleaved and the best
median of ``--rounds`` is printed, which filters out the other tenants of a shared machine.

    .venv/bin/python bench/localizer_latency.py --threads 1 --sizes 128 160 192
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings

import numpy as np
import onnxruntime as ort
import torch

from training.localizer.export import export_onnx
from training.localizer.model import build_localizer
from training.models.backbones import create_backbone


class _Pooled(torch.nn.Module):
    def __init__(self, net: torch.nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.forward_features(x)


def _session(path: str, threads: int) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--sizes", type=int, nargs="+", default=[128, 160, 192])
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--runs", type=int, default=30)
    args = p.parse_args()
    warnings.simplefilter("ignore")
    tmp = tempfile.mkdtemp()
    loc = build_localizer("efficientnet_lite0", pretrained=False)
    full = _Pooled(create_backbone("efficientnet_lite0", pretrained=False)).eval()
    cases = {}
    for s in args.sizes:
        path = f"{tmp}/loc{s}.onnx"
        export_onnx(loc, path, s)  # type: ignore[arg-type]
        cases[f"localizer (Lite0 to stride 16 + head) {s} px"] = (_session(path, args.threads), s)
        path = f"{tmp}/full{s}.onnx"
        torch.onnx.export(full, (torch.zeros(1, 3, s, s),), path, input_names=["image"],
                          opset_version=17, dynamo=False)
        cases[f"whole Lite0 trunk, pooled {s} px"] = (_session(path, args.threads), s)
    medians: dict[str, list[float]] = {k: [] for k in cases}
    for _ in range(args.rounds):
        for name, (sess, s) in cases.items():
            x = np.random.rand(1, 3, s, s).astype(np.float32)
            for _ in range(5):
                sess.run(None, {"image": x})
            times = []
            for _ in range(args.runs):
                t0 = time.perf_counter()
                sess.run(None, {"image": x})
                times.append((time.perf_counter() - t0) * 1000)
            medians[name].append(float(np.median(times)))
    for name, v in medians.items():
        print(f"{name:48s} threads={args.threads}  best median {min(v):6.2f} ms  "
              f"median of medians {np.median(v):6.2f} ms")


if __name__ == "__main__":
    main()

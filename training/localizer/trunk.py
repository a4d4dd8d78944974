"""A frozen backbone trunk run by ONNX Runtime during training.

With the blocks the localizer uses frozen (all of them, ``freeze_blocks=-1``, or a prefix),
eager torch spends most of a training step in the frozen trunk's forward (~40 ms per 160 px
image on a shared CPU core, measured) although no gradient flows through it; ONNX Runtime
computes the same maps ~10x faster. Only the trained blocks, the neck and the heads run in
torch; the exported artifact still holds one graph (trunk + head, from torch).
"""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch

from training.localizer.model import TAP_STRIDES, FeatureTaps, TrunkPrefix


class OrtTrunk:
    """``trunk(x) -> (c8, c16[, c32])`` through an ONNX Runtime session of the frozen taps;
    with ``prefix_blocks=k`` (the stem and blocks ``0..k-1`` frozen, the rest trained) the
    taps among those blocks, then block ``k - 1``'s output, for
    :meth:`FeatureTaps.forward_from`."""

    def __init__(self, taps: FeatureTaps, input_size: int, threads: int | None = None,
                 prefix_blocks: int | None = None):
        import onnxruntime as ort

        taps.eval()
        self._dir = tempfile.TemporaryDirectory(prefix="loc-trunk-")
        path = Path(self._dir.name) / "trunk.onnx"
        module: torch.nn.Module = taps
        names = [f"c{s}" for s in TAP_STRIDES[: len(taps.channels)]]
        if prefix_blocks is not None:
            module = TrunkPrefix(taps, prefix_blocks).eval()  # export restores this mode
            n_taps = sum(i < prefix_blocks for i in taps.taps)
            names = [*names[:n_taps], "x"]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                module, (torch.zeros(1, 3, input_size, input_size),), str(path),
                input_names=["image"], output_names=names,
                dynamic_axes={n: {0: "batch"} for n in ("image", *names)},
                opset_version=17, dynamo=False,
            )
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads or 1
        opts.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        maps = self.session.run(None, {"image": np.ascontiguousarray(x.numpy())})
        return tuple(torch.from_numpy(m) for m in maps)

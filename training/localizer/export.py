"""ONNX export of a trained :class:`LocalizerNet` into an artifact folder (kind "localizer").

``model.onnx``: input ``image`` (N, 3, S, S) float32 (dynamic batch, fixed S), outputs
``heatmap`` and ``ltrb`` (see :mod:`service.localize`); opset 17, TorchScript exporter
(``dynamo=False`` needs no onnxscript). ``config.json``'s ``model`` dict holds the decoding
parameters: ``arch``, ``backbone``, ``stride``, ``input_size``, ``ltrb_units`` ("stride"),
``neck_channels``, ``top_stride`` and ``postprocess`` (:class:`service.localize.LocalizerConfig` defaults).
"""

from __future__ import annotations

import logging
import warnings
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from service.artifact import (
    CHECKPOINT_FILE,
    ONNX_FILE,
    ArtifactConfig,
    OnnxModel,
    library_versions,
    sha256_file,
    write_artifact,
)
from service.localize import HEATMAP_OUTPUT, LTRB_OUTPUT, LocalizerConfig
from service.preprocess import PreprocessConfig
from training.localizer.model import STRIDE, LocalizerNet

log = logging.getLogger(__name__)
OUTPUTS = [HEATMAP_OUTPUT, LTRB_OUTPUT]
ARCH = "centernet_fpn_lite"


def export_onnx(model: LocalizerNet, path: Path, input_size: int, opset: int = 17) -> None:
    model.eval()
    dummy = torch.zeros(1, 3, input_size, input_size)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TracerWarning: TF-SAME padding becomes a constant
        torch.onnx.export(
            model, (dummy,), str(path), input_names=["image"], output_names=OUTPUTS,
            dynamic_axes={n: {0: "batch"} for n in ["image", *OUTPUTS]},
            opset_version=opset, dynamo=False,
        )


def verify_onnx(folder: Path, model: LocalizerNet, batch: np.ndarray) -> float:
    """Max |ONNX Runtime − torch| over the localizer's outputs for ``batch`` (N,3,S,S)."""
    x = torch.as_tensor(batch)
    with torch.no_grad():
        ref = [t.numpy() for t in model(x)]
    got = OnnxModel(folder / ONNX_FILE).run(batch)
    return max(float(np.abs(got[name] - r).max()) for name, r in zip(OUTPUTS, ref, strict=True))


def write_localizer_artifact(
    folder: str | Path,
    model: LocalizerNet,
    *,
    name: str,
    backbone: str,
    preprocess: PreprocessConfig,
    neck_channels: int,
    top_stride: int = 16,
    postprocess: LocalizerConfig | None = None,
    checkpoint: dict[str, Any] | None = None,
    evaluation: dict[str, Any] | None = None,
    verify_tol: float = 1e-3,
) -> ArtifactConfig:
    """Export ``model`` into ``folder`` (replaced atomically, :func:`write_artifact`), with
    ``config.json`` (+ ``checkpoint.pt`` when given); ONNX Runtime is checked against torch."""
    model.eval()

    def fill(tmp: Path) -> ArtifactConfig:
        export_onnx(model, tmp / ONNX_FILE, preprocess.input_size)
        if checkpoint is not None:
            torch.save(checkpoint, tmp / CHECKPOINT_FILE)
        sha = sha256_file(tmp / ONNX_FILE)
        return ArtifactConfig(
            kind="localizer",
            name=name,
            model_version=f"{name}-{sha[:12]}",
            created_at=datetime.now(UTC).isoformat(timespec="seconds"),
            onnx_sha256=sha,
            checkpoint_file=CHECKPOINT_FILE if checkpoint is not None else None,
            outputs=OUTPUTS,
            model={
                "arch": ARCH,
                "backbone": backbone,
                "stride": STRIDE,
                "input_size": preprocess.input_size,
                "ltrb_units": "stride",
                "neck_channels": neck_channels,
                "top_stride": top_stride,
                "postprocess": (postprocess or LocalizerConfig()).model_dump(),
            },
            preprocess=preprocess,
            versions=library_versions(),
            evaluation=evaluation or {},
        )

    def check(tmp: Path) -> None:
        probe = np.random.default_rng(0).uniform(
            -1, 1, (2, 3, preprocess.input_size, preprocess.input_size)).astype(np.float32)
        diff = verify_onnx(tmp, model, probe)
        if diff > verify_tol:
            raise RuntimeError(f"ONNX Runtime differs from torch by {diff:.2e} > {verify_tol}")

    return write_artifact(folder, fill, check=check, overwrite=True)

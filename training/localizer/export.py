"""ONNX export of a trained :class:`LocalizerNet` into an artifact folder (kind "localizer").

``model.onnx``: input ``image`` (N, 3, S, S) float32 (dynamic batch, fixed S), outputs
``heatmap`` and ``ltrb`` (see :mod:`service.localize`); opset 17, TorchScript exporter
(``dynamo=False`` needs no onnxscript). ``config.json``'s ``model`` dict holds the decoding
parameters: ``arch``, ``backbone``, ``stride``, ``input_size``, ``ltrb_units`` ("stride"),
``neck_channels`` and ``postprocess`` (:class:`service.localize.LocalizerConfig` defaults).
"""

from __future__ import annotations

import logging
import warnings
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from service.artifact import ArtifactConfig, sha256_file, write_artifact_config
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


def _versions() -> dict[str, str]:
    import onnx

    out = {"torch": torch.__version__.split("+")[0], "onnx": onnx.__version__,
           "numpy": np.__version__}
    try:
        import onnxruntime

        out["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        pass
    return out


def write_localizer_artifact(
    folder: str | Path,
    model: LocalizerNet,
    *,
    name: str,
    backbone: str,
    preprocess: PreprocessConfig,
    neck_channels: int,
    postprocess: LocalizerConfig | None = None,
    checkpoint: dict[str, Any] | None = None,
    evaluation: dict[str, Any] | None = None,
) -> ArtifactConfig:
    """Export ``model`` and write ``config.json`` (+ ``checkpoint.pt`` when given)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    onnx_path = folder / "model.onnx"
    export_onnx(model, onnx_path, preprocess.input_size)
    if checkpoint is not None:
        torch.save(checkpoint, folder / "checkpoint.pt")
    sha = sha256_file(onnx_path)
    config = ArtifactConfig(
        kind="localizer",
        name=name,
        model_version=f"{name}-{sha[:12]}",
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        onnx_sha256=sha,
        checkpoint_file="checkpoint.pt" if checkpoint is not None else None,
        outputs=OUTPUTS,
        model={
            "arch": ARCH,
            "backbone": backbone,
            "stride": STRIDE,
            "input_size": preprocess.input_size,
            "ltrb_units": "stride",
            "neck_channels": neck_channels,
            "postprocess": (postprocess or LocalizerConfig()).model_dump(),
        },
        preprocess=preprocess,
        versions=_versions(),
        evaluation=evaluation or {},
    )
    write_artifact_config(folder, config)
    log.info("wrote localizer artifact %s (%s)", folder, config.model_version)
    return config

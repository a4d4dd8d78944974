"""Export a trained SICoT model as a serving artifact (the folder contract of
:mod:`service.artifact`): ``model.onnx`` (input ``image`` with a dynamic batch; outputs
``embedding`` (L2-normalised v), ``sku_logits``, ``category_logits``), ``config.json`` and,
if given, ``checkpoint.pt``.

The folder is written by the core's one atomic writer (:func:`service.artifact.write_artifact`):
assembled under a temporary name, checked (ONNX checker, ONNX Runtime output vs torch on a
random batch) and only then renamed into place.
"""

from __future__ import annotations

import logging
import os
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
    LabelMap,
    OnnxModel,
    library_versions,
    sha256_file,
    write_artifact,
)
from service.preprocess import PreprocessConfig
from training.models.sicot import SICoTModel

log = logging.getLogger(__name__)

OUTPUTS = ["embedding", "sku_logits", "category_logits"]


def _check_labels(model: SICoTModel, labels: LabelMap) -> None:
    cfg = model.cfg
    if labels.num_classes != cfg.num_classes:
        raise ValueError(f"labels hold {labels.num_classes} classes, model {cfg.num_classes}")
    if len(labels.categories) != cfg.num_categories:
        raise ValueError(
            f"labels hold {len(labels.categories)} categories, model {cfg.num_categories}"
        )


def export_onnx(model: SICoTModel, path: Path, input_size: int, opset: int = 17) -> None:
    """Trace ``model.export_module()`` (eval mode) into ``path``."""
    module = model.export_module().eval()
    dummy = torch.randn(2, 3, input_size, input_size)  # batch 2: nothing specialises on 1
    with torch.no_grad(), warnings.catch_warnings():
        # TF-SAME padding reads the (fixed) spatial size as Python ints: expected here.
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        torch.onnx.export(
            module, (dummy,), str(path), dynamo=False, opset_version=opset,
            input_names=["image"], output_names=OUTPUTS,
            dynamic_axes={name: {0: "batch"} for name in ["image", *OUTPUTS]},
            do_constant_folding=True,
        )
    import onnx

    onnx.checker.check_model(str(path))


def verify_onnx(
    artifact_dir: str | os.PathLike[str], model: SICoTModel, batch: np.ndarray | torch.Tensor
) -> float:
    """Max |ONNX Runtime − torch| over the three outputs for ``batch`` (N,3,S,S)."""
    x = torch.as_tensor(np.asarray(batch, dtype=np.float32))
    module = model.export_module().eval()
    with torch.no_grad():
        ref = [t.numpy() for t in module(x)]
    onnx_path = Path(artifact_dir) / ONNX_FILE
    got = OnnxModel(onnx_path).run(x.numpy())
    return max(float(np.abs(got[name] - r).max()) for name, r in zip(OUTPUTS, ref, strict=True))


def export_artifact(
    model: SICoTModel,
    *,
    out_dir: str | os.PathLike[str],
    name: str,
    labels: LabelMap,
    preprocess: PreprocessConfig,
    model_config: dict[str, Any],
    evaluation: dict[str, Any] | None = None,
    checkpoint: dict[str, Any] | None = None,
    opset: int = 17,
    overwrite: bool = False,
    verify_tol: float = 1e-3,
) -> Path:
    """Write the artifact folder ``out_dir/name`` (atomically, :func:`write_artifact`) and
    return its path.

    The ONNX output is compared with torch before publishing; a difference above
    ``verify_tol`` raises. An existing ``out_dir/name`` raises unless ``overwrite``."""
    if not name or "/" in name or name.startswith("."):
        raise ValueError(f"invalid artifact name {name!r}")
    _check_labels(model, labels)
    final = Path(out_dir) / name
    diffs: list[float] = []

    def fill(tmp: Path) -> ArtifactConfig:
        export_onnx(model, tmp / ONNX_FILE, preprocess.input_size, opset)
        if checkpoint is not None:
            torch.save(checkpoint, tmp / CHECKPOINT_FILE)
        sha = sha256_file(tmp / ONNX_FILE)
        return ArtifactConfig(
            kind="sicot", name=name, model_version=f"{name}-{sha[:12]}",
            created_at=datetime.now(UTC).isoformat(timespec="seconds"),
            onnx_file=ONNX_FILE, onnx_sha256=sha,
            checkpoint_file=CHECKPOINT_FILE if checkpoint is not None else None,
            input_name="image", outputs=OUTPUTS, model=model_config, preprocess=preprocess,
            labels=labels, versions=library_versions(), evaluation=evaluation or {},
        )

    def check(tmp: Path) -> None:
        probe = np.random.default_rng(0).standard_normal(
            (2, 3, preprocess.input_size, preprocess.input_size)).astype(np.float32)
        diffs.append(verify_onnx(tmp, model, probe))
        if diffs[-1] > verify_tol:
            raise RuntimeError(f"ONNX Runtime differs from torch by {diffs[-1]:.2e} > {verify_tol}")

    was_training = model.training
    try:
        model.eval()
        config = write_artifact(final, fill, check=check, overwrite=overwrite)
    finally:
        model.train(was_training)
    log.info("exported %s (%s, ONNX max diff %.1e)", final, config.model_version, diffs[-1])
    return final

"""Export a trained SICoT model as a serving artifact (the folder contract of
:mod:`service.artifact`): ``model.onnx`` (input ``image`` with a dynamic batch; outputs
``embedding`` (L2-normalised v), ``sku_logits``, ``category_logits``), ``config.json`` and,
if given, ``checkpoint.pt``.

The folder is assembled under a temporary name next to the target, checked (ONNX checker,
ONNX Runtime output vs torch on a random batch) and only then renamed into place, so a crash
never leaves a half-written artifact where the index builder or the service would find it.
"""

from __future__ import annotations

import logging
import os
import platform
import shutil
import uuid
import warnings
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from service.artifact import (
    ArtifactConfig,
    LabelMap,
    OnnxModel,
    sha256_file,
    write_artifact_config,
)
from service.preprocess import PreprocessConfig
from training.models.sicot import SICoTModel

log = logging.getLogger(__name__)

OUTPUTS = ["embedding", "sku_logits", "category_logits"]
ONNX_FILE = "model.onnx"
CHECKPOINT_FILE = "checkpoint.pt"


def _versions() -> dict[str, str]:
    import onnx
    import onnxruntime

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "numpy": np.__version__,
    }


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
    """Write the artifact folder ``out_dir/name`` and return its path.

    The ONNX output is compared with torch before publishing; a difference above
    ``verify_tol`` raises. An existing ``out_dir/name`` raises unless ``overwrite``."""
    if not name or "/" in name or name.startswith("."):
        raise ValueError(f"invalid artifact name {name!r}")
    _check_labels(model, labels)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    final = out_dir / name
    if final.exists() and not overwrite:
        raise FileExistsError(f"{final} exists; pass overwrite=True to replace it")
    tmp = out_dir / f".{name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    was_training = model.training
    try:
        model.eval()
        export_onnx(model, tmp / ONNX_FILE, preprocess.input_size, opset)
        probe = np.random.default_rng(0).standard_normal(
            (2, 3, preprocess.input_size, preprocess.input_size)).astype(np.float32)
        diff = verify_onnx(tmp, model, probe)
        if diff > verify_tol:
            raise RuntimeError(f"ONNX Runtime differs from torch by {diff:.2e} > {verify_tol}")
        if checkpoint is not None:
            torch.save(checkpoint, tmp / CHECKPOINT_FILE)
        sha = sha256_file(tmp / ONNX_FILE)
        config = ArtifactConfig(
            kind="sicot", name=name, model_version=f"{name}-{sha[:12]}",
            created_at=datetime.now(UTC).isoformat(timespec="seconds"),
            onnx_file=ONNX_FILE, onnx_sha256=sha,
            checkpoint_file=CHECKPOINT_FILE if checkpoint is not None else None,
            input_name="image", outputs=OUTPUTS, model=model_config, preprocess=preprocess,
            labels=labels, versions=_versions(), evaluation=evaluation or {},
        )
        write_artifact_config(tmp, config)
        _publish(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        model.train(was_training)
    log.info("exported %s (%s, ONNX max diff %.1e)", final, config.model_version, diff)
    return final


def _publish(tmp: Path, final: Path) -> None:
    """Rename ``tmp`` to ``final``; an old ``final`` is moved aside first, then deleted."""
    old = None
    if final.exists():
        old = final.with_name(f".{final.name}.old-{uuid.uuid4().hex[:8]}")
        os.replace(final, old)
    os.replace(tmp, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)

"""The model artifact: a folder that holds everything serving needs to rebuild a model.

::

    artifacts/<name>/
        model.onnx        visual path only; input ``image`` (N,3,S,S) float32,
                          outputs listed in config.outputs (SICoT: embedding, sku_logits,
                          category_logits; embedding is L2-normalised)
        config.json       ArtifactConfig below
        checkpoint.pt     the torch checkpoint (training only; the service never reads it)

``config.json`` keys (one definition for training, index_builder and the service):
``format_version``, ``kind`` ("sicot" | "localizer"), ``name``, ``model_version``
(name + the ONNX file's checksum prefix, so two different models never share a version),
``created_at``, ``onnx_file``, ``onnx_sha256``, ``checkpoint_file``, ``input_name``,
``outputs``, ``model`` (the model's own config: backbone, embed_dim, text encoder, ...),
``preprocess`` (:class:`~service.preprocess.PreprocessConfig`), ``labels`` (class index →
sku_id, category names, class → category, per-class training counts), ``versions`` (library
versions at export) and ``evaluation`` (summary of the evaluation run, if any).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
import os
import platform
import shutil
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from service.preprocess import PreprocessConfig
from service.settings import OnnxRuntimeSettings

log = logging.getLogger(__name__)

ARTIFACT_FORMAT_VERSION = 1
# the folder's file names: every writer and reader takes them from here
CONFIG_FILE = "config.json"
ONNX_FILE = "model.onnx"
CHECKPOINT_FILE = "checkpoint.pt"
# the libraries whose versions an artifact records (``ArtifactConfig.versions``)
VERSIONED_LIBRARIES = ("numpy", "onnx", "onnxruntime", "torch")


class ArtifactError(RuntimeError):
    """An artifact folder is missing, incomplete or inconsistent."""


class LabelMap(BaseModel):
    model_config = ConfigDict(extra="forbid")

    sku_ids: list[str] = Field(description="class index → sku_id")
    categories: list[str] = Field(description="category index → category name")
    sku_category: list[int] = Field(description="class index → category index")
    train_counts: list[int] = Field(description="training images per class")

    @model_validator(mode="after")
    def _consistent(self) -> LabelMap:
        n = len(self.sku_ids)
        if len(set(self.sku_ids)) != n:
            raise ValueError("sku_ids must be unique")
        if len(self.sku_category) != n or len(self.train_counts) != n:
            raise ValueError("sku_category and train_counts need one entry per sku_id")
        if any(not 0 <= c < len(self.categories) for c in self.sku_category):
            raise ValueError("sku_category holds an index outside categories")
        return self

    @property
    def num_classes(self) -> int:
        return len(self.sku_ids)

    def index_of(self) -> dict[str, int]:
        return {s: i for i, s in enumerate(self.sku_ids)}


class ArtifactConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    format_version: int = ARTIFACT_FORMAT_VERSION
    kind: Literal["sicot", "localizer"]
    name: str
    model_version: str
    created_at: str
    onnx_file: str = ONNX_FILE
    onnx_sha256: str = ""
    checkpoint_file: str | None = CHECKPOINT_FILE
    input_name: str = "image"
    outputs: list[str]
    model: dict[str, Any] = Field(default_factory=dict)
    preprocess: PreprocessConfig
    labels: LabelMap | None = None
    versions: dict[str, str] = Field(default_factory=dict)
    evaluation: dict[str, Any] = Field(default_factory=dict)


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def write_artifact_config(folder: str | os.PathLike[str], config: ArtifactConfig) -> Path:
    """Write ``config.json`` atomically (tmp file + rename)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / CONFIG_FILE
    tmp = target.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(config.model_dump(mode="json"), indent=2, ensure_ascii=False))
    os.replace(tmp, target)
    return target


def library_versions() -> dict[str, str]:
    """Python and :data:`VERSIONED_LIBRARIES` as installed (read from package metadata, so
    nothing is imported; a library that is not installed is left out)."""
    out = {"python": platform.python_version()}
    for name in VERSIONED_LIBRARIES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return out


def write_artifact(
    final: str | os.PathLike[str],
    fill: Callable[[Path], ArtifactConfig],
    *,
    check: Callable[[Path], None] | None = None,
    overwrite: bool = False,
) -> ArtifactConfig:
    """The one writer of an artifact folder, atomic: ``fill(tmp)`` writes the model files into
    a fresh folder beside ``final`` and returns the config; ``config.json`` is written, then
    ``check(tmp)`` (e.g. ONNX Runtime against the training framework) may raise; only then is
    the folder renamed into place (an old ``final`` moved aside first, then deleted), so a
    crash never leaves a half-written artifact where a reader would find it."""
    final = Path(final)
    if final.exists() and not overwrite:
        raise FileExistsError(f"{final} exists; pass overwrite=True to replace it")
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.tmp-{uuid.uuid4().hex[:8]}")
    tmp.mkdir()
    try:
        config = fill(tmp)
        write_artifact_config(tmp, config)
        if check is not None:
            check(tmp)
        old = None
        if final.exists():
            old = final.with_name(f".{final.name}.old-{uuid.uuid4().hex[:8]}")
            os.replace(final, old)
        os.replace(tmp, final)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("wrote artifact %s (%s)", final, config.model_version)
    return config


def read_artifact_config(folder: str | os.PathLike[str]) -> ArtifactConfig:
    folder = Path(folder)
    path = folder / CONFIG_FILE
    if not path.is_file():
        raise ArtifactError(f"{folder} is not a model artifact: {CONFIG_FILE} is missing")
    try:
        config = ArtifactConfig.model_validate_json(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise ArtifactError(f"{path} is invalid: {exc}") from None
    if config.format_version > ARTIFACT_FORMAT_VERSION:
        raise ArtifactError(
            f"{path} has format_version {config.format_version}; this code reads up to "
            f"{ARTIFACT_FORMAT_VERSION}: upgrade the service"
        )
    return config


class OnnxModel:
    """An ONNX Runtime session with named outputs; ``run`` takes a (N,3,S,S) float32 batch."""

    def __init__(self, path: str | os.PathLike[str], runtime: OnnxRuntimeSettings | None = None):
        import onnxruntime as ort  # a `serve` extra; the core imports without it

        runtime = runtime or OnnxRuntimeSettings()
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = runtime.intra_op_threads
        opts.inter_op_num_threads = runtime.inter_op_threads
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        available = set(ort.get_available_providers())
        wants_cuda = "CUDAExecutionProvider" in runtime.providers
        if wants_cuda and "CUDAExecutionProvider" in available and hasattr(ort, "preload_dlls"):
            ort.preload_dlls()  # CUDA/cuDNN from the pip wheels of the `gpu` extra
        providers = [p for p in runtime.providers if p in available] or ["CPUExecutionProvider"]
        self.session = ort.InferenceSession(str(path), sess_options=opts, providers=providers)
        self.input_name = self.session.get_inputs()[0].name
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.providers = self.session.get_providers()

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        if batch.dtype != np.float32 or batch.ndim != 4:
            raise ValueError(f"expected a (N,3,S,S) float32 batch, got {batch.dtype} {batch.shape}")
        outs = self.session.run(self.output_names, {self.input_name: batch})
        return dict(zip(self.output_names, outs, strict=True))


@dataclass
class Artifact:
    path: Path
    config: ArtifactConfig
    model: OnnxModel

    @property
    def preprocess(self) -> PreprocessConfig:
        return self.config.preprocess


def load_artifact(
    folder: str | os.PathLike[str],
    runtime: OnnxRuntimeSettings | None = None,
    *,
    verify_checksum: bool = True,
) -> Artifact:
    """Read ``config.json``, check the ONNX file against it and open an ORT session."""
    folder = Path(folder)
    config = read_artifact_config(folder)
    onnx_path = folder / config.onnx_file
    if not onnx_path.is_file():
        raise ArtifactError(f"{onnx_path} is missing")
    if verify_checksum and config.onnx_sha256 and sha256_file(onnx_path) != config.onnx_sha256:
        raise ArtifactError(f"{onnx_path} does not match onnx_sha256 in {CONFIG_FILE}")
    model = OnnxModel(onnx_path, runtime)
    missing = [o for o in config.outputs if o not in model.output_names]
    if missing:
        raise ArtifactError(f"{onnx_path} lacks outputs {missing} named in {CONFIG_FILE}")
    return Artifact(folder, config, model)

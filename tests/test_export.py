"""ONNX export: the artifact folder loads with the service's loader (real ONNX Runtime),
matches torch, has a dynamic batch, publishes atomically and needs no torch to be served."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from service.artifact import (
    ArtifactConfig,
    LabelMap,
    load_artifact,
    read_artifact_config,
    sha256_file,
    write_artifact,
)
from service.preprocess import PreprocessConfig
from training.export import export_artifact, verify_onnx
from training.models import SICoTConfig, SICoTModel

REPO_ROOT = Path(__file__).resolve().parents[1]
CFG = SICoTConfig(backbone="tiny_cnn", num_classes=6, num_categories=2, vocab_size=20,
                  word_dim=8, embed_dim=16, seed=3)
LABELS = LabelMap(sku_ids=[f"sku{i}" for i in range(6)], categories=["food", "toys"],
                  sku_category=[0, 0, 0, 1, 1, 1], train_counts=[9, 5, 3, 2, 1, 1])


@pytest.fixture(scope="module")
def model() -> SICoTModel:
    """A tiny SICoT model whose BatchNorm statistics moved away from their defaults, so the
    eval-mode graph is not trivially the identity."""
    m = SICoTModel(CFG)
    m.train()
    with torch.no_grad():
        for _ in range(3):
            m(torch.randn(8, 3, 64, 64) * 2 + 0.5)
    return m.eval()


@pytest.fixture(scope="module")
def artifact(model: SICoTModel, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("artifacts")
    return export_artifact(
        model, out_dir=out, name="tiny", labels=LABELS, preprocess=model.default_preprocess,
        model_config=CFG.model_dump(), evaluation={"top1": 0.5},
        checkpoint={"model_state": model.state_dict(), "model_config": CFG.model_dump()},
    )


def _torch_outputs(model: SICoTModel, x: np.ndarray) -> list[np.ndarray]:
    with torch.no_grad():
        return [t.numpy() for t in model.export_module().eval()(torch.from_numpy(x))]


def test_artifact_config(artifact: Path, model: SICoTModel) -> None:
    cfg = read_artifact_config(artifact)
    sha = sha256_file(artifact / "model.onnx")
    assert cfg.kind == "sicot" and cfg.name == "tiny"
    assert cfg.onnx_sha256 == sha and cfg.model_version == f"tiny-{sha[:12]}"
    assert cfg.outputs == ["embedding", "sku_logits", "category_logits"]
    assert cfg.input_name == "image"
    assert cfg.preprocess == model.default_preprocess
    assert cfg.labels == LABELS and cfg.model["backbone"] == "tiny_cnn"
    assert cfg.evaluation == {"top1": 0.5}
    assert {"torch", "onnx", "onnxruntime"} <= set(cfg.versions)
    assert cfg.created_at.endswith("+00:00")
    assert (artifact / "checkpoint.pt").is_file() and cfg.checkpoint_file == "checkpoint.pt"
    assert sorted(p.name for p in artifact.parent.iterdir()) == ["tiny"]  # no temp leftovers


@pytest.mark.parametrize("batch", [1, 3])
def test_onnx_matches_torch_with_dynamic_batch(
    artifact: Path, model: SICoTModel, batch: int
) -> None:
    art = load_artifact(artifact)
    x = np.random.default_rng(batch).standard_normal((batch, 3, 64, 64)).astype(np.float32)
    got = art.model.run(x)
    ref = _torch_outputs(model, x)
    for name, r in zip(["embedding", "sku_logits", "category_logits"], ref, strict=True):
        assert got[name].shape == r.shape
        np.testing.assert_allclose(got[name], r, atol=1e-4, rtol=0)
    np.testing.assert_allclose(np.linalg.norm(got["embedding"], axis=1), 1.0, atol=1e-5)
    assert verify_onnx(artifact, model, x) <= 1e-4


def test_artifact_loads_without_torch(artifact: Path) -> None:
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "import json, numpy as np\n"
        "from service.artifact import load_artifact\n"
        f"art = load_artifact({str(artifact)!r})\n"
        "out = art.model.run(np.zeros((2, 3, 64, 64), np.float32))\n"
        "assert 'torch' not in [m for m, v in sys.modules.items() if v is not None]\n"
        "print(json.dumps({k: list(v.shape) for k, v in out.items()}))\n"
    )
    res = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout) == {
        "embedding": [2, 16], "sku_logits": [2, 6], "category_logits": [2, 2]}


def test_export_refuses_to_overwrite_and_replaces_when_asked(
    model: SICoTModel, tmp_path: Path
) -> None:
    kw = {"out_dir": tmp_path, "name": "m", "labels": LABELS,
          "preprocess": model.default_preprocess, "model_config": CFG.model_dump()}
    first = export_artifact(model, **kw)
    v1 = read_artifact_config(first)
    assert v1.checkpoint_file is None and not (first / "checkpoint.pt").exists()
    with pytest.raises(FileExistsError):
        export_artifact(model, **kw)
    other = SICoTModel(CFG.model_copy(update={"seed": 4})).eval()
    assert export_artifact(other, overwrite=True, **kw) == first
    assert read_artifact_config(first).model_version != v1.model_version
    x = np.ones((1, 3, 64, 64), np.float32)
    np.testing.assert_allclose(load_artifact(first).model.run(x)["sku_logits"],
                               _torch_outputs(other, x)[1], atol=1e-4)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


def test_failed_export_leaves_nothing(model: SICoTModel, tmp_path: Path) -> None:
    kw = {"out_dir": tmp_path, "labels": LABELS, "preprocess": model.default_preprocess,
          "model_config": CFG.model_dump()}
    with pytest.raises(Exception):  # noqa: B017 - pickling a lambda fails in torch.save
        export_artifact(model, name="broken", checkpoint={"fn": lambda x: x}, **kw)
    assert list(tmp_path.iterdir()) == []
    bad = LABELS.model_copy(update={"categories": ["only"], "sku_category": [0] * 6})
    with pytest.raises(ValueError, match="categories"):
        export_artifact(model, name="bad", **{**kw, "labels": bad})
    assert list(tmp_path.iterdir()) == []


def _dummy_fill(marker: str):  # type: ignore[no-untyped-def]
    def fill(tmp: Path) -> ArtifactConfig:
        (tmp / "model.onnx").write_text(marker)
        return ArtifactConfig(kind="localizer", name="loc", model_version=f"loc-{marker}",
                              created_at="2026-01-01T00:00:00Z", outputs=["heatmap"],
                              preprocess=PreprocessConfig())
    return fill


def test_the_one_writer_is_atomic_for_every_kind(tmp_path: Path) -> None:
    """A failing check (or a crash in fill) leaves the previous folder as it was and no
    temporary folder behind; a passing one replaces it whole."""
    final = tmp_path / "loc"
    write_artifact(final, _dummy_fill("one"))
    assert read_artifact_config(final).model_version == "loc-one"

    def failing_check(tmp: Path) -> None:
        assert (tmp / "config.json").is_file()  # the check sees the whole folder
        raise RuntimeError("ONNX Runtime differs")

    with pytest.raises(RuntimeError, match="differs"):
        write_artifact(final, _dummy_fill("two"), check=failing_check, overwrite=True)
    with pytest.raises(FileExistsError):
        write_artifact(final, _dummy_fill("two"))
    assert (final / "model.onnx").read_text() == "one"
    assert read_artifact_config(final).model_version == "loc-one"
    write_artifact(final, _dummy_fill("three"), overwrite=True)
    assert (final / "model.onnx").read_text() == "three"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["loc"]

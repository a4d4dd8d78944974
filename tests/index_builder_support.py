"""Test data for the index builder: a tiny exported ONNX model and generated catalogs.

Used until/unless conftest's ``tiny_artifact`` exists (the tests prefer it when it does).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from service.artifact import ArtifactConfig, LabelMap, sha256_file, write_artifact_config
from service.preprocess import PreprocessConfig


def export_tiny_artifact(folder: Path, sku_ids: list[str], categories: list[str]) -> Path:
    """conv → conv → global pool → linear, outputs embedding (L2-normalised), sku_logits,
    category_logits; exported like training.export does (dynamo=False, opset 17)."""
    import torch
    from torch import nn

    torch.manual_seed(0)

    class Tiny(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.features = nn.Sequential(
                nn.Conv2d(3, 16, 3, stride=2, padding=1), nn.ReLU(),
                nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU(),
                nn.AdaptiveAvgPool2d(4), nn.Flatten())
            self.embed = nn.Linear(32 * 16, 32)
            self.sku = nn.Linear(32, len(sku_ids))
            self.cat = nn.Linear(32, len(categories))

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
            v = self.embed(self.features(x))
            return nn.functional.normalize(v, dim=1), self.sku(v), self.cat(v)

    folder.mkdir(parents=True, exist_ok=True)
    model = Tiny().eval()
    outputs = ["embedding", "sku_logits", "category_logits"]
    torch.onnx.export(model, (torch.randn(2, 3, 32, 32),), str(folder / "model.onnx"),
                      dynamo=False, opset_version=17, input_names=["image"],
                      output_names=outputs,
                      dynamic_axes={n: {0: "batch"} for n in ["image", *outputs]})
    sha = sha256_file(folder / "model.onnx")
    labels = LabelMap(sku_ids=sku_ids, categories=categories,
                      sku_category=[i % len(categories) for i in range(len(sku_ids))],
                      train_counts=[1] * len(sku_ids))
    write_artifact_config(folder, ArtifactConfig(
        kind="sicot", name="tiny-test", model_version=f"tiny-test-{sha[:12]}",
        created_at=datetime.now(UTC).isoformat(), onnx_sha256=sha, checkpoint_file=None,
        outputs=outputs, model={"backbone": "tiny-test", "embed_dim": 32},
        preprocess=PreprocessConfig(input_size=32), labels=labels))
    return folder


def write_image(path: Path, seed: int, size: int = 40) -> Path:
    """A distinct picture per seed: coloured blocks on a coloured background."""
    rng = np.random.default_rng(seed)
    arr = np.empty((size, size, 3), np.uint8)
    arr[:] = rng.integers(0, 256, 3)
    for _ in range(4):
        x0, y0 = rng.integers(0, size - 8, 2)
        w, h = rng.integers(4, 16, 2)
        arr[y0:y0 + h, x0:x0 + w] = rng.integers(0, 256, 3)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return path


def sku_row(sku_id: str, image: str, **kw: Any) -> dict[str, Any]:
    n = sum(map(ord, sku_id))
    row = {"image": image, "sku_id": sku_id, "title": f"Product {sku_id}",
           "tags": [f"t{n % 3}", "demo"], "category": f"cat-{n % 4}"}
    row.update(kw)
    return row


def make_catalog(root: Path, sku_ids: list[str], images_per_sku: int = 2,
                 name: str = "catalog.jsonl", seed0: int = 0) -> tuple[Path, list[dict[str, Any]]]:
    """``root/name`` with images in ``root/images``; returns the path and its rows."""
    rows = []
    for i, sku in enumerate(sku_ids):
        for j in range(images_per_sku):
            img = write_image(root / "images" / f"{seed0}_{i:03d}_{j}.png", seed0 + 1000 * i + j)
            rows.append(sku_row(sku, str(img.relative_to(root))))
    return write_manifest(root / name, rows), rows


def write_manifest(path: Path, rows: list[dict[str, Any] | str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path

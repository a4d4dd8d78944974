"""Where recognition accuracy goes (issue 9 diagnosis): one artifact, many query sets.

For an exported SKU artifact, each ``--set NAME=MANIFEST`` is scored with ONNX Runtime and the
serving preprocessing, on the true box + 10 % when the manifest has boxes (query photos) and
on the whole image otherwise (catalog images): the classifier's top-1/top-3 (overall, head,
tail) and the index alone (nearest image of ``--catalog`` by the served embedding, recall@1
over SKUs). Sets are meant to differ in one factor each (``materialize.py --profile-file``:
clean, geometry, lighting, optics, clutter, small; the art vendor; clean art vs scene), so the
drop from one row to the next is that factor's cost.

``--frozen-imagenet SIZE`` adds the reference that trains nothing: EfficientNet-Lite0's
ImageNet features (pooled 1280-d) at SIZE px, nearest catalog image — what a reverse image
search does — to separate input resolution from training.

    .venv/bin/python bench/accuracy_diagnosis.py --artifact ART --catalog CAT/manifest.jsonl \\
        --set clean=/data/prof-clean/queries/manifest.jsonl --set b1=... --out diag.json
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from service.artifact import load_artifact  # noqa: E402
from service.catalog import CatalogItem, read_catalog  # noqa: E402
from service.imageio import load_image  # noqa: E402
from service.preprocess import PreprocessConfig, crop_box, preprocess_batch  # noqa: E402
from service.settings import OnnxRuntimeSettings  # noqa: E402
from training.evaluate import accuracy_summary, json_safe  # noqa: E402
from training.online_eval import in_test_half  # noqa: E402

log = logging.getLogger("accuracy_diagnosis")


def load_crops(items: list[CatalogItem], margin: float = 0.1) -> list[Any]:
    return [crop_box(load_image(it.image), it.box, margin) if it.box else load_image(it.image)
            for it in items]


def run_batches(run: Any, images: list[Any], pcfg: PreprocessConfig, bs: int = 32) -> dict[str, np.ndarray]:
    outs: dict[str, list[np.ndarray]] = {}
    for s in range(0, len(images), bs):
        for k, v in run(preprocess_batch(images[s:s + bs], pcfg)).items():
            outs.setdefault(k, []).append(v)
    return {k: np.concatenate(v) for k, v in outs.items()}


def nearest_sku(query: np.ndarray, catalog: np.ndarray, cat_skus: np.ndarray,
                k: int = 3) -> list[list[str]]:
    """Distinct SKUs of the nearest catalog images (cosine), best first, ``k`` of them."""
    q = query / np.linalg.norm(query, axis=1, keepdims=True).clip(1e-12)
    c = catalog / np.linalg.norm(catalog, axis=1, keepdims=True).clip(1e-12)
    order = np.argsort(-(q @ c.T), axis=1)[:, :30]
    return [list(dict.fromkeys(cat_skus[row].tolist()))[:k] for row in order]


def index_scores(neigh: list[list[str]], truth: list[str]) -> dict[str, float]:
    return {"top1": 100 * float(np.mean([bool(n) and n[0] == t for n, t in zip(neigh, truth, strict=True)])),
            "top3": 100 * float(np.mean([t in n[:3] for n, t in zip(neigh, truth, strict=True)]))}


class FrozenImagenet:
    """Lite0's pooled ImageNet features at ``size`` px through ONNX Runtime."""

    def __init__(self, size: int, path: Path) -> None:
        import onnxruntime as ort
        import torch

        from training.models import create_backbone

        bb = create_backbone("efficientnet_lite0", pretrained=True).eval()

        class Features(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.bb = bb

            def forward(self, x: torch.Tensor) -> torch.Tensor:
                return self.bb.forward_features(x)

        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(Features().eval(), (torch.zeros(2, 3, size, size),), str(path), dynamo=False,
                              opset_version=17, input_names=["x"], output_names=["f"],
                              dynamic_axes={"x": {0: "b"}, "f": {0: "b"}})
        so = ort.SessionOptions()
        so.intra_op_num_threads = 1
        self.session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        base = bb.default_preprocess
        self.pcfg = PreprocessConfig(**{**base.model_dump(), "input_size": size})

    def __call__(self, x: np.ndarray) -> dict[str, np.ndarray]:
        return {"embedding": self.session.run(None, {"x": x})[0]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="accuracy_diagnosis", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--artifact", type=Path, help="SKU artifact (omit for the frozen reference only)")
    p.add_argument("--catalog", type=Path, required=True, help="catalog manifest (the index)")
    p.add_argument("--set", action="append", default=[], metavar="NAME=MANIFEST")
    p.add_argument("--frozen-imagenet", type=int, action="append", default=[], metavar="SIZE")
    p.add_argument("--limit", type=int, default=0, help="first N images per set (0: all)")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    catalog = read_catalog(args.catalog, on_error="skip").items
    cat_imgs = load_crops(catalog)
    cat_skus = np.asarray([it.sku_id for it in catalog])
    sets = {}
    for spec in args.set:
        name, path = spec.split("=", 1)
        items = read_catalog(path, on_error="skip").items
        if name.split("_")[0] in ("b1", "b2"):  # benchmark sets: the reported test half
            items = [it for it in items if in_test_half(it.image)]
        sets[name] = items[: args.limit] if args.limit else items
    models: dict[str, tuple[Any, PreprocessConfig, Any]] = {}
    if args.artifact:
        art = load_artifact(args.artifact, OnnxRuntimeSettings(intra_op_threads=1))
        models[art.config.name] = (art.model.run, art.preprocess, art.config.labels)
    for size in args.frozen_imagenet:
        fz = FrozenImagenet(size, args.out.parent / f"frozen-lite0-{size}.onnx")
        models[f"frozen_imagenet_{size}"] = (fz, fz.pcfg, None)
    report: dict[str, Any] = {"command": "bench/accuracy_diagnosis.py " + " ".join(
        sys.argv[1:] if argv is None else argv), "models": {}}
    for mname, (run, pcfg, labels) in models.items():
        cat_emb = run_batches(run, cat_imgs, pcfg)["embedding"]
        rows: dict[str, Any] = {}
        for sname, items in sets.items():
            if labels is not None:
                index = labels.index_of()
                items = [it for it in items if it.sku_id in index]
            outs = run_batches(run, load_crops(items), pcfg)
            truth = [it.sku_id for it in items]
            row: dict[str, Any] = {"n": len(items), "index": index_scores(
                nearest_sku(outs["embedding"], cat_emb, cat_skus), truth)}
            if labels is not None:
                y = np.asarray([labels.index_of()[s] for s in truth])
                acc = accuracy_summary(outs["sku_logits"], y, labels.train_counts)
                row["classifier"] = {"top1": acc["top1"], "top3": acc["top3"],
                                     "head_top1": acc["groups"]["head"]["top1"],
                                     "tail_top1": acc["groups"]["tail"]["top1"]}
            rows[sname] = row
            log.info("%s / %s: %s", mname, sname, row)
        report["models"][mname] = rows
    args.out.write_text(json.dumps(json_safe(report), indent=2))
    for mname, rows in report["models"].items():
        sys.stdout.write(f"\n{mname}\n| set | n | classifier top-1 | top-3 | head | tail | index top-1 | index top-3 |\n|---|---|---|---|---|---|---|---|\n")
        for sname, r in rows.items():
            c = r.get("classifier", {})
            cells = [f"{c[k]:.1f}" if k in c else "–" for k in ("top1", "top3", "head_top1", "tail_top1")]
            sys.stdout.write(f"| {sname} | {r['n']} | {' | '.join(cells)} | "
                             f"{r['index']['top1']:.1f} | {r['index']['top3']:.1f} |\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

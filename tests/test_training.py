"""Training pipeline: eval transform == serving transform, data splits, short real trainings
with every text encoder (loss falls, artifact exports, ONNX == torch), exact resume, sku-eval
on the exported artifact, and a 2-process torchrun (gloo) run.

The catalog is generated here (12 tiny long-tailed classes of coloured shapes with noisy
titles, plus query photos with boxes) so the file does not depend on other fixtures.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from service.artifact import load_artifact
from service.catalog import read_catalog
from service.imageio import load_image
from service.preprocess import PreprocessConfig, crop_box, preprocess
from training import evaluate, train
from training.checkpoint import load_checkpoint
from training.data import ImageSource, SkuDataset, build_label_map, eval_transform, split_heldout
from training.models import list_text_encoders

REPO = Path(__file__).resolve().parents[1]
COLOURS = {"red": (220, 30, 30), "green": (30, 170, 60), "blue": (40, 60, 220),
           "yellow": (235, 200, 20), "purple": (140, 40, 170), "orange": (245, 130, 20)}
SHAPES = ("circle", "square")
PROMO = ("free shipping", "hot sale", "new", "2026")


def _draw(colour: tuple[int, int, int], shape: str, size: int, rng: np.random.Generator,
          bg: tuple[int, int, int] = (255, 255, 255)) -> Image.Image:
    img = Image.new("RGB", (size, size), bg)
    d = ImageDraw.Draw(img)
    m = int(rng.integers(2, size // 5))
    box = (m, m, size - m - int(rng.integers(0, 4)), size - m - int(rng.integers(0, 4)))
    jitter = tuple(int(np.clip(c + rng.integers(-15, 16), 0, 255)) for c in colour)
    (d.ellipse if shape == "circle" else d.rectangle)(box, fill=jitter)
    return img


def make_catalog(root: Path, seed: int = 0) -> dict[str, Path]:
    """12 SKUs (6 colours × 2 shapes), 10 down to 2 training images, 2 queries each."""
    rng = np.random.default_rng(seed)
    (root / "train").mkdir(parents=True)
    (root / "queries").mkdir()
    train_rows, query_rows = [], []
    skus = [(c, s) for c in COLOURS for s in SHAPES]
    for k, (colour, shape) in enumerate(skus):
        sku = f"S{k:02d}"
        for j in range(max(2, 10 - k)):
            name = f"{sku}_{j}.png"
            _draw(COLOURS[colour], shape, 40, rng).save(root / "train" / name)
            words = [colour, shape, f"brand{k % 3}", *rng.choice(PROMO, 2, replace=False)]
            rng.shuffle(words)
            train_rows.append({"image": name, "sku_id": sku, "title": " ".join(words),
                               "category": shape})
        for j in range(2):
            canvas = Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))
            x0, y0 = int(rng.integers(0, 24)), int(rng.integers(0, 24))
            canvas.paste(_draw(COLOURS[colour], shape, 40, rng, bg=(200, 200, 200)), (x0, y0))
            name = f"q{k:02d}_{j}.jpg"
            canvas.save(root / "queries" / name, quality=90)
            query_rows.append({"image": name, "sku_id": sku, "category": shape,
                               "box": [x0, y0, x0 + 40, y0 + 40]})
    paths = {"train": root / "train" / "manifest.jsonl", "queries": root / "queries" / "manifest.jsonl"}
    for key, rows in (("train", train_rows), ("queries", query_rows)):
        paths[key].write_text("".join(json.dumps(r) + "\n" for r in rows))
    return paths


@pytest.fixture(scope="module")
def catalog(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return make_catalog(tmp_path_factory.mktemp("catalog"))


def tiny_args(cat: dict[str, Path], out: Path, encoder: str, **over: object) -> list[str]:
    fields: dict[str, object] = {
        "train_manifest": cat["train"], "query_manifest": cat["queries"], "output_dir": out,
        "backbone": "tiny_cnn", "pretrained": False, "input_size": 32, "embed_dim": 32,
        "text_encoder": encoder, "word_dim": 16, "word2vec_epochs": 2, "epochs": 3,
        "batch_size": 8, "lr": 0.05, "schedule": "cosine", "warmup_epochs": 0.5, "seed": 3,
        "num_threads": 1, "eval_every": 1, "dropout": 0.0, "run_name": f"t-{encoder}",
        "vocab_max_df": 0.9, "head_threshold": 6, "many_threshold": 8,
    }
    fields.update(over)
    argv: list[str] = []
    for k, v in fields.items():
        argv += [f"--{k.replace('_', '-')}", str(v)]
    return argv


@pytest.mark.parametrize("cache", ["none", "bytes", "decoded"])
def test_eval_transform_is_the_serving_transform(catalog: dict[str, Path], cache: str) -> None:
    items = read_catalog(catalog["queries"]).items
    labels = build_label_map(items, items)
    source = ImageSource(cache=cache)
    source.preload(items)
    for cfg in (PreprocessConfig(input_size=48), PreprocessConfig(input_size=37, resize="squash"),
                PreprocessConfig(input_size=32, resize="center_crop", mean=(0.5,) * 3)):
        ds = SkuDataset(items, labels, source, cfg, crop_margin=0.1)
        for i in (0, 5, 5):  # twice: the second read comes from the cache
            serving = preprocess(crop_box(load_image(items[i].image), items[i].box, 0.1), cfg)
            got = ds[i]["image"].numpy()
            assert got.dtype == serving.dtype and got.shape == serving.shape
            assert np.array_equal(got, serving)  # bit-identical
        assert torch.equal(eval_transform(load_image(items[0].image), cfg),
                           torch.from_numpy(preprocess(load_image(items[0].image), cfg)))


def test_heldout_split_and_label_map(catalog: dict[str, Path]) -> None:
    items = read_catalog(catalog["train"]).items
    train_a, held_a = split_heldout(items, 1, 3, seed=0)
    train_b, held_b = split_heldout(list(reversed(items)), 1, 3, seed=0)
    assert {it.image for it in held_a} == {it.image for it in held_b}  # order-independent
    per_class = {s: sum(it.sku_id == s for it in items) for s in {it.sku_id for it in items}}
    assert len(held_a) == sum(n >= 3 for n in per_class.values())
    labels = build_label_map(items, train_a)
    assert labels.sku_ids == sorted(per_class)
    assert labels.categories == ["circle", "square"]
    assert sum(labels.train_counts) == len(train_a)
    assert labels.train_counts[0] == per_class["S00"] - 1 and labels.train_counts[-1] == 2


@pytest.mark.slow
@pytest.mark.parametrize("encoder", ["none", *list_text_encoders()])
def test_short_training_run(catalog: dict[str, Path], tmp_path: Path, encoder: str) -> None:
    out = tmp_path / "run"
    assert train.main(tiny_args(catalog, out, encoder)) == 0
    hist = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert len(hist) == 3 and hist[-1]["loss"] < hist[0]["loss"]
    assert ("mixed" in hist[0]) == (encoder != "none")
    rep = json.loads((out / "report.json").read_text())
    assert set(rep["evaluation"]) == {"heldout", "queries"}
    assert rep["onnx_max_abs_diff"] <= 1e-4
    art = load_artifact(rep["artifact"])
    assert art.config.labels is not None and art.config.labels.num_classes == 12
    assert art.config.evaluation["queries"]["n"] == 24
    ckpt = load_checkpoint(out)
    assert {"model_config", "model_state", "vocab", "optimizer_state", "scheduler_state",
            "epoch", "step", "rng_state", "train_config"} <= set(ckpt)
    assert (ckpt["vocab"] is None) == (encoder == "none")
    assert (out / "report.md").is_file() and (out / "per_class_queries.png").is_file()


def test_baseline_and_sicot_see_the_same_batches(catalog: dict[str, Path], tmp_path: Path) -> None:
    from training import builders
    from training.augment import BatchAugment, batch_seed
    from training.data import train_loader, train_sampler
    from training.distributed import DistInfo
    from training.settings import build_config

    firsts = []
    for enc in ("none", "bilinear_attention"):
        cfg = build_config({"train_manifest": catalog["train"], "backbone": "tiny_cnn",
                            "pretrained": False, "input_size": 32, "text_encoder": enc,
                            "word2vec_epochs": 1, "output_dir": tmp_path})
        splits = builders.prepare_splits(cfg)
        text = builders.prepare_text(cfg, splits.train, DistInfo())
        model = builders.build_model(cfg, splits.labels, text)
        pcfg = builders.preprocess_config(cfg, model)
        ds = builders.train_dataset(cfg, splits, ImageSource(), pcfg, text)
        sampler = train_sampler(ds, rank=0, world=1, seed=cfg.seed)
        batch = next(iter(train_loader(ds, sampler, batch_size=8, epoch=1, skip_batches=1,
                                       workers=0, seed=cfg.seed)))
        aug = BatchAugment(pcfg.mean, pcfg.std, style=1.0)
        firsts.append((aug(batch["image"], batch_seed(cfg.seed, 1, 1, 0)), batch["label"],
                       model.backbone.state_dict()))
    (xa, ya, wa), (xb, yb, wb) = firsts
    assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.mark.slow
def test_resume_matches_uninterrupted_run(catalog: dict[str, Path], tmp_path: Path) -> None:
    common = {"epochs": 2, "eval_every": 0, "export": False, "query_manifest": "none"}
    full, part = tmp_path / "full", tmp_path / "part"
    assert train.main(tiny_args(catalog, full, "bilinear_attention", **common)) == 0
    # pre-empted mid-epoch (6 steps per epoch here), then resumed from the run folder
    assert train.main(tiny_args(catalog, part, "bilinear_attention", stop_after_steps=5,
                                **common)) == 0
    assert load_checkpoint(part)["step"] == 5
    assert train.main(["--resume", str(part)]) == 0
    a, b = load_checkpoint(full), load_checkpoint(part)
    assert a["step"] == b["step"] == 2 * a["steps_per_epoch"]
    for k, v in a["model_state"].items():
        assert torch.equal(v, b["model_state"][k]), k


@pytest.mark.slow
def test_sku_eval_scores_the_artifact_like_training(catalog: dict[str, Path], tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    assert train.main(tiny_args(catalog, out, "mean", epochs=1, eval_every=0)) == 0
    rep = json.loads((out / "report.json").read_text())
    report_path = tmp_path / "eval.json"
    assert evaluate.main(["--artifact", rep["artifact"], "--manifest", str(catalog["queries"]),
                          "--crop-to-box", "--head-threshold", "6", "--many-threshold", "8",
                          "--out", str(report_path)]) == 0
    onnx_res, torch_res = json.loads(report_path.read_text()), rep["evaluation"]["queries"]
    assert onnx_res["n"] == torch_res["n"] == 24
    assert onnx_res["top1"] == pytest.approx(torch_res["top1"])
    assert onnx_res["groups"]["tail"]["top3"] == pytest.approx(torch_res["groups"]["tail"]["top3"])
    assert onnx_res["category_top1"] == pytest.approx(torch_res["category_top1"])
    assert "t-mean: n=24" in capsys.readouterr().out


def _torchrun(args: list[str]) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "training.train", *args]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_torchrun_ddp_two_processes(catalog: dict[str, Path], tmp_path: Path) -> None:
    """Two gloo processes train one epoch on their shards; rank 0 alone writes the
    checkpoint, evaluates and exports."""
    out = tmp_path / "ddp"
    proc = _torchrun(tiny_args(catalog, out, "bilinear_attention", epochs=1, eval_every=0,
                               num_threads=1, batch_size=4))
    assert proc.returncode == 0, proc.stderr[-3000:]
    ckpt = load_checkpoint(out)
    n_train = len(read_catalog(catalog["train"]).items) - 8  # 8 classes give a held-out image
    assert ckpt["steps_per_epoch"] == ckpt["step"] == (n_train // 2) // 4
    assert sorted(p.name for p in out.glob("*.pt")) == ["checkpoint.pt"]
    rep = json.loads((out / "report.json").read_text())
    assert rep["onnx_max_abs_diff"] <= 1e-4 and Path(rep["artifact"]).is_dir()
    assert proc.stdout.count("sku-train t-bilinear_attention") == 1  # one summary: rank 0


@pytest.mark.slow
def test_torchrun_sharded_fc_gathers_exports_and_resumes_dense(
        catalog: dict[str, Path], tmp_path: Path) -> None:
    """``--sharded-fc``: two gloo processes hold half of W each (negatives sampled at 0.5);
    rank 0 evaluates and exports the gathered dense model; the checkpoint is the dense
    layout, so one process resumes it without sharding (K = 2 → 1) and exports again."""
    out = tmp_path / "sharded"
    proc = _torchrun(tiny_args(catalog, out, "bilinear_attention", epochs=1, num_threads=1,
                               batch_size=4, sharded_fc="true", fc_sample_rate=0.5))
    assert proc.returncode == 0, proc.stderr[-3000:]
    ckpt = load_checkpoint(out)
    classes = len(ckpt["labels"]["sku_ids"])
    assert ckpt["model_state"]["classifier.weight"].shape == (classes, 32)
    momentum = [e["momentum_buffer"] for e in ckpt["optimizer_state"]["state"].values()]
    assert any(m.shape == (classes, 32) for m in momentum)  # W's momentum, gathered too
    rep = json.loads((out / "report.json").read_text())
    # cosine logits reach γ = 16: 5e-4 is float32 rounding (~3e-5 relative)
    assert rep["onnx_max_abs_diff"] <= 5e-4 and Path(rep["artifact"]).is_dir()
    assert "heldout_top1" in rep["training"]["history"][0]  # evaluated on the gathered W
    assert train.main(["--resume", str(out), "--epochs", "2", "--sharded-fc", "false",
                       "--fc-sample-rate", "1", "--batch-size", "8"]) == 0
    resumed = load_checkpoint(out)
    assert resumed["step"] == 2 * ckpt["step"] and not resumed["train_config"]["sharded_fc"]
    assert json.loads((out / "report.json").read_text())["onnx_max_abs_diff"] <= 5e-4

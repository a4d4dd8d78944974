"""Catalog images → embeddings with the artifact's ONNX model, a bad image costing one row.

Images are read, decoded (:func:`service.imageio.load_image`, the service's own limits),
cropped to the row's box and preprocessed (:func:`service.preprocess.preprocess`, the
artifact's config) by a few threads, one chunk ahead of ONNX Runtime, so decoding overlaps
inference; chunks are bounded, so memory does not grow with the catalog.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
from PIL import Image
from tqdm import tqdm

from service.artifact import Artifact
from service.catalog import BadRow, CatalogItem
from service.imageio import ImageError, load_image
from service.preprocess import PreprocessConfig, crop_box, preprocess
from service.settings import ImageLimits

log = logging.getLogger(__name__)
EMBEDDING_OUTPUT = "embedding"


@dataclass(frozen=True)
class ThumbSpec:
    size: int = 96
    quality: int = 80


@dataclass
class EmbedResult:
    """``embeddings[j]`` belongs to ``items[ok[j]]``; ``bad`` holds the rows that failed."""

    embeddings: np.ndarray
    ok: list[int]
    bad: list[BadRow] = field(default_factory=list)
    thumbs: dict[str, bytes] = field(default_factory=dict)


@dataclass
class _Loaded:
    tensor: np.ndarray | None
    bad: BadRow | None = None
    thumb: bytes | None = None


def make_thumbnail(img: Image.Image, spec: ThumbSpec) -> bytes:
    small = img.copy()
    small.thumbnail((spec.size, spec.size), Image.Resampling.BILINEAR)
    buf = io.BytesIO()
    small.save(buf, format="JPEG", quality=spec.quality, optimize=True)
    return buf.getvalue()


def load_row(
    item: CatalogItem, cfg: PreprocessConfig, limits: ImageLimits, thumb: ThumbSpec | None
) -> _Loaded:
    """Read, decode, crop and preprocess one row; a failure becomes a :class:`BadRow`."""
    try:
        img = load_image(item.image, limits)
    except ImageError as exc:
        reason = "missing_image" if "No such file" in str(exc) else exc.code
        return _Loaded(None, BadRow(item.source, reason, str(exc), item.sku_id))
    try:
        if item.box is not None and (item.box[2] > img.width + 1 or item.box[3] > img.height + 1):
            # clipping would hide a box in the wrong coordinates (another image size, or
            # normalised values written as pixels): reject rather than index a wrong crop
            raise ValueError(f"box {list(item.box)} exceeds the {img.width}x{img.height} image")
        img = crop_box(img, item.box, cfg.crop_margin)  # the artifact's crop rule
    except ValueError as exc:
        return _Loaded(None, BadRow(item.source, "bad_box", str(exc), item.sku_id))
    return _Loaded(preprocess(img, cfg), None, make_thumbnail(img, thumb) if thumb else None)


def check_rows(
    items: Sequence[CatalogItem], limits: ImageLimits, workers: int = 2, progress: bool = True
) -> list[BadRow]:
    """Decode and crop every row without the model (``--dry-run``): the bad rows."""
    cfg = PreprocessConfig(input_size=16)
    with ThreadPoolExecutor(workers) as pool:
        results = pool.map(lambda it: load_row(it, cfg, limits, None), items, chunksize=16)
        loaded = list(tqdm(results, total=len(items), desc="check images", unit="img",
                           disable=None if progress else True))
    return [r.bad for r in loaded if r.bad is not None]


def _chunks(n: int, size: int) -> Iterator[range]:
    for start in range(0, n, size):
        yield range(start, min(n, start + size))


def embed_items(
    items: Sequence[CatalogItem],
    artifact: Artifact,
    *,
    batch_size: int = 32,
    limits: ImageLimits | None = None,
    workers: int = 2,
    thumb: ThumbSpec | None = None,
    progress: bool = True,
) -> EmbedResult:
    """Embed every row of ``items``; rows whose image cannot be used are reported, not fatal."""
    if EMBEDDING_OUTPUT not in artifact.config.outputs:
        raise ValueError(f"{artifact.path} has no '{EMBEDDING_OUTPUT}' output")
    cfg, limits = artifact.config.preprocess, limits or ImageLimits()
    chunks = list(_chunks(len(items), batch_size))
    out: list[np.ndarray] = []
    result = EmbedResult(np.zeros((0, 0), np.float32), [])
    bar = tqdm(total=len(items), desc="embed", unit="img", disable=None if progress else True)
    with ThreadPoolExecutor(workers) as pool:

        def submit(rows: range) -> list[Future[_Loaded]]:
            return [pool.submit(load_row, items[i], cfg, limits, thumb) for i in rows]

        pending = submit(chunks[0]) if chunks else []
        for c, rows in enumerate(chunks):
            current, pending = pending, (submit(chunks[c + 1]) if c + 1 < len(chunks) else [])
            tensors = []
            for i, fut in zip(rows, current, strict=True):
                loaded = fut.result()
                if loaded.tensor is None:
                    assert loaded.bad is not None
                    result.bad.append(loaded.bad)
                    continue
                tensors.append(loaded.tensor)
                result.ok.append(i)
                if loaded.thumb is not None:
                    result.thumbs.setdefault(items[i].sku_id, loaded.thumb)
            if tensors:
                emb = artifact.model.run(np.stack(tensors))[EMBEDDING_OUTPUT]
                out.append(np.asarray(emb, dtype=np.float32).reshape(len(tensors), -1))
            bar.update(len(rows))
    bar.close()
    result.embeddings = normalize(np.concatenate(out)) if out else np.zeros((0, 0), np.float32)
    return result


def normalize(x: np.ndarray) -> np.ndarray:
    """L2-normalise rows (the model already does; this makes inner product = cosine for any
    artifact, and guards against a zero vector)."""
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.ascontiguousarray(x / np.maximum(norms, 1e-12), dtype=np.float32)

"""``sku-attention``: show which title words a trained SICoT model attends to (paper Fig. 7).

Loads a training checkpoint (``checkpoint.pt`` written by the training loop, or an artifact
folder holding one) with keys ``model_config`` (a :class:`SICoTConfig` dict), ``model_state``
(the model's state dict) and ``vocab`` (:meth:`Vocab.to_dict`), and the title length from
``max_len`` or ``train_config["max_title_len"]`` (else 32); it prints each ``--title``'s
words from most to least attended. Unknown words are marked ``<unk>``; words beyond the title
length are cut as in training.

    sku-attention runs/sicot/checkpoint.pt --title "grinning face with big eyes" --title ...
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from service.artifact import CHECKPOINT_FILE
from training.models.sicot import SICoTConfig, SICoTModel
from training.models.text import UNK, Vocab

DEFAULT_MAX_LEN = 32


@dataclass
class Inspectable:
    model: SICoTModel
    vocab: Vocab
    max_len: int


def load_for_inspection(path: str | os.PathLike[str]) -> Inspectable:
    """Rebuild the model (eval mode, CPU) and vocabulary from a checkpoint or artifact dir."""
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    ckpt = torch.load(path, map_location="cpu", weights_only=True)  # tensors + plain data only
    missing = [k for k in ("model_config", "model_state", "vocab") if k not in ckpt]
    if missing:
        raise ValueError(f"{path} is not a SICoT training checkpoint: it lacks {missing}")
    # The state dict overrides every weight: never load (or require) the pretrained file.
    cfg = SICoTConfig(**{**ckpt["model_config"], "pretrained": False, "weights_path": None})
    if cfg.text_encoder is None:
        raise ValueError(f"{path} holds a visual-only model (text_encoder=None): no attention")
    model = SICoTModel(cfg)
    model.load_state_dict(ckpt["model_state"], strict=True)
    model.eval()
    max_len = ckpt.get("max_len") or (ckpt.get("train_config") or {}).get("max_title_len")
    return Inspectable(model, Vocab.from_dict(ckpt["vocab"]), int(max_len or DEFAULT_MAX_LEN))


@torch.no_grad()
def rank_words(item: Inspectable, titles: list[str]) -> list[list[tuple[str, float]]]:
    """For each title: (word, attention weight), highest first."""
    text = item.model.text
    if text is None or not getattr(text, "has_attention", False):
        name = item.model.cfg.text_encoder
        raise ValueError(f"text encoder {name!r} has no word attention to show")
    tokens = [item.vocab.tokenize(t)[: item.max_len] for t in titles]
    ids, mask = item.vocab.encode(tokens, item.max_len)
    _, attn = item.model.encode_text(ids, mask)
    assert attn is not None  # has_attention was checked above
    ranked = []
    for toks, row_ids, row in zip(tokens, ids, attn, strict=True):
        words = [
            (w if int(i) != UNK else f"{w} <unk>", float(a))
            for w, i, a in zip(toks, row_ids.tolist(), row.tolist(), strict=False)
        ]
        ranked.append(sorted(words, key=lambda wa: -wa[1]))
    return ranked


def _format(title: str, words: list[tuple[str, float]]) -> str:
    lines = [f"title: {title}"]
    if not words:
        lines.append("  (no words)")
    lines += [f"  {rank:>2}. {a:6.3f}  {w}" for rank, (w, a) in enumerate(words, 1)]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="sku-attention",
        description="Rank the words of product titles by the word attention of a trained SICoT "
        "model (bilinear_attention or bilstm_attention text encoder), like Fig. 7 of the paper.",
    )
    p.add_argument("checkpoint", help="checkpoint.pt of a training run, or an artifact folder")
    p.add_argument("--title", action="append", required=True,
                   help="a title to inspect; repeat for several")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        item = load_for_inspection(args.checkpoint)
        ranked = rank_words(item, args.title)
    except (FileNotFoundError, ValueError) as exc:
        sys.stderr.write(f"sku-attention: {exc}\n")
        return 2
    if args.json:
        payload = [{"title": t, "words": [{"word": w, "attention": a} for w, a in r]}
                   for t, r in zip(args.title, ranked, strict=True)]
        sys.stdout.write(json.dumps(payload, ensure_ascii=False, indent=2) + "\n")
    else:
        sys.stdout.write("\n\n".join(_format(t, r) for t, r in zip(args.title, ranked,
                                                                   strict=True)) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The training recipe for customer photos, written once.

Chosen by the accuracy study (``bench/accuracy_study.py``, ``docs/results/accuracy-study.md``)
under the CPU budget: EfficientNet-Lite0 at 160 px with the stem and blocks 0-11 frozen, the
long-tailed training set plus *customer views* of the catalog packshots
(:mod:`training.customer_views`), a cosine (normalised-softmax) SKU head with an additive
margin, MixStyle on the first trained block, logit adjustment (τ = 1) with the epoch's class
prior.  ``sku-train`` (:class:`training.settings.TrainConfig`), the cached-trunk benches
(``bench/emoji_eval.py``, ``bench/accuracy_study.py``) and the demo take their defaults from
here.  No heavy imports: the settings module imports this one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class Recipe:
    input_size: int = 160
    freeze_blocks: int = 12  # stem + blocks[:12] frozen (cached by the benches)
    head: Literal["linear", "cosine"] = "cosine"
    cosine_scale: float = 16.0
    cosine_margin: float = 0.1
    mix_style_p: float = 0.5
    tau: float = 1.0  # logit-adjusted CE during training
    dropout: float = 0.3
    feature_dropout: float = 0.1  # on cached trunk maps (cached training only)
    catalog_views_per_epoch: int = 4  # customer views of each catalog image per epoch
    train_per_epoch: int = 10000  # training images drawn per epoch (cached training)
    train_views: int = 4  # cached views per training image (1 clean + 3 augmented)
    catalog_views: int = 16  # cached customer views per catalog image
    epochs: int = 20  # cached-trunk epochs; 5, then 10 (study section 12: +7, then +4 points)
    lr: float = 0.1
    backbone_lr_scale: float = 1.0  # trained trunk blocks: lr × this; 0.1, 0, 2.0 not better (study sec. 11)
    style_strength: float = 1.0  # art-style breakers (training.augment), every study cache
    rand_conv_p: float = 0.0  # colour-keeping random convolutions: tried, not adopted (study section 10)


RECIPE = Recipe()

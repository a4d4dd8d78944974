"""The training process's settings: one typed :class:`TrainConfig` for ``sku-train``.

Values come from, highest precedence first: command-line flags (one ``--field-name`` per
field, generated from this class), the ``--config`` file (YAML or JSON), the config saved in
the checkpoint when resuming, ``SKU_TRAIN_<FIELD>`` environment variables, the defaults here.
Relative paths are taken relative to the working directory.  A run writes the resolved config
to ``<output_dir>/config.json``; passing that file back as ``--config`` repeats the run.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from service.preprocess import CROP_MARGIN, ResizeMode
from service.settings import SettingsError
from training.recipe import RECIPE

ENV_PREFIX = "SKU_TRAIN_"
_NONE_WORDS = {"", "none", "null", "baseline", "off"}


class TrainConfig(BaseSettings):
    """Everything a training run needs; saved with the run and inside every checkpoint."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, extra="forbid", protected_namespaces=(), validate_default=True
    )

    # --- data ------------------------------------------------------------------------------
    train_manifest: Path = Field(description="training catalog (JSONL or Google CSV)")
    extra_train: list[str] = Field(
        default_factory=list, description="more training manifests, each 'PATH' or "
        "'PATH:WEIGHT' (comma-separated on the command line): e.g. the real-shot pairs of "
        "`sku-feedback export`; WEIGHT = times each image is seen per epoch (fractions "
        "sampled), relative to the train manifest's 1; only SKUs the train manifest knows")
    query_manifest: Path | None = Field(
        None, description="query photos with true boxes (evaluated cropped to the box)"
    )
    heldout_per_class: int = Field(
        1, ge=0, description="training images per class held out for the training-distribution "
        "evaluation (0 = no held-out split)",
    )
    heldout_min_images: int = Field(
        3, ge=2, description="only classes with at least this many images give held-out images, "
        "so every class keeps >= heldout_min_images - heldout_per_class training images",
    )
    catalog_manifest: Path | None = Field(
        None, description="catalog packshots (JSONL/CSV), trained on as customer views: each "
        "the main product of a synthetic real-shot scene, cropped like the online path")
    catalog_views_per_epoch: int = Field(
        RECIPE.catalog_views_per_epoch, ge=0, description="customer views of each catalog image per epoch")
    query_crop: bool = Field(True, description="crop query photos to their true box")
    crop_margin: float = Field(CROP_MARGIN, ge=0, le=1, description="box margin, fraction of its "
                               "size, per side; stored in the artifact's preprocess config")
    title_with_tags: bool = Field(False, description="append the tags to the title text")
    max_title_len: int = Field(24, ge=1, le=512, description="words kept per title")
    cache: Literal["none", "bytes", "decoded"] = Field(
        "bytes", description="keep image files (bytes) or their pixels (decoded) in memory"
    )
    workers: int = Field(0, ge=0, description="DataLoader worker processes")

    # --- model -----------------------------------------------------------------------------
    backbone: str = Field("efficientnet_lite0", description="visual backbone (registry name)")
    pretrained: bool = Field(True, description="start from the backbone's ImageNet weights")
    weights_path: Path | None = Field(None, description="backbone weights file")
    freeze_blocks: int = Field(
        0, ge=-1, description="stem + first K backbone blocks frozen (-1 = all)"
    )
    input_size: int | None = Field(
        None, ge=16, le=2048, description="model input side (default: the backbone's own)"
    )
    resize: ResizeMode | None = Field(None, description="letterbox | squash | center_crop")
    embed_dim: int = Field(512, ge=8, description="shared dimension d of v, s and W")
    dropout: float = Field(RECIPE.dropout, ge=0, lt=1, description="on backbone features")
    head: Literal["linear", "cosine"] = Field(
        RECIPE.head, description="SKU classifier: linear or cosine (normalised softmax)")
    cosine_scale: float = Field(RECIPE.cosine_scale, gt=0, description="γ of the cosine head")
    cosine_margin: float = Field(
        RECIPE.cosine_margin, ge=0, lt=1, description="additive cosine margin m")
    mix_style_p: float = Field(
        RECIPE.mix_style_p, ge=0, le=1,
        description="MixStyle probability at the first trained block")
    text_encoder: str | None = Field(
        "bilinear_attention", description="semantic stream; none = visual-only baseline"
    )
    word_dim: int = Field(128, ge=4, description="word2vec dimension")
    word2vec_epochs: int = Field(10, ge=0)
    vocab_min_count: int = Field(1, ge=1, description="drop words seen fewer times")
    vocab_max_df: float = Field(0.5, gt=0, le=1, description="drop words in more titles")
    vocab_max_size: int = Field(50_000, ge=1)

    # --- loss ------------------------------------------------------------------------------
    lam: float = Field(1.0, ge=0, description="weight of CE(W max(v, s)) in the SICoT loss")
    tau: float = Field(RECIPE.tau, ge=0, description="logit-adjusted CE during training (0 = plain)")
    cat_weight: float = Field(0.2, ge=0, description="weight of the category head's CE")

    # --- optimisation ----------------------------------------------------------------------
    epochs: int = Field(10, ge=1)
    batch_size: int = Field(64, ge=2)
    lr: float = Field(0.1, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    nesterov: bool = False
    weight_decay: float = Field(1e-4, ge=0)
    backbone_lr_scale: float = Field(RECIPE.backbone_lr_scale, ge=0,
                                     description="backbone lr = lr × this")
    schedule: Literal["step", "cosine", "constant"] = "step"
    step_gamma: float = Field(0.8, gt=0, le=1, description="step schedule: lr × gamma ...")
    step_epochs: float = Field(1.0, gt=0, description="... every this many epochs")
    warmup_epochs: float = Field(0.0, ge=0, description="linear warm-up from lr/100")
    min_lr_ratio: float = Field(0.0, ge=0, le=1, description="cosine floor, fraction of lr")
    grad_clip: float = Field(0.0, ge=0, description="max gradient norm (0 = off)")

    # --- augmentation ----------------------------------------------------------------------
    crop_scale_min: float = Field(0.35, gt=0, le=1, description="random resized crop area")
    hflip_p: float = Field(0.0, ge=0, le=1, description="mirror (off: text and arrows flip)")
    augment_strength: float = Field(1.0, ge=0, le=3, description="photometric + affine, 0 = off")
    style_strength: float = Field(
        RECIPE.style_strength, ge=0, le=3, description="art-style breakers (grayscale, posterize, outline, ...)"
    )
    erasing_p: float = Field(0.25, ge=0, le=1, description="random erasing probability")
    rand_conv_p: float = Field(
        RECIPE.rand_conv_p, ge=0, le=1,
        description="probability of a colour-keeping random convolution (style breaker)")

    # --- evaluation ------------------------------------------------------------------------
    eval_every: int = Field(1, ge=0, description="held-out evaluation every N epochs (0 = end)")
    eval_batch_size: int = Field(128, ge=1)
    head_threshold: int = Field(20, ge=1, description="head = at least this many train images")
    many_threshold: int = Field(100, ge=1, description="many-shot = more than this many")
    eval_taus: list[float] = Field(
        default_factory=lambda: [0.0, 0.25, 0.5, 0.75, 1.0, 1.5],
        description="post-hoc logit adjustment sweep",
    )

    # --- run -------------------------------------------------------------------------------
    output_dir: Path = Field(Path("runs/sicot"), description="run folder")
    run_name: str | None = Field(None, description="report/artifact name (default: folder)")
    seed: int = 0
    num_threads: int = Field(0, ge=0, description="torch threads (0 = cores / processes)")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    channels_last: bool = False
    stop_after_steps: int = Field(
        0, ge=0, description="stop (checkpoint, no final evaluation) after this many steps in "
        "total, the schedule still laid out over `epochs`: a pre-emption; 0 = off",
    )
    checkpoint_every_steps: int = Field(0, ge=0, description="extra checkpoints (0 = epochs)")
    export: bool = Field(True, description="export the ONNX artifact at the end")
    export_from: Literal["last", "best"] = Field("last", description="which weights to export")
    ddp_backend: Literal["gloo", "nccl"] = "gloo"
    ddp_find_unused: bool = False
    sharded_fc: bool = Field(
        False, description="split the SKU classifier's rows over the torchrun processes "
        "(Partial-FC): W, its gradient and optimizer state take C/K rows per process; the "
        "softmax is exact across them; checkpoints and the artifact stay the dense model's")
    fc_sample_rate: float = Field(
        1.0, gt=0, le=1, description="with sharded_fc: share of each shard's negative classes "
        "kept per step (positives always; 1 = exact softmax)")

    @field_validator("text_encoder", mode="before")
    @classmethod
    def _none_encoder(cls, v: Any) -> Any:
        return None if isinstance(v, str) and v.strip().lower() in _NONE_WORDS else v

    @field_validator("query_manifest", "weights_path", "input_size", "resize", "run_name",
                     mode="before")
    @classmethod
    def _empty_is_none(cls, v: Any) -> Any:
        return None if isinstance(v, str) and v.strip().lower() in ("", "none", "null") else v

    @field_validator("eval_taus", mode="before")
    @classmethod
    def _split_list(cls, v: Any) -> Any:
        if isinstance(v, str) and not v.strip().startswith("["):
            return [float(x) for x in v.split(",") if x.strip()]
        return v

    @field_validator("extra_train", mode="before")
    @classmethod
    def _split_sources(cls, v: Any) -> Any:
        if isinstance(v, str):
            v = json.loads(v) if v.strip().startswith("[") else v.split(",")
        out = [str(x).strip() for x in v if str(x).strip()]
        for x in out:
            split_source(x)  # a bad weight fails at start-up, not after the vocabulary
        return out

    @model_validator(mode="after")
    def _check(self) -> TrainConfig:
        if self.heldout_per_class >= self.heldout_min_images:
            raise ValueError("heldout_per_class must be < heldout_min_images")
        if self.head_threshold > self.many_threshold:
            raise ValueError("head_threshold must be <= many_threshold")
        if self.fc_sample_rate < 1 and not self.sharded_fc:
            raise ValueError("fc_sample_rate < 1 needs sharded_fc")
        return self

    @property
    def name(self) -> str:
        return self.run_name or self.output_dir.resolve().name

    def to_json_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


def split_source(spec: str) -> tuple[Path, float]:
    """``'PATH'`` or ``'PATH:WEIGHT'`` → (path, weight ≥ 0)."""
    path, sep, weight = spec.rpartition(":")
    if not sep or "/" in weight or "\\" in weight:
        return Path(spec), 1.0
    try:
        w = float(weight)
    except ValueError:
        return Path(spec), 1.0
    if not (w >= 0 and w < 1000):
        raise ValueError(f"{spec!r}: the weight must be in [0, 1000)")
    return Path(path), w


def read_config_file(path: str | Path) -> dict[str, Any]:
    """A YAML or JSON mapping of field names (``-`` and ``_`` both accepted)."""
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() in (".yaml", ".yml"):
        import yaml  # dev/train dependency; JSON configs work without it

        data = yaml.safe_load(text) or {}
    else:
        data = json.loads(text)
    if not isinstance(data, dict):
        raise SettingsError(f"{path}: a config file must hold a mapping of field names")
    return {str(k).replace("-", "_"): v for k, v in data.items()}


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    """One ``--field-name VALUE`` flag per TrainConfig field (parsed later by pydantic)."""
    group = parser.add_argument_group(
        "config fields", f"override the config file; env vars {ENV_PREFIX}<FIELD> also work"
    )
    for name, info in TrainConfig.model_fields.items():
        default = "required" if info.is_required() else repr(info.get_default(call_default_factory=True))
        help_text = f"{info.description or ''} [{default}]".strip()
        group.add_argument(f"--{name.replace('_', '-')}", dest=f"cfg_{name}", default=None,
                           metavar="V", help=help_text.replace("%", "%%"))


def config_overrides(args: argparse.Namespace) -> dict[str, Any]:
    return {k[4:]: v for k, v in vars(args).items() if k.startswith("cfg_") and v is not None}


def build_config(*layers: dict[str, Any]) -> TrainConfig:
    """Merge layers (later wins) into a validated TrainConfig with a readable error."""
    merged: dict[str, Any] = {}
    for layer in layers:
        merged.update(layer)
    try:
        return TrainConfig(**merged)
    except ValidationError as exc:
        lines = ["invalid training configuration:"]
        for err in exc.errors():
            name = ".".join(str(p) for p in err["loc"]) or "<config>"
            lines.append(f"  {name} (--{name.replace('_', '-')} / {ENV_PREFIX}{name.upper()}): "
                         f"{err['msg']} (got {err.get('input')!r})")
        raise SettingsError("\n".join(lines)) from None

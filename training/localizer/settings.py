"""The settings of one localizer training run (``sku-train-localizer``): validated, with an
env prefix of its own, like every job's settings (:class:`training.settings.TrainConfig` is the
SICoT classifier's)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from training.localizer.synth import SceneConfig

ENV_PREFIX = "SKU_LOCALIZER_"
# Lite0: the stem and blocks 0-7 frozen, blocks 8-10 (the last the localizer uses at stride
# 16) trained: with the little-overlap composites, 2.4 points more right main boxes on the dev
# and harsh selection sets than the fully frozen trunk (accuracy-study.md, section 8), at the
# same training speed. Other backbones (tests): fully frozen.
DEFAULT_FREEZE_BLOCKS = {"efficientnet_lite0": 8}


class LocalizerTrainConfig(BaseSettings):
    """Everything a localizer run needs; saved beside its artifact (``train_config.json``)."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, extra="forbid", protected_namespaces=(), validate_default=True
    )

    catalogs: list[str] = Field(description="catalog manifests whose images are packshots")
    out: str = Field(description="artifact folder to write")
    name: str = Field("localizer", min_length=1, description="artifact name")
    backbone: str = Field("efficientnet_lite0", description="registered backbone")
    pretrained: bool = Field(True, description="load the backbone's ImageNet weights")
    freeze_blocks: int | None = Field(
        None, ge=-1, description="trunk blocks frozen (the frozen ones run in ONNX Runtime "
        "during training); -1 (or >= its blocks): fully frozen; unset: the backbone's "
        "default, DEFAULT_FREEZE_BLOCKS")
    input_size: int = Field(160, ge=32, le=1024, description="square input side, a multiple of 16")
    neck_channels: int = Field(64, ge=1)
    top_stride: Literal[16, 32] = Field(
        16, description="coarsest backbone tap of the neck: 32 adds the stride-32 blocks "
        "(context for large products, a little latency)")
    steps: int = Field(3000, ge=1, description="optimizer steps at most")
    time_limit_min: float | None = Field(None, gt=0, description="stop after this many minutes")
    batch_size: int = Field(32, ge=2, description="BatchNorm needs more than one sample")
    lr: float = Field(2e-3, gt=0)
    backbone_lr_mult: float = Field(0.3, ge=0)
    weight_decay: float = Field(1e-4, ge=0)
    warmup_steps: int = Field(100, ge=0)
    workers: int = Field(0, ge=0, description="scene-rendering loader workers")
    threads: int | None = Field(None, ge=1, description="torch intra-op threads")
    seed: int = 0
    val_scenes: int = Field(200, ge=0, description="synthetic validation scenes (0: none)")
    max_sources: int | None = Field(None, ge=1, description="use at most this many images")
    log_every: int = Field(50, ge=1)
    scene: SceneConfig = Field(default_factory=SceneConfig)

    @property
    def trunk_freeze_blocks(self) -> int:
        """``freeze_blocks``, or the backbone's default when unset."""
        if self.freeze_blocks is not None:
            return self.freeze_blocks
        return DEFAULT_FREEZE_BLOCKS.get(self.backbone, -1)

    @field_validator("input_size")
    @classmethod
    def _multiple_of_16(cls, v: int) -> int:
        if v % 16:
            raise ValueError("must be a multiple of 16 (the localizer's output stride)")
        return v

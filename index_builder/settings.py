"""Settings of ``sku-index`` (env prefix ``SKU_INDEX_``, nested fields with ``__``).

Command-line flags override these for one run; the environment is what a CronJob sets.
Examples: ``REDIS_URL``, ``SKU_INDEX_ARTIFACT_DIR``, ``SKU_INDEX_INDEX_DIR``,
``SKU_INDEX_INDEX__FLOAT_FACTORY=HNSW32``, ``SKU_INDEX_INDEX__BINARY__KIND=hnsw``,
``SKU_INDEX_KEEP_VERSIONS=3``, ``SKU_INDEX_MAX_BAD_FRACTION=0.02``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from service.feedback_gate import FeedbackPolicy
from service.settings import (
    ImageLimits,
    KeyPrefix,
    OnnxRuntimeSettings,
    RedisUrl,
    key_prefix_field,
    redis_url_field,
)
from service.vector_index import IndexSpec

PREFIX = "SKU_INDEX_"
Stage = Literal["read", "embed", "index", "files", "redis", "publish"]
STAGES: tuple[Stage, ...] = ("read", "embed", "index", "files", "redis", "publish")


class IndexBuilderSettings(BaseSettings):
    """Everything one ``sku-index`` run reads from its environment."""

    model_config = SettingsConfigDict(
        env_prefix=PREFIX, env_nested_delimiter="__", extra="ignore", protected_namespaces=(),
    )

    redis_url: RedisUrl = redis_url_field(PREFIX)
    key_prefix: KeyPrefix = key_prefix_field()
    artifact_dir: Path | None = Field(None, description="SICoT artifact folder (model.onnx)")
    index_dir: Path = Field(Path("index"), description="root of the version folders")

    batch_size: int = Field(32, ge=1, le=4096, description="images per ONNX Runtime call")
    decode_workers: int = Field(2, ge=1, le=64, description="threads decoding images ahead")
    image_limits: ImageLimits = Field(default_factory=ImageLimits)
    onnx: OnnxRuntimeSettings = Field(default_factory=OnnxRuntimeSettings)
    max_bad_fraction: float = Field(
        0.05, ge=0.0, le=1.0, description="fail the run when more of the rows than this are bad"
    )

    index: IndexSpec = Field(default_factory=IndexSpec, description="float_factory 'auto' (the "
                             "default): the measured family for the catalog's size")
    recall_queries: int = Field(200, ge=0, description="sampled rows used to report recall@10")

    feedback: FeedbackPolicy = Field(
        default_factory=FeedbackPolicy, description="build --feedback: window, gate, caps")

    thumbnails: bool = Field(False, description="store a small JPEG of each SKU in its hash")
    thumb_size: int = Field(96, ge=16, le=512, description="longest side of the thumbnail")
    thumb_quality: int = Field(80, ge=10, le=95)

    write_method: Literal["auto", "mass", "pipeline"] = Field(
        "auto", description="mass: RESP into `redis-cli --pipe`; pipeline: redis-py; "
        "auto: mass when redis-cli can reach the server, else pipeline",
    )
    redis_cli: str | None = Field(None, description="redis-cli binary (default: from PATH)")
    pipeline_batch: int = Field(1000, ge=1, description="commands per redis-py pipeline")
    keep_versions: int = Field(2, ge=0, description="published versions kept besides current")
    gc_after_publish: bool = Field(True, description="run gc after a successful publish")
    lock_ttl_s: float = Field(60.0, gt=0, description="run lock TTL; renewed every TTL/3")

    fail_after: Stage | None = Field(
        None, description="TESTING ONLY: fail after this stage (proves a crash is harmless)"
    )
    fail_how: Literal["raise", "hang"] = Field(
        "raise", description="TESTING ONLY: raise, or hang until killed (a test sends SIGKILL)"
    )

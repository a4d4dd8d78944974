"""Settings of the web service (env prefix ``SKU_SERVICE_``, ``.env`` supported)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from service.settings import (
    ImageLimits,
    OnnxRuntimeSettings,
    load_settings,
    redis_url_field,
    validate_redis_url,
)

PREFIX = "SKU_SERVICE_"


class ServiceSettings(BaseSettings):
    """Everything the service reads from its environment, validated at start-up."""

    model_config = SettingsConfigDict(
        env_prefix=PREFIX, env_file=".env", env_file_encoding="utf-8", extra="ignore",
        env_nested_delimiter="__", protected_namespaces=(),
    )

    # where things are
    redis_url: str | None = redis_url_field(PREFIX)
    key_prefix: str = Field("sku", pattern=r"^[A-Za-z0-9_.:-]+$", max_length=64)
    model_dir: Path = Field(Path("artifacts/sicot"), description="SICoT artifact folder")
    localizer_dir: Path | None = Field(
        None, description="localizer artifact folder; unset = recognise the whole photo"
    )
    index_dir: Path = Field(Path("index"), description="index_builder's output folder")

    # API
    api_keys: list[str] = Field(
        default_factory=list, description="accepted API keys (JSON list); empty = auth off"
    )
    api_key_header: str = "X-API-Key"
    default_top_k: int = Field(5, ge=1, le=50)
    max_top_k: int = Field(50, ge=1, le=200)
    default_min_score: float = Field(0.0, ge=0.0, le=1.0)

    # limits and runtime
    limits: ImageLimits = Field(default_factory=ImageLimits)
    max_concurrency: int = Field(2, ge=1, description="requests computed at once (threads)")
    max_queue: int = Field(32, ge=0, description="requests waiting beyond that; more → 429")
    batching: bool = Field(False, description="micro-batch the recognizer model across requests")
    batch_max_size: int = Field(8, ge=1, le=256)
    batch_max_wait_ms: float = Field(2.0, ge=0.0, le=100.0)
    onnx: OnnxRuntimeSettings = Field(
        # one thread per session: requests run in parallel on max_concurrency threads, and
        # the localizer measured faster on 1 thread than 2 (docs/results/online-path.md)
        default_factory=lambda: OnnxRuntimeSettings(intra_op_threads=1)
    )
    faiss_threads: int = Field(1, ge=1, description="OpenMP threads of FAISS (1 query/request)")
    index_poll_s: float = Field(2.0, gt=0.0, description="how often the published pointer is read")
    retry_after_s: int = Field(5, ge=1, description="Retry-After sent with 503")

    # online path
    localizer_margin: float = Field(0.1, ge=0.0, le=1.0, description="crop margin around the box")
    search_k: int = Field(30, ge=1, le=1000, description="neighbours of the category vote")

    # the learning loop (opt-in; README "Privacy: retained queries and feedback")
    retain_queries: bool = Field(False, description="keep each request's crop and answer")
    retain_full_photo: bool = Field(False, description="also keep the whole photo (JPEG)")
    retention_ttl_s: int = Field(7 * 86400, ge=60, description="how long a query is kept")
    retain_crop_side: int = Field(256, ge=32, le=2048, description="longest side of the crop")
    retain_photo_side: int = Field(1024, ge=64, le=8192, description="... of the whole photo")
    feedback_per_minute: int = Field(60, ge=1, description="POST /feedback per key per minute")
    feedback_stream_maxlen: int = Field(
        1_000_000, ge=1000, description="entries the feedback stream keeps (MAXLEN ~)")

    @field_validator("redis_url")
    @classmethod
    def _check_redis_url(cls, v: str | None) -> str | None:
        return validate_redis_url(v)

    @field_validator("api_keys")
    @classmethod
    def _check_keys(cls, v: list[str]) -> list[str]:
        if any(len(k) < 8 for k in v):
            raise ValueError("API keys must be at least 8 characters")
        return v

    @model_validator(mode="after")
    def _check_top_k(self) -> ServiceSettings:
        if self.default_top_k > self.max_top_k:
            raise ValueError("default_top_k must not exceed max_top_k")
        return self


@lru_cache(maxsize=1)
def get_settings() -> ServiceSettings:
    """The process's settings (cached); tests replace it through ``create_app(settings)``."""
    return load_settings(ServiceSettings)

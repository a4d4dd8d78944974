"""Settings shared by every process, and the helper each process uses to load its own.

Each process defines ONE pydantic-settings class next to its code (``service.api.settings``,
``training.settings``, ``index_builder.settings``) with its own env prefix, and reuses the
small sub-models defined here.  ``REDIS_URL`` is read under that plain name by every process
because it is what platforms (compose, Kubernetes, Heroku-style hosts) set.
"""

from __future__ import annotations

from typing import Annotated, Any, TypeVar

from pydantic import AfterValidator, AliasChoices, BaseModel, Field, ValidationError
from pydantic_settings import BaseSettings

S = TypeVar("S", bound=BaseSettings)


class SettingsError(RuntimeError):
    """Invalid configuration; the message lists every bad variable in plain words."""


def validate_redis_url(value: str | None) -> str | None:
    if value is None or value == "":
        return None
    if not value.startswith(("redis://", "rediss://", "unix://")):
        raise ValueError("must start with redis://, rediss:// or unix://")
    return value


# the type of every process's ``redis_url`` (validated) and ``key_prefix`` fields
RedisUrl = Annotated[str | None, AfterValidator(validate_redis_url)]
KeyPrefix = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")]


def redis_url_field(prefix: str) -> Any:
    """The ``redis_url`` field: ``REDIS_URL`` or ``<PREFIX>REDIS_URL``; unset = private server."""
    return Field(
        default=None,
        validation_alias=AliasChoices("REDIS_URL", f"{prefix}REDIS_URL"),
        description="redis://[:password@]host:port/db; unset starts a private redis-server",
    )


def key_prefix_field() -> Any:
    """The ``key_prefix`` field: the namespace of every Redis key of one deployment."""
    return Field("sku", description="namespace of every Redis key of this deployment "
                 "(the service and the index builder must agree)")


class ImageLimits(BaseModel):
    """Limits applied to every image decoded from outside (uploads, catalog files)."""

    max_bytes: int = Field(15 * 1024 * 1024, gt=0, description="largest accepted file")
    max_pixels: int = Field(
        25_000_000, gt=0,
        description="largest accepted pixel count: phone photos are 12-24 Mpx (4000x3000 to "
        "6000x4000); it bounds the memory one request can take while decoding",
    )
    min_side: int = Field(16, gt=0, description="smallest accepted width or height")


def load_settings(cls: type[S], **overrides: Any) -> S:
    """Instantiate a settings class, turning pydantic's error into one readable message."""
    try:
        return cls(**overrides)
    except ValidationError as exc:
        prefix = str(cls.model_config.get("env_prefix", ""))
        lines = [f"invalid configuration for {cls.__name__}:"]
        for err in exc.errors():
            name = ".".join(str(p) for p in err["loc"]) or "<settings>"
            env = f"{prefix}{name}".upper()
            lines.append(f"  {env}: {err['msg']} (got {err.get('input')!r})")
        raise SettingsError("\n".join(lines)) from None


class OnnxRuntimeSettings(BaseModel):
    """How ONNX Runtime sessions are created (service and index builder)."""

    providers: list[str] = Field(
        default_factory=lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"],
        description="in order of preference; those the installed build lacks are skipped, so "
        "CUDA is used when the `gpu` extra is installed and a GPU is visible, else the CPU",
    )
    intra_op_threads: int = Field(0, ge=0, description="0 = ONNX Runtime's default")
    inter_op_threads: int = Field(1, ge=0)

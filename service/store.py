"""The Redis SKU store: key schema, versioned SKU hashes, version manifests, the current pointer.

One definition for the index builder (writes) and the service (reads).  The full schema with
examples is in ``docs/redis-schema.md``; in short, with ``P`` the deployment's ``key_prefix``:

=====================================  ======  ==================================================
key                                    type    content
=====================================  ======  ==================================================
``P:{P}:current``                      string  the version the service serves
``P:{P}:manifest:<version>``           string  JSON :class:`VersionManifest` (published versions)
``P:{P}:history``                      list    published versions, newest first (rollback order)
``P:{P}:builds``                       zset    every version whose writing started (score: epoch s)
``P:{P}:lock``                         string  token of the run that may write (TTL, heartbeat)
``P:v:<version>:sku:{<sku_id>}``       hash    one SKU of one version (fields: :data:`SKU_FIELDS`)
=====================================  ======  ==================================================

Hash tags: the control keys share the tag ``{P}``, so they sit in one Redis Cluster slot and
the publish step (manifest + pointer + history in one MULTI/EXEC) is legal on a cluster.  SKU
hashes are tagged with the SKU id, so a version's keys spread over every node, and the same SKU
in two versions shares a slot: ``update`` copies unchanged SKUs with server-side ``COPY``,
which a cluster only allows within one slot.

A version is *published* once its manifest exists and it is in the history; everything of it
(SKU hashes, index files) is written before that single step, so a reader that follows
``current`` never sees a half-built version.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from json.encoder import encode_basestring
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from service.label_filter import labels_of

if TYPE_CHECKING:  # redis is a `serve` extra; importing the schema must not need it
    import redis

MANIFEST_FORMAT_VERSION = 1
VERSION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
SKU_FIELDS: tuple[str, ...] = (
    "sku_id", "title", "tags", "category", "class_index", "image", "images", "labels", "thumb",
)
_JSON_FIELDS = frozenset({"tags", "images"})


class StoreError(RuntimeError):
    """The store's content contradicts what a caller asked (unknown version, no history...)."""


class VersionGone(StoreError):
    """The manifest of a version being served is gone (Redis restarted empty, the version was
    deleted): its SKU hashes cannot be trusted to be there, so an answer would be wrong."""


def check_version(version: str) -> str:
    """A version id: letters, digits, ``._-`` (no ``:`` or glob characters), ≤ 128 chars."""
    if not isinstance(version, str) or not VERSION_RE.match(version):
        raise ValueError(f"invalid version id {version!r}: use letters, digits and ._- only")
    return version


@dataclass(frozen=True, slots=True)
class KeySchema:
    """Every key name of one deployment (``prefix`` = the ``key_prefix`` setting, :data:`service.settings.KeyPrefix`)."""

    prefix: str = "sku"

    def _ctl(self, name: str) -> str:
        return f"{self.prefix}:{{{self.prefix}}}:{name}"

    @property
    def current(self) -> str:
        return self._ctl("current")

    @property
    def history(self) -> str:
        return self._ctl("history")

    @property
    def builds(self) -> str:
        return self._ctl("builds")

    @property
    def lock(self) -> str:
        return self._ctl("lock")

    @property
    def served(self) -> str:
        return self._ctl("served")

    def rate_limit(self, key_id: str) -> str:
        """Token bucket of one API key (``key_id``: a digest prefix, never the key)."""
        return self._ctl(f"ratelimit:{key_id}")

    def manifest(self, version: str) -> str:
        return self._ctl(f"manifest:{check_version(version)}")

    def version_prefix(self, version: str) -> str:
        return f"{self.prefix}:v:{check_version(version)}:sku:"

    def sku(self, version: str, sku_id: str) -> str:
        return f"{self.version_prefix(version)}{{{sku_id}}}"

    def version_pattern(self, version: str) -> str:
        """SCAN pattern of one version's SKU keys (prefix and version hold no glob chars)."""
        return f"{self.version_prefix(version)}*"

    @property
    def all_versions_pattern(self) -> str:
        return f"{self.prefix}:v:*"

    def version_of_key(self, key: bytes | str) -> str | None:
        """The version a SKU key belongs to, or ``None`` for a key outside the schema."""
        text = key.decode("utf-8", "replace") if isinstance(key, bytes) else key
        head = f"{self.prefix}:v:"
        if not text.startswith(head):
            return None
        version, sep, _ = text[len(head):].partition(":sku:")
        return version if sep and VERSION_RE.match(version) else None


@dataclass(frozen=True, slots=True)
class SkuRecord:
    """What a SKU hash holds.  ``class_index`` is the SKU's class in the model, -1 if none."""

    sku_id: str
    title: str = ""
    tags: tuple[str, ...] = ()
    category: str = ""
    class_index: int = -1
    image: str = ""
    images: tuple[str, ...] = ()
    thumb: bytes | None = field(default=None, compare=True)

    def to_hash(self) -> dict[str, str | bytes]:
        """Field → value as written to Redis (``thumb`` only when there is one)."""
        out: dict[str, str | bytes] = dict(zip(SKU_FIELDS, self.text_values(), strict=False))
        if self.thumb:
            out["thumb"] = self.thumb
        return out

    @property
    def labels(self) -> tuple[str, ...]:
        """The tags as sorted ``key=value`` labels (a bare tag ``x`` is ``tag=x``): what a
        ``filter`` matches.  Derived from ``tags``, stored too, for other readers of the hash."""
        return tuple(sorted(labels_of(self.tags)))

    def text_values(self) -> tuple[str, ...]:
        """The values of every field but ``thumb``, in :data:`SKU_FIELDS` order."""
        return (self.sku_id, self.title, json_list(self.tags), self.category,
                str(self.class_index), self.image, json_list(self.images),
                json_list(self.labels))

    def to_dict(self) -> dict[str, Any]:
        return {
            "sku_id": self.sku_id, "title": self.title, "tags": list(self.tags),
            "category": self.category, "class_index": self.class_index, "image": self.image,
            "images": list(self.images), "labels": list(self.labels), "thumb": self.thumb,
        }


def json_list(values: Sequence[str]) -> str:
    """``json.dumps(list(values), ensure_ascii=False)``, 5x faster (bulk writes call it twice
    per SKU)."""
    return "[" + ", ".join(map(encode_basestring, values)) + "]"


def decode_sku_hash(raw: dict[Any, Any]) -> dict[str, Any] | None:
    """An HGETALL reply (bytes or str keys) → the :meth:`SkuRecord.to_dict` shape; ``None`` if
    empty.  ``thumb`` stays bytes (a JPEG); every other field is text."""
    if not raw:
        return None
    fields: dict[str, Any] = {}
    for k, v in raw.items():
        name = k.decode() if isinstance(k, bytes) else k
        if name != "thumb" and isinstance(v, bytes):
            v = v.decode("utf-8")
        fields[name] = v
    rec = SkuRecord(
        sku_id=fields.get("sku_id", ""),
        title=fields.get("title", ""),
        tags=tuple(json.loads(fields.get("tags") or "[]")),
        category=fields.get("category", ""),
        class_index=int(fields.get("class_index", -1)),
        image=fields.get("image", ""),
        images=tuple(json.loads(fields.get("images") or "[]")),
        thumb=fields.get("thumb") or None,
    )
    return rec.to_dict()


class FileEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    sha256: str
    bytes: int


class VersionManifest(BaseModel):
    """What a published version is: written once, at publish, next to the current pointer."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    format_version: int = MANIFEST_FORMAT_VERSION
    version: str
    kind: Literal["build", "update"] = "build"
    parent_version: str | None = None
    built_at: str = Field(description="ISO-8601 UTC time the build started")
    published_at: str | None = None
    model_name: str
    model_version: str
    embed_dim: int
    content_digest: str = Field(description="hash of rows, metadata, model and index config")
    counts: dict[str, int] = Field(description="skus, images, bad_rows, embedded, reused, ...")
    index: dict[str, Any] = Field(default_factory=dict, description="the IndexSpec used")
    files: dict[str, FileEntry] = Field(description="file name in index_dir → checksum, size")
    index_dir: str = Field(description="folder of this version's files when it was built")
    key_prefix: str


@dataclass(frozen=True, slots=True)
class VersionInfo:
    version: str
    state: Literal["current", "published", "retired", "unfinished"]
    started_at: float | None
    manifest: VersionManifest | None


def utc_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _text(value: Any) -> str | None:
    if value is None:
        return None
    return value.decode() if isinstance(value, bytes) else str(value)


class SkuStore:
    """Reads (for the service) and the publish primitives (for the index builder).

    Needs a client with ``decode_responses=False`` (the default of :func:`service.redis_server.
    connect`): thumbnails are binary.
    """

    def __init__(self, client: redis.Redis, keys: KeySchema | str = "sku") -> None:
        self.client = client
        self.keys = keys if isinstance(keys, KeySchema) else KeySchema(keys)

    # ----------------------------------------------------------------- reads (service)
    def current_version(self) -> str | None:
        return _text(self.client.get(self.keys.current))

    def get_manifest(self, version: str) -> VersionManifest | None:
        raw = self.client.get(self.keys.manifest(version))
        return None if raw is None else VersionManifest.model_validate_json(raw)

    def has_manifest(self, version: str) -> bool:
        return bool(self.client.exists(self.keys.manifest(version)))

    def current_manifest(self) -> VersionManifest | None:
        version = self.current_version()
        return None if version is None else self.get_manifest(version)

    def get_skus(
        self, version: str, sku_ids: Sequence[str], *, published: bool = False
    ) -> list[dict[str, Any] | None]:
        """The SKU hashes of ``sku_ids`` in ``version``, in order, ``None`` where absent —
        one round trip (a non-transactional pipeline of HGETALL).  With ``published`` the
        same round trip checks that the version's manifest still exists and raises
        :class:`VersionGone` otherwise: one absent SKU is a deleted SKU, an absent version is
        missing data."""
        if not sku_ids and not published:
            return []
        pipe = self.client.pipeline(transaction=False)
        if published:
            pipe.exists(self.keys.manifest(version))
        for sku_id in sku_ids:
            pipe.hgetall(self.keys.sku(version, sku_id))
        raws = pipe.execute()
        if published and not raws.pop(0):
            raise VersionGone(f"index version {version} is no longer in Redis")
        return [decode_sku_hash(raw) for raw in raws]

    def history(self) -> list[str]:
        return [_text(v) or "" for v in self.client.lrange(self.keys.history, 0, -1)]

    def mark_served(self, version: str, ttl_s: float) -> None:
        """Record that a running service serves ``version`` for the next ``ttl_s`` seconds
        (renewed at every poll), so that ``gc`` never deletes it under the service."""
        now = time.time()
        pipe = self.client.pipeline(transaction=False)
        pipe.zadd(self.keys.served, {check_version(version): now + ttl_s})
        pipe.zremrangebyscore(self.keys.served, "-inf", now)
        pipe.execute()

    def served_versions(self) -> list[str]:
        """Versions some service reported as served within its TTL."""
        raw = self.client.zrangebyscore(self.keys.served, time.time(), "+inf")
        return [_text(v) or "" for v in raw]

    def list_versions(self) -> list[VersionInfo]:
        """Every version the store knows, newest first: ``current``; ``published`` (in the
        history: a rollback target until gc); ``retired`` (rolled away from, still has its
        manifest); ``unfinished`` (writing started, never published: crash debris)."""
        pipe = self.client.pipeline(transaction=False)
        pipe.get(self.keys.current)
        pipe.lrange(self.keys.history, 0, -1)
        pipe.zrange(self.keys.builds, 0, -1, withscores=True)
        current_raw, history_raw, builds_raw = pipe.execute()
        current = _text(current_raw)
        started = {_text(v) or "": float(s) for v, s in builds_raw}
        history = [_text(v) or "" for v in history_raw]
        ordered = list(dict.fromkeys(history + sorted(started, key=started.__getitem__)[::-1]))
        pipe = self.client.pipeline(transaction=False)
        for v in ordered:
            pipe.get(self.keys.manifest(v))
        out = []
        for v, raw in zip(ordered, pipe.execute(), strict=True):
            manifest = None if raw is None else VersionManifest.model_validate_json(raw)
            state: Literal["current", "published", "retired", "unfinished"] = (
                "current" if v == current else "published" if v in history
                else "retired" if manifest is not None else "unfinished"
            )
            out.append(VersionInfo(v, state, started.get(v), manifest))
        out.sort(key=lambda i: (i.started_at or 0.0), reverse=True)
        return out

    # ------------------------------------------------------------- writes (index builder)
    def register_build(self, version: str) -> None:
        """Record that ``version`` is being written, before its first key, so that ``gc`` can
        find the debris of a build that dies."""
        self.client.zadd(self.keys.builds, {check_version(version): time.time()})

    def publish(self, manifest: VersionManifest) -> VersionManifest:
        """The one atomic step: manifest + current pointer + history in one MULTI/EXEC."""
        version = check_version(manifest.version)
        manifest = manifest.model_copy(update={"published_at": utc_now()})
        pipe = self.client.pipeline(transaction=True)
        pipe.set(self.keys.manifest(version), manifest.model_dump_json())
        pipe.set(self.keys.current, version)
        pipe.lrem(self.keys.history, 0, version)
        pipe.lpush(self.keys.history, version)
        pipe.execute()
        return manifest

    def rollback(self, to: str | None = None) -> tuple[str, str]:
        """Make the previous published version (or ``to``) current in one MULTI/EXEC; the
        version rolled away from leaves the history (``gc`` then removes it).  Returns
        ``(old, new)``; raises :class:`StoreError` when there is nothing to roll back to."""
        import redis as redis_mod

        keys = self.keys
        with self.client.pipeline(transaction=True) as pipe:
            while True:
                try:
                    pipe.watch(keys.current, keys.history)
                    old = _text(pipe.get(keys.current))
                    history = [_text(v) or "" for v in pipe.lrange(keys.history, 0, -1)]
                    target = to if to is not None else _previous(history, old)
                    if target is None:
                        raise StoreError(f"no published version before {old!r} to roll back to")
                    if not pipe.exists(keys.manifest(target)):
                        raise StoreError(f"version {target!r} has no manifest (never published "
                                         "or garbage-collected)")
                    pipe.multi()
                    pipe.set(keys.current, target)
                    if old is not None and old != target:
                        pipe.lrem(keys.history, 0, old)
                    pipe.lrem(keys.history, 0, target)  # history[0] is always current
                    pipe.lpush(keys.history, target)
                    pipe.execute()
                    return old or "", target
                except redis_mod.WatchError:
                    continue


def _previous(history: list[str], current: str | None) -> str | None:
    if current is None or current not in history:
        return history[0] if history and history[0] != current else None
    i = history.index(current)
    return history[i + 1] if i + 1 < len(history) else None

"""The feedback log (ARCHITECTURE contract 5): retained queries and the stream of user feedback.

One definition for the service (writes), the index builder (reads, extra reference rows) and
the export job (training pairs).  With ``P`` the deployment's ``key_prefix``:

======================================  ======  ===============================================
key                                     type    content
======================================  ======  ===============================================
``P:q:{<request_id>}``                  hash    a retained query (opt-in, TTL): ``owner``,
                                                ``created_at``, ``crop`` (JPEG), ``answer``
                                                (JSON), ``photo`` (JPEG, only with
                                                ``retain_full_photo``), ``fb:<kind>``
                                                (stream entry id of the feedback given)
``P:{P}:feedback``                      stream  accepted feedback, one entry per
                                                ``(request_id, kind)``, capped by MAXLEN ~
``P:rl:feedback:<owner>:<minute>``      string  per-key rate-limit counter (TTL 2 min)
======================================  ======  ===============================================

``owner`` is :func:`key_id` of the API key that made the request, never the key itself.
Idempotency lives in the retained query's hash (``HSETNX fb:<kind>``), so it ends with the
query's TTL, and deleting a query (``DELETE /queries/{id}``) also removes its stream entries.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from PIL import Image

if TYPE_CHECKING:  # redis is a `serve` extra; importing the schema must not need it
    import redis

FeedbackKind = Literal["confirm", "correct", "click"]
KINDS: tuple[str, ...] = ("confirm", "correct", "click")
ANONYMOUS = "anonymous"  # the owner of every query when the service runs without API keys
REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


def key_id(api_key: str | None) -> str:
    """A stable, non-reversible id of an API key (what the log stores and policies name)."""
    if not api_key:
        return ANONYMOUS
    return hashlib.sha256(api_key.encode()).hexdigest()[:16]


@dataclass(frozen=True, slots=True)
class FeedbackKeys:
    prefix: str = "sku"

    def query(self, request_id: str) -> str:
        if not REQUEST_ID_RE.match(request_id):
            raise ValueError(f"invalid request id {request_id!r}")
        return f"{self.prefix}:q:{{{request_id}}}"

    @property
    def stream(self) -> str:
        return f"{self.prefix}:{{{self.prefix}}}:feedback"

    def rate(self, owner: str, window: int) -> str:
        return f"{self.prefix}:rl:feedback:{owner}:{window}"


def encode_jpeg(img: Image.Image, max_side: int, quality: int = 85) -> bytes:
    """``img`` shrunk to at most ``max_side`` px on its longer side, as JPEG bytes."""
    small = img.convert("RGB")
    if max(small.size) > max_side:
        small = small.copy()
        small.thumbnail((max_side, max_side), Image.Resampling.BILINEAR)
    buf = io.BytesIO()
    small.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


@dataclass(frozen=True)
class RetainedQuery:
    """What one retained request holds."""

    request_id: str
    owner: str
    created_at: float
    crop: bytes
    answer: dict[str, Any]
    photo: bytes | None = None
    feedback: dict[str, str] = field(default_factory=dict)  # kind → "entry_id sku_id"

    @property
    def candidates(self) -> list[str]:
        return [c["sku_id"] for c in self.answer.get("candidates", [])]

    @property
    def shortlist(self) -> list[str]:
        """The model's most likely SKUs for the crop (``OnlineConfig.shortlist``)."""
        return [str(s) for s in self.answer.get("shortlist", [])]

    def model_listed(self, sku_id: str) -> bool:
        """Did the model name ``sku_id`` for this crop (an answer or its shortlist)?"""
        return sku_id in self.candidates or sku_id in self.shortlist

    @property
    def top1(self) -> str | None:
        c = self.candidates
        return c[0] if c else None


def _text(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def _decode_query(request_id: str, raw: dict[Any, Any]) -> RetainedQuery | None:
    h = {_text(k): v for k, v in raw.items()}
    if "crop" not in h or "owner" not in h:
        return None
    return RetainedQuery(
        request_id=request_id, owner=_text(h["owner"]), created_at=float(_text(h["created_at"])),
        crop=bytes(h["crop"]), answer=json.loads(_text(h["answer"])),
        photo=bytes(h["photo"]) if "photo" in h else None,
        feedback={k[3:]: _text(v) for k, v in h.items() if k.startswith("fb:")},
    )


class FeedbackConflict(RuntimeError):
    """The same ``(request_id, kind)`` was already given with another SKU."""


class QueryGone(RuntimeError):
    """The retained query expired (or was deleted) while feedback was being recorded."""


# KEYS[1] = query hash; ARGV = ttl, field, value, ...  → 1 kept, 0 the id is taken
_RETAIN = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV, 2))
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[1]))
return 1
"""
# KEYS[1] = query hash; ARGV = field, value → {1} claimed, {0, prior value}, {-1} query gone
_CLAIM = """
if redis.call('EXISTS', KEYS[1]) == 0 then return {-1, false} end
local prior = redis.call('HGET', KEYS[1], ARGV[1])
if prior then return {0, prior} end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return {1, false}
"""
_SET_IF_EXISTS = """
if redis.call('EXISTS', KEYS[1]) == 1 then redis.call('HSET', KEYS[1], ARGV[1], ARGV[2]) end
return 0
"""


class FeedbackLog:
    """Reads and writes of the feedback log on one Redis client (thread-safe like redis-py)."""

    def __init__(self, client: redis.Redis, keys: FeedbackKeys | str = "sku") -> None:
        self.client = client
        self.keys = keys if isinstance(keys, FeedbackKeys) else FeedbackKeys(keys)
        self._scripts: dict[str, Any] = {}

    # -- retained queries -----------------------------------------------------------------
    def retain(self, request_id: str, owner: str, crop: bytes, answer: dict[str, Any],
               ttl_s: int, photo: bytes | None = None, now: float | None = None) -> bool:
        """Keep a query for ``ttl_s`` seconds.  ``False`` when the id is taken (a client that
        re-sends another's ``X-Request-ID`` must not overwrite, nor read, that query)."""
        fields: list[Any] = ["owner", owner, "created_at", repr(now if now is not None
                                                                else time.time()),
                             "crop", crop, "answer", json.dumps(answer, sort_keys=True)]
        if photo is not None:
            fields += ["photo", photo]
        # one script: the hash never exists without its TTL, and never half-written
        return bool(self._script(_RETAIN)(keys=[self.keys.query(request_id)],
                                          args=[ttl_s, *fields]))

    def _script(self, source: str) -> Any:
        if source not in self._scripts:
            self._scripts[source] = self.client.register_script(source)
        return self._scripts[source]

    def get(self, request_id: str) -> RetainedQuery | None:
        return _decode_query(request_id, self.client.hgetall(self.keys.query(request_id)))

    def get_many(self, request_ids: list[str], batch: int = 500) -> list[RetainedQuery | None]:
        out: list[RetainedQuery | None] = []
        for start in range(0, len(request_ids), batch):
            chunk = request_ids[start:start + batch]
            pipe = self.client.pipeline(transaction=False)
            for rid in chunk:
                pipe.hgetall(self.keys.query(rid))
            out += [_decode_query(rid, raw) for rid, raw in zip(chunk, pipe.execute(), strict=True)]
        return out

    def retained_ids(self, count: int = 1000) -> Iterator[str]:
        """The request ids of every retained query (SCAN; on a cluster, every primary)."""
        head = self.keys.query("x")[:-2]  # "<prefix>:q:{"
        for key in self.client.scan_iter(match=f"{head}*}}", count=count):
            k = _text(key)
            yield k[len(head):-1]

    def delete(self, query: RetainedQuery) -> int:
        """Remove a retained query and its feedback entries; the number of entries removed."""
        ids = [v.split(" ", 1)[0] for v in query.feedback.values()]
        pipe = self.client.pipeline(transaction=False)
        pipe.delete(self.keys.query(query.request_id))
        if ids:
            pipe.xdel(self.keys.stream, *ids)
        res = pipe.execute()
        return int(res[1]) if ids else 0

    # -- feedback -------------------------------------------------------------------------
    def allow(self, owner: str, per_minute: int, now: float | None = None) -> bool:
        """Fixed one-minute window per key: shared by every replica, since it is in Redis."""
        window = int((now if now is not None else time.time()) // 60)
        key = self.keys.rate(owner, window)
        pipe = self.client.pipeline(transaction=True)
        pipe.incr(key)
        pipe.expire(key, 120)
        count, _ = pipe.execute()
        return int(count) <= per_minute

    def record(self, query: RetainedQuery, kind: str, sku_id: str, rank: int | None,
               maxlen: int, now: float | None = None) -> tuple[str, bool]:
        """Append ``(request_id, kind)`` once: ``(entry_id, created)``.  A repeat with the same
        SKU returns the first entry; with another SKU it raises :class:`FeedbackConflict`."""
        key, name = self.keys.query(query.request_id), f"fb:{kind}"
        claimed, prior = self._script(_CLAIM)(keys=[key], args=[name, f"pending {sku_id}"])
        if int(claimed) < 0:
            raise QueryGone(f"query {query.request_id} is no longer retained")
        if not int(claimed):
            entry, _, given = _text(prior).partition(" ")
            if given != sku_id:
                raise FeedbackConflict(f"{kind} feedback for this request already names "
                                       f"SKU {given!r}")
            return entry, False
        fields: dict[Any, Any] = {"request_id": query.request_id, "kind": kind, "sku_id": sku_id,
                  "rank": "" if rank is None else str(rank), "owner": query.owner,
                  "ts": repr(now if now is not None else time.time()),
                  "top1": query.top1 or "",
                  "model_version": query.answer.get("model_version", ""),
                  "index_version": query.answer.get("index_version", "")}
        try:
            entry = _text(self.client.xadd(self.keys.stream, fields, maxlen=maxlen,
                                           approximate=True))
        except Exception:
            self.client.hdel(key, name)  # let the client retry
            raise
        self._script(_SET_IF_EXISTS)(keys=[key], args=[name, f"{entry} {sku_id}"])
        return entry, True

    def read(self, since: float, *, count: int = 10_000) -> list[FeedbackEntry]:
        """Every entry of the stream from ``since`` (epoch seconds) on, oldest first."""
        out: list[FeedbackEntry] = []
        start = f"{max(0, int(since * 1000))}-0"
        while True:
            chunk = self.client.xrange(self.keys.stream, min=start, max="+", count=count) or []
            out += [FeedbackEntry.from_stream(_text(i), f) for i, f in chunk if f is not None]
            if len(chunk) < count:
                return out
            start = "(" + _text(chunk[-1][0])


@dataclass(frozen=True)
class FeedbackEntry:
    entry_id: str
    request_id: str
    kind: str
    sku_id: str
    owner: str
    ts: float
    top1: str = ""
    rank: int | None = None

    @classmethod
    def from_stream(cls, entry_id: str, raw: dict[Any, Any]) -> FeedbackEntry:
        f = {_text(k): _text(v) for k, v in raw.items()}
        return cls(entry_id, f["request_id"], f["kind"], f["sku_id"], f["owner"], float(f["ts"]),
                   f.get("top1", ""), int(f["rank"]) if f.get("rank") else None)

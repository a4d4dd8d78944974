"""Writing a version's SKU hashes fast: Redis mass insertion, redis-py pipelining as fallback.

redis-py, even pipelined with hiredis, tops out near 45k HSET/s (the Python client is the
bottleneck).  Redis documents *mass insertion* for bulk loads: raw RESP protocol piped into
``redis-cli --pipe``, which streams it and counts the replies.  Here the RESP is generated in
Python with one ``bytes %`` template per command shape and streamed to redis-cli in chunks,
so the generator and the server work in parallel.

redis-cli is used when it exists and can reach the server described by the URL:
``redis://`` and ``rediss://`` (``--tls``, certificates from the URL's ``ssl_*`` query) and
``unix://`` sockets; the password goes through ``REDISCLI_AUTH`` (never the command line).
Otherwise, or with ``write_method=pipeline``, redis-py pipelines are used.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import parse_qs, unquote, urlparse

from tqdm import tqdm

from service.redis_cluster import is_cluster
from service.store import SKU_FIELDS, KeySchema, SkuRecord

if TYPE_CHECKING:
    import redis

log = logging.getLogger(__name__)
_FIELDS = SKU_FIELDS[:-1]  # every field but thumb, in SkuRecord.text_values() order
_REPLIES_RE = re.compile(rb"errors:\s*(\d+),\s*replies:\s*(\d+)")


class MassInsertUnavailable(RuntimeError):
    """redis-cli is missing or cannot express this connection; use redis-py instead."""


class WriteError(RuntimeError):
    """The server rejected commands of a bulk write."""


def _bulk(b: bytes) -> bytes:
    return b"$%d\r\n%s\r\n" % (len(b), b)


def resp_command(*args: bytes | str) -> bytes:
    """One command in RESP (an array of bulk strings)."""
    parts = [a.encode() if isinstance(a, str) else a for a in args]
    return b"*%d\r\n" % len(parts) + b"".join(_bulk(p) for p in parts)


def _hset_template(fields: Sequence[str]) -> bytes:
    head = b"*%d\r\n$4\r\nHSET\r\n$%%d\r\n%%s\r\n" % (2 + 2 * len(fields))
    return head + b"".join(_bulk(f.encode()).replace(b"%", b"%%") + b"$%d\r\n%s\r\n"
                           for f in fields)


_TEMPLATE = _hset_template(_FIELDS)
_TEMPLATE_THUMB = _hset_template((*_FIELDS, "thumb"))


def encode_hsets(
    keys: KeySchema, version: str, records: Iterable[SkuRecord], chunk: int = 5000
) -> Iterator[bytes]:
    """RESP ``HSET key field value ...`` per record (the fields of :meth:`SkuRecord.to_hash`),
    yielded ``chunk`` commands at a time."""
    prefix = keys.version_prefix(version).encode()
    out: list[bytes] = []
    for rec in records:
        key = prefix + b"{" + rec.sku_id.encode() + b"}"
        args: list[int | bytes] = [len(key), key]
        for v in rec.text_values():
            b = v.encode()
            args += (len(b), b)
        if rec.thumb:
            args += (len(rec.thumb), rec.thumb)
        out.append((_TEMPLATE_THUMB if rec.thumb else _TEMPLATE) % tuple(args))
        if len(out) >= chunk:
            yield b"".join(out)
            out = []
    if out:
        yield b"".join(out)


def encode_copies(
    keys: KeySchema, src: str, dst: str, sku_ids: Iterable[str], chunk: int = 5000
) -> Iterator[bytes]:
    """RESP ``COPY <src key> <dst key>`` per SKU (same slot on a cluster: same hash tag)."""
    out: list[bytes] = []
    for sku_id in sku_ids:
        out.append(resp_command("COPY", keys.sku(src, sku_id), keys.sku(dst, sku_id)))
        if len(out) >= chunk:
            yield b"".join(out)
            out = []
    if out:
        yield b"".join(out)


def redis_cli_command(url: str, redis_cli: str | None = None) -> tuple[list[str], dict[str, str]]:
    """argv and environment for ``redis-cli --pipe`` reaching ``url``."""
    binary = redis_cli or shutil.which("redis-cli")
    if not binary or not os.access(binary, os.X_OK):
        raise MassInsertUnavailable("redis-cli not found")
    p = urlparse(url)
    query = {k: v[-1] for k, v in parse_qs(p.query).items()}
    argv = [binary, "--no-auth-warning"]
    env = dict(os.environ)
    password = unquote(p.password) if p.password else query.get("password")
    username = unquote(p.username) if p.username else query.get("username")
    if p.scheme == "unix":
        argv += ["-s", unquote(p.path), "-n", query.get("db", "0")]
    elif p.scheme in ("redis", "rediss"):
        db = (p.path or "/0").lstrip("/") or query.get("db", "0")
        argv += ["-h", p.hostname or "localhost", "-p", str(p.port or 6379), "-n", db]
        if p.scheme == "rediss":
            argv += _tls_args(binary, query)
    else:
        raise MassInsertUnavailable(f"unsupported URL scheme {p.scheme!r}")
    if username:
        argv += ["--user", username]
    if password:
        env["REDISCLI_AUTH"] = password
    else:
        env.pop("REDISCLI_AUTH", None)
    return [*argv, "--pipe"], env


def _tls_args(binary: str, query: dict[str, str]) -> list[str]:
    helptext = subprocess.run([binary, "--help"], capture_output=True, text=True).stdout
    if "--tls" not in helptext:
        raise MassInsertUnavailable("this redis-cli was built without TLS")
    args = ["--tls"]
    for q, flag in (("ssl_ca_certs", "--cacert"), ("ssl_certfile", "--cert"),
                    ("ssl_keyfile", "--key")):
        if q in query:
            args += [flag, query[q]]
    if query.get("ssl_cert_reqs", "").lower() in ("none", "cert_none"):
        args.append("--insecure")
    return args


def mass_insert(
    url: str, chunks: Iterable[bytes], expected: int, redis_cli: str | None = None,
    progress: tqdm | None = None, per_chunk: int = 0,
) -> int:
    """Stream RESP ``chunks`` into ``redis-cli --pipe``; returns the replies counted.  Raises
    :class:`WriteError` when the server answered any command with an error."""
    argv, env = redis_cli_command(url, redis_cli)
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, env=env)
    assert proc.stdin is not None
    try:
        for data in chunks:
            proc.stdin.write(data)
            if progress is not None:
                progress.update(min(per_chunk, expected - progress.n))
        proc.stdin.close()
    except BrokenPipeError:
        pass  # redis-cli died (cannot connect...): its output below says why
    output = proc.stdout.read() if proc.stdout else b""
    rc = proc.wait()
    m = _REPLIES_RE.search(output)
    if m is None:
        raise WriteError(f"redis-cli --pipe failed (exit {rc}): {output.decode(errors='replace')}")
    errors, replies = int(m.group(1)), int(m.group(2))
    if errors or replies != expected:
        raise WriteError(f"redis-cli --pipe: {errors} errors, {replies} replies for "
                         f"{expected} commands: {output.decode(errors='replace')[-500:]}")
    return replies


@dataclass
class WriteStats:
    method: str
    count: int
    seconds: float

    @property
    def rate(self) -> float:
        return self.count / self.seconds if self.seconds > 0 else 0.0


def choose_method(method: str, url: str, redis_cli: str | None, client: object = None) -> str:
    if is_cluster(client):
        # redis-cli --pipe sends every command to the one node of the URL: MOVED errors
        if method == "mass":
            raise WriteError("mass insertion (redis-cli --pipe) is not cluster-aware: use "
                             "SKU_INDEX_WRITE_METHOD=pipeline (or auto) on a Redis Cluster")
        return "pipeline"
    if method != "auto":
        return method
    try:
        redis_cli_command(url, redis_cli)
    except MassInsertUnavailable as exc:
        log.info("mass insertion unavailable (%s): using redis-py pipelines", exc)
        return "pipeline"
    return "mass"


def write_records(
    client: redis.Redis, url: str, keys: KeySchema, version: str, records: Sequence[SkuRecord],
    *, method: str = "auto", redis_cli: str | None = None, batch: int = 1000,
    progress: bool = True,
) -> WriteStats:
    """Write ``records`` as SKU hashes of ``version`` (fresh keys: the version is new)."""
    method = choose_method(method, url, redis_cli, client)
    bar = tqdm(total=len(records), desc=f"redis ({method})", unit="sku",
               disable=None if progress else True)
    t0 = time.perf_counter()
    if method == "mass":
        chunk = 5000
        mass_insert(url, encode_hsets(keys, version, records, chunk), len(records), redis_cli,
                    bar, chunk)
    else:
        pipe = client.pipeline(transaction=False)
        for i, rec in enumerate(records, 1):
            pipe.hset(keys.sku(version, rec.sku_id), mapping=rec.to_hash())  # type: ignore[arg-type]
            if i % batch == 0:
                pipe.execute()
                bar.update(batch)
        pipe.execute()
    bar.update(len(records) - bar.n)
    bar.close()
    return WriteStats(method, len(records), time.perf_counter() - t0)


def copy_skus(
    client: redis.Redis, url: str, keys: KeySchema, src: str, dst: str, sku_ids: Sequence[str],
    *, method: str = "auto", redis_cli: str | None = None, batch: int = 1000,
) -> WriteStats:
    """Server-side ``COPY`` of unchanged SKUs from ``src`` into ``dst`` (``update``)."""
    method = choose_method(method, url, redis_cli, client)
    t0 = time.perf_counter()
    if method == "mass":
        # redis-cli counts error replies only, and COPY of a missing key is a 0, not an
        # error: spot-check the copies instead of reading a million replies.
        mass_insert(url, encode_copies(keys, src, dst, sku_ids), len(sku_ids), redis_cli)
        sample = sku_ids[:: max(1, len(sku_ids) // 1000)]
        pipe = client.pipeline(transaction=False)
        for sku_id in sample:
            pipe.exists(keys.sku(dst, sku_id))
        _check_copies(pipe.execute())
    else:
        pipe = client.pipeline(transaction=False)
        for i, sku_id in enumerate(sku_ids, 1):
            pipe.copy(keys.sku(src, sku_id), keys.sku(dst, sku_id))
            if i % batch == 0:
                _check_copies(pipe.execute())
        _check_copies(pipe.execute())
    return WriteStats(method, len(sku_ids), time.perf_counter() - t0)


def _check_copies(replies: list[object]) -> None:
    missing = sum(1 for r in replies if not r)
    if missing:
        raise WriteError(f"{missing} SKU keys of the base version are missing (COPY returned 0)")

"""API keys: constant-time checks, rotation without restart, a per-key rate limit in Redis.

Keys come from ``SKU_SERVICE_API_KEYS`` and/or ``SKU_SERVICE_API_KEYS_FILE`` (one key per
line, ``KEY [RATE_PER_S [BURST]]``, ``#`` comments).  The file is re-read when its mtime or
size changes (checked at most once a second), so keys rotate by rewriting it.  Only SHA-256
digests are kept and every stored digest is compared on every request: the time taken does not
depend on which key matched, nor on how much of a key was right.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import redis

from service.api.settings import ServiceSettings, check_key
from service.store import KeySchema

log = logging.getLogger(__name__)

RELOAD_CHECK_S = 1.0

# Token bucket, atomic in Redis; the clock is Redis's own so that every worker and replica
# agrees.  Returns {allowed (0/1), seconds until a token is back}.
TOKEN_BUCKET = """
local rate, burst = tonumber(ARGV[1]), tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local got = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(got[1]) or burst
local ts = tonumber(got[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - ts) * rate)
local allowed = 0
if tokens >= 1 then tokens = tokens - 1; allowed = 1 end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
return {allowed, tostring((1 - tokens) / rate)}
"""


@dataclass(frozen=True)
class KeyPolicy:
    key_id: str  # first hex digits of the key's digest: safe to log and to name Redis keys
    rate_per_s: float | None
    burst: int


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).digest()


def parse_keys_file(text: str, default: KeyPolicy) -> dict[bytes, KeyPolicy]:
    keys: dict[bytes, KeyPolicy] = {}
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        try:
            key = check_key(parts[0])
            rate = float(parts[1]) if len(parts) > 1 else default.rate_per_s
            burst = int(parts[2]) if len(parts) > 2 else default.burst
            if (rate is not None and rate <= 0) or burst < 1 or len(parts) > 3:
                raise ValueError("rate must be > 0 and burst >= 1")
        except ValueError as exc:
            raise ValueError(f"line {n}: {exc}") from None
        d = _digest(key)
        keys[d] = KeyPolicy(d.hex()[:12], rate, burst)
    return keys


class ApiKeys:
    """The accepted keys with their policies; :meth:`check` is what a request calls."""

    def __init__(self, settings: ServiceSettings) -> None:
        self.enabled = settings.auth == "required"
        self.default = KeyPolicy("", settings.rate_limit_per_s, settings.rate_limit_burst)
        self.fixed = {
            d: KeyPolicy(d.hex()[:12], self.default.rate_per_s, self.default.burst)
            for d in map(_digest, settings.api_keys)
        }
        self.path = settings.api_keys_file
        self._keys = dict(self.fixed)
        self._stamp: tuple[float, int] | None = None
        self._checked = 0.0
        self._lock = threading.Lock()
        self._reload(force=True)

    def _reload(self, force: bool = False) -> None:
        if self.path is None:
            return
        now = time.monotonic()
        if not force and now - self._checked < RELOAD_CHECK_S:
            return
        with self._lock:
            self._checked = now
            try:
                st = Path(self.path).stat()
                stamp = (st.st_mtime, st.st_size)
                if stamp == self._stamp:
                    return
                from_file = parse_keys_file(Path(self.path).read_text(), self.default)
            except (OSError, ValueError) as exc:
                # keep the keys we have: a half-written file must not lock everyone out
                log.error("API keys file %s not (re)loaded: %s", self.path, exc)
                return
            self._keys = {**self.fixed, **from_file}
            self._stamp = stamp
            log.info("API keys loaded: %d (file %s)", len(self._keys), self.path)

    def check(self, given: str) -> KeyPolicy | None:
        """The policy of ``given``, or None; compares against every key, in constant time."""
        self._reload()
        d = _digest(given)
        found: KeyPolicy | None = None
        for digest, policy in self._keys.items():
            if hmac.compare_digest(d, digest):
                found = policy
        return found


def take_token(client: redis.Redis, keys: KeySchema, policy: KeyPolicy) -> float | None:
    """None when the request may go on, else the seconds to wait (the key's bucket is empty)."""
    if policy.rate_per_s is None:
        return None
    allowed, wait = client.eval(TOKEN_BUCKET, 1, keys.rate_limit(policy.key_id),
                                policy.rate_per_s, policy.burst)
    return None if int(allowed) else max(float(wait), 0.0)

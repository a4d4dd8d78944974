"""One writer at a time: a Redis lock (SET NX PX) renewed by a heartbeat thread.

A run that dies stops renewing, so its lock expires after ``ttl_s`` and the next run can go
on; a run that is merely slow keeps it.  Release and renewal compare the token (Lua), so a
run never deletes a lock that expired and was taken by another run.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
from types import TracebackType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import redis

log = logging.getLogger(__name__)

_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


class LockHeld(RuntimeError):
    """Another run holds the lock."""


class RunLock:
    def __init__(self, client: redis.Redis, key: str, ttl_s: float = 60.0, what: str = "") -> None:
        self.client = client
        self.key = key
        self.ttl_ms = max(1000, int(ttl_s * 1000))
        self.token = f"{socket.gethostname()}:{os.getpid()}:{what}:{uuid.uuid4().hex[:8]}"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.lost = False

    def acquire(self) -> RunLock:
        if not self.client.set(self.key, self.token, nx=True, px=self.ttl_ms):
            owner = self.client.get(self.key)
            ttl = self.client.pttl(self.key)
            who = owner.decode(errors="replace") if isinstance(owner, bytes) else owner
            raise LockHeld(f"another run holds {self.key} ({who}, expires in {ttl / 1000:.0f} s)")
        self._thread = threading.Thread(target=self._heartbeat, name="sku-index-lock",
                                        daemon=True)
        self._thread.start()
        return self

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.ttl_ms / 3000):
            try:
                if not self.client.eval(_RENEW, 1, self.key, self.token, self.ttl_ms):
                    self.lost = True
                    log.error("lost the run lock %s (expired?)", self.key)
                    return
            except Exception as exc:  # noqa: BLE001 - a heartbeat must not kill the run
                log.warning("could not renew the run lock: %s", exc)

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        try:
            self.client.eval(_RELEASE, 1, self.key, self.token)
        except Exception as exc:  # noqa: BLE001
            log.warning("could not release the run lock (it expires by itself): %s", exc)

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()

"""Redis Cluster: the client helpers that must see every node, and a private local cluster.

:func:`service.redis_server.connect` returns a ``redis.RedisCluster`` when the URL's server
has ``cluster_enabled:1`` (any node's address will do), so the store, the builder and the
service run unchanged on a cluster: single-slot transactions (the control keys share one hash
tag) and non-transactional pipelines, which redis-py sends as one batch per node touched.
What a cluster client does *not* do for us:

* SCAN walks one node's keyspace: :func:`scan_keys` runs it on every primary in turn
  (``gc``/``verify`` would otherwise see a third of a 3-master cluster's keys);
* a multi-key UNLINK of keys in many slots becomes one command per slot: :func:`unlink_keys`
  pipelines single-key UNLINKs instead (one round trip per node).

:class:`PrivateRedisCluster` starts ``masters`` real ``redis-server --cluster-enabled yes``
processes on free loopback ports and joins them with ``redis-cli --cluster create`` (tests and
demos; production points ``REDIS_URL`` at its own cluster).
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from service.redis_server import (
    INSTALL_HINT,
    PrivateRedisServer,
    RedisUnavailable,
    find_redis_server,
)

if TYPE_CHECKING:
    import redis


def is_cluster(client: Any) -> bool:
    import redis

    return isinstance(client, redis.RedisCluster)


def node_clients(client: redis.Redis) -> list[redis.Redis]:
    """One plain client per primary (the client itself when it is not a cluster client)."""
    if not is_cluster(client):
        return [client]
    cluster: Any = client
    return [cluster.get_redis_connection(node) for node in cluster.get_primaries()]


def scan_keys(client: redis.Redis, match: str, count: int = 1000) -> Iterator[bytes]:
    """SCAN ``match`` over every primary of a cluster, or over the one server."""
    for node in node_clients(client):
        yield from node.scan_iter(match=match, count=count)


def unlink_keys(client: redis.Redis, keys: Iterable[bytes | str]) -> int:
    """UNLINK ``keys``: one command on a single server, a pipeline (a batch per node) on a
    cluster, where one UNLINK may only name keys of one slot."""
    keys = list(keys)
    if not keys:
        return 0
    if not is_cluster(client):
        return int(client.unlink(*keys))
    pipe = client.pipeline(transaction=False)
    for key in keys:
        pipe.unlink(key)
    return sum(int(r) for r in pipe.execute())


def cluster_support(binary: str | None = None) -> str | None:
    """Why a local cluster cannot be started here, or ``None`` when it can."""
    binary = binary or find_redis_server()
    if binary is None:
        return INSTALL_HINT
    if shutil.which("redis-cli") is None:
        return "redis-cli (needed for `redis-cli --cluster create`) is not on PATH"
    return None


@dataclass
class PrivateRedisCluster:
    """``masters`` cluster-enabled redis-servers, no replicas, no persistence, all 16384 slots
    assigned; :attr:`url` is the first node's (a cluster client discovers the others)."""

    masters: int = 3
    binary: str | None = None
    timeout_s: float = 20.0
    servers: list[PrivateRedisServer] = field(default_factory=list, init=False)

    @property
    def url(self) -> str:
        return self.servers[0].url

    @property
    def ports(self) -> list[int]:
        return [s.port for s in self.servers]

    def start(self) -> PrivateRedisCluster:
        why = cluster_support(self.binary)
        if why:
            raise RedisUnavailable(why)
        try:
            for _ in range(self.masters):
                self.servers.append(PrivateRedisServer(
                    binary=self.binary, extra_args=["--cluster-enabled", "yes",
                                                    "--cluster-node-timeout", "5000"]).start())
            nodes = [f"127.0.0.1:{p}" for p in self.ports]
            out = subprocess.run(["redis-cli", "--cluster", "create", *nodes,
                                  "--cluster-replicas", "0", "--cluster-yes"],
                                 capture_output=True, text=True, timeout=self.timeout_s)
            if out.returncode != 0:
                raise RedisUnavailable(f"redis-cli --cluster create failed: "
                                       f"{(out.stdout + out.stderr).strip()[-500:]}")
            self._wait_ok()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ok(self) -> None:
        """Until every node says ``cluster_state:ok`` and knows every other node."""
        deadline = time.monotonic() + self.timeout_s
        while time.monotonic() < deadline:
            if all(self._node_ok(p) for p in self.ports):
                return
            time.sleep(0.05)
        raise RedisUnavailable("the local Redis Cluster did not reach cluster_state:ok")

    def _node_ok(self, port: int) -> bool:
        out = subprocess.run(["redis-cli", "-p", str(port), "cluster", "info"],
                             capture_output=True, text=True).stdout
        info = dict(line.split(":", 1) for line in out.split() if ":" in line)
        return (info.get("cluster_state") == "ok"
                and info.get("cluster_known_nodes") == str(self.masters))

    def stop(self) -> None:
        for s in self.servers:
            s.stop()
        self.servers = []

    def __enter__(self) -> PrivateRedisCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

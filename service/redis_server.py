"""A real Redis for every process: the one named by ``REDIS_URL``, or a private throw-away server.

Production sets ``REDIS_URL``.  The demo and the tests leave it unset: :func:`redis_connection`
then starts a private ``redis-server`` on a free loopback port with persistence off, waits until
it answers PING and stops it on exit, so nothing ever touches a user's own database.

``sku-redis --ensure`` checks that a ``redis-server`` binary exists (installing Debian's package
when running as root with apt) and says exactly what to install otherwise.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

if TYPE_CHECKING:  # redis is a `serve` extra; importing this module must not need it
    import redis

log = logging.getLogger(__name__)

INSTALL_HINT = (
    "redis-server was not found. Install it with one of:\n"
    "  Debian/Ubuntu: sudo apt-get install -y redis-server\n"
    "  Fedora/RHEL:   sudo dnf install -y redis\n"
    "  macOS:         brew install redis\n"
    "or point REDIS_URL at an existing server (redis://host:6379/0), "
    "or set SKU_REDIS_SERVER_BIN to the binary's path."
)


def is_redis_error(exc: BaseException) -> bool:
    """Whether ``exc`` is an error of the Redis client (False where redis-py is not installed)."""
    try:
        import redis
    except ImportError:
        return False
    return isinstance(exc, redis.RedisError)


class RedisUnavailable(RuntimeError):
    """Redis cannot be reached or started; the message says what to do."""


def find_redis_server(explicit: str | None = None) -> str | None:
    """Path of a redis-server binary: ``explicit``, ``$SKU_REDIS_SERVER_BIN``, PATH, /usr/sbin."""
    for candidate in (explicit, os.environ.get("SKU_REDIS_SERVER_BIN")):
        if candidate:
            return candidate if os.access(candidate, os.X_OK) else None
    found = shutil.which("redis-server")
    if found:
        return found
    for d in ("/usr/bin", "/usr/sbin", "/usr/local/bin", "/opt/homebrew/bin"):
        p = os.path.join(d, "redis-server")
        if os.access(p, os.X_OK):
            return p
    return None


def ensure_redis_server(install: bool = True) -> str:
    """Return a redis-server path, installing Debian's package when allowed and possible."""
    path = find_redis_server()
    if path:
        return path
    can_apt = install and shutil.which("apt-get") and hasattr(os, "geteuid") and os.geteuid() == 0
    if can_apt:
        log.info("redis-server not found; installing Debian's redis-server package")
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
        subprocess.run(
            ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "redis-server"],
            check=True,
            env=env,
        )
        path = find_redis_server()
        if path:
            return path
    raise RedisUnavailable(INSTALL_HINT)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class PrivateRedisServer:
    """A real redis-server child process on 127.0.0.1, without persistence.

    Use as a context manager, or call :meth:`start` / :meth:`stop`.  :meth:`stop` is also
    registered with ``atexit`` so an interrupted demo does not leave a server behind.
    """

    binary: str | None = None
    port: int = 0
    startup_timeout_s: float = 10.0
    extra_args: list[str] = field(default_factory=list)
    proc: subprocess.Popen[bytes] | None = field(default=None, init=False)
    _tmpdir: tempfile.TemporaryDirectory[str] | None = field(default=None, init=False)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> PrivateRedisServer:
        binary = self.binary or find_redis_server()
        if binary is None:
            raise RedisUnavailable(INSTALL_HINT)
        # A port picked by bind(0) can be taken by someone else before redis binds it: retry.
        last_err = ""
        for _ in range(5):
            self.port = self.port or free_port()
            self._tmpdir = tempfile.TemporaryDirectory(prefix="sku-redis-")
            args = [
                binary,
                "--port", str(self.port),
                "--bind", "127.0.0.1",
                "--save", "",
                "--appendonly", "no",
                "--dir", self._tmpdir.name,
                "--daemonize", "no",
                "--protected-mode", "yes",
                "--loglevel", "warning",
                "--logfile", "",
                *self.extra_args,
            ]
            self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
            atexit.register(self.stop)
            if self._wait_ready():
                log.info("private redis-server pid %d on %s", self.proc.pid, self.url)
                return self
            last_err = self._drain_output()
            self.stop()
            self.port = 0
        raise RedisUnavailable(f"private redis-server did not start: {last_err.strip()[-500:]}")

    def _wait_ready(self) -> bool:
        assert self.proc is not None
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            if _ping_raw(self.port):
                return True
            time.sleep(0.02)
        return False

    def _drain_output(self) -> str:
        if self.proc is None or self.proc.stdout is None:
            return ""
        with contextlib.suppress(Exception):
            if self.proc.poll() is not None:
                return self.proc.stdout.read().decode(errors="replace")
        return "timed out waiting for PING"

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        if proc is not None and proc.stdout is not None:
            proc.stdout.close()
        if self._tmpdir is not None:
            self._tmpdir.cleanup()
            self._tmpdir = None

    def __enter__(self) -> PrivateRedisServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _ping_raw(port: int) -> bool:
    """PING over a raw socket: lets this module start a server without the redis package."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def connect(
    url: str, *, timeout_s: float = 2.0, connect_timeout_s: float | None = None
) -> redis.Redis:
    """A redis-py client for ``url`` that has answered PING; raises :class:`RedisUnavailable`.
    ``timeout_s`` bounds every command (socket timeout), ``connect_timeout_s`` each connect.

    When the server runs in cluster mode (``INFO cluster``) the client is a
    ``redis.RedisCluster`` seeded from that node: it has the same command and pipeline API, so
    callers keep the ``redis.Redis`` type (see :mod:`service.redis_cluster`)."""
    import redis

    opts: dict[str, Any] = {"socket_timeout": timeout_s,
                            "socket_connect_timeout": connect_timeout_s or timeout_s}
    client = redis.Redis.from_url(url, health_check_interval=30, **opts)
    try:
        client.ping()
        if client.info("cluster").get("cluster_enabled"):
            client.close()
            client = cast("redis.Redis", redis.RedisCluster.from_url(url, **opts))
            client.ping()
    except redis.RedisError as exc:
        client.close()
        raise RedisUnavailable(f"Redis at {redact_url(url)} is not answering: {exc}") from exc
    return client


def redact_url(url: str) -> str:
    """The URL with any password replaced, for logs and error messages."""
    from urllib.parse import urlparse

    p = urlparse(url)
    if p.password:
        netloc = p.netloc.replace(f":{p.password}@", ":***@")
        return p._replace(netloc=netloc).geturl()
    return url


@contextlib.contextmanager
def redis_connection(url: str | None = None) -> Iterator[tuple[redis.Redis, str]]:
    """Yield ``(client, url)``: for ``url`` when given, else for a private server started here."""
    if url:
        client = connect(url)
        try:
            yield client, url
        finally:
            client.close()
        return
    with PrivateRedisServer() as server:
        client = connect(server.url)
        try:
            yield client, server.url
        finally:
            client.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="sku-redis",
        description="Check for a redis-server binary (--ensure), or run a private throw-away "
        "redis-server on a free loopback port until interrupted (--serve).",
    )
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument(
        "--ensure",
        action="store_true",
        help="make sure redis-server exists: PATH, else apt-get as root, else print what to install",
    )
    group.add_argument("--serve", action="store_true", help="start a private server and print URL")
    parser.add_argument("--no-install", action="store_true", help="with --ensure: never apt-get")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.ensure:
            path = ensure_redis_server(install=not args.no_install)
            version = subprocess.run([path, "--version"], capture_output=True, text=True).stdout
            sys.stdout.write(f"redis-server: {path} ({version.strip()})\n")
            return 0
        with PrivateRedisServer() as server:
            sys.stdout.write(f"REDIS_URL={server.url}\n")
            sys.stdout.flush()
            with contextlib.suppress(KeyboardInterrupt):
                while server.proc is not None and server.proc.poll() is None:
                    time.sleep(0.5)
        return 0
    except (RedisUnavailable, subprocess.CalledProcessError) as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 2


if __name__ == "__main__":
    sys.exit(main())

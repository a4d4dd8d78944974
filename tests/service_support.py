"""Helpers of the service tests: an index published into a real Redis, settings, and the app
served by a real uvicorn on a loopback port (for what a TestClient cannot do: slow or
vanishing clients, raw sockets)."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import uvicorn

from index_builder import cli as index_cli
from service.api.protocol import HeaderDeadlineProtocol
from service.api.settings import ServiceSettings
from service.redis_server import PrivateRedisServer, free_port

API_KEY = "test-key-0123456789"
HEADERS = {"X-API-Key": API_KEY}


def build_index(catalog: Path, artifact: Path, index_dir: Path, url: str, *extra: str) -> None:
    rc = index_cli.main([
        "build", "--catalog", str(catalog), "--artifact", str(artifact),
        "--index-dir", str(index_dir), "--redis-url", url, "--no-progress", *extra,
    ])
    assert rc == 0


@contextlib.contextmanager
def demo_index(artifact: Path, demo_catalog: Path, index_dir: Path, *versions: str,
               thumbnails: bool = False) -> Iterator[PrivateRedisServer]:
    """A private redis-server with the demo catalog's index built and published as each of
    ``versions`` (default ``v1``) in turn, into ``index_dir``."""
    extra = ["--thumbnails"] if thumbnails else []
    with PrivateRedisServer() as server:
        for version in versions or ("v1",):
            build_index(demo_catalog / "catalog" / "manifest.jsonl", artifact, index_dir,
                        server.url, "--version", version, *extra)
        yield server


def service_settings(url: str, index_dir: Path, artifact: Path, **over: Any) -> ServiceSettings:
    values: dict[str, Any] = dict(
        redis_url=url, model_dir=artifact, index_dir=index_dir, api_keys=[API_KEY],
        index_poll_s=0.1, max_concurrency=2, max_queue=4,
    )
    values.update(over)
    return ServiceSettings(**values)


@contextlib.contextmanager
def live_server(app: Any, header_timeout_s: float = 10.0) -> Iterator[tuple[str, int]]:
    """``app`` served by uvicorn (httptools + the header deadline) in a thread."""
    protocol = type("TestProtocol", (HeaderDeadlineProtocol,), {"header_timeout_s": header_timeout_s})
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                            http=protocol, lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 120
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}", port
    finally:
        server.should_exit = True
        thread.join(30)


def raw_request_head(path: str, length: int, ctype: str = "image/jpeg") -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: test\r\nX-API-Key: {API_KEY}\r\n"
            f"Content-Type: {ctype}\r\nContent-Length: {length}\r\n\r\n").encode()


def read_response(sock: socket.socket) -> tuple[int, bytes, bool]:
    """(status, whole bytes read, closed by the server) of one response on a raw socket."""
    data = b""
    closed = False
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            closed = True
            break
        if not chunk:
            closed = True
            break
        data += chunk
        head, sep, body = data.partition(b"\r\n\r\n")
        if sep:
            lengths = [int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                       if line.lower().startswith(b"content-length:")]
            if lengths and len(body) >= lengths[0]:
                break
    status = int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/") else 0
    return status, data, closed

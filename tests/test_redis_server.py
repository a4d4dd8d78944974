"""The private redis-server: real, isolated, gone after exit; the fixture-based client works."""

from __future__ import annotations

import subprocess
import sys

import pytest

from service.redis_server import (
    PrivateRedisServer,
    RedisUnavailable,
    connect,
    find_redis_server,
    redact_url,
    redis_connection,
)


def test_private_server_answers_and_stops() -> None:
    with PrivateRedisServer() as server:
        client = connect(server.url)
        assert client.ping() is True
        info = client.info("persistence")
        assert info["aof_enabled"] == 0
        assert client.config_get("save")["save"] == ""
        assert client.config_get("bind")["bind"].startswith("127.0.0.1")
        pid = server.proc.pid
        client.close()
    with pytest.raises(RedisUnavailable):
        connect(server.url, timeout_s=0.5)
    assert subprocess.run(["kill", "-0", str(pid)], capture_output=True).returncode != 0


def test_redis_connection_without_url_uses_a_private_server() -> None:
    with redis_connection(None) as (client, url):
        client.set("k", "v")
        assert client.get("k") == b"v"
        assert url.startswith("redis://127.0.0.1:")
    with pytest.raises(RedisUnavailable):
        connect(url, timeout_s=0.5)


def test_unreachable_url_is_a_clear_error() -> None:
    with pytest.raises(RedisUnavailable, match="not answering"):
        with redis_connection("redis://:secret@127.0.0.1:1/0"):
            pass


def test_password_is_redacted() -> None:
    assert redact_url("redis://:hunter2@h:6379/0") == "redis://:***@h:6379/0"
    assert redact_url("redis://h:6379/0") == "redis://h:6379/0"



def test_ensure_cli_finds_the_binary() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "service.redis_server", "--ensure", "--no-install"],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    assert find_redis_server() in out.stdout


def test_fixture_client_is_isolated(redis_client, redis_server) -> None:  # type: ignore[no-untyped-def]
    redis_client.set("fixture-key", "1")
    assert redis_client.get("fixture-key") == b"1"
    assert redis_server.url != "redis://127.0.0.1:6379/0"


def test_missing_binary_explains_what_to_install(monkeypatch, tmp_path) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("SKU_REDIS_SERVER_BIN", str(tmp_path / "no-such-redis-server"))
    assert find_redis_server() is None
    with pytest.raises(RedisUnavailable, match="apt-get install -y redis-server"):
        PrivateRedisServer().start()
    out = subprocess.run(
        [sys.executable, "-m", "service.redis_server", "--ensure", "--no-install"],
        capture_output=True,
        text=True,
        env={"SKU_REDIS_SERVER_BIN": str(tmp_path / "nope"), "PATH": "/usr/bin:/bin"},
    )
    assert out.returncode == 2 and "redis-server was not found" in out.stderr

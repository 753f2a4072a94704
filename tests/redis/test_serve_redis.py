"""``upgrade-bot serve`` with the Redis settings users give it: TLS and an ACL user from the
environment (REDIS_URL carrying no secret); bad settings are one clear line, never a secret."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from upgrade_bot.engine.adapters.store import acl_rules
from upgrade_bot.redis_server import HOST, RedisServer
from upgrade_bot.slackstub import SlackStub

from ..slack.test_serve_cli import (
    env_for,
    one_clear_line,
    serve_cli,
    serving_process,
    write_config,
)
from .servers import ADMIN_PROBE, TlsFiles, TlsRedisServer, acl_file, make_tls_files

pytestmark = [pytest.mark.traffic, pytest.mark.timeout(120)]

BOT, PASSWORD = "upgrade-bot", "s3rve-Pa55word"


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return make_tls_files(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def server(tls: TlsFiles, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """TLS only, and the bot's ACL user with the documented grant (default key prefix)."""
    directory = tmp_path_factory.mktemp("redis")
    users = acl_file(directory / "users.acl", {BOT: (PASSWORD, acl_rules())})
    with TlsRedisServer(
        directory, tls, extra_args=["--aclfile", str(users)], probe=ADMIN_PROBE
    ) as running:
        yield running


@pytest.fixture
async def stub() -> AsyncIterator[SlackStub]:
    async with SlackStub() as running:
        yield running


def redis_env(tls: TlsFiles, **changes: str) -> dict[str, str]:
    return {
        "REDIS_USERNAME": BOT,
        "REDIS_PASSWORD": PASSWORD,
        "REDIS_TLS_CA_FILE": str(tls.ca),
        **changes,
    }


async def test_serve_runs_over_tls_as_the_acl_user(
    tmp_path: Path, stub: SlackStub, server: RedisServer, tls: TlsFiles
) -> None:
    env = env_for(stub, server.url, **redis_env(tls))
    async with serving_process(write_config(tmp_path), env) as (proc, seen):
        proc.send_signal(signal.SIGTERM)
        rest, _ = await asyncio.wait_for(proc.communicate(), 30)
    out = (seen + rest).decode()
    assert proc.returncode == 0, out
    assert PASSWORD not in out


async def test_serve_names_bad_redis_settings_in_one_line(
    tmp_path: Path, stub: SlackStub, server: RedisServer, tls: TlsFiles
) -> None:
    config = write_config(tmp_path)

    env = env_for(stub, server.url, **redis_env(tls, REDIS_TLS_CA_FILE="/nonexistent/ca.pem"))
    code, out = await serve_cli(config, env)
    assert code == 3
    one_clear_line(out, "environment: REDIS_TLS_CA_FILE: /nonexistent/ca.pem does not exist")

    plain = f"redis://{HOST}:{server.port}/0"
    code, out = await serve_cli(config, env_for(stub, plain, **redis_env(tls)))
    assert code == 3
    one_clear_line(out, "REDIS_TLS_CA_FILE set, but REDIS_URL does not use TLS: use rediss://")

    code, out = await serve_cli(config, env_for(stub, server.url, **redis_env(tls)) | {
        "REDIS_PASSWORD": "wr0ng-Pa55word"
    })  # fmt: skip
    assert code == 1
    one_clear_line(out, f"Redis at {HOST}:{server.port} (TLS) refused the credentials")
    assert "wr0ng-Pa55word" not in out and PASSWORD not in out

    sentinel = "redis+sentinel://127.0.0.1:26379"
    code, out = await serve_cli(config, env_for(stub, sentinel))
    assert code == 3
    one_clear_line(out, "a Sentinel URL needs the master's name")

"""The store against real redis-server processes set up as users run them: TLS, ACL users.

Each test starts its own server (tests/redis/servers.py) and goes through every store operation
(``exercise``), so that a TLS setting or a command missing from the documented ACL grant fails
here, not in a user's cluster. Refusals must be quick and say what is wrong, without secrets.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis.exceptions import ResponseError

from upgrade_bot.engine.adapters.store import (
    ACL_COMMANDS,
    GLOBAL,
    RedisStore,
    StoreForbidden,
    StoreUnavailable,
    acl_rules,
)
from upgrade_bot.engine.errors import ConfigError
from upgrade_bot.redis_server import HOST, RedisServer

from .servers import ADMIN_PROBE, TlsFiles, TlsRedisServer, acl_file, make_tls_files

pytestmark = [pytest.mark.traffic, pytest.mark.timeout(120)]

PREFIX = "upgrade-bot"  # the default key prefix (store.key_prefix)
BOT, BOT_PASSWORD = "upgrade-bot", "b0t-Pa55word-x1"
# Bound on a refusal: far above what it takes (well under a second), far below a hang.
REFUSED_WITHIN_S = 30.0


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return make_tls_files(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def servers() -> Iterator[list[RedisServer]]:
    started: list[RedisServer] = []
    yield started
    for server in started:
        server.stop()


def start(servers: list[RedisServer], server: RedisServer) -> RedisServer:
    servers.append(server)
    return server.start()


async def exercise(store: RedisStore, run: str = "up-prod-eu-1") -> None:
    """Every operation the engine uses, once, with its expected answer (on a fresh ``run``)."""
    await store.ping()
    rev = await store.create_run(run, {"n": 0}, [{"type": "created"}], ["prod-eu"], 1000.0)
    fence = await store.acquire_lease(run, "bot-a", 30)
    assert fence is not None and fence.token == 1
    assert await store.renew_lease(fence, 30)
    assert await store.check_fence(fence)
    assert await store.newest_token(run) == 1
    assert (await store.lease_holder(run) or {}).get("holder") == "bot-a"
    rev = await store.save(run, {"n": 1}, expected_rev=rev, fence=fence, events=[{"type": "s"}])
    assert await store.load(run) == ({"n": 1}, rev)
    [extra] = await store.append_events(run, [{"type": "note"}], fence=fence)
    events = await store.events(run)
    assert [e["type"] for _, e in events] == ["created", "s", "note"]
    assert await store.set_cursor("slack", run, extra) == extra
    assert await store.get_cursor("slack", run) == extra
    global_id = await store.audit_global({"type": "config_reloaded"})
    assert [i for i, _ in await store.events(GLOBAL)][-1] == global_id
    assert await store.first_time(run) and not await store.first_time(run)
    assert await store.lock_holder("prod-eu") == run
    assert await store.active_runs() == [run]
    assert await store.break_lock("prod-eu", user="U1", reason="test", now=1001.0) == run
    await store.release_lease(fence)
    await store.finish(run)
    assert await store.active_runs() == []
    assert run in await store.history(now=1002.0)


async def refusal(store: RedisStore, kind: type[Exception] = StoreUnavailable) -> str:
    try:
        with pytest.raises(kind) as caught:
            await asyncio.wait_for(store.ping(), REFUSED_WITHIN_S)
    finally:
        await store.close()
    return str(caught.value)


# --- TLS ----------------------------------------------------------------------------------------


async def test_the_store_works_over_tls_with_the_given_ca(
    tmp_path: Path, tls: TlsFiles, servers: list[RedisServer]
) -> None:
    server = start(servers, TlsRedisServer(tmp_path / "redis", tls))
    assert server.url.startswith("rediss://")
    store = RedisStore.from_url(server.url, environ={"REDIS_TLS_CA_FILE": str(tls.ca)})
    try:
        await exercise(store)
        assert store.location == f"{HOST}:{server.port} (TLS)"
    finally:
        await store.close()


async def test_a_server_certificate_from_another_ca_is_refused_clearly(
    tmp_path: Path, tls: TlsFiles, servers: list[RedisServer]
) -> None:
    server = start(servers, TlsRedisServer(tmp_path / "redis", tls))
    env = {"REDIS_TLS_CA_FILE": str(tls.other_ca)}
    message = await refusal(RedisStore.from_url(server.url, environ=env))
    assert f"Redis at {HOST}:{server.port} (TLS) presented a TLS certificate" in message
    assert "REDIS_TLS_CA_FILE must name the CA that signed it" in message
    assert "CERTIFICATE_VERIFY_FAILED" in message


async def test_a_certificate_for_another_host_is_refused(
    tmp_path: Path, tls: TlsFiles, servers: list[RedisServer]
) -> None:
    # Listening on 127.0.0.2 too, which the certificate does not name (only 127.0.0.1).
    both = ["--bind", HOST, "127.0.0.2"]
    server = start(servers, TlsRedisServer(tmp_path / "redis", tls, extra_args=both))
    url = f"rediss://127.0.0.2:{server.port}/0"
    message = await refusal(RedisStore.from_url(url, environ={"REDIS_TLS_CA_FILE": str(tls.ca)}))
    assert "presented a TLS certificate this client does not trust" in message
    assert "IP address mismatch" in message
    # ... which is what REDIS_TLS_INSECURE_SKIP_VERIFY is for (and only that).
    env = {"REDIS_TLS_INSECURE_SKIP_VERIFY": "true"}
    store = RedisStore.from_url(url, environ=env)
    try:
        await store.ping()
    finally:
        await store.close()


async def test_plain_redis_against_the_tls_port_says_to_use_rediss(
    tmp_path: Path, tls: TlsFiles, servers: list[RedisServer]
) -> None:
    server = start(servers, TlsRedisServer(tmp_path / "redis", tls))
    message = await refusal(RedisStore.from_url(f"redis://{HOST}:{server.port}/0"))
    assert f"Redis at {HOST}:{server.port} is unreachable" in message
    assert "if it expects TLS, use rediss://" in message


async def test_rediss_against_a_plain_port_says_it_may_not_speak_tls(
    tmp_path: Path, tls: TlsFiles, servers: list[RedisServer]
) -> None:
    server = start(servers, RedisServer(tmp_path / "redis"))
    url = f"rediss://{HOST}:{server.port}/0"
    env = {"REDIS_TLS_CA_FILE": str(tls.ca)}
    # The plain server waits for a command while the client waits for a handshake: only the
    # connect timeout ends it, so keep it short here.
    store = RedisStore.from_url(url, environ=env, socket_connect_timeout=0.5)
    message = await refusal(store)
    assert "did not answer in time (if that port does not speak TLS, use redis://" in message


async def test_client_certificates_when_the_server_asks_for_them(
    tmp_path: Path, tls: TlsFiles, servers: list[RedisServer]
) -> None:
    server = start(servers, TlsRedisServer(tmp_path / "redis", tls, client_certs=True))
    env = {
        "REDIS_TLS_CA_FILE": str(tls.ca),
        "REDIS_TLS_CERT_FILE": str(tls.cert),
        "REDIS_TLS_KEY_FILE": str(tls.key),
    }
    store = RedisStore.from_url(server.url, environ=env)
    try:
        await exercise(store)
    finally:
        await store.close()
    without = {"REDIS_TLS_CA_FILE": str(tls.ca)}
    message = await refusal(RedisStore.from_url(server.url, environ=without))
    assert f"Redis at {HOST}:{server.port} (TLS)" in message
    assert "failed the TLS handshake" in message or "is unreachable" in message


# --- ACL users ----------------------------------------------------------------------------------


def acl_server(directory: Path, tls: TlsFiles | None = None) -> RedisServer:
    """A server whose only user is the bot, with exactly the grant the README documents."""
    directory.mkdir(parents=True, exist_ok=True)
    users = acl_file(directory / "users.acl", {BOT: (BOT_PASSWORD, acl_rules(PREFIX))})
    args = ["--aclfile", str(users)]
    probe = ADMIN_PROBE
    if tls is not None:
        return TlsRedisServer(directory, tls, extra_args=args, probe=probe)
    return RedisServer(directory, extra_args=args, probe=probe)


async def test_the_documented_grant_is_enough_with_credentials_in_the_url(
    tmp_path: Path, servers: list[RedisServer]
) -> None:
    server = start(servers, acl_server(tmp_path / "redis"))
    # db 1: the grant's SELECT is needed and used
    store = RedisStore.from_url(f"redis://{BOT}:{BOT_PASSWORD}@{HOST}:{server.port}/1")
    try:
        await exercise(store)
    finally:
        await store.close()


async def test_the_documented_grant_is_enough_with_credentials_from_the_environment(
    tmp_path: Path, tls: TlsFiles, servers: list[RedisServer]
) -> None:
    server = start(servers, acl_server(tmp_path / "redis", tls))
    env = {
        "REDIS_USERNAME": BOT,
        "REDIS_PASSWORD": BOT_PASSWORD,
        "REDIS_TLS_CA_FILE": str(tls.ca),
    }
    store = RedisStore.from_url(server.url, environ=env)
    try:
        await exercise(store)
    finally:
        await store.close()


async def test_a_wrong_password_is_refused_without_showing_it(
    tmp_path: Path, servers: list[RedisServer]
) -> None:
    server = start(servers, acl_server(tmp_path / "redis"))
    wrong = "not-the-Pa55word-x2"
    env = {"REDIS_USERNAME": BOT, "REDIS_PASSWORD": wrong}
    message = await refusal(RedisStore.from_url(f"redis://{HOST}:{server.port}/0", environ=env))
    assert f"Redis at {HOST}:{server.port} refused the credentials" in message
    assert wrong not in message and BOT_PASSWORD not in message
    # The same with the password in the URL.
    url = f"redis://{BOT}:{wrong}@{HOST}:{server.port}/0"
    message = await refusal(RedisStore.from_url(url))
    assert "refused the credentials" in message and wrong not in message


async def test_keys_outside_the_grant_are_refused_with_the_grant_to_give(
    tmp_path: Path, servers: list[RedisServer]
) -> None:
    server = start(servers, acl_server(tmp_path / "redis"))
    env = {"REDIS_USERNAME": BOT, "REDIS_PASSWORD": BOT_PASSWORD}
    # Another key prefix than the one the user was granted: the first write is refused.
    store = RedisStore.from_url(f"redis://{HOST}:{server.port}/0", environ=env, prefix="other")
    try:
        await store.ping()  # PING needs no key: the credentials are fine
        with pytest.raises(StoreForbidden) as caught:
            await store.create_run("r1", {}, [], ["g"], 1.0)
        message = str(caught.value)
        assert "refused a command to the bot's user (this user has no permissions" in message
        assert f"ACL SETUSER <user> {acl_rules('other')}" in message
        assert BOT_PASSWORD not in message
    finally:
        await store.close()


async def test_each_command_of_the_grant_is_needed(
    tmp_path: Path, servers: list[RedisServer]
) -> None:
    """The documented grant is the least: without any one of its commands, some store
    operation is refused (with the grant to give, but for MULTI: then EXEC runs alone)."""
    for command in ACL_COMMANDS:
        directory = tmp_path / command.replace("|", "-")
        directory.mkdir()
        rules = acl_rules(PREFIX).replace(f" +{command}", "")
        assert rules != acl_rules(PREFIX)
        users = acl_file(directory / "users.acl", {BOT: (BOT_PASSWORD, rules)})
        server = start(
            servers, RedisServer(directory, extra_args=["--aclfile", str(users)], probe=ADMIN_PROBE)
        )
        store = RedisStore.from_url(f"redis://{BOT}:{BOT_PASSWORD}@{HOST}:{server.port}/1")
        try:
            expected = ResponseError if command == "multi" else StoreForbidden
            with pytest.raises(expected) as caught:
                await exercise(store)
            if expected is StoreForbidden:
                assert "grant it: ACL SETUSER <user> " in str(caught.value), command
        finally:
            await store.close()
            server.stop()


def test_the_grant_names_the_prefix_and_no_dangerous_command() -> None:
    rules = acl_rules(PREFIX).split()
    assert rules[:3] == ["resetkeys", f"~{PREFIX}:*", "resetchannels"]
    assert "-@all" in rules
    granted = {r[1:] for r in rules if r.startswith("+")}
    assert not granted & {"flushall", "flushdb", "keys", "config", "eval", "script", "@all"}


async def test_a_primary_short_of_replicas_is_waited_out_not_fatal(
    tmp_path: Path, servers: list[RedisServer]
) -> None:
    """``min-replicas-to-write 1`` (the README's advice) with the replica gone: writes are
    refused with NOREPLICAS, which the engine must treat as an outage, as it does READONLY."""
    args = ["--min-replicas-to-write", "1", "--min-replicas-max-lag", "10"]
    server = start(servers, RedisServer(tmp_path / "redis", extra_args=args))
    store = RedisStore.from_url(server.url)
    try:
        await store.ping()
        with pytest.raises(StoreUnavailable) as caught:
            await store.create_run("r1", {}, [], ["g"], 1.0)
        assert f"Redis at {HOST}:{server.port} does not accept writes: NOREPLICAS" in str(
            caught.value
        )
    finally:
        await store.close()


async def test_a_missing_tls_file_stops_the_store_before_any_connection(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        RedisStore.from_url("rediss://redis:6379/0", environ={"REDIS_TLS_CA_FILE": "/no/ca.pem"})
    assert "REDIS_TLS_CA_FILE: /no/ca.pem does not exist" in str(caught.value)

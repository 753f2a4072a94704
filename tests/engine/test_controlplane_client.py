"""ControlPlaneClient against the API7 control-plane stand-in, over real HTTP on loopback."""

from __future__ import annotations

import logging
import traceback
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from aiohttp import web

from upgrade_bot.engine.adapters.controlplane import ControlPlaneClient, display_url
from upgrade_bot.engine.config import ControlPlane
from upgrade_bot.engine.errors import PermanentError, TemporaryError
from upgrade_bot.sandbox.controlplane import ControlPlaneState, serve_control_plane

pytestmark = pytest.mark.timeout(60)

API_KEY = "a7ee-Secret-Test-Key-6f1c2b"
GROUP = "prod-eu"


@dataclass
class Served:
    state: ControlPlaneState
    url: str


@pytest.fixture
async def cp() -> AsyncIterator[Served]:
    state = ControlPlaneState(version="3.8.1", api_key=API_KEY, gateway_groups=[GROUP])
    runner, port = await serve_control_plane(state, "127.0.0.1", 0)
    try:
        yield Served(state, f"http://127.0.0.1:{port}")
    finally:
        await runner.cleanup()


@pytest.fixture
def no_key_logged(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """Capture every log record (httpx, httpcore at DEBUG) and check none carries the key."""
    caplog.set_level(logging.DEBUG)
    yield
    assert API_KEY not in caplog.text


def assert_secret_free(exc: BaseException, *secrets: str) -> None:
    """Neither the message nor the traceback a log handler would print shows a key."""
    printed = "".join(traceback.format_exception(exc))
    for secret in (API_KEY, *secrets):
        assert secret not in printed
        assert secret not in repr(exc)


def heartbeat(state: ControlPlaneState, n: int, group: str = GROUP) -> None:
    state.heartbeat(
        id=f"dp-{n:03d}",
        hostname=f"gw-{n}",
        ip="127.0.0.1",
        version="3.8.1",
        gateway_group_id=group,
    )


async def test_version(cp: Served, no_key_logged: None) -> None:
    async with ControlPlaneClient(cp.url, API_KEY) as client:
        assert await client.version() == "3.8.1"
        cp.state.set_version("3.9.0")
        assert await client.version() == "3.9.0"


async def test_instances_follows_every_page(cp: Served, no_key_logged: None) -> None:
    for n in range(45):
        heartbeat(cp.state, n)
    for n in range(7):
        heartbeat(cp.state, 100 + n, group="staging")
    # the stand-in's own page size: 45 instances take three pages
    async with ControlPlaneClient(cp.url, API_KEY, page_size=20) as client:
        found = await client.instances(GROUP)
    assert [i["id"] for i in found] == [f"dp-{n:03d}" for n in range(45)]
    assert {i["gateway_group_id"] for i in found} == {GROUP}
    assert {i["status"] for i in found} == {"Healthy"}


async def test_instances_with_the_default_page_size_and_an_empty_group(cp: Served) -> None:
    for n in range(45):
        heartbeat(cp.state, n)
    async with ControlPlaneClient(cp.url, API_KEY) as client:
        assert len(await client.instances(GROUP)) == 45
        assert await client.instances("nobody-here") == []


async def test_instances_stops_when_a_server_ignores_paging() -> None:
    """A server that answers the same page whatever ``page`` says must not loop forever."""
    calls = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        return httpx.Response(200, json={"total": 50, "list": [{"id": "a"}, {"id": "b"}]})

    http = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    async with http, ControlPlaneClient("http://cp.test", API_KEY, client=http, page_size=2) as c:
        assert [i["id"] for i in await c.instances(GROUP)] == ["a", "b"]
    assert calls == 2


async def test_config_revision_after_bump(cp: Served, no_key_logged: None) -> None:
    async with ControlPlaneClient(cp.url, API_KEY) as client:
        assert await client.config_revision(GROUP) == 0
        cp.state.bump_config(GROUP)
        cp.state.bump_config(GROUP)
        assert await client.config_revision(GROUP) == 2


async def test_unknown_gateway_group_is_permanent_and_names_the_path(cp: Served) -> None:
    async with ControlPlaneClient(cp.url, API_KEY) as client:
        with pytest.raises(PermanentError) as err:
            await client.config_revision("no-such-group")
    assert "/api/gateway_groups/no-such-group/config_revision" in str(err.value)
    assert "404" in str(err.value)


async def test_wrong_key_is_permanent_and_never_shows_either_key(
    cp: Served, no_key_logged: None
) -> None:
    wrong = "a7ee-Wrong-Key-99"
    cfg = ControlPlane(url=cp.url, api_key_env="CP_KEY_FOR_TEST")
    async with ControlPlaneClient.from_config(cfg, {"CP_KEY_FOR_TEST": wrong}) as client:
        with pytest.raises(PermanentError) as err:
            await client.version()
        assert API_KEY not in repr(client) and wrong not in repr(client)
    message = str(err.value)
    assert message == "control plane refused the API key (401) — check CP_KEY_FOR_TEST"
    assert wrong not in message and API_KEY not in message
    assert_secret_free(err.value, wrong)


async def test_control_plane_down_is_temporary(no_key_logged: None) -> None:
    state = ControlPlaneState(api_key=API_KEY)
    runner, port = await serve_control_plane(state, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{port}"
    async with ControlPlaneClient(url, API_KEY, timeout_s=2.0) as client:
        try:
            assert await client.version() == "3.8.0"
        finally:
            await runner.cleanup()
        # the port is closed now: connection refused
        with pytest.raises(TemporaryError) as err:
            await client.version()
    assert str(err.value) == f"control plane at {url} unreachable (ConnectError)"
    assert_secret_free(err.value)


async def test_5xx_is_temporary_and_honours_retry_after(no_key_logged: None) -> None:
    async def fail(request: web.Request) -> web.Response:
        return web.json_response({"message": "busy"}, status=503, headers={"Retry-After": "7"})

    app = web.Application()
    app.router.add_get("/api/version", fail)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        async with ControlPlaneClient(f"http://127.0.0.1:{port}", API_KEY) as client:
            with pytest.raises(TemporaryError) as err:
                await client.version()
    finally:
        await runner.cleanup()
    assert "unreachable (HTTP 503" in str(err.value)
    assert err.value.delay_s == 7.0


async def test_timeout_is_temporary() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("timed out", request=request)

    http = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    async with http, ControlPlaneClient("https://cp.test:7443", API_KEY, client=http) as c:
        with pytest.raises(TemporaryError, match=r"cp\.test:7443 unreachable \(ReadTimeout\)"):
            await c.version()


async def test_an_echoed_key_is_redacted_from_error_bodies() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        echoed = f"bad request with X-API-KEY: {request.headers['X-API-KEY']}"
        return httpx.Response(400, json={"message": echoed})

    http = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    async with http, ControlPlaneClient("http://cp.test", API_KEY, client=http) as c:
        with pytest.raises(PermanentError) as err:
            await c.version()
    assert "HTTP 400 to GET /api/version" in str(err.value)
    assert "***" in str(err.value) and API_KEY not in str(err.value)


async def test_a_shared_client_is_left_open() -> None:
    http = httpx.AsyncClient()
    async with http:
        client = ControlPlaneClient("http://127.0.0.1:9", API_KEY, client=http)
        await client.close()
        assert not http.is_closed


def test_display_url_drops_credentials_and_query() -> None:
    assert display_url("https://user:pw@cp.example:7443/base/?token=x") == (
        "https://cp.example:7443/base"
    )


# --- key from the environment or a file ---------------------------------------------------


async def test_key_from_env(cp: Served, no_key_logged: None) -> None:
    cfg = ControlPlane(url=cp.url)
    async with ControlPlaneClient.from_config(cfg, {"CP_API_KEY": API_KEY}) as client:
        assert await client.version() == "3.8.1"


async def test_key_from_file_with_trailing_newline(
    cp: Served, tmp_path: Path, no_key_logged: None
) -> None:
    key_file = tmp_path / "cp-key"
    key_file.write_text(API_KEY + "\n")
    cfg = ControlPlane(url=cp.url, api_key_file=str(key_file))
    async with ControlPlaneClient.from_config(cfg, {}) as client:
        assert await client.version() == "3.8.1"


async def test_env_wins_over_file(cp: Served, tmp_path: Path) -> None:
    key_file = tmp_path / "cp-key"
    key_file.write_text("a7ee-stale-key")
    cfg = ControlPlane(url=cp.url, api_key_file=str(key_file))
    async with ControlPlaneClient.from_config(cfg, {"CP_API_KEY": API_KEY}) as client:
        assert await client.version() == "3.8.1"


async def test_refused_key_from_file_names_the_file(cp: Served, tmp_path: Path) -> None:
    key_file = tmp_path / "cp-key"
    key_file.write_text("a7ee-revoked-key")
    cfg = ControlPlane(url=cp.url, api_key_file=str(key_file))
    async with ControlPlaneClient.from_config(cfg, {}) as client:
        with pytest.raises(PermanentError) as err:
            await client.version()
    assert str(key_file) in str(err.value) and "CP_API_KEY" in str(err.value)
    assert "a7ee-revoked-key" not in str(err.value)


def test_missing_env_and_no_file_configured() -> None:
    cfg = ControlPlane(url="http://127.0.0.1:1", api_key_env="MY_CP_KEY")
    with pytest.raises(PermanentError) as err:
        ControlPlaneClient.from_config(cfg, {"OTHER": "x"})
    assert str(err.value) == (
        "no control-plane API key: the environment variable MY_CP_KEY is not set and no "
        "api_key_file is configured"
    )


def test_missing_env_and_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    cfg = ControlPlane(url="http://127.0.0.1:1", api_key_file=str(missing))
    with pytest.raises(PermanentError) as err:
        ControlPlaneClient.from_config(cfg, {"CP_API_KEY": ""})
    assert "CP_API_KEY" in str(err.value)
    assert f"the key file {missing} does not exist" in str(err.value)


def test_empty_key_file(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.write_text("\n")
    cfg = ControlPlane(url="http://127.0.0.1:1", api_key_file=str(empty))
    with pytest.raises(PermanentError, match="is empty"):
        ControlPlaneClient.from_config(cfg, {})

"""ControlPlaneClient against the API7 control-plane stand-in, over real HTTP on loopback."""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import traceback
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiohttp import web

from upgrade_bot.engine.adapters.controlplane import ControlPlaneClient, display_url
from upgrade_bot.engine.config import ControlPlane
from upgrade_bot.engine.errors import PermanentError, TemporaryError
from upgrade_bot.sandbox.controlplane import ControlPlaneState, group_id_for, serve_control_plane

pytestmark = pytest.mark.timeout(60)

API_KEY = "a7ee-Secret-Test-Key-6f1c2b"
GROUP = "prod-eu"
SAMPLES = json.loads(
    (Path(__file__).resolve().parents[1] / "fixtures" / "api7" / "client-samples.json").read_text()
)


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


def heartbeat(state: ControlPlaneState, n: int, group: str = GROUP, version: str = "3.8.1") -> None:
    state.heartbeat(
        instance_id=f"dp-{n:03d}",
        hostname=f"gw-{n}",
        ip="127.0.0.1",
        version=version,
        gateway_group=group,
    )


def mock(handler: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.MockTransport(handler))


async def test_version_is_the_plain_string_value(cp: Served, no_key_logged: None) -> None:
    async with ControlPlaneClient(cp.url, API_KEY) as client:
        assert await client.version() == "3.8.1"
        cp.state.set_version("3.2.14.6")
        assert await client.version() == "3.2.14.6"
        cp.state.set_version("dev")
        assert await client.version() == "dev"


@pytest.mark.parametrize("name", ["adc_version_release", "adc_version_dev"])
async def test_version_reads_the_shape_adc_reads(name: str) -> None:
    body = SAMPLES[name]["body"]
    http = mock(lambda request: httpx.Response(200, json=body))
    async with http, ControlPlaneClient("http://cp.test", API_KEY, client=http) as c:
        assert await c.version() == body["value"]


async def test_the_old_object_shape_of_version_is_refused_clearly() -> None:
    http = mock(lambda request: httpx.Response(200, json={"value": {"version": "3.8.1"}}))
    async with http, ControlPlaneClient("http://cp.test", API_KEY, client=http) as c:
        with pytest.raises(PermanentError, match=r"expected \{'value': '<version>'\}"):
            await c.version()


async def test_instances_follows_every_page(cp: Served, no_key_logged: None) -> None:
    for n in range(45):
        heartbeat(cp.state, n)
    for n in range(7):
        heartbeat(cp.state, 100 + n, group="staging")
    async with ControlPlaneClient(cp.url, API_KEY, page_size=20) as client:
        found = await client.instances(group_id_for(GROUP))
    assert [i["id"] for i in found] == [f"dp-{n:03d}" for n in range(45)]
    assert {i["gateway_group_id"] for i in found} == {group_id_for(GROUP)}
    assert {i["status"] for i in found} == {"Healthy"}


async def test_paging_stays_complete_while_heartbeats_reorder_the_default_list(
    cp: Served,
) -> None:
    """The CP's default order (last heartbeat, newest first) changes between two page reads;
    the client asks for an explicit order, so every instance is read exactly once."""
    clock = {"now": 1_700_000_000.0}
    cp.state.clock = lambda: clock["now"]
    for n in range(30):
        heartbeat(cp.state, n)
        clock["now"] += 1
    seen_pages = 0
    real_get = httpx.AsyncClient.get

    async def get_and_heartbeat(self: httpx.AsyncClient, url: Any, **kw: Any) -> Any:
        nonlocal seen_pages
        resp = await real_get(self, url, **kw)
        seen_pages += 1
        for n in range(0, 30, 3):  # a third of the fleet heartbeats between two pages
            heartbeat(cp.state, n)
        clock["now"] += 1
        return resp

    http = httpx.AsyncClient()
    http.get = get_and_heartbeat.__get__(http)  # type: ignore[method-assign]
    async with http, ControlPlaneClient(cp.url, API_KEY, client=http, page_size=7) as c:
        found = await c.instances(group_id_for(GROUP))
    assert sorted(i["id"] for i in found) == [f"dp-{n:03d}" for n in range(30)]
    assert len(found) == 30 and seen_pages == 5


async def test_default_order_paging_would_lose_instances(cp: Served) -> None:
    """Negative control for the test above: the same reshuffle, read in the CP's default
    order, skips and repeats instances -- what an explicit order prevents."""
    clock = {"now": 1_700_000_000.0}
    cp.state.clock = lambda: clock["now"]
    for n in range(30):
        heartbeat(cp.state, n)
        clock["now"] += 1
    ids: list[str] = []
    async with httpx.AsyncClient(base_url=cp.url, headers={"X-API-KEY": API_KEY}) as http:
        for page in range(1, 6):
            body = (await http.get("/api/instances", params={"page": page, "page_size": 7})).json()
            ids += [i["id"] for i in body["list"]]
            for n in range(0, 30, 3):
                heartbeat(cp.state, n)
            clock["now"] += 1
    assert len(set(ids)) < 30


async def test_an_instance_gone_mid_paging_makes_the_client_read_again() -> None:
    fleet = [{"id": f"i{n}"} for n in range(6)]
    calls: list[dict[str, str]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        params = dict(request.url.params)
        calls.append(params)
        page, size = int(params["page"]), int(params["page_size"])
        if len(calls) == 2:
            del fleet[0]  # i0 goes away after the first page: the second page shifts by one
        return httpx.Response(
            200, json={"total": len(fleet), "list": fleet[(page - 1) * size : page * size]}
        )

    http = mock(handler)
    async with http, ControlPlaneClient("http://cp.test", API_KEY, client=http, page_size=3) as c:
        found = await c.instances("g")
    assert [i["id"] for i in found] == ["i1", "i2", "i3", "i4", "i5"]
    assert {(p["order_by"], p["direction"]) for p in calls} == {("created_at", "asc")}


async def test_instances_of_an_empty_group(cp: Served) -> None:
    async with ControlPlaneClient(cp.url, API_KEY) as client:
        assert await client.instances("nobody-here") == []


async def test_instances_stops_when_a_server_ignores_paging() -> None:
    """A server that answers the same page whatever ``page`` says must not loop forever."""
    calls = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        return httpx.Response(200, json={"total": 50, "list": [{"id": "a"}, {"id": "b"}]})

    http = mock(handler)
    async with http, ControlPlaneClient("http://cp.test", API_KEY, client=http, page_size=2) as c:
        assert [i["id"] for i in await c.instances(GROUP)] == ["a", "b"]
    assert calls == 2 * 3  # two pages, read three times since the total never adds up


# --- gateway groups ------------------------------------------------------------------------


async def test_a_group_by_name_is_the_exact_match_among_search_results(cp: Served) -> None:
    for name in ("prod-eu-canary", GROUP, "staging"):
        cp.state.add_group(name)
    async with ControlPlaneClient(cp.url, API_KEY) as client:
        found = await client.resolve_gateway_group(name=GROUP)
        by_id = await client.resolve_gateway_group(gateway_group_id=group_id_for(GROUP))
    assert found["id"] == group_id_for(GROUP) and found["name"] == GROUP
    assert by_id == found


async def test_a_group_by_name_in_a7s_sample_list() -> None:
    body = SAMPLES["a7_gateway_groups_list"]["body"]
    http = mock(lambda request: httpx.Response(200, json=body))
    async with http, ControlPlaneClient("http://cp.test", API_KEY, client=http) as c:
        assert (await c.resolve_gateway_group(name="staging"))["id"] == "gw2"


async def test_no_group_by_that_name_is_a_clear_error(cp: Served) -> None:
    cp.state.add_group("prod-us-canary")  # found by the search, not the exact name
    async with ControlPlaneClient(cp.url, API_KEY) as client:
        with pytest.raises(PermanentError) as err:
            await client.resolve_gateway_group(name="prod-us")
    assert str(err.value) == f"control plane at {cp.url} has no gateway group named 'prod-us'"


async def test_two_groups_by_that_name_is_a_clear_error() -> None:
    body = {"total": 2, "list": [{"id": "a1", "name": GROUP}, {"id": "b2", "name": GROUP}]}
    http = mock(lambda request: httpx.Response(200, json=body))
    async with http, ControlPlaneClient("http://cp.test", API_KEY, client=http) as c:
        with pytest.raises(PermanentError) as err:
            await c.resolve_gateway_group(name=GROUP)
    assert str(err.value) == (
        "control plane at http://cp.test has 2 gateway groups named 'prod-eu' (ids a1, b2): "
        "set gateway_group_id instead of the name"
    )


async def test_an_unknown_group_id_is_permanent_and_names_it(cp: Served) -> None:
    async with ControlPlaneClient(cp.url, API_KEY) as client:
        with pytest.raises(PermanentError) as err:
            await client.resolve_gateway_group(gateway_group_id="no-such-group")
    assert str(err.value).startswith(
        f"control plane at {cp.url} has no gateway group with id 'no-such-group' (404)"
    )


async def test_a_missing_endpoint_names_the_path_and_the_api7_version_it_needs() -> None:
    http = mock(lambda request: httpx.Response(404, text="404 page not found"))
    async with http, ControlPlaneClient("http://cp.test", API_KEY, client=http) as c:
        with pytest.raises(PermanentError) as err:
            await c.instances("g")
        with pytest.raises(PermanentError) as version_err:
            await c.version()
    assert str(err.value) == (
        "control plane at http://cp.test has no GET /api/instances (404; API7 EE 3.2.9.5 or "
        "later lists it in its Admin API reference)"
    )
    assert "no GET /api/version (404; no API7 Admin API reference lists it" in str(
        version_err.value
    )


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
    async with ControlPlaneClient(url, API_KEY, timeout_s=2.0, retry_base_s=0.01) as client:
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
        url = f"http://127.0.0.1:{port}"
        async with ControlPlaneClient(url, API_KEY, retry_base_s=0.01) as client:
            with pytest.raises(TemporaryError) as err:
                await client.version()
    finally:
        await runner.cleanup()
    assert "unreachable (HTTP 503" in str(err.value)
    assert err.value.delay_s == 7.0


async def test_timeouts_are_retried_with_backoff_then_temporary(no_key_logged: None) -> None:
    attempts: list[float] = []

    def handler(request: httpx.Request) -> httpx.Response:
        attempts.append(asyncio.get_running_loop().time())
        raise httpx.ReadTimeout("timed out", request=request)

    http = mock(handler)
    client = ControlPlaneClient("https://cp.test:7443", API_KEY, client=http, retry_base_s=0.05)
    async with http, client as c:
        with pytest.raises(TemporaryError) as err:
            await c.version()
    assert str(err.value) == "control plane at https://cp.test:7443 unreachable (ReadTimeout)"
    assert len(attempts) == 3
    gaps = [b - a for a, b in itertools.pairwise(attempts)]
    assert gaps[0] >= 0.05 and gaps[1] >= 0.1  # doubling
    assert_secret_free(err.value)


async def test_a_5xx_then_an_answer_is_an_answer() -> None:
    answers = [
        httpx.Response(502, text="bad gateway"),
        httpx.Response(200, json={"value": "3.9.2"}),
    ]
    http = mock(lambda request: answers.pop(0))
    async with (
        http,
        ControlPlaneClient("http://cp.test", API_KEY, client=http, retry_base_s=0) as c,
    ):
        assert await c.version() == "3.9.2"
    assert answers == []


async def test_a_refused_key_is_not_retried() -> None:
    calls = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        return httpx.Response(403, json={"message": "forbidden"})

    http = mock(handler)
    async with http, ControlPlaneClient("http://cp.test", API_KEY, client=http) as c:
        with pytest.raises(PermanentError, match=r"refused the API key \(403\)"):
            await c.version()
    assert calls == 1


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

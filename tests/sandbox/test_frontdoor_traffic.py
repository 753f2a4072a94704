"""FrontDoor (health-checking round-robin LB) and TrafficGenerator (open loop, no retries).

Fake gateway members are small in-test aiohttp apps: a proxy app (answers with
``Server: APISIX/<version>``) and a status app (``/status/ready``), each on its own port.
A member can refuse connects (its proxy site stopped), be unready (503), cut a request
after reading it (transport aborted), answer 500 as a gateway, or be slow.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from upgrade_bot.sandbox.frontdoor import (
    FRONT_DOOR_HEADER,
    FrontDoor,
    Member,
    no_retry_session,
)
from upgrade_bot.sandbox.traffic import TrafficGenerator, classify_response

from ..support import eventually

pytestmark = pytest.mark.timeout(30)

HEALTH_S = 0.05


class FakeMember:
    """One fake gateway instance: proxy app + status app on two loopback ports."""

    def __init__(self, mid: str, version: str = "3.9.0") -> None:
        self.id = mid
        self.version = version
        self.mode = "ok"  # ok | cut | error500 | slow
        self.ready = True
        self.slow_s = 1.0
        self.hits = 0
        self.requests: list[dict[str, Any]] = []
        self._proxy_runner: web.AppRunner | None = None
        self._status_runner: web.AppRunner | None = None
        self._proxy_site: web.TCPSite | None = None
        self.proxy_port = 0
        self.status_port = 0

    @property
    def member(self) -> Member:
        return Member(
            id=self.id,
            proxy_url=f"http://127.0.0.1:{self.proxy_port}",
            status_url=f"http://127.0.0.1:{self.status_port}",
        )

    async def _proxy(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.hits += 1
        seen = {
            "member": self.id,
            "method": request.method,
            "path_qs": request.raw_path,
            "body": body.decode(),
            "x_test": request.headers.get("X-Test"),
            "host": request.headers.get("Host"),
            "xff": request.headers.get("X-Forwarded-For"),
        }
        self.requests.append(seen)
        server = {"Server": f"APISIX/{self.version}"}
        if self.mode == "cut":
            assert request.transport is not None
            request.transport.abort()  # the request was received; the answer never comes
            return web.Response()
        if self.mode == "error500":
            return web.json_response({"error_msg": "boom"}, status=500, headers=server)
        if self.mode == "slow":
            await asyncio.sleep(self.slow_s)
        return web.json_response(seen, headers={**server, "X-Upstream": self.id})

    async def _status(self, request: web.Request) -> web.Response:
        return web.json_response({"ready": self.ready}, status=200 if self.ready else 503)

    async def start(self) -> None:
        proxy_app = web.Application()
        proxy_app.router.add_route("*", "/{tail:.*}", self._proxy)
        status_app = web.Application()
        status_app.router.add_get("/status/ready", self._status)
        self._proxy_runner = web.AppRunner(proxy_app, access_log=None, shutdown_timeout=0.2)
        self._status_runner = web.AppRunner(status_app, access_log=None, shutdown_timeout=0.2)
        await self._proxy_runner.setup()
        await self._status_runner.setup()
        self._proxy_site = web.TCPSite(self._proxy_runner, "127.0.0.1", 0)
        await self._proxy_site.start()
        status_site = web.TCPSite(self._status_runner, "127.0.0.1", 0)
        await status_site.start()
        self.proxy_port = self._proxy_runner.addresses[0][1]
        self.status_port = self._status_runner.addresses[0][1]

    async def refuse_connections(self) -> None:
        """Close the proxy listener (new connects are refused); status keeps answering."""
        assert self._proxy_site is not None
        await self._proxy_site.stop()
        self._proxy_site = None

    async def stop(self) -> None:
        for runner in (self._proxy_runner, self._status_runner):
            if runner is not None:
                await runner.cleanup()


MakeMembers = Callable[..., Awaitable[list[FakeMember]]]
MakeFrontDoor = Callable[..., Awaitable[FrontDoor]]


@pytest.fixture
async def make_members() -> AsyncIterator[MakeMembers]:
    created: list[FakeMember] = []

    async def make(n: int, prefix: str = "gw") -> list[FakeMember]:
        out = []
        for _ in range(n):
            m = FakeMember(f"{prefix}{len(created) + 1}")
            await m.start()
            created.append(m)
            out.append(m)
        return out

    yield make
    for m in created:
        await m.stop()


@pytest.fixture
async def make_front_door() -> AsyncIterator[MakeFrontDoor]:
    created: list[FrontDoor] = []

    async def make(
        fleet: list[FakeMember], *, wait_healthy: int | None = None, **kw: Any
    ) -> FrontDoor:
        kw.setdefault("health_interval_s", HEALTH_S)
        fd = FrontDoor(kw.pop("name", "fd-a"), lambda: [m.member for m in fleet], **kw)
        await fd.start()
        created.append(fd)
        n = len([m for m in fleet if m.ready]) if wait_healthy is None else wait_healthy
        await eventually(lambda: len(fd.healthy_members()) == n, f"{n} healthy members", within=5)
        return fd

    yield make
    for fd in created:
        await fd.stop()


@pytest.fixture
async def client() -> AsyncIterator[aiohttp.ClientSession]:
    session = no_retry_session(cookie_jar=aiohttp.DummyCookieJar())
    yield session
    await session.close()


def assert_front_door_answer(resp_headers: Any, body: bytes, name: str = "fd-a") -> None:
    assert resp_headers.get(FRONT_DOOR_HEADER) == name
    assert not resp_headers.get("Server", "").startswith(("APISIX/", "API7/"))
    assert "error" in json.loads(body)


async def run_traffic(url: str, rate: float, seconds: float, **kw: Any) -> TrafficGenerator:
    gen = TrafficGenerator({"a": url}, rate_per_s=rate, **kw)
    await gen.run_for(seconds)
    return gen


# ---------------------------------------------------------------------------- FrontDoor


async def test_forwards_request_and_response_faithfully(
    make_members: MakeMembers, make_front_door: MakeFrontDoor, client: aiohttp.ClientSession
) -> None:
    (gw,) = await make_members(1)
    fd = await make_front_door([gw])
    async with client.post(
        fd.url + "/echo/p?q=1&x=%20y",
        data=b"payload",
        headers={"X-Test": "yes", "Host": "api.example.test"},
    ) as resp:
        body = await resp.read()
        assert resp.status == 200
        assert resp.headers["Server"] == "APISIX/3.9.0"
        assert resp.headers["X-Upstream"] == gw.id
        assert FRONT_DOOR_HEADER not in resp.headers
    seen = json.loads(body)
    assert seen["method"] == "POST"
    assert seen["path_qs"] == "/echo/p?q=1&x=%20y"
    assert seen["body"] == "payload"
    assert seen["x_test"] == "yes"
    assert seen["host"] == "api.example.test"
    assert seen["xff"] == "127.0.0.1"
    assert fd.stats()["forwarded"] == 1


async def test_round_robin_spreads_evenly_over_healthy_members(
    make_members: MakeMembers, make_front_door: MakeFrontDoor, client: aiohttp.ClientSession
) -> None:
    fleet = await make_members(3)
    fd = await make_front_door(fleet)
    for _ in range(30):
        async with client.get(fd.url + "/") as resp:
            assert resp.status == 200
            await resp.read()
    assert [m.hits for m in fleet] == [10, 10, 10]
    assert fd.stats()["forwarded"] == 30


async def test_unready_and_new_members_get_no_traffic_until_ready(
    make_members: MakeMembers, make_front_door: MakeFrontDoor, client: aiohttp.ClientSession
) -> None:
    a, b, c = await make_members(3)
    c.ready = False
    fleet = [a, b, c]
    fd = await make_front_door(fleet, wait_healthy=2)

    async def send(n: int) -> None:
        for _ in range(n):
            async with client.get(fd.url + "/") as resp:
                assert resp.status == 200
                await resp.read()

    await send(20)
    assert (a.hits, b.hits, c.hits) == (10, 10, 0)

    # A new member (not yet checked) and an unready one receive nothing.
    (d,) = await make_members(1, prefix="new")
    d.ready = False
    fleet.append(d)
    await send(10)
    assert (c.hits, d.hits) == (0, 0)

    # Once ready (first 200), they join the rotation.
    c.ready = d.ready = True
    await eventually(lambda: len(fd.healthy_members()) == 4, "4 healthy", within=5)
    await send(40)
    assert c.hits == 10 and d.hits == 10

    # A member gone from the members list receives no traffic at once.
    fleet.remove(a)
    before = a.hits
    await send(9)
    assert a.hits == before


async def test_refused_connect_is_retried_on_another_member(
    make_members: MakeMembers, make_front_door: MakeFrontDoor
) -> None:
    a, b = await make_members(2)
    fd = await make_front_door([a, b])
    await a.refuse_connections()  # its status port still says ready: the LB finds out by connecting
    gen = await run_traffic(fd.url, rate=50, seconds=1.0)
    counts = gen.counts()
    assert counts["total"] == gen.launched > 0
    assert counts["failed"] == 0, gen.failure_reasons()
    assert counts["ok"] == counts["total"]
    stats = fd.stats()
    assert stats["retried_refused"] >= 1
    assert stats["refused"] == stats["retried_refused"]
    assert stats["forwarded"] == counts["total"] == b.hits
    assert a.hits == 0


async def test_cut_after_send_is_not_retried_and_counts_failed(
    make_members: MakeMembers, make_front_door: MakeFrontDoor, client: aiohttp.ClientSession
) -> None:
    a, b = await make_members(2)
    a.mode = "cut"
    fd = await make_front_door([a, b])

    # GET is idempotent: aiohttp would silently re-send it after a reset unless disabled.
    async with client.get(fd.url + "/") as resp:
        first = resp.status, resp.headers.copy(), await resp.read()
    async with client.get(fd.url + "/") as resp:
        second = resp.status, resp.headers.copy(), await resp.read()
    cut = first if first[0] == 502 else second
    assert sorted([first[0], second[0]]) == [200, 502]
    assert_front_door_answer(cut[1], cut[2])
    assert a.hits == 1  # received exactly once: neither the front door nor aiohttp re-sent it

    gen = await run_traffic(fd.url, rate=40, seconds=1.0)
    counts = gen.counts()
    assert counts["total"] == gen.launched > 0
    assert counts["failed"] == a.hits - 1 > 0, gen.failure_reasons()
    assert counts["ok"] == b.hits - 1
    assert counts["requests_5xx"] == 0
    stats = fd.stats()
    assert stats["answered_502"] == a.hits
    assert stats["retried_refused"] == stats["refused"] == 0
    assert all(r.startswith("failed: HTTP 502 from front door fd-a") for r in gen.failure_reasons())


async def test_member_timeout_answers_504_and_counts_failed(
    make_members: MakeMembers, make_front_door: MakeFrontDoor, client: aiohttp.ClientSession
) -> None:
    (slow,) = await make_members(1)
    slow.mode = "slow"
    slow.slow_s = 1.0
    fd = await make_front_door([slow], upstream_timeout_s=0.3)
    async with client.get(fd.url + "/") as resp:
        assert resp.status == 504
        assert_front_door_answer(resp.headers, await resp.read())

    gen = await run_traffic(fd.url, rate=10, seconds=0.5)
    counts = gen.counts()
    assert counts["total"] == counts["failed"] == gen.launched > 0
    assert fd.stats()["answered_504"] == slow.hits == counts["total"] + 1  # never retried


async def test_gateway_500_counts_as_requests_5xx_not_failed(
    make_members: MakeMembers, make_front_door: MakeFrontDoor
) -> None:
    (gw,) = await make_members(1)
    gw.mode = "error500"
    fd = await make_front_door([gw])
    gen = await run_traffic(fd.url, rate=20, seconds=0.5)
    counts = gen.counts()
    assert counts["total"] == counts["requests_5xx"] == gen.launched == gw.hits > 0
    assert counts["failed"] == counts["ok"] == 0
    assert fd.stats()["forwarded"] == gw.hits


async def test_no_healthy_member_answers_503_counted_failed(
    make_members: MakeMembers, make_front_door: MakeFrontDoor, client: aiohttp.ClientSession
) -> None:
    a, b = await make_members(2)
    a.ready = b.ready = False
    fd = await make_front_door([a, b], wait_healthy=0)
    async with client.get(fd.url + "/") as resp:
        assert resp.status == 503
        assert_front_door_answer(resp.headers, await resp.read())
    gen = await run_traffic(fd.url, rate=20, seconds=0.5)
    counts = gen.counts()
    assert counts["total"] == counts["failed"] == gen.launched > 0
    assert a.hits == b.hits == 0
    assert fd.stats()["answered_503"] == counts["total"] + 1

    # Empty group: 503 as well.
    empty = await make_front_door([], name="fd-empty", wait_healthy=0)
    async with client.get(empty.url + "/") as resp:
        assert resp.status == 503
        assert_front_door_answer(resp.headers, await resp.read(), name="fd-empty")


async def test_all_members_refusing_ends_in_503_after_trying_each_once(
    make_members: MakeMembers, make_front_door: MakeFrontDoor, client: aiohttp.ClientSession
) -> None:
    a, b = await make_members(2)
    fd = await make_front_door([a, b])
    await a.refuse_connections()
    await b.refuse_connections()
    async with client.get(fd.url + "/") as resp:
        assert resp.status == 503
        assert_front_door_answer(resp.headers, await resp.read())
    stats = fd.stats()
    assert stats["refused"] == 2
    assert stats["retried_refused"] == 1
    assert stats["answered_503"] == 1


# ------------------------------------------------------------------------ TrafficGenerator


def test_classify_response() -> None:
    assert classify_response(200, None) == "ok"
    assert classify_response(404, "APISIX/3.9.0") == "ok"
    assert classify_response(302, "nginx") == "ok"
    assert classify_response(500, "APISIX/3.9.0") == "requests_5xx"
    assert classify_response(503, "API7/3.2.1") == "requests_5xx"
    assert classify_response(502, None) == "failed"
    assert classify_response(504, "upgrade-bot-front-door") == "failed"
    assert classify_response(500, "openresty") == "failed"


async def test_generator_classifies_each_kind_of_outcome(port: int) -> None:
    hits: dict[str, int] = {}

    async def handler(request: web.Request) -> web.StreamResponse:
        kind = request.match_info["kind"]
        hits[kind] = hits.get(kind, 0) + 1
        if kind == "ok200":
            return web.Response(text="ok", headers={"Server": "APISIX/3.9.0"})
        if kind == "ok404":
            return web.Response(status=404, headers={"Server": "APISIX/3.9.0"})
        if kind == "gw500":
            return web.Response(status=500, headers={"Server": "APISIX/3.9.0"})
        if kind == "api7503":
            return web.Response(status=503, headers={"Server": "API7/3.2.1"})
        if kind == "lb502":
            return web.Response(status=502)  # aiohttp's own Server header: not a gateway
        assert kind == "reset"
        assert request.transport is not None
        request.transport.abort()
        return web.Response()

    app = web.Application()
    app.router.add_get("/{kind}/", handler)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.2)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        kinds = ["ok200", "ok404", "gw500", "api7503", "lb502", "reset"]
        targets = {k: f"http://127.0.0.1:{port}/{k}" for k in kinds}
        refused_port = port + 1 if port < 65535 else port - 1
        targets["refused"] = f"http://127.0.0.1:{refused_port}"  # nothing listens there
        gen = TrafficGenerator(targets, rate_per_s=70, path="/")
        await gen.run_for(1.0)
    finally:
        await runner.cleanup()
    by = gen.counts()["by_group"]
    launched = gen.launched_by_group()
    assert max(launched.values()) - min(launched.values()) <= 1  # spread evenly
    for g, c in by.items():
        assert c["total"] == launched[g] > 0
        assert c["total"] == c["ok"] + c["requests_5xx"] + c["failed"]
    assert by["ok200"]["ok"] == by["ok200"]["total"]
    assert by["ok404"]["ok"] == by["ok404"]["total"]
    assert by["gw500"]["requests_5xx"] == by["gw500"]["total"]
    assert by["api7503"]["requests_5xx"] == by["api7503"]["total"]
    assert by["lb502"]["failed"] == by["lb502"]["total"]
    assert by["reset"]["failed"] == by["reset"]["total"] == hits["reset"]  # no retries
    assert by["refused"]["failed"] == by["refused"]["total"]
    counts = gen.counts()
    assert counts["total"] == gen.launched
    assert counts["ok"] == by["ok200"]["total"] + by["ok404"]["total"]
    reasons = gen.failure_reasons()
    assert any("ClientConnectorError" in r for r in reasons), reasons


@pytest.mark.traffic
async def test_open_loop_rate_holds_while_a_member_is_slow_and_stop_counts_all(
    make_members: MakeMembers, make_front_door: MakeFrontDoor
) -> None:
    fast_a, fast_b, slow_a, slow_b = await make_members(4)
    for slow in (slow_a, slow_b):
        slow.mode = "slow"
        slow.slow_s = 1.5
    fd_a = await make_front_door([fast_a, slow_a], name="fd-a")
    fd_b = await make_front_door([fast_b, slow_b], name="fd-b")
    gen = TrafficGenerator({"a": fd_a.url, "b": fd_b.url}, rate_per_s=100, timeout_s=5.0)
    await gen.start()
    await asyncio.sleep(3.0)
    in_flight_before_stop = gen.in_flight
    await gen.stop()

    # Counted against the schedule (100/s for 3 s), not timed: an open loop never launches
    # ahead of it, and even on a loaded machine launches at least half of it, where one that
    # waited for the slow answers (1.5 s, every other request) would launch a handful.
    elapsed = gen.elapsed_s()
    assert 0.5 * 100 * 3.0 <= gen.launched <= 100 * elapsed + 2, (gen.launched, elapsed)
    # Slow answers (1.5 s) were still outstanding: the schedule did not wait for them.
    assert in_flight_before_stop >= 30
    # stop() waited for and counted every launched request.
    counts = gen.counts()
    assert gen.in_flight == 0
    assert counts["total"] == gen.launched
    assert counts["ok"] == counts["total"], gen.failure_reasons()
    launched = gen.launched_by_group()
    assert abs(launched["a"] - launched["b"]) <= 1
    assert counts["by_group"]["a"]["total"] == launched["a"]
    assert fast_a.hits + slow_a.hits == launched["a"]
    # Per-second series adds up, and the slow member shows in the latency tail.
    series = gen.series()
    assert sum(s["total"] for s in series) == counts["total"]
    assert sum(s["total"] for s in gen.series("a")) == launched["a"]
    assert [s["t"] for s in series] == list(range(series[0]["t"], series[-1]["t"] + 1))
    assert max(s["p99_ms"] or 0 for s in series) >= 1400

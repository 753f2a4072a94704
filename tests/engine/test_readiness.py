"""Readiness as a group chooses it: the status endpoint, a probe through the proxy, or TCP only.

Probes are checked against real HTTP and TCP listeners on loopback; the local backend is checked
on a sandbox fleet whose new release loads its routes late (slow start), where a TCP-only check
hands the slot over while the new instance still answers ``404 Route Not Found``.
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator

import httpx
import pytest
from aiohttp import web

from upgrade_bot.engine import config
from upgrade_bot.engine.api import readiness_of
from upgrade_bot.engine.backends.local import LocalBackend
from upgrade_bot.engine.backends.readiness import (
    describe,
    preflight_warnings,
    probe_once,
    wait_ready,
)
from upgrade_bot.sandbox.spec import parse_fault

from ..support import Sandboxes, eventually, fleet_spec

STATUS = config.StatusReadiness(mode="status")
TCP = config.TcpReadiness(mode="tcp")
PROXY = config.ProxyReadiness(mode="proxy")


class Gateway:
    """A listener that answers like a gateway before and after it has its routes."""

    def __init__(self) -> None:
        self.loaded = False
        self.proxy_status = 200
        self.probes: list[str] = []

    async def ready(self, request: web.Request) -> web.Response:
        status = 200 if self.loaded else 503
        return web.json_response({"status": "ok" if self.loaded else "error"}, status=status)

    async def proxy(self, request: web.Request) -> web.Response:
        self.probes.append(request.headers.get("User-Agent", ""))
        if not self.loaded:
            return web.Response(status=404, text='{"error_msg":"404 Route Not Found"}')
        return web.Response(status=self.proxy_status, text="ok")


@pytest.fixture
async def gateway() -> AsyncIterator[tuple[Gateway, dict[str, str]]]:
    gw = Gateway()
    app = web.Application()
    app.router.add_get("/status/ready", gw.ready)
    app.router.add_route("*", "/{tail:.*}", gw.proxy)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    url = f"http://127.0.0.1:{port}"
    try:
        yield gw, {"proxy": url, "status": url}
    finally:
        await runner.cleanup()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_status_and_proxy_probes_wait_for_the_routes_tcp_does_not(gateway) -> None:
    gw, endpoints = gateway
    async with httpx.AsyncClient() as client:
        before = {r.mode: await probe_once(r, endpoints, client) for r in (STATUS, PROXY, TCP)}
        gw.loaded = True
        after = {r.mode: await probe_once(r, endpoints, client) for r in (STATUS, PROXY, TCP)}
    assert {m: p.ready for m, p in before.items()} == {"status": False, "proxy": False, "tcp": True}
    assert before["status"].detail == "503 from GET /status/ready"
    assert before["proxy"].detail == "404 from GET /"
    assert all(p.ready for p in after.values()), after
    # The probe says who it is, so that a gateway's access log tells it from users.
    assert gw.probes and all(ua.startswith("upgrade-bot-readiness/") for ua in gw.probes)


async def test_a_proxy_probe_takes_neither_404_nor_5xx_by_default_or_the_set_asked_for(
    gateway,
) -> None:
    gw, endpoints = gateway
    gw.loaded = True
    only_401 = config.ProxyReadiness(mode="proxy", path="/private", expect_status=[401])
    seen = {}
    async with httpx.AsyncClient() as client:
        for status in (200, 302, 401, 404, 500, 502):
            gw.proxy_status = status
            seen[status] = (
                (await probe_once(PROXY, endpoints, client)).ready,
                (await probe_once(only_401, endpoints, client)).ready,
            )
    assert seen == {
        200: (True, False),
        302: (True, False),
        401: (True, True),
        404: (False, False),
        500: (False, False),
        502: (False, False),
    }


async def test_an_instance_that_is_down_is_not_ready_and_the_last_probe_says_why() -> None:
    port = closed_port()
    endpoints = {"proxy": f"http://127.0.0.1:{port}", "status": f"http://127.0.0.1:{port}"}
    for readiness, detail in (
        (STATUS, "GET /status/ready: ConnectError"),
        (PROXY, "GET /: ConnectError"),
        (TCP, f"TCP 127.0.0.1:{port}: ConnectionRefusedError"),
    ):
        probe = await wait_ready(readiness, endpoints, timeout_s=0.3, poll_interval_s=0.05)
        assert (probe.ready, probe.detail) == (False, detail)


def test_only_a_tcp_check_is_warned_about_and_the_plan_names_each_choice() -> None:
    assert preflight_warnings(STATUS) == [] and preflight_warnings(PROXY) == []
    (warning,) = preflight_warnings(TCP)
    assert "only a TCP connect" in warning and "404" in warning
    assert describe(STATUS) == "status endpoint (GET /status/ready answers 200)"
    assert describe(TCP) == "TCP connect to the proxy port only"
    assert describe(PROXY) == "proxy probe (GET / through the instance answers neither 404 nor 5xx)"
    group = config.Group(
        name="prod-eu",
        backend={"type": "local", "sandbox_url": "http://127.0.0.1:1"},
        image={"repository": "apache/apisix"},
    )
    assert readiness_of(group) == describe(STATUS)  # the default


def test_a_readiness_mode_the_backend_cannot_probe_is_a_config_error() -> None:
    with pytest.raises(Exception, match="healthcheck"):
        config.LocalBackend(
            type="local", sandbox_url="http://127.0.0.1:1", readiness={"mode": "healthcheck"}
        )
    with pytest.raises(Exception, match="expect_status"):
        config.ProxyReadiness(mode="proxy", expect_status=[])


@pytest.mark.traffic
@pytest.mark.parametrize("readiness", [TCP, PROXY], ids=["tcp", "proxy"])
async def test_tcp_readiness_lets_users_meet_a_gateway_without_routes_a_proxy_probe_does_not(
    sandboxes: Sandboxes, readiness: config.Readiness
) -> None:
    """The new release loads its routes 2 s after it listens; the group's runtime (the front
    door) follows the same readiness check as the bot, as a Service follows a probe."""
    spec = fleet_spec(
        groups=1,
        instances=2,
        rate_per_s=40.0,
        readiness=readiness.mode,
        faults=dict([parse_fault("3.8.1=slow-start:2")]),
    )
    handle = await sandboxes.up(spec)
    group = spec.groups[0]
    slot = spec.slot_ids(group)[0]
    backend = LocalBackend(group, handle.control_url, readiness=readiness)
    try:
        info = await backend.ensure_image(slot, spec.image_for("3.8.1"), ready_timeout_s=30)
        (handed_over,) = [s for s in await backend.list_slots() if s.id == slot]
    finally:
        await backend.close()
    assert info.image == spec.image_for("3.8.1")

    async def settled() -> dict:
        async with httpx.AsyncClient(timeout=30) as client:
            if not (await client.get(f"{handle.control_url}/slots/{slot}")).json()["ready"]:
                return {}
            truth = (await client.get(handle.control_url + "/status")).json()
        (row,) = [s for s in truth["slots"] if s["id"] == slot]
        return row

    row = await eventually(settled, "the new instance ready")
    if readiness is TCP:
        # Handed over while the new instance had no routes; users got 404 Route Not Found.
        assert not handed_over.ready
        assert row["served_before_ready"] > 0, row
    else:
        assert handed_over.ready
        assert row["served_before_ready"] == 0, row

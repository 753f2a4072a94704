"""Smoke requests against small aiohttp servers on loopback: healthy, failing, refusing, slow."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import httpx
import pytest
from aiohttp import web

from upgrade_bot.engine.adapters.smoke import MAX_FAILURE_LINES, run_smoke
from upgrade_bot.engine.config import Smoke

pytestmark = pytest.mark.timeout(60)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@asynccontextmanager
async def serve(handler: Handler) -> AsyncIterator[tuple[str, list[web.Request]]]:
    """Serve ``handler`` on every path; yields the base URL and the requests received."""
    seen: list[web.Request] = []

    async def record(request: web.Request) -> web.StreamResponse:
        seen.append(request)
        return await handler(request)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", record)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}", seen
    finally:
        await runner.cleanup()


def status(code: int) -> Handler:
    async def answer(request: web.Request) -> web.Response:
        return web.Response(status=code, text="x")

    return answer


def refused_url() -> str:
    """A loopback URL nobody listens on (the port was free a moment ago)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


async def test_all_slots_healthy() -> None:
    smoke = Smoke(method="GET", path="/healthz", count=4)
    async with serve(status(200)) as (a, seen_a), serve(status(200)) as (b, seen_b):
        async with httpx.AsyncClient() as client:
            result = await run_smoke({"prod-eu": a, "prod-us": b + "/"}, smoke, client)
    assert result == {"passed": True, "requests": 8, "failed": 0, "failures": []}
    assert [(r.method, r.path) for r in seen_a] == [("GET", "/healthz")] * 4
    assert len(seen_b) == 4


async def test_failing_and_refusing_slots_are_the_result() -> None:
    smoke = Smoke(path="/", count=2)
    async with serve(status(200)) as (ok, _), serve(status(500)) as (bad, _):
        async with httpx.AsyncClient() as client:
            result = await run_smoke(
                {"prod-eu": bad, "prod-us": ok, "prod-ap": refused_url()}, smoke, client
            )
    assert result["passed"] is False
    assert result["requests"] == 6
    assert result["failed"] == 4
    assert result["failures"] == [
        "prod-eu/1: 500 (expected 200)",
        "prod-eu/2: 500 (expected 200)",
        "prod-ap/1: ConnectError",
        "prod-ap/2: ConnectError",
    ]


async def test_expected_statuses_and_method() -> None:
    async def by_method(request: web.Request) -> web.Response:
        return web.Response(status=204 if request.method == "HEAD" else 405)

    async with serve(by_method) as (url, seen), httpx.AsyncClient() as client:
        passing = await run_smoke(
            {"s": url},
            Smoke(method="HEAD", path="/p", expect_status=[200, 204], count=3),
            client,
        )
        failing = await run_smoke(
            {"s": url},
            Smoke(method="POST", path="/p", expect_status=[200, 204], count=1),
            client,
        )
    assert passing["passed"] is True and passing["requests"] == 3
    assert failing["failures"] == ["s/1: 405 (expected one of 200, 204)"]
    assert [r.method for r in seen] == ["HEAD", "HEAD", "HEAD", "POST"]


async def test_slow_answer_times_out() -> None:
    release = asyncio.Event()

    async def hang(request: web.Request) -> web.Response:
        await release.wait()
        return web.Response(status=200)

    async with serve(hang) as (url, _), httpx.AsyncClient() as client:
        try:
            result = await run_smoke({"slow": url}, Smoke(count=1, timeout_s=0.3), client)
        finally:
            release.set()
    assert result["failures"] == ["slow/1: ReadTimeout"]
    assert result["passed"] is False


async def test_failures_are_capped() -> None:
    async with serve(status(503)) as (url, _), httpx.AsyncClient() as client:
        result = await run_smoke({"a": url, "b": url}, Smoke(count=30), client)
    assert result["requests"] == 60 and result["failed"] == 60
    lines = result["failures"]
    assert len(lines) == MAX_FAILURE_LINES == 20
    assert lines[0] == "a/1: 503 (expected 200)"
    assert lines[-1] == "… and 41 more failures"


async def test_urls_never_appear_in_failures() -> None:
    url = refused_url().replace("http://", "http://smoke:s3cret@") + "/base"
    async with httpx.AsyncClient() as client:
        result = await run_smoke({"slot": url}, Smoke(count=1), client)
    assert result["failures"] == ["slot/1: ConnectError"]
    assert "s3cret" not in repr(result) and "127.0.0.1" not in repr(result)


async def test_invalid_url_is_a_failure_not_an_exception() -> None:
    async with httpx.AsyncClient() as client:
        result = await run_smoke({"x": "not a url"}, Smoke(count=1), client)
    assert result["passed"] is False
    assert result["failures"] == ["x/1: UnsupportedProtocol"]


async def test_no_endpoints_does_not_pass() -> None:
    async with httpx.AsyncClient() as client:
        result = await run_smoke({}, Smoke(), client)
    assert result == {
        "passed": False,
        "requests": 0,
        "failed": 0,
        "failures": ["no endpoints to smoke-test"],
    }

"""The gateway simulator as the sandbox fleet runs it: real processes, real sockets."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator, Awaitable
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from upgrade_bot.sandbox.simulator import Faults, parse_args

from ..support import eventually

pytestmark = pytest.mark.timeout(60)

FIXTURE = Path(__file__).resolve().parent.parent / "fixtures" / "apisix_prometheus_metrics.txt"
APISIX_BUCKETS = [
    "1",
    "2",
    "5",
    "10",
    "20",
    "50",
    "100",
    "200",
    "500",
    "1000",
    "2000",
    "5000",
    "10000",
    "30000",
    "60000",
    "+Inf",
]
START_TIMEOUT_S = 20.0
# Slow enough (jitter >= 0.5 x, so >= 500 ms) that a starved CI machine still observes the
# request in flight across the signal.
SLOW_LATENCY_MS = 1000

T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def clean_env(**extra: str) -> dict[str, str]:
    """The test's environment without ambient GATEWAY_* settings, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    env.update(extra)
    return env


@contextlib.asynccontextmanager
async def background(coro: Awaitable[T]) -> AsyncIterator[asyncio.Future[T]]:
    """Run `coro` as a task that is cancelled and reaped if the test fails before awaiting it."""
    task = asyncio.ensure_future(coro)
    try:
        yield task
    finally:
        if not task.done():
            task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def connect_refused(port: int) -> bool:
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
    except (ConnectionRefusedError, ConnectionResetError):
        # A connect reset while the listener closes is the same outcome: never accepted.
        return True
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return False


class Sim:
    def __init__(self, proc: asyncio.subprocess.Process, stderr_path: Path) -> None:
        self.proc = proc
        self.stderr_path = stderr_path
        self.events: list[dict[str, Any]] = []
        self._new_event = asyncio.Event()
        self._reader = asyncio.ensure_future(self._read_stdout())
        self.info: dict[str, Any] = {}

    async def _read_stdout(self) -> None:
        assert self.proc.stdout is not None
        while line := await self.proc.stdout.readline():
            self.events.append(json.loads(line))
            self._new_event.set()

    async def wait_event(self, name: str, within: float = START_TIMEOUT_S) -> dict[str, Any]:
        deadline = time.monotonic() + within
        while True:
            for event in self.events:
                if event["event"] == name:
                    return event
            if self._reader.done():
                raise AssertionError(
                    f"simulator exited before {name!r}: {self.stderr_path.read_text()}"
                )
            self._new_event.clear()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no {name!r} event within {within}s")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._new_event.wait(), remaining)

    def url(self, listener: str, path: str = "") -> str:
        return f"http://127.0.0.1:{self.info[f'{listener}_port']}{path}"

    async def stats(self, client: httpx.AsyncClient) -> dict[str, Any]:
        resp = await client.get(self.url("status", "/sandbox/stats"))
        resp.raise_for_status()
        return resp.json()

    async def is_ready(self, client: httpx.AsyncClient) -> bool:
        return (await client.get(self.url("status", "/status/ready"))).status_code == 200

    async def metrics_text(self, client: httpx.AsyncClient) -> str:
        resp = await client.get(self.url("metrics", "/apisix/prometheus/metrics"))
        resp.raise_for_status()
        return resp.text

    async def close(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()
        await self.proc.wait()
        await self._reader


@contextlib.asynccontextmanager
async def run_sim(
    tmp_path: Path,
    *,
    env: dict[str, str] | None = None,
    faults: dict[str, Any] | None = None,
    **opts: Any,
) -> AsyncIterator[Sim]:
    """Start a simulator; ports default to 0 so the process binds free ones and reports them."""
    args: dict[str, Any] = {
        "instance_id": "gw-1",
        "slot": "prod-eu/0",
        "group": "prod-eu",
        "version": "3.8.1",
        "proxy_port": 0,
        "status_port": 0,
        "metrics_port": 0,
        "ready_delay": 0,
    }
    args.update(opts)
    argv = [sys.executable, "-m", "upgrade_bot.sandbox.simulator"]
    for key, value in args.items():
        if value is not None:
            argv += ["--" + key.replace("_", "-"), str(value)]
    if faults is not None:
        argv += ["--faults", json.dumps(faults)]
    stderr_path = tmp_path / f"sim-{args.get('instance_id')}-{time.monotonic_ns()}.err"
    with stderr_path.open("wb") as stderr:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdout=asyncio.subprocess.PIPE,
            stderr=stderr,
            env=clean_env() if env is None else env,
        )
    sim = Sim(proc, stderr_path)
    try:
        sim.info = await sim.wait_event("listening")
        yield sim
    finally:
        await sim.close()


def families(text: str) -> dict[str, Any]:
    return {f.name: f for f in text_string_to_metric_families(text)}


def samples(text: str, name: str, **labels: str) -> list[Sample]:
    """Samples of family `name` (any sample suffix) whose labels include `labels`."""
    fam = families(text)[name]
    return [s for s in fam.samples if all(s.labels.get(k) == v for k, v in labels.items())]


def label_names(family: Any) -> set[str]:
    names: set[str] = set()
    for s in family.samples:
        names |= set(s.labels) - {"le"}
    return names


# --- configuration ---------------------------------------------------------------------------


def test_flags_come_from_env_and_flags_win() -> None:
    environ = {
        "GATEWAY_INSTANCE_ID": "env-id",
        "GATEWAY_SLOT": "prod-us/3",
        "GATEWAY_GROUP": "prod-us",
        "GATEWAY_VERSION": "3.7.0",
        "GATEWAY_PROXY_PORT": "9080",
        "GATEWAY_STATUS_PORT": "7085",
        "GATEWAY_METRICS_PORT": "9091",
        "GATEWAY_GATEWAY_GROUP_ID": "gg-1",
        "GATEWAY_HEARTBEAT_INTERVAL": "2.5",
        "GATEWAY_FAULTS": '{"error_ratio": 0.5}',
    }
    cfg = parse_args(["--version", "3.8.1"], environ)
    assert cfg.version == "3.8.1"  # the flag beats GATEWAY_VERSION
    assert (cfg.instance_id, cfg.slot, cfg.group) == ("env-id", "prod-us/3", "prod-us")
    assert (cfg.proxy_port, cfg.status_port, cfg.metrics_port) == (9080, 7085, 9091)
    assert cfg.gateway_group_id == "gg-1"
    assert cfg.heartbeat_interval == 2.5
    assert cfg.faults == Faults(error_ratio=0.5)
    assert cfg.product == "apisix" and cfg.host == "127.0.0.1" and cfg.ready_delay == 0.3


@pytest.mark.parametrize(
    "faults",
    [
        '{"error_ratio": 1.5}',
        '{"never_ready": 1}',
        '{"eror_ratio": 0.1}',
        "[1]",
        "{",
        '{"added_latency_ms": -1}',
    ],
)
def test_bad_faults_are_rejected(faults: str, capsys: pytest.CaptureFixture[str]) -> None:
    base = [
        "--instance-id",
        "i",
        "--slot",
        "s/0",
        "--group",
        "s",
        "--version",
        "3.8.1",
        "--proxy-port",
        "0",
        "--status-port",
        "0",
        "--metrics-port",
        "0",
    ]
    with pytest.raises(SystemExit) as exc:
        parse_args([*base, "--faults", faults], {})
    assert exc.value.code == 2
    assert "--faults" in capsys.readouterr().err


async def test_container_style_start_from_env_only(tmp_path: Path) -> None:
    proxy_port = free_port()
    env = clean_env(
        GATEWAY_INSTANCE_ID="c-1",
        GATEWAY_SLOT="prod-eu/1",
        GATEWAY_GROUP="prod-eu",
        GATEWAY_VERSION="3.2.14.1",
        GATEWAY_PRODUCT="api7",
        GATEWAY_PROXY_PORT=str(proxy_port),
        GATEWAY_STATUS_PORT="0",
        GATEWAY_METRICS_PORT="0",
        GATEWAY_READY_DELAY="0",
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "upgrade_bot.sandbox.simulator",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
        env=env,
    )
    sim = Sim(proc, tmp_path / "unused")
    try:
        sim.info = await sim.wait_event("listening")
        assert sim.info["proxy_port"] == proxy_port
        assert sim.info["pid"] == proc.pid
        await sim.wait_event("ready")
        async with httpx.AsyncClient() as client:
            resp = await client.get(sim.url("proxy", "/anything"))
        assert resp.status_code == 200
        assert resp.headers["server"] == "API7/3.2.14.1"
        assert resp.json() == {"slot": "prod-eu/1", "version": "3.2.14.1", "instance": "c-1"}
    finally:
        await sim.close()


# --- proxy and status ------------------------------------------------------------------------


async def test_proxy_answers_any_method_and_path_with_version_header(tmp_path: Path) -> None:
    async with run_sim(tmp_path, version="3.9.1", latency_ms=1) as sim:
        await sim.wait_event("ready")
        async with httpx.AsyncClient() as client:
            for method, path in [("GET", "/"), ("POST", "/orders/42?x=1"), ("DELETE", "/a/b")]:
                resp = await client.request(method, sim.url("proxy", path), content=b"payload")
                assert resp.status_code == 200
                assert resp.headers["server"] == "APISIX/3.9.1"
                assert resp.json() == {"slot": "prod-eu/0", "version": "3.9.1", "instance": "gw-1"}
            stats = await sim.stats(client)
        assert stats["requests_total"] == 3
        assert stats["in_flight"] == 0
        assert stats["pid"] == sim.proc.pid
        assert (stats["instance_id"], stats["slot"], stats["group"], stats["version"]) == (
            "gw-1",
            "prod-eu/0",
            "prod-eu",
            "3.9.1",
        )


async def test_not_ready_answers_404_then_becomes_ready(tmp_path: Path) -> None:
    spawned = time.monotonic()
    # ready_delay + slow_start_s = 2.0 s from process start
    async with run_sim(tmp_path, ready_delay=0.5, faults={"slow_start_s": 1.5}) as sim:
        async with httpx.AsyncClient() as client:
            status = await client.get(sim.url("status", "/status"))
            assert status.status_code == 200 and status.json() == {"status": "ok"}
            not_ready = await client.get(sim.url("status", "/status/ready"))
            assert not_ready.status_code == 503
            assert not_ready.json() == {
                "status": "error",
                "error": "worker has not received configuration",
            }
            for i in range(5):
                resp = await client.get(sim.url("proxy", f"/early/{i}"))
                assert resp.status_code == 404
                assert json.loads(resp.text) == {"error_msg": "404 Route Not Found"}
                assert resp.headers["server"] == "APISIX/3.8.1"
            stats = await sim.stats(client)
            assert stats["ready"] is False and stats["served_before_ready"] == 5

            await eventually(lambda: sim.is_ready(client), what="/status/ready 200")
            became_ready = time.monotonic() - spawned
            ready = await client.get(sim.url("status", "/status/ready"))
            assert ready.json() == {"status": "ok"}
            assert (await client.get(sim.url("proxy", "/late"))).status_code == 200
            stats = await sim.stats(client)
            text = await sim.metrics_text(client)
        assert became_ready >= 2.0
        assert (await sim.wait_event("ready"))["after_s"] >= 2.0
        assert stats["ready"] is True
        assert stats["served_before_ready"] == 5
        assert stats["requests_total"] == 6
        [unrouted] = samples(text, "apisix_http_status", code="404")
        assert unrouted.value == 5
        assert unrouted.labels == {
            "code": "404",
            "route": "",
            "matched_uri": "",
            "matched_host": "",
            "service": "",
            "consumer": "",
            "node": "",
        }
        [routed] = samples(text, "apisix_http_status", code="200")
        assert routed.value == 1


@pytest.mark.parametrize("fault", ["never_ready", "no_config"])
async def test_never_ready_stays_503(tmp_path: Path, fault: str) -> None:
    """Both never get their routes (no_config: its ports accept connections all the same,
    which is all a TCP readiness check asks)."""
    # the stuck instance starts first, so by the time its twin is ready its own
    # ready_delay has certainly passed
    async with (
        run_sim(tmp_path, instance_id="stuck", faults={fault: True}) as stuck,
        run_sim(tmp_path, instance_id="twin") as twin,
    ):
        async with httpx.AsyncClient() as client:
            await eventually(lambda: twin.is_ready(client), what="twin ready")
            resp = await client.get(stuck.url("status", "/status/ready"))
            assert resp.status_code == 503
            assert resp.json()["status"] == "error"
            assert (await client.get(stuck.url("proxy", "/x"))).status_code == 404
            stats = await stuck.stats(client)
        assert stats["ready"] is False and stats["served_before_ready"] == 1
        assert not any(e["event"] == "ready" for e in stuck.events)


# --- metrics ---------------------------------------------------------------------------------


async def test_metrics_have_apisix_names_labels_and_count_requests(tmp_path: Path) -> None:
    async with run_sim(tmp_path, version="3.8.1", latency_ms=2) as sim:
        await sim.wait_event("ready")
        async with httpx.AsyncClient() as client:
            for i in range(7):
                assert (await client.get(sim.url("proxy", f"/p/{i}"))).status_code == 200
            resp = await client.get(sim.url("metrics", "/apisix/prometheus/metrics"))
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("text/plain")
        text = resp.text

    # APISIX's counters carry no _total suffix (prometheus_client's parser adds one when reading)
    assert "# TYPE apisix_http_status counter" in text
    assert "# TYPE apisix_bandwidth counter" in text
    assert "apisix_http_status_total" not in text
    assert (
        'apisix_http_status{code="200",route="1",matched_uri="/*",matched_host="",'
        'service="",consumer="",node="127.0.0.1"} 7' in text
    )

    fams = families(text)
    [status] = samples(text, "apisix_http_status", code="200")
    assert status.value == 7
    assert list(status.labels) == [
        "code",
        "route",
        "matched_uri",
        "matched_host",
        "service",
        "consumer",
        "node",
    ]

    latency = fams["apisix_http_latency"]
    assert latency.type == "histogram"
    for kind in ("request", "upstream", "apisix"):
        buckets = [
            s
            for s in latency.samples
            if s.name == "apisix_http_latency_bucket" and s.labels["type"] == kind
        ]
        assert [s.labels["le"] for s in buckets] == APISIX_BUCKETS
        assert buckets[-1].value == 7
        [count] = [
            s
            for s in latency.samples
            if s.name == "apisix_http_latency_count" and s.labels["type"] == kind
        ]
        assert count.value == 7
        assert set(count.labels) == {"type", "route", "service", "consumer", "node"}
    [upstream_sum] = [
        s
        for s in latency.samples
        if s.name == "apisix_http_latency_sum" and s.labels["type"] == "upstream"
    ]
    assert upstream_sum.value >= 7 * 1.0  # 7 requests of at least 0.5 x 2 ms each

    bandwidth = {s.labels["type"]: s.value for s in fams["apisix_bandwidth"].samples}
    assert bandwidth["ingress"] > 0 and bandwidth["egress"] > 0

    [info] = fams["apisix_node_info"].samples
    assert info.labels == {"hostname": "prod-eu/0", "version": "3.8.1"} and info.value == 1
    assert fams["apisix_etcd_reachable"].samples[0].value == 1
    assert fams["apisix_http_requests_total"].type == "gauge"
    assert fams["apisix_http_requests_total"].samples[0].value >= 7
    states = {
        s.labels["state"]: s.value for s in fams["apisix_nginx_http_current_connections"].samples
    }
    assert set(states) == {"active", "accepted", "handled", "reading", "writing", "waiting"}
    assert states["accepted"] >= 1 and states["writing"] >= 1  # the scrape itself is writing


async def test_metrics_match_the_real_apisix_sample(tmp_path: Path) -> None:
    real = families(FIXTURE.read_text())
    async with run_sim(tmp_path) as sim:
        await sim.wait_event("ready")
        async with httpx.AsyncClient() as client:
            await client.get(sim.url("proxy", "/"))
            ours = families(await sim.metrics_text(client))
    # batch_process_entries only exists while batch-logging plugins run
    expected = set(real) - {"apisix_batch_process_entries"}
    assert expected <= set(ours)
    for name in expected:
        assert ours[name].type == real[name].type, name
        if name == "apisix_node_info":
            # APISIX 3.x added `version`; the documentation sample predates it
            assert label_names(ours[name]) == label_names(real[name]) | {"version"}
        else:
            assert label_names(ours[name]) == label_names(real[name]), name


async def test_no_cp_reports_etcd_unreachable(tmp_path: Path) -> None:
    async with run_sim(tmp_path, faults={"no_cp": True}) as sim:
        async with httpx.AsyncClient() as client:
            text = await sim.metrics_text(client)
    assert families(text)["apisix_etcd_reachable"].samples[0].value == 0


# --- faults ----------------------------------------------------------------------------------


async def test_error_ratio_is_observed(tmp_path: Path) -> None:
    total = 500
    async with run_sim(tmp_path, latency_ms=1, seed=20240611, faults={"error_ratio": 0.2}) as sim:
        await sim.wait_event("ready")
        limits = httpx.Limits(max_connections=25)
        async with httpx.AsyncClient(limits=limits) as client:
            gate = asyncio.Semaphore(25)

            async def one(i: int) -> httpx.Response:
                async with gate:
                    return await client.get(sim.url("proxy", f"/r/{i}"))

            responses = await asyncio.gather(*(one(i) for i in range(total)))
            text = await sim.metrics_text(client)
    failures = [r for r in responses if r.status_code >= 500]
    assert {r.status_code for r in responses} <= {200, 500}
    assert abs(len(failures) / total - 0.2) <= 0.06
    assert failures[0].json() == {"error_msg": "simulated upstream failure"}
    assert failures[0].headers["server"] == "APISIX/3.8.1"
    [counted] = samples(text, "apisix_http_status", code="500")
    assert counted.value == len(failures)


async def test_added_latency_raises_the_median(tmp_path: Path) -> None:
    async def latencies(sim: Sim, n: int = 15) -> list[float]:
        took: list[float] = []
        async with httpx.AsyncClient() as client:
            await client.get(sim.url("proxy", "/warm"))  # connection set up outside the timing
            for _ in range(n):
                started = time.perf_counter()
                assert (await client.get(sim.url("proxy", "/t"))).status_code == 200
                took.append((time.perf_counter() - started) * 1000)
        return took

    async with (
        run_sim(tmp_path, instance_id="base", latency_ms=5) as base,
        run_sim(
            tmp_path, instance_id="slow", latency_ms=5, faults={"added_latency_ms": 100}
        ) as slow,
    ):
        await base.wait_event("ready")
        await slow.wait_event("ready")
        base_ms, slow_ms = await asyncio.gather(latencies(base), latencies(slow))
    # Counted against the injected 100 ms, not timed to a tolerance a loaded machine can miss:
    # it is a floor under every slow answer (load only adds), the base (5 ms x jitter 0.5-1.5)
    # mostly answers under it, and the slow one mostly under twice it (it adds 100 ms, no more).
    assert all(ms >= 100 for ms in slow_ms), sorted(slow_ms)
    assert sum(ms < 100 for ms in base_ms) > len(base_ms) / 2, sorted(base_ms)
    assert sum(ms < 200 for ms in slow_ms) > len(slow_ms) / 2, sorted(slow_ms)


# --- signals ---------------------------------------------------------------------------------


async def test_sigquit_refuses_new_connections_and_finishes_in_flight(tmp_path: Path) -> None:
    async with run_sim(tmp_path, latency_ms=SLOW_LATENCY_MS) as sim:
        await sim.wait_event("ready")
        async with (
            httpx.AsyncClient() as idle,
            httpx.AsyncClient() as client,
            httpx.AsyncClient() as observer,
        ):
            # leaves an idle keep-alive connection that SIGQUIT must close, not wait out
            assert (await idle.get(sim.url("proxy", "/warm"))).status_code == 200
            async with background(client.get(sim.url("proxy", "/slow"))) as in_flight:
                await eventually(lambda: _in_flight_is(sim, observer, 1), what="in_flight == 1")

                sim.proc.send_signal(signal.SIGQUIT)
                proxy_port = sim.info["proxy_port"]
                await eventually(
                    lambda: connect_refused(proxy_port),
                    within=5,
                    interval=0.005,
                    what="proxy connect refused",
                )
                # the listener closed at once, while the slow request still runs
                assert not in_flight.done()
                assert await connect_refused(sim.info["status_port"])
                assert await connect_refused(sim.info["metrics_port"])

                resp = await in_flight
            assert resp.status_code == 200
            assert resp.json()["instance"] == "gw-1"
        rc = await asyncio.wait_for(sim.proc.wait(), timeout=5)
    assert rc == 0
    names = [e["event"] for e in sim.events]
    assert names[-2:] == ["draining", "exit"]
    assert sim.events[-2]["in_flight"] == 1
    assert sim.events[-1]["mode"] == "graceful"


async def test_sigquit_cuts_requests_that_outlive_shutdown_timeout(tmp_path: Path) -> None:
    # latency 3000 ms x jitter >= 0.5 = at least 1.5 s, far beyond the 0.2 s drain allowance
    async with run_sim(tmp_path, latency_ms=3000, shutdown_timeout=0.2) as sim:
        await sim.wait_event("ready")
        async with httpx.AsyncClient() as client, httpx.AsyncClient() as observer:
            async with background(client.get(sim.url("proxy", "/slow"))) as in_flight:
                await eventually(lambda: _in_flight_is(sim, observer, 1), what="in_flight == 1")
                sim.proc.send_signal(signal.SIGQUIT)
                with pytest.raises(httpx.TransportError):
                    await in_flight
        assert await asyncio.wait_for(sim.proc.wait(), timeout=5) == 0


async def test_sigterm_cuts_in_flight_requests(tmp_path: Path) -> None:
    async with run_sim(tmp_path, latency_ms=SLOW_LATENCY_MS) as sim:
        await sim.wait_event("ready")
        async with httpx.AsyncClient() as client, httpx.AsyncClient() as observer:
            async with background(client.get(sim.url("proxy", "/slow"))) as in_flight:
                await eventually(lambda: _in_flight_is(sim, observer, 1), what="in_flight == 1")
                sim.proc.send_signal(signal.SIGTERM)
                with pytest.raises(httpx.TransportError):
                    await in_flight
        assert await asyncio.wait_for(sim.proc.wait(), timeout=5) == 0
    assert sim.events[-1]["event"] == "exit"
    assert sim.events[-1]["mode"] == "fast" and sim.events[-1]["in_flight"] == 1


async def _in_flight_is(sim: Sim, client: httpx.AsyncClient, n: int) -> bool:
    return (await sim.stats(client))["in_flight"] == n


# --- control plane ---------------------------------------------------------------------------


async def test_heartbeats_reach_the_control_plane_and_none_under_no_cp(tmp_path: Path) -> None:
    received: list[dict[str, Any]] = []
    groups: list[str] = []

    async def heartbeat(request: web.Request) -> web.Response:
        received.append(await request.json())
        groups.append(request.query.get("gateway_group", ""))
        return web.json_response({"value": {"conf_server_revision": "7"}})

    app = web.Application()
    app.router.add_post("/api/dataplane/heartbeat", heartbeat)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    cp_url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    try:
        common = {"cp_url": cp_url, "gateway_group_id": "gg-eu", "heartbeat_interval": 0.1}
        async with (
            run_sim(
                tmp_path, instance_id="hb-on", slot="prod-eu/0", version="3.8.1", **common
            ) as on,
            run_sim(
                tmp_path, instance_id="hb-off", slot="prod-eu/1", faults={"no_cp": True}, **common
            ) as off,
        ):

            async def revision_echoed() -> bool:
                return any(hb["conf_server_revision"] == "7" for hb in received)

            await eventually(revision_echoed, what="a heartbeat echoing conf_server_revision 7")
            await on.wait_event("ready")
            await off.wait_event("ready")  # its workers are up; its configuration never came
            async with httpx.AsyncClient() as client:
                on_stats = await on.stats(client)
                off_stats = await off.stats(client)
                on_ready = await client.get(on.url("status", "/status/ready"))
                off_ready = await client.get(off.url("status", "/status/ready"))
                off_metrics = families(await off.metrics_text(client))
                on_metrics = families(await on.metrics_text(client))
    finally:
        await runner.cleanup()

    assert len(received) >= 2
    # the fields of API7's DataplaneHeartbeat (tests/fixtures/api7/admin-api-3.2.14.6-excerpt.json)
    assert received[0] == {
        "instance_id": "hb-on",
        "hostname": "hb-on",
        "ip": "127.0.0.1",
        "version": "3.8.1",
        "ports": [on.info["proxy_port"]],
        "conf_server_revision": "0",
        "cores": 1,
    }
    assert set(groups) == {"gg-eu"}
    assert {hb["instance_id"] for hb in received} == {"hb-on"}  # nothing from the no_cp one
    # an API7 gateway cut off from its CP has no configuration: its status endpoint says so
    assert on_ready.status_code == 200
    assert off_ready.status_code == 503
    assert off_ready.json()["error"] == "no configuration from the control plane"
    assert on_stats["config_revision"] == 7 and on_stats["heartbeats_sent"] >= 2
    assert off_stats["heartbeats_sent"] == 0
    assert off_metrics["apisix_etcd_reachable"].samples[0].value == 0
    assert on_metrics["apisix_etcd_reachable"].samples[0].value == 1
    indexes = {s.labels["key"]: s.value for s in on_metrics["apisix_etcd_modify_indexes"].samples}
    assert indexes["max_modify_index"] == 7


async def test_heartbeat_failures_are_ignored(tmp_path: Path) -> None:
    dead_cp = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    async with run_sim(tmp_path, cp_url=dead_cp, heartbeat_interval=0.05) as sim:
        await sim.wait_event("ready")
        async with httpx.AsyncClient() as client:
            assert (await client.get(sim.url("proxy", "/"))).status_code == 200
            stats = await sim.stats(client)
        assert sim.proc.returncode is None  # still serving
    assert stats["config_revision"] == 0


# --- the cached exposition of APISIX 3.14+ -----------------------------------------------------


async def test_a_cached_exporter_answers_no_data_until_it_renders_then_serves_that_render(
    tmp_path: Path,
) -> None:
    from upgrade_bot.engine.adapters.scrape import scrape
    from upgrade_bot.engine.errors import TemporaryError

    async with run_sim(tmp_path, version="3.14.0", metrics_refresh=1.5) as sim:
        async with httpx.AsyncClient() as client:
            first = await client.get(sim.url("metrics", "/apisix/prometheus/metrics"))
            # apisix/plugins/prometheus/exporter.lua get_cached_metrics, before the first render
            assert first.status_code == 500
            assert first.json() == {"message": "Failed to retrieve metrics: no data available"}
            # Not waited out: a clear, temporary answer naming the instance.
            with pytest.raises(TemporaryError, match=r"gw-1 .* have no data yet"):
                await scrape({"gw-1": sim.url("metrics")}, client, now=0.0)
            # Waited out for up to the refresh interval: read once the exporter rendered.
            snapshot = await scrape(
                {"gw-1": sim.url("metrics")}, client, now=1.0, no_data_wait_s=10.0
            )
            assert snapshot.instances[0].version == "3.14.0"
            # Requests served after a render show only at the next one.
            rendered = await sim.metrics_text(client)
            for i in range(3):
                assert (await client.get(sim.url("proxy", f"/r/{i}"))).status_code == 200
            assert await sim.metrics_text(client) == rendered

            async def renewed() -> bool:
                return await sim.metrics_text(client) != rendered

            await eventually(renewed, "the next render")

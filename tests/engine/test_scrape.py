"""Scraping APISIX metrics: the real APISIX sample, error translation, and live simulators.

The live tests start ``upgrade_bot.sandbox.simulator`` processes on loopback (ports chosen by
the OS, read back from the simulator's ``listening`` event), drive a few hundred requests
through their proxy ports, scrape before and after, and compare the summary with what the
client saw.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import signal
import sys
import time
import traceback
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from upgrade_bot.engine.adapters.scrape import METRICS_PATH, ScrapeSource, parse_metrics, scrape
from upgrade_bot.engine.backends.base import SlotInfo
from upgrade_bot.engine.config import Thresholds
from upgrade_bot.engine.errors import PermanentError, TemporaryError
from upgrade_bot.engine.metrics import Snapshot, Summary, summarize, window
from upgrade_bot.engine.sources import MetricsSource
from upgrade_bot.engine.verdict import Phase, judge

pytestmark = pytest.mark.timeout(60)

INF = math.inf
FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "apisix_prometheus_metrics.txt"
APISIX_BUCKETS_MS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 30000, 60000)


# --- parsing -------------------------------------------------------------------------------


def test_parse_the_real_apisix_sample() -> None:
    s = parse_metrics(FIXTURE.read_text(encoding="utf-8"), "apisix-docs")
    assert s.instance_id == "apisix-docs"
    # apisix_http_status: 4 + 4 on routes 1 and 2, one unrouted 404
    assert (s.requests, s.s2xx, s.s3xx, s.s4xx, s.s5xx) == (9, 8, 0, 1, 0)
    # only type="request" (the sample also has "apisix" and "upstream" series, same buckets)
    assert s.buckets == ((1.0, 1), (2.0, 1))
    # the documentation elides the +Inf, _sum and _count lines; its node_info predates version
    assert (s.latency_sum, s.latency_count) == (0.0, 0)
    assert s.version is None
    assert s.hostname == "desktop-2022q8f-wsl"


def test_parse_accepts_status_with_and_without_total_suffix_and_typed_or_not() -> None:
    untyped = 'apisix_http_status{code="500",route="1"} 3\n'
    typed_total = (
        "# TYPE apisix_http_status_total counter\n"
        'apisix_http_status_total{code="200",route="1"} 7\n'
    )
    mislabelled = (  # a TYPE line without the suffix, samples with it
        '# TYPE apisix_http_status counter\napisix_http_status_total{code="302",route="1"} 2\n'
    )
    assert parse_metrics(untyped, "x").s5xx == 3
    assert parse_metrics(typed_total, "x").s2xx == 7
    assert parse_metrics(mislabelled, "x").s3xx == 2
    both = parse_metrics(untyped + typed_total, "x")
    assert (both.requests, both.s2xx, both.s5xx) == (10, 7, 3)


def test_parse_sums_request_latency_over_routes_and_reads_version() -> None:
    def series(route: str, kind: str, counts: tuple[int, int, int], total: float) -> str:
        labels = f'type="{kind}",route="{route}",service="",consumer="",node="127.0.0.1"'
        lines = [
            f'apisix_http_latency_bucket{{{labels},le="{le}"}} {n}'
            for le, n in zip(("10", "100", "+Inf"), counts, strict=True)
        ]
        lines.append(f"apisix_http_latency_sum{{{labels}}} {total}")
        lines.append(f"apisix_http_latency_count{{{labels}}} {counts[-1]}")
        return "\n".join(lines) + "\n"

    text = (
        "# TYPE apisix_http_latency histogram\n"
        + series("1", "request", (5, 8, 9), 300.5)
        + series("2", "request", (1, 1, 2), 2000.0)
        + series("1", "upstream", (9, 9, 9), 10.0)
        + "# TYPE apisix_node_info gauge\n"
        + 'apisix_node_info{hostname="prod-eu/0",version="3.9.0"} 1\n'
    )
    s = parse_metrics(text, "x")
    assert s.buckets == ((10.0, 6), (100.0, 9), (INF, 11))
    assert (s.latency_sum, s.latency_count) == (2300.5, 11)
    assert (s.version, s.hostname) == ("3.9.0", "prod-eu/0")
    assert s.requests == 0  # no status series yet: a fresh instance


def test_parse_rejects_what_is_not_prometheus_text() -> None:
    with pytest.raises(ValueError):
        parse_metrics("<html><body>502 Bad Gateway</body></html>", "x")


# --- scrape errors (no network: httpx.MockTransport) -------------------------------------


def mock_client(handler: Callable[[httpx.Request], httpx.Response]) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.MockTransport(handler))


async def test_scrape_gets_every_target_and_stamps_the_snapshot() -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url))
        return httpx.Response(200, text=FIXTURE.read_text(encoding="utf-8"))

    async with mock_client(handler) as client:
        snap = await scrape(
            {"a": "http://10.0.0.1:9091", "b": "http://10.0.0.2:9091/"}, client, now=123.5
        )
    assert sorted(seen) == [
        f"http://10.0.0.1:9091{METRICS_PATH}",
        f"http://10.0.0.2:9091{METRICS_PATH}",
    ]
    assert snap.taken_at == 123.5
    assert [s.instance_id for s in snap.instances] == ["a", "b"]
    assert all(s.requests == 9 for s in snap.instances)


class _Slots:
    """A backend as the scrape source sees it: slots and their metrics endpoints."""

    def __init__(self, slots: list[SlotInfo]) -> None:
        self.slots = slots

    async def list_slots(self) -> list[SlotInfo]:
        return self.slots


def _slot(slot_id: str, metrics: str | None) -> SlotInfo:
    endpoints = {"metrics": metrics} if metrics else {}
    return SlotInfo(
        id=slot_id, image="apisix:3.8.0", version="3.8.0", ready=True, endpoints=endpoints
    )


async def test_the_scrape_source_answers_a_window_from_its_saved_mark() -> None:
    served = {"ok": 10, "err": 0}

    def handler(request: httpx.Request) -> httpx.Response:
        text = (
            "# TYPE apisix_http_status counter\n"
            f'apisix_http_status{{code="200",route="1"}} {served["ok"]}\n'
            f'apisix_http_status{{code="500",route="1"}} {served["err"]}\n'
        )
        return httpx.Response(200, text=text)

    clock = [100.0]
    backends: Any = {"eu": _Slots([_slot("eu/0", "http://10.0.0.1:9091")])}
    async with mock_client(handler) as client:
        source = ScrapeSource(backends, client, now=lambda: clock[0])
        assert isinstance(source, MetricsSource)
        mark = json.loads(json.dumps(await source.mark("eu")))  # saved in the run record
        assert mark["taken_at"] == 100.0
        served.update(ok=30, err=5)
        clock[0] = 110.0
        summary = await source.summarize("eu", mark)
        assert await source.series("eu", 100.0, 110.0) == []
    assert (summary.requests, summary.errors_5xx, summary.duration_s) == (25, 5, 10.0)
    assert summary.ratio_5xx == pytest.approx(0.2)


async def test_the_scrape_source_without_instances_exposing_metrics_is_temporary() -> None:
    backends: Any = {"eu": _Slots([_slot("eu/0", None)])}
    async with mock_client(lambda r: httpx.Response(500)) as client:
        source = ScrapeSource(backends, client, now=lambda: 1.0)
        with pytest.raises(TemporaryError, match="eu: no instance exposes metrics"):
            await source.mark("eu")
        with pytest.raises(PermanentError, match="no backend for group 'us'"):
            await source.summarize("us", None)


async def test_scrape_non_200_is_temporary_and_names_the_instance() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.host == "10.0.0.2":
            return httpx.Response(503, text="busy")
        return httpx.Response(200, text="")

    async with mock_client(handler) as client:
        with pytest.raises(TemporaryError) as info:
            await scrape(
                {"gw-1": "http://10.0.0.1:9091", "gw-2": "http://10.0.0.2:9091"}, client, now=0.0
            )
    assert str(info.value) == "metrics of instance gw-2 at 10.0.0.2:9091 answered HTTP 503"


async def test_scrape_garbage_is_temporary() -> None:
    async with mock_client(lambda r: httpx.Response(200, text="<html>oops</html>")) as client:
        with pytest.raises(TemporaryError, match=r"gw-1 .* not prometheus text"):
            await scrape({"gw-1": "http://10.0.0.1:9091"}, client, now=0.0)


async def test_scrape_unreachable_names_every_instance_without_credentials(port: int) -> None:
    # nothing listens on `port` (bound and released by the fixture)
    targets = {
        "gw-0": f"http://admin:s3cr3t-pw@127.0.0.1:{port}",
        "gw-1": f"http://127.0.0.1:{port}/?token=s3cr3t-token",
    }
    async with httpx.AsyncClient(timeout=5.0) as client:
        with pytest.raises(TemporaryError) as both:
            await scrape(targets, client, now=0.0)
        with pytest.raises(TemporaryError) as one:
            await scrape({"gw-0": targets["gw-0"]}, client, now=0.0)
    message = str(both.value)
    assert f"gw-0 at 127.0.0.1:{port} unreachable (ConnectError)" in message
    assert f"gw-1 at 127.0.0.1:{port} unreachable (ConnectError)" in message
    assert str(one.value) == (
        f"metrics of instance gw-0 at 127.0.0.1:{port} unreachable (ConnectError)"
    )
    for info in (both, one):
        # neither the message nor a logged traceback shows the URL's secrets
        logged = "".join(traceback.format_exception(info.value))
        assert "s3cr3t" not in logged and "admin" not in logged


async def test_scrape_timeout_is_temporary() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("timed out", request=request)

    async with mock_client(handler) as client:
        with pytest.raises(TemporaryError, match=r"gw-0 at 10\.0\.0\.1:9091 .*ReadTimeout"):
            await scrape({"gw-0": "http://10.0.0.1:9091"}, client, now=0.0)


async def test_scrape_invalid_url_is_permanent() -> None:
    async with mock_client(lambda r: httpx.Response(200)) as client:
        with pytest.raises(PermanentError, match="gw-0"):
            await scrape({"gw-0": "http://[::1"}, client, now=0.0)


# --- live: simulator processes -------------------------------------------------------------


@dataclass
class Sim:
    instance_id: str
    version: str
    proc: asyncio.subprocess.Process
    proxy_url: str
    metrics_url: str


StartSim = Callable[..., Awaitable[Sim]]


async def _read_event(proc: asyncio.subprocess.Process, name: str) -> dict[str, Any]:
    assert proc.stdout is not None
    while True:
        line = await proc.stdout.readline()
        if not line:
            raise AssertionError(f"simulator exited (rc={proc.returncode}) before '{name}'")
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if event.get("event") == name:
            return event


async def _stop(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        proc.send_signal(signal.SIGTERM)
    try:
        await asyncio.wait_for(proc.communicate(), timeout=10)
    except TimeoutError:
        proc.kill()
        await proc.communicate()


@pytest.fixture
async def start_sim() -> AsyncIterator[StartSim]:
    """Start simulator processes on loopback; each is stopped (SIGTERM) at teardown."""
    procs: list[asyncio.subprocess.Process] = []
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}

    async def start(
        instance_id: str,
        *,
        version: str = "3.8.1",
        seed: int = 7,
        latency_ms: float = 5.0,
        faults: dict[str, Any] | None = None,
    ) -> Sim:
        args = [
            sys.executable,
            "-m",
            "upgrade_bot.sandbox.simulator",
            "--instance-id",
            instance_id,
            "--slot",
            f"test/{instance_id}",
            "--group",
            "test",
            "--version",
            version,
            "--host",
            "127.0.0.1",
            "--proxy-port",
            "0",
            "--status-port",
            "0",
            "--metrics-port",
            "0",
            "--ready-delay",
            "0",
            "--latency-ms",
            str(latency_ms),
            "--seed",
            str(seed),
        ]
        if faults:
            args += ["--faults", json.dumps(faults)]
        proc = await asyncio.create_subprocess_exec(
            *args, stdout=asyncio.subprocess.PIPE, stdin=asyncio.subprocess.DEVNULL, env=env
        )
        procs.append(proc)
        listening = await asyncio.wait_for(_read_event(proc, "listening"), timeout=20)
        await asyncio.wait_for(_read_event(proc, "ready"), timeout=20)
        return Sim(
            instance_id=instance_id,
            version=version,
            proc=proc,
            proxy_url=f"http://127.0.0.1:{listening['proxy_port']}",
            metrics_url=f"http://127.0.0.1:{listening['metrics_port']}",
        )

    yield start
    await asyncio.gather(*(_stop(p) for p in procs))


async def send(sims: list[Sim], n: int, *, concurrency: int = 20) -> Counter[int]:
    """``n`` GETs spread round-robin over ``sims``; the status codes the client saw.

    Every answer must name the simulator it was sent to (``Server: APISIX/<version>``
    and, on success, its instance id), so a count can never include someone else's server.
    """
    sem = asyncio.Semaphore(concurrency)
    strangers: Counter[str] = Counter()
    async with httpx.AsyncClient(timeout=10.0, trust_env=False) as client:

        async def one(i: int) -> int:
            sim = sims[i % len(sims)]
            async with sem:
                resp = await client.get(f"{sim.proxy_url}/anything/{i}")
            answered_by = resp.headers.get("server", "")
            expected = f"APISIX/{sim.version}"
            if resp.status_code == 200:
                answered_by += f" {resp.json().get('instance')}"
                expected += f" {sim.instance_id}"
            if answered_by != expected:
                strangers[f"{sim.proxy_url} answered {resp.status_code} by {answered_by!r}"] += 1
            return resp.status_code

        codes = await asyncio.gather(*(one(i) for i in range(n)))
    assert not strangers, strangers
    return Counter(codes)


async def take(sims: list[Sim]) -> Snapshot:
    """Scrape ``sims``; each must report itself (hostname = its slot, its version)."""
    async with httpx.AsyncClient(timeout=5.0, trust_env=False) as client:
        snap = await scrape(
            {s.instance_id: s.metrics_url for s in sims}, client, now=time.monotonic()
        )
    assert {(s.instance_id, s.hostname, s.version) for s in snap.instances} == {
        (s.instance_id, f"test/{s.instance_id}", s.version) for s in sims
    }
    return snap


def bucket_of(value_ms: float) -> tuple[float, float]:
    """The APISIX latency bucket ``(lower, upper]`` holding ``value_ms``."""
    lower = 0.0
    for bound in APISIX_BUCKETS_MS:
        if value_ms <= bound:
            return lower, float(bound)
        lower = float(bound)
    return lower, INF


def fives(codes: Counter[int]) -> int:
    return sum(n for code, n in codes.items() if 500 <= code <= 599)


async def measure(sims: list[Sim], n: int) -> tuple[Summary, Counter[int]]:
    before = await take(sims)
    codes = await send(sims, n)
    after = await take(sims)
    return summarize(window(before, after)), codes


async def test_live_healthy_group_window_counts_exactly_what_was_sent(start_sim: StartSim) -> None:
    sims = [await start_sim("gw-0"), await start_sim("gw-1")]
    before = await take(sims)
    assert {s.instance_id: s.version for s in before.instances} == {
        "gw-0": "3.8.1",
        "gw-1": "3.8.1",
    }
    assert {s.hostname for s in before.instances} == {"test/gw-0", "test/gw-1"}

    codes = await send(sims, 300)
    after = await take(sims)
    w = window(before, after)
    s = summarize(w)

    assert codes == Counter({200: 300})
    assert (s.requests, w.s2xx, s.errors_5xx, s.ratio_5xx) == (300, 300, 0, 0.0)
    assert {d.instance_id: d.requests for d in w.instances} == {"gw-0": 150, "gw-1": 150}
    assert w.latency_count == 300 and w.buckets[-1] == (INF, 300)
    assert [le for le, _ in w.buckets] == [*map(float, APISIX_BUCKETS_MS), INF]
    # 5 ms x uniform(0.5, 1.5) upstream: the median sits in (2, 5] or (5, 10]
    assert s.p50_ms is not None and 2.0 < s.p50_ms <= 10.0
    assert s.p99_ms is not None and s.p99_ms <= 100.0  # generous: scheduling noise on CI
    assert s.duration_s > 0 and s.rate_per_s > 0


async def test_live_error_fault_after_in_place_replacement(start_sim: StartSim) -> None:
    old = await start_sim("gw-0", version="3.8.1")
    before_summary, before_codes = await measure([old], 300)
    assert fives(before_codes) == 0

    # replace gw-0 in place: the same instance id, a new process on new ports, 20% 5xx
    s1 = await take([old])
    await _stop(old.proc)
    new = await start_sim("gw-0", version="3.9.0", faults={"error_ratio": 0.2})
    codes = await send([new], 400)
    s2 = await take([new])
    w = window(s1, s2)
    after_summary = summarize(w)

    assert w.restarted == ("gw-0",)  # counted from zero: the new process's counters only
    sent_5xx = fives(codes)
    assert after_summary.requests == 400
    assert after_summary.errors_5xx == sent_5xx
    assert after_summary.ratio_5xx == sent_5xx / 400
    assert 0.1 < after_summary.ratio_5xx < 0.3

    verdict = judge(before_summary, after_summary, Thresholds())
    assert verdict.phase is Phase.FAIL
    assert verdict.reasons[0].startswith(
        f"5xx ratio {100 * sent_5xx / 400:.1f}% after vs 0.0% before (limit 1.0%)"
    )


async def test_live_added_latency_moves_p99_by_about_that_much(start_sim: StartSim) -> None:
    base_ms, added_ms = 5.0, 120.0
    old = await start_sim("gw-old", latency_ms=base_ms)
    new = await start_sim("gw-new", latency_ms=base_ms, faults={"added_latency_ms": added_ms})
    before_summary, _ = await measure([old], 300)
    after_summary, codes = await measure([new], 300)
    assert codes == Counter({200: 300})
    assert before_summary.p99_ms is not None and after_summary.p99_ms is not None

    # every simulated latency is base x uniform(0.5, 1.5) (+ added) plus a little overhead:
    # p99 lands in the bucket of the slowest such latency, within bucket resolution
    lo, hi = bucket_of(added_ms + 1.5 * base_ms)
    assert bucket_of(added_ms + 0.5 * base_ms) == (lo, hi)  # one bucket holds the whole range
    assert lo < after_summary.p99_ms <= hi
    assert before_summary.p99_ms <= lo  # a lower bucket (even under scheduling noise)
    moved = after_summary.p99_ms - before_summary.p99_ms
    assert added_ms - (hi - lo) <= moved <= added_ms + (hi - lo)

    verdict = judge(before_summary, after_summary, Thresholds())
    assert verdict.phase is Phase.FAIL
    assert [r.split()[0] for r in verdict.reasons] == ["p99"]


async def test_live_healthy_replacement_passes(start_sim: StartSim) -> None:
    # 40 ms x uniform(0.5, 1.5): p99 near the top of (50, 100], so the limit (1.5 x p99 + 20)
    # sits deep in (100, 200] and scheduling noise on a busy machine cannot reach it
    old = await start_sim("gw-0", version="3.8.1", latency_ms=40.0)
    before_summary, _ = await measure([old], 250)
    new = await start_sim("gw-1", version="3.9.0", latency_ms=40.0, seed=11)
    after_summary, codes = await measure([new], 250)
    assert codes == Counter({200: 250})
    verdict = judge(before_summary, after_summary, Thresholds())
    assert verdict.phase is Phase.PASS, verdict.reasons
    assert [r.split()[0] for r in verdict.reasons] == ["5xx", "p99"]


async def test_live_scrape_of_a_stopped_instance_is_temporary(start_sim: StartSim) -> None:
    sim = await start_sim("gw-0")
    await _stop(sim.proc)
    with pytest.raises(TemporaryError, match=r"instance gw-0 .* unreachable"):
        await take([sim])


def test_bucket_of() -> None:
    assert bucket_of(0.5) == (0.0, 1.0)
    assert bucket_of(127.5) == (100.0, 200.0)
    assert bucket_of(200.0) == (100.0, 200.0)
    assert bucket_of(1e9) == (60000.0, INF)


# --- a renamed exporter, and windows the metrics can resolve ----------------------------------


def test_a_custom_metric_prefix_is_read_when_configured_and_only_then() -> None:
    """apache/apisix t/cli/test_prometheus.sh sets ``metric_prefix: apisix_ci_prefix_``: the
    documented exposition (tests/fixtures) with that prefix reads the same."""
    text = FIXTURE.read_text()
    renamed = text.replace("apisix_", "apisix_ci_prefix_")
    plain = parse_metrics(text, "gw")
    assert plain.requests > 0
    assert parse_metrics(renamed, "gw", prefix="apisix_ci_prefix_") == plain
    assert parse_metrics(renamed, "gw").requests == 0  # the default prefix finds nothing


def test_a_window_shorter_than_the_exporter_can_resolve_is_a_config_error() -> None:
    from upgrade_bot.engine.config import parse_config
    from upgrade_bot.engine.errors import ConfigError

    base = """
groups:
  - name: prod-eu
    backend: {type: local, sandbox_url: "http://127.0.0.1:1"}
    image: {repository: apache/apisix}
    rollout: {baseline_window_s: 20, settle_s: 40}
"""
    with pytest.raises(ConfigError) as caught:
        parse_config(base)
    assert caught.value.problems == [
        "(top level): groups (prod-eu).rollout.baseline_window_s: 20 s is shorter than the "
        "metrics can resolve: the exporter refreshes every 15 s (metrics.exporter_refresh_s), "
        "so a window needs at least 30 s"
    ]
    assert parse_config(base + "metrics: {exporter_refresh_s: 10}\n").metrics.min_window_s() == 20
    assert parse_config(base + "metrics: {exporter_refresh_s: 0}\n").metrics.prefix == "apisix_"


def test_real_expositions_count_404s_with_an_empty_route_and_read_node_info_either_way() -> None:
    older = parse_metrics(FIXTURE.read_text(encoding="utf-8"), "docs")
    assert (older.s4xx, older.s404) == (1, 1)  # code="404" with route="" (no route matched)
    assert older.version is None and older.hostname == "desktop-2022q8f-wsl"  # no version label
    newer = parse_metrics((FIXTURE.parent / "apisix_prometheus_metrics_3x.txt").read_text(), "x")
    assert (newer.requests, newer.s2xx, newer.s404) == (2, 2, 0)  # extra labels change nothing
    assert (newer.version, newer.hostname) == ("3.14.1", "apisix-7c9d")

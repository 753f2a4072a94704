"""Both metrics sources on the same sandbox traffic, with a real Prometheus server.

One Prometheus server per session (tests/conftest.py ``prometheus``: Debian's package, 1 s
scrape interval, file-based service discovery) and, for this module, two one-group sandbox
fleets whose SD files a ``TargetSync`` thread keeps equal to their live instances:

- ``errors``: slot 1's instance answers 20 % 5xx (``3.8.0=errors@1:0.2``), slot 0 is healthy;
  also scraped by the ``renamed`` job, where every series is called ``gw_*`` instead of
  ``apisix_*`` (a gateway with ``metric_prefix: gw_``);
- ``notfound``: healthy on 3.8.0; its test replaces slot 1 by a 3.8.1 instance that never gets
  its routes and answers ``404 Route Not Found`` to everything while passing TCP readiness
  (``3.8.1=no-config@1``), so the SD file must follow the replacement; the slot is restored
  afterwards.

Agreement: over the same window, Prometheus (``increase()``, ``histogram_quantile``) and the
scrape source (counter deltas read from every instance) agree within 5 % on counts and ratios
and one bucket of APISIX's DEFAULT_BUCKETS on p99. The window's end is a fixed moment, and
Prometheus is asked only once it holds a sample past it.
"""

from __future__ import annotations

import bisect
import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from upgrade_bot.engine.adapters.prometheus import PrometheusSource
from upgrade_bot.engine.adapters.scrape import ScrapeSource
from upgrade_bot.engine.backends import build_backend
from upgrade_bot.engine.config import load_config
from upgrade_bot.engine.metrics import Summary
from upgrade_bot.engine.metrics_config import PrometheusMetrics
from upgrade_bot.prometheus_server import PrometheusServer, TargetSync
from upgrade_bot.sandbox import manage
from upgrade_bot.sandbox.simulator import LATENCY_BUCKETS_MS
from upgrade_bot.sandbox.spec import parse_fault

from ..support import eventually, fleet_spec, open_sandboxes

pytestmark = [pytest.mark.traffic, pytest.mark.timeout(240)]

GROUP = "prod-eu"
TOLERANCE = 0.05
WINDOW_REQUESTS = 3000
"""Requests (both instances) a compared window holds: ~30 s at the fleets' 100 requests/s.
``increase()`` extrapolates at the window's edges by up to a scrape interval (1 s): at ~12 s
a 5xx count of ~140 once came out 7 % off on an idle machine; at ~30 s that edge is a third
as large against the 5 % tolerance."""


class Fleets:
    def __init__(self, handles: dict[str, manage.SandboxHandle], prom: PrometheusServer) -> None:
        self.handles = handles
        self.prom = prom

    def prometheus(self, sandbox: str, **changes: Any) -> PrometheusSource:
        settings = PrometheusMetrics.model_validate(
            {
                "type": "prometheus",
                "url": self.prom.url,
                "scrape_interval_s": self.prom.scrape_interval_s,
                "selector": f'group="$group",sandbox="{sandbox}"',
                # as the sandbox's own config says (its 3.8 exporters render on every scrape)
                "exporter_refresh_s": load_config(
                    self.handles[sandbox.removesuffix("-renamed")].config_path
                ).metrics.exporter_refresh_s,
                **changes,
            }
        )
        return PrometheusSource(settings, now=time.time)

    def scrape(self, sandbox: str) -> tuple[ScrapeSource, httpx.AsyncClient]:
        config = load_config(self.handles[sandbox].config_path)
        http = httpx.AsyncClient(timeout=10)
        backends = {g.name: build_backend(g) for g in config.groups}
        return ScrapeSource(backends, http, time.time), http


@pytest.fixture(scope="module")
def fleets(
    prometheus: PrometheusServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Fleets]:
    root: Path = tmp_path_factory.mktemp("prom-fleets")
    specs = {
        "errors": fleet_spec(
            groups=1,
            instances=2,
            rate_per_s=100.0,
            faults=dict([parse_fault("3.8.0=errors@1:0.2")]),
        ),
        "notfound": fleet_spec(
            groups=1,
            instances=2,
            rate_per_s=100.0,
            readiness="tcp",
            smoke=False,
            faults=dict([parse_fault("3.8.1=no-config@1")]),
        ),
    }
    syncs: list[TargetSync] = []
    # One Sandboxes per fleet: each one's teardown waits only for its own processes.
    with contextlib.ExitStack() as stack:
        handles = {}
        for name, spec in specs.items():
            boxes = stack.enter_context(open_sandboxes(root / name))
            handles[name] = boxes.up_blocking(spec, name=name)
        try:
            for name, handle in handles.items():
                syncs.append(
                    TargetSync(
                        prometheus, name, handle.control_url, [GROUP], labels={"sandbox": name}
                    ).start()
                )
            syncs.append(
                TargetSync(
                    prometheus,
                    "errors-renamed",
                    handles["errors"].control_url,
                    [GROUP],
                    renamed=True,
                    labels={"sandbox": "errors-renamed"},
                ).start()
            )
            yield Fleets(handles, prometheus)
        finally:
            for sync in syncs:
                sync.stop()


async def scraped(source: PrometheusSource) -> bool:
    """Prometheus holds the group's targets, up, with the status counter."""
    return not await source.preflight(GROUP)


async def scraped_past(source: PrometheusSource, moment: float) -> bool:
    """Every target of the group has a sample newer than ``moment``: ``timestamp()`` of ``up``
    (prometheus/prometheus docs/querying/functions.md, v2.42.0) through ``/api/v1/query``."""
    selector = source.expr("targets", GROUP)
    async with httpx.AsyncClient(base_url=source.settings.url, timeout=10) as client:
        resp = await client.get("/api/v1/query", params={"query": f"min(timestamp({selector}))"})
    result = resp.json()["data"]["result"]
    return bool(result) and float(result[0]["value"][1]) > moment


async def same_window(fleets: Fleets, sandbox: str) -> tuple[Summary, Summary, PrometheusSource]:
    """One window summarized by both sources: (prometheus, scrape)."""
    prom = fleets.prometheus(sandbox)
    scrape, http = fleets.scrape(sandbox)
    try:
        await eventually(
            lambda: scraped(prom), f"Prometheus scraping the {sandbox} fleet", within=60
        )
        # increase() extrapolates a series no further back than where it would have been 0
        # (prometheus/prometheus promql/functions.go extrapolatedRate, v2.42.0): a window on
        # counters younger than the window undercounts. Production counters are old; the
        # sandbox's start with the fleet, so the window begins once they hold more than it.

        async def aged() -> bool:
            return (await scrape.summarize(GROUP, None)).requests >= WINDOW_REQUESTS

        await eventually(aged, f"the {sandbox} fleet's counters aged", within=60, interval=0.5)
        scrape_mark = await scrape.mark(GROUP)
        prom_mark = {"taken_at": scrape_mark["taken_at"]}

        async def enough() -> Summary | None:
            summary = await scrape.summarize(GROUP, scrape_mark)
            return summary if summary.requests >= WINDOW_REQUESTS else None

        by_scrape = await eventually(enough, "a window of traffic", within=90, interval=0.5)
        end = prom_mark["taken_at"] + by_scrape.duration_s
        # Prometheus answers for the window ending exactly when the scrape source read it, once
        # it has scraped past that moment.
        await eventually(
            lambda: scraped_past(prom, end + prom.settings.scrape_interval_s),
            "Prometheus's scrapes after the window",
            within=30,
            interval=0.2,
        )
        prom.now = lambda: end
        by_prom = await prom.summarize(GROUP, prom_mark)
        prom.now = time.time
        return by_prom, by_scrape, prom
    finally:
        await http.aclose()


def close(a: float, b: float, what: str) -> None:
    assert abs(a - b) <= TOLERANCE * max(abs(a), abs(b)) + 1e-9, f"{what}: {a} vs {b}"


def bucket(ms: float | None) -> int:
    assert ms is not None
    return bisect.bisect_left(LATENCY_BUCKETS_MS, ms)


def by_port(summary: Summary) -> dict[str, Any]:
    """Per-instance summaries keyed by the metrics port (the scrape source names instances
    ``slot@http://host:port``, Prometheus by its ``instance`` label ``host:port``)."""
    return {i.id.rsplit(":", 1)[-1].rstrip("/"): i for i in summary.instances}


async def test_prometheus_and_scrape_agree_on_5xx_traffic_and_split_it_by_instance(
    fleets: Fleets,
) -> None:
    by_prom, by_scrape, prom = await same_window(fleets, "errors")
    await prom.close()
    print(f"prometheus: {by_prom}\nscrape:     {by_scrape}")
    close(by_prom.requests, by_scrape.requests, "requests")
    close(by_prom.errors_5xx, by_scrape.errors_5xx, "5xx")
    close(by_prom.ratio_5xx, by_scrape.ratio_5xx, "5xx ratio")
    assert 0.05 < by_scrape.ratio_5xx < 0.2  # half the traffic at 20 %: the fault is seen
    assert abs(bucket(by_prom.p99_ms) - bucket(by_scrape.p99_ms)) <= 1, (
        by_prom.p99_ms,
        by_scrape.p99_ms,
    )
    # per instance: the same two instances, the erroring one told apart by both
    prom_i, scrape_i = by_port(by_prom), by_port(by_scrape)
    assert set(prom_i) == set(scrape_i) and len(prom_i) == 2
    for port, mine in prom_i.items():
        close(mine.requests, scrape_i[port].requests, f"requests of :{port}")
        close(mine.ratio_5xx, scrape_i[port].ratio_5xx, f"5xx ratio of :{port}")
    ratios = sorted(i.ratio_5xx for i in by_prom.instances)
    assert ratios[0] < 0.02 and 0.12 < ratios[1] < 0.3, ratios
    assert sum(i.requests for i in by_prom.instances) == pytest.approx(by_prom.requests, abs=2)


async def test_prometheus_follows_a_replacement_and_agrees_on_its_404s(fleets: Fleets) -> None:
    """Slot 1 replaced by an instance without routes: file SD brings the new instance to
    Prometheus (the old one goes), and both sources see its 404s alike."""
    handle = fleets.handles["notfound"]
    config = load_config(handle.config_path)
    backend = build_backend(config.group(GROUP))
    repository = config.group(GROUP).image.repository
    prom = fleets.prometheus("notfound")
    try:
        await eventually(lambda: scraped(prom), "Prometheus scraping the notfound fleet", within=60)
        before = {r["metric"]["instance"] for r in await prom.query("targets", GROUP, time.time())}
        rollout = await backend.ensure_group(
            f"{repository}:3.8.1", slots=[f"{GROUP}/1"], ready_timeout_s=30
        )
        assert set(rollout.ready) == {f"{GROUP}/1"}, rollout

        async def moved() -> set[str]:
            rows = await prom.query("targets", GROUP, time.time())
            now = {r["metric"]["instance"] for r in rows if r["value"][1] == "1"}
            return now if len(now) == 2 and now != before else set()

        after = await eventually(moved, "the new instance scraped, the old one gone", within=60)
        new = (after - before).pop().rsplit(":", 1)[-1]

        by_prom, by_scrape, _ = await same_window(fleets, "notfound")
        print(f"prometheus: {by_prom}\nscrape:     {by_scrape}")
        close(by_prom.requests, by_scrape.requests, "requests")
        close(by_prom.errors_404, by_scrape.errors_404, "404s")
        close(by_prom.ratio_404, by_scrape.ratio_404, "404 ratio")
        close(by_prom.ratio_4xx, by_scrape.ratio_4xx, "4xx ratio")
        assert 0.3 < by_scrape.ratio_404 < 0.7  # one of two instances answers only 404
        assert abs(bucket(by_prom.p99_ms) - bucket(by_scrape.p99_ms)) <= 1
        prom_i, scrape_i = by_port(by_prom), by_port(by_scrape)
        assert set(prom_i) == set(scrape_i) == {p.rsplit(":", 1)[-1] for p in after}
        for port, mine in prom_i.items():
            close(mine.ratio_404, scrape_i[port].ratio_404, f"404 ratio of :{port}")
        assert prom_i[new].ratio_404 == 1.0
        assert max(i.ratio_404 for p, i in prom_i.items() if p != new) == 0.0
    finally:
        await prom.close()
        restored = await backend.ensure_group(
            f"{repository}:3.8.0", slots=[f"{GROUP}/1"], ready_timeout_s=30
        )
        await backend.close()
        assert set(restored.ready) == {f"{GROUP}/1"}, restored


async def test_prometheus_metric_prefix_override_reads_renamed_series(fleets: Fleets) -> None:
    renamed = fleets.prometheus("errors-renamed", prefix="gw_")
    default = fleets.prometheus("errors")
    wrong = fleets.prometheus("errors-renamed")  # apisix_ where the series are gw_*
    try:
        await eventually(lambda: scraped(renamed), "Prometheus scraping the renamed job", within=60)
        assert await wrong.preflight(GROUP) == [
            f"{GROUP}: Prometheus query returns nothing for "
            f'apisix_http_status{{group="{GROUP}",sandbox="errors-renamed"}}: wrong prefix '
            "(metrics.prefix), the prometheus plugin not enabled on the routes, or the targets "
            "not scraped"
        ]

        # A 30 s window (the two jobs scrape at their own moments; increase() extrapolates
        # each window's edges by up to a scrape interval), once both jobs hold that much.
        async def window() -> tuple[Any, Any, Any] | None:
            end = time.time() - 2
            start = end - 30
            for source in (renamed, default, wrong):
                source.now = lambda: end
            a = await renamed.summarize(GROUP, {"taken_at": start})
            b = await default.summarize(GROUP, {"taken_at": start})
            c = await wrong.summarize(GROUP, {"taken_at": start})
            return (a, b, c) if min(a.requests, b.requests) > 2500 else None

        a, b, c = await eventually(window, "30 s of both jobs' series", within=90, interval=1)
        close(a.requests, b.requests, "requests, renamed vs default")
        close(a.ratio_5xx, b.ratio_5xx, "5xx ratio, renamed vs default")
        assert c.requests == 0 and c.p99_ms is None  # the negative control
    finally:
        for source in (renamed, default, wrong):
            await source.close()


async def test_prometheus_series_returns_points_over_a_window(fleets: Fleets) -> None:
    prom = fleets.prometheus("errors")
    try:
        await eventually(lambda: scraped(prom), "Prometheus scraping the errors fleet", within=60)
        end = time.time() - 1
        start = end - 24

        async def filled() -> list[Any]:
            points = await prom.series(GROUP, start, end)
            return points if len(points) >= 5 and all(p.summary.requests for p in points) else []

        points = await eventually(filled, "24 s of history", within=60, interval=1)
        steps = {round(p.end - p.start, 3) for p in points}
        assert steps == {4.0}  # 4 x the 1 s scrape interval: the window minimum
        assert [p.end for p in points] == sorted(p.end for p in points)
        assert points[0].start == pytest.approx(start, abs=0.01)
        assert points[-1].end <= end + 0.01
        for p in points:
            assert 200 < p.summary.requests < 800, p  # ~100 requests/s over 4 s
            assert p.summary.p99_ms is not None and 0.05 < p.summary.ratio_5xx < 0.2
            assert p.summary.instances == ()  # points are the group's
        # the scrape source keeps no history: only Prometheus can draw
        scrape, http = fleets.scrape("errors")
        assert await scrape.series(GROUP, start, end) == []
        await http.aclose()
    finally:
        await prom.close()

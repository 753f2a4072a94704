"""The Prometheus metrics source without traffic: config rules, the API's answers and errors
(a real Prometheus server where its own behaviour matters, ``httpx.MockTransport`` where an
answer must be chosen), secrets, preflight, and a refused run.

The traffic half (both sources on the same sandbox traffic) is
tests/sandbox/test_prometheus_traffic.py.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import httpx
import pytest

from upgrade_bot.engine.adapters.prometheus import PrometheusSource
from upgrade_bot.engine.adapters.sources import build_metrics_source
from upgrade_bot.engine.config import parse_config
from upgrade_bot.engine.errors import ConfigError, PermanentError, TemporaryError
from upgrade_bot.engine.metrics_config import PrometheusMetrics
from upgrade_bot.prometheus_server import PrometheusServer, free_port

from .runs import Fleet, Sim

TOKEN = "tok-7f3a9c-never-print-me"

GROUPS = """
groups:
  - name: eu
    backend: {type: local, sandbox_url: "http://127.0.0.1:1"}
    image: {repository: sandbox/apisix}
"""


def settings(**changes: Any) -> PrometheusMetrics:
    return PrometheusMetrics.model_validate(
        {"type": "prometheus", "url": "http://127.0.0.1:1", "scrape_interval_s": 1, **changes}
    )


def source(transport: httpx.MockTransport | None = None, **changes: Any) -> PrometheusSource:
    return PrometheusSource(
        settings(**changes), now=time.time, environ={"PROM_TOKEN": TOKEN}, transport=transport
    )


def vector(rows: list[tuple[dict[str, str], str]]) -> dict[str, Any]:
    return {
        "status": "success",
        "data": {
            "resultType": "vector",
            "result": [{"metric": m, "value": [1700000000.0, v]} for m, v in rows],
        },
    }


# --- configuration ------------------------------------------------------------------------


def test_prometheus_window_shorter_than_the_resolution_is_a_config_error() -> None:
    text = GROUPS + (
        "metrics: {type: prometheus, url: 'http://prom:9090', scrape_interval_s: 15,"
        " exporter_refresh_s: 0}\n"
        "defaults: {rollout: {baseline_window_s: 45, settle_s: 90}}\n"
    )
    with pytest.raises(ConfigError) as err:
        parse_config(text)
    assert (
        "defaults.rollout.baseline_window_s: 45 s is shorter than the metrics can resolve: "
        "Prometheus scrapes every 15 s (metrics.scrape_interval_s) and increase() needs two "
        "samples, so 4 intervals; the exporter refreshes every 0 s "
        "(metrics.exporter_refresh_s), so a window needs at least 60 s"
    ) in str(err.value)
    # at the minimum it is accepted
    ok = parse_config(text.replace("baseline_window_s: 45", "baseline_window_s: 60"))
    assert ok.metrics.type == "prometheus"
    assert ok.metrics.min_window_s() == 60
    # a cached exporter (APISIX 3.14+) refreshing every 40 s needs twice that
    slow = PrometheusMetrics.model_validate(
        {"type": "prometheus", "url": "http://p", "scrape_interval_s": 15, "exporter_refresh_s": 40}
    )
    assert slow.min_window_s() == 80


def test_prometheus_config_names_bad_keys_placeholders_and_auth_pairs() -> None:
    base = GROUPS + "metrics:\n  type: prometheus\n  url: 'http://prom:9090'\n"
    with pytest.raises(ConfigError) as err:
        parse_config(base + "  queries: {requests: 'sum(${prefix}x{$selectr})'}\n")
    assert "unknown placeholder '$selectr'" in str(err.value)
    with pytest.raises(ConfigError) as err:
        parse_config(base + "  auth_header: X-Scope-OrgID\n")
    assert "set both 'auth_header' and 'auth_header_env'" in str(err.value)
    with pytest.raises(ConfigError) as err:
        parse_config(base + "  prefix: 'bad prefix'\n")
    assert "metrics.prefix" in str(err.value)
    with pytest.raises(ConfigError) as err:
        parse_config(GROUPS + "metrics: {type: graphite}\n")
    assert "metrics: expected one of 'scrape', 'prometheus', got 'graphite'" in str(err.value)


def test_prometheus_source_is_built_from_the_config() -> None:
    config = parse_config(
        GROUPS + "metrics: {type: prometheus, url: 'http://prom:9090', scrape_interval_s: 5}\n"
    )
    built = build_metrics_source(config, backends={}, http=httpx.AsyncClient(), now=time.time)
    assert isinstance(built, PrometheusSource)
    assert built.expr("requests", "eu", window="30000ms") == (
        'sum by (instance, code) (increase(apisix_http_status{group="eu"}[30000ms]))'
    )
    assert built.expr("latency_quantile", "eu", window="1ms", quantile="0.99") == (
        "histogram_quantile(0.99, sum by (le) "
        '(increase(apisix_http_latency_bucket{type="request",group="eu"}[1ms])))'
    )


# --- answers and errors -------------------------------------------------------------------


async def test_prometheus_summary_is_read_from_the_api_answers() -> None:
    """Canned answers in the documented envelope: counts by instance and code, quantiles
    (NaN, as histogram_quantile gives without observations, is unknown)."""
    seen: list[dict[str, str]] = []

    def answer(request: httpx.Request) -> httpx.Response:
        form = dict(httpx.QueryParams(request.content.decode()))
        seen.append(form)
        query = form["query"]
        if query.startswith("sum by (instance, code)"):
            return httpx.Response(
                200,
                json=vector(
                    [
                        ({"instance": "10.0.0.1:9091", "code": "200"}, "900.4"),
                        ({"instance": "10.0.0.1:9091", "code": "404"}, "50"),
                        ({"instance": "10.0.0.2:9091", "code": "200"}, "880"),
                        ({"instance": "10.0.0.2:9091", "code": "502"}, "19.6"),
                        ({"instance": "10.0.0.2:9091", "code": "499"}, "10"),
                    ]
                ),
            )
        if "le, instance" in query:
            return httpx.Response(
                200,
                json=vector([({"instance": "10.0.0.1:9091"}, "48"), ({"instance": "x"}, "NaN")]),
            )
        q = query.split("(", 1)[1].split(",", 1)[0]
        return httpx.Response(200, json=vector([({}, {"0.5": "20", "0.95": "45"}.get(q, "NaN"))]))

    src = source(httpx.MockTransport(answer))
    now = time.time()
    summary = await src.summarize("eu", {"taken_at": now - 30})
    await src.close()
    assert (summary.requests, summary.errors_5xx, summary.errors_4xx, summary.errors_404) == (
        1860,
        20,
        60,
        50,
    )
    assert summary.ratio_404 == pytest.approx(50 / 1860)
    assert (summary.p50_ms, summary.p95_ms, summary.p99_ms) == (20.0, 45.0, None)
    assert summary.duration_s == pytest.approx(30, abs=1)
    by_id = {i.id: i for i in summary.instances}
    assert by_id["10.0.0.1:9091"].errors_404 == 50
    assert by_id["10.0.0.1:9091"].p99_ms == 48.0
    assert by_id["10.0.0.2:9091"].errors_5xx == 20
    assert by_id["x"].p99_ms is None
    # evaluated at one instant, the window as a whole-millisecond range
    assert {f["time"] for f in seen} == {f"{float(seen[0]['time']):.3f}"}
    assert all("[3" in f["query"] and "ms]" in f["query"] for f in seen)


async def test_prometheus_bad_query_is_a_permanent_error_quoting_prometheus(
    prometheus: PrometheusServer,
) -> None:
    src = PrometheusSource(
        settings(url=prometheus.url, queries={"requests": "sum by (code) (increase(${prefix}x["}),
        now=time.time,
    )
    with pytest.raises(PermanentError) as err:
        await src.summarize("eu", {"taken_at": time.time() - 10})
    await src.close()
    message = str(err.value)
    assert message.startswith(f"Prometheus at 127.0.0.1:{prometheus.port} refused query 'requests'")
    assert "HTTP 400: bad_data: " in message and "parse error" in message
    assert "the query: sum by (code) (increase(apisix_x[" in message


async def test_prometheus_unreachable_or_failing_is_a_temporary_error() -> None:
    port = free_port()  # nothing listens there
    src = PrometheusSource(settings(url=f"http://127.0.0.1:{port}"), now=time.time)
    with pytest.raises(TemporaryError, match=rf"Prometheus at 127.0.0.1:{port} unreachable"):
        await src.summarize("eu", {"taken_at": time.time() - 10})
    await src.close()

    def overloaded(request: httpx.Request) -> httpx.Response:
        body = {"status": "error", "errorType": "timeout", "error": "query timed out"}
        return httpx.Response(503, json=body)

    src = source(httpx.MockTransport(overloaded))
    with pytest.raises(TemporaryError, match="answered HTTP 503: timeout: query timed out"):
        await src.summarize("eu", {"taken_at": time.time() - 10})
    await src.close()
    src = source(httpx.MockTransport(lambda r: httpx.Response(502, text="bad gateway")))
    with pytest.raises(TemporaryError, match=r"answered HTTP 502$"):
        await src.preflight("eu")
    await src.close()


async def test_prometheus_token_is_sent_but_never_in_errors_or_logs(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    headers: list[str] = []

    def refuse(request: httpx.Request) -> httpx.Response:
        headers.append(request.headers.get("Authorization", ""))
        if len(headers) == 1:
            return httpx.Response(401, text="Unauthorized")
        # a proxy that echoes what it was sent
        body = {"status": "error", "errorType": "bad_data", "error": f"header {headers[-1]}"}
        return httpx.Response(400, json=body)

    src = source(httpx.MockTransport(refuse), bearer_token_env="PROM_TOKEN")
    errors = []
    for _ in range(2):
        with pytest.raises(PermanentError) as err:
            await src.preflight("eu")
        errors.append(str(err.value))
    await src.close()
    assert headers == [f"Bearer {TOKEN}"] * 2
    assert "refused the credentials (HTTP 401)" in errors[0]
    assert "header Bearer ***" in errors[1]
    assert TOKEN not in json.dumps(errors) + caplog.text

    missing = PrometheusSource(
        settings(auth_header="X-Scope-OrgID", auth_header_env="ORG_ID"), now=time.time, environ={}
    )
    with pytest.raises(PermanentError, match="environment variable ORG_ID is not set"):
        await missing.preflight("eu")


async def test_prometheus_preflight_refuses_a_group_without_targets(
    prometheus: PrometheusServer,
) -> None:
    src = PrometheusSource(settings(url=prometheus.url), now=time.time)
    problems = await src.preflight("nowhere")
    await src.close()
    assert problems == [
        'nowhere: Prometheus has no scrape target matching {group="nowhere"}: the gateways '
        "are not scraped (service discovery) or the selector is wrong"
    ]


def test_prometheus_preflight_problems_refuse_the_run_before_anything_changes() -> None:
    fleet = Fleet()
    sim = Sim(fleet=fleet)
    problem = "staging: Prometheus query returns nothing for apisix_http_status{group=...}"

    def inventory(effect: Any, now: float) -> dict[str, Any]:
        return {**fleet.list_slots(effect, now), "metrics_problems": [problem]}

    sim.script["list_slots"] = inventory
    sim.drive()
    assert sim.run.state == "failed"
    assert sim.run.reason == (f"no metric evidence, so no verdict could be trusted: {problem}")
    assert sim.kinds() == ["list_slots"]  # nothing else was done


async def test_scrape_preflight_names_an_exporter_the_bot_cannot_reach() -> None:
    """The scrape source's preflight: every instance's exporter answers (a refused connection
    is the exporter bound to loopback, APISIX's default)."""
    from upgrade_bot.engine.adapters.scrape import ScrapeSource
    from upgrade_bot.engine.config import ScrapeMetrics

    from .test_scrape import _slot, _Slots, mock_client

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.host == "10.0.0.2":
            raise httpx.ConnectError("refused")
        return httpx.Response(200, text='apisix_http_status{code="200"} 5\n')

    ok: Any = {"eu": _Slots([_slot("eu/0", "http://10.0.0.1:9091")])}
    bad: Any = {
        "eu": _Slots([_slot("eu/0", "http://10.0.0.1:9091"), _slot("eu/1", "http://10.0.0.2:9091")])
    }
    settings = ScrapeMetrics(exporter_refresh_s=0)
    async with mock_client(handler) as client:
        assert await ScrapeSource(ok, client, time.time, settings).preflight("eu") == []
        problems = await ScrapeSource(bad, client, time.time, settings).preflight("eu")
    assert len(problems) == 1
    assert problems[0].startswith(
        "eu: metrics of instance eu/1@http://10.0.0.2:9091 at 10.0.0.2:9091 unreachable"
    )
    assert "127.0.0.1:9091 unless plugin_attr.prometheus.export_addr" in problems[0]


async def test_inventory_carries_the_sources_preflight_problems() -> None:
    """The performer's inventory (run start and ``plan``) asks the source's preflight; a source
    that cannot be read is a problem too, never an exception."""
    from upgrade_bot.engine.adapters.performer import EffectPerformer

    from .test_scrape import _slot

    class Backend:
        async def list_slots(self) -> list[Any]:
            return [_slot("eu/0", "http://10.0.0.1:9091")]

        async def preflight(self) -> list[str]:
            return []

        async def close(self) -> None:
            pass

    class Source:
        def __init__(self, answer: list[str] | Exception) -> None:
            self.answer = answer

        async def preflight(self, group: str) -> list[str]:
            if isinstance(self.answer, Exception):
                raise self.answer
            return self.answer

        async def close(self) -> None:
            pass

    config = parse_config(GROUPS)
    for source, expected in (
        (Source([]), None),
        (Source(["eu: nothing for apisix_http_status"]), ["eu: nothing for apisix_http_status"]),
        (
            Source(TemporaryError("Prometheus at p:9090 unreachable (ConnectError)")),
            ["eu: metrics unavailable: Prometheus at p:9090 unreachable (ConnectError)"],
        ),
    ):
        performer = EffectPerformer(config, {"eu": Backend()}, metrics=source)  # type: ignore[dict-item,arg-type]
        result = await performer.inventory(["eu"])
        await performer.close()
        assert result.get("metrics_problems") == expected
        assert [s["id"] for s in result["groups"]["eu"]] == ["eu/0"]

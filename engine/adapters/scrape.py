"""The scraping metrics source: the APISIX prometheus plugin of every instance of a group.

:class:`ScrapeSource` is the first :class:`~..sources.MetricsSource`: a window's mark is a
snapshot of every instance's counters, its summary the counter deltas from that snapshot to a
new one. The IO half of ``upgrade_bot.engine.metrics``: one concurrent GET per instance on
``{base}/apisix/prometheus/metrics``, parsed with prometheus_client's text parser. httpx
failures and non-200 answers become :class:`TemporaryError` naming the instance; messages
carry the instance id and host:port, never the URL's credentials, path or query.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import time
from collections.abc import Callable, Mapping

import httpx
from prometheus_client.parser import text_string_to_metric_families

from ..backends.base import Backend
from ..config import ScrapeMetrics
from ..errors import PermanentError, TemporaryError
from ..metrics import InstanceSample, Snapshot, Summary, merge_buckets, summary_since
from ..sources import Mark, SeriesPoint
from .controlplane import host_port

METRICS_PATH = "/apisix/prometheus/metrics"

DEFAULT_PREFIX = "apisix_"
"""``plugin_attr.prometheus.metric_prefix`` unless set (apache/apisix apisix/cli/config.lua)."""
REQUEST_LATENCY_TYPE = "request"
NO_DATA = "no data available"
"""What APISIX 3.14+ answers (500) before its exporter first rendered (exporter.lua
``get_cached_metrics``): waited out, never read as a broken instance."""
# labels of one latency series except `le`: which buckets belong together
_SERIES_LABELS = ("type", "route", "service", "consumer", "node")


def _le(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return None if math.isnan(value) else value


def _names(prefix: str) -> tuple[frozenset[str], str, str, str, str]:
    # prometheus_client's parser reports a counter's samples as `<name>_total` even when the
    # text says `apisix_http_status`; an exposition without TYPE lines keeps the bare name.
    return (
        frozenset({prefix + "http_status", prefix + "http_status_total"}),
        prefix + "http_latency_bucket",
        prefix + "http_latency_sum",
        prefix + "http_latency_count",
        prefix + "node_info",
    )


def parse_metrics(text: str, instance_id: str, prefix: str = DEFAULT_PREFIX) -> InstanceSample:
    """Read one instance's prometheus text into an :class:`InstanceSample`.

    Requests and status classes come from ``apisix_http_status`` (summed over all labels);
    the latency histogram, sum and count from ``apisix_http_latency{type="request"}`` summed
    over routes, services, consumers and nodes; version and hostname from
    ``apisix_node_info``. Missing metrics count as zero (a fresh instance exports no status
    series). Raises ValueError when ``text`` is not prometheus text.
    """
    status_samples, latency_bucket, latency_sum_name, latency_count_name, node_info = _names(prefix)
    requests = 0
    by_class = {"2": 0, "3": 0, "4": 0, "5": 0}
    not_found = 0
    series: dict[tuple[str, ...], list[tuple[float, float]]] = {}
    latency_sum = 0.0
    latency_count = 0
    version: str | None = None
    hostname: str | None = None

    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            name, labels, value = sample.name, sample.labels, sample.value
            if not math.isfinite(value):
                continue
            if name in status_samples:
                count = round(value)
                requests += count
                code = labels.get("code", "")
                if len(code) == 3 and code.isdigit() and code[0] in by_class:
                    by_class[code[0]] += count
                if code == "404":
                    not_found += count
            elif name == node_info:
                if version is None and hostname is None:  # one per node; keep the first
                    version = labels.get("version") or None
                    hostname = labels.get("hostname") or None
            elif labels.get("type") != REQUEST_LATENCY_TYPE:
                continue  # the "upstream" and "apisix" latency series, and everything else
            elif name == latency_bucket:
                le = _le(labels.get("le", ""))
                if le is not None:
                    key = tuple(labels.get(k, "") for k in _SERIES_LABELS)
                    series.setdefault(key, []).append((le, value))
            elif name == latency_sum_name:
                latency_sum += value
            elif name == latency_count_name:
                latency_count += round(value)

    return InstanceSample(
        instance_id=instance_id,
        requests=requests,
        s2xx=by_class["2"],
        s3xx=by_class["3"],
        s4xx=by_class["4"],
        s5xx=by_class["5"],
        s404=not_found,
        buckets=merge_buckets(series.values()),
        latency_sum=latency_sum,
        latency_count=latency_count,
        version=version,
        hostname=hostname,
    )


async def _scrape_one(
    instance_id: str,
    base_url: str,
    client: httpx.AsyncClient,
    prefix: str = DEFAULT_PREFIX,
    no_data_wait_s: float = 0.0,
) -> InstanceSample:
    where = host_port(base_url)
    url = base_url.rstrip("/") + METRICS_PATH
    deadline = time.monotonic() + no_data_wait_s
    while True:
        try:
            resp = await client.get(url)
        except httpx.InvalidURL:
            raise PermanentError(f"metrics URL of instance {instance_id} is invalid") from None
        except httpx.HTTPError as exc:
            raise TemporaryError(
                f"metrics of instance {instance_id} at {where} unreachable ({type(exc).__name__})"
            ) from None
        no_data = resp.status_code == 500 and NO_DATA in resp.text
        if not no_data or time.monotonic() >= deadline:
            break
        await asyncio.sleep(min(1.0, max(0.05, no_data_wait_s / 20)))
    if no_data:
        raise TemporaryError(
            f"metrics of instance {instance_id} at {where} have no data yet (its exporter "
            f"answered '{NO_DATA}' for {no_data_wait_s:g} s)"
        )
    if resp.status_code != 200:
        raise TemporaryError(
            f"metrics of instance {instance_id} at {where} answered HTTP {resp.status_code}"
        )
    try:
        return parse_metrics(resp.text, instance_id, prefix)
    except ValueError:
        raise TemporaryError(
            f"metrics of instance {instance_id} at {where} are not prometheus text"
        ) from None


async def scrape(
    targets: Mapping[str, str],
    client: httpx.AsyncClient,
    *,
    now: float,
    prefix: str = DEFAULT_PREFIX,
    no_data_wait_s: float = 0.0,
) -> Snapshot:
    """Scrape every target concurrently into a :class:`Snapshot` taken at ``now``.

    ``targets`` maps instance id to the metrics base URL (``http://10.0.0.5:9091``). Either
    every instance is scraped or the call fails: one :class:`TemporaryError` names every
    instance that could not be read (a :class:`PermanentError` wins if any URL is invalid).
    Timeouts are the client's.
    """
    ids = list(targets)
    results = await asyncio.gather(
        *(_scrape_one(i, targets[i], client, prefix, no_data_wait_s) for i in ids),
        return_exceptions=True,
    )
    samples: list[InstanceSample] = []
    errors: list[BaseException] = []
    for result in results:
        if isinstance(result, BaseException):
            errors.append(result)
        else:
            samples.append(result)
    if errors:
        for exc in errors:
            if not isinstance(exc, TemporaryError | PermanentError):
                raise exc
        permanent = [e for e in errors if isinstance(e, PermanentError)]
        if permanent:
            raise permanent[0]
        if len(errors) == 1:
            raise errors[0]
        raise TemporaryError("; ".join(str(e) for e in errors))
    return Snapshot(taken_at=now, instances=tuple(samples))


class ScrapeSource:
    """Per-instance scraping as a :class:`~..sources.MetricsSource` (``metrics.type: scrape``).

    The instances are the group's slots that expose a ``metrics`` endpoint, as its backend
    lists them now. The http client is the caller's (and closed by it).
    """

    def __init__(
        self,
        backends: Mapping[str, Backend],
        http: httpx.AsyncClient,
        now: Callable[[], float],
        settings: ScrapeMetrics | None = None,
    ) -> None:
        self.backends = backends
        self.http = http
        self.now = now
        self.settings = settings or ScrapeMetrics(exporter_refresh_s=0)

    async def snapshot(self, group: str) -> Snapshot:
        """Every instance of ``group`` scraped now."""
        backend = self.backends.get(group)
        if backend is None:
            raise PermanentError(f"no backend for group '{group}'")
        slots = await backend.list_slots()
        # An instance is known by its metrics address: a replaced slot is a new instance, so its
        # counters start from zero instead of being mistaken for a reset.
        targets = {
            f"{s.id}@{s.endpoints['metrics']}": s.endpoints["metrics"]
            for s in slots
            if s.endpoints.get("metrics")
        }
        if not targets:
            raise TemporaryError(f"{group}: no instance exposes metrics")
        return await scrape(
            targets,
            self.http,
            now=self.now(),
            prefix=self.settings.prefix,
            no_data_wait_s=self.settings.exporter_refresh_s,
        )

    async def mark(self, group: str) -> Mark:
        """The window starts at a snapshot of every instance's counters."""
        return dataclasses.asdict(await self.snapshot(group))

    async def summarize(self, group: str, mark: Mark | None) -> Summary:
        """The counter deltas from ``mark`` to a snapshot taken now, summarized."""
        return summary_since(mark, await self.snapshot(group))

    async def preflight(self, group: str) -> list[str]:
        """Every instance's exporter answers (emptiness is not judged here: an instance exports
        no status series before its first counted request, and these are read directly)."""
        try:
            await self.snapshot(group)
        except TemporaryError as exc:
            return [
                f"{group}: {exc} (APISIX's exporter listens on 127.0.0.1:9091 unless "
                "plugin_attr.prometheus.export_addr says otherwise; or use metrics.type: "
                "prometheus)"
            ]
        return []

    async def series(self, group: str, start: float, end: float) -> list[SeriesPoint]:
        """None: counters are read only at the marks, so there is no history to draw."""
        return []

    async def close(self) -> None:
        """Nothing to release: the http client is the caller's."""

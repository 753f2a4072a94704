"""The Prometheus metrics source: PromQL over a Prometheus server's HTTP API.

:class:`PrometheusSource` is a :class:`~..sources.MetricsSource` for setups where Prometheus
already scrapes the gateways (the exporter listens on loopback by default, so the bot often
cannot reach the instances itself). A window's mark is only its start time; its summary is
``increase()`` of the status counter and ``histogram_quantile`` over the latency histogram
from that start to now, evaluated by Prometheus at one instant (``GET|POST /api/v1/query``);
charts come from the same queries over a range (``/api/v1/query_range``), both as
prometheus/prometheus ``docs/querying/api.md`` (v2.42.0, 225c61122d88b01d1f0eaaee0e05b6f3e0567ac0)
describes them: form-encoded ``query``/``time``/``start``/``end``/``step``, answers
``{"status": "success"|"error", "data": {"resultType", "result"}, "errorType", "error"}``,
400 for bad parameters, 422 for an expression that cannot be executed, 503 for a timeout.

Metric names are APISIX's (apache/apisix ``apisix/plugins/prometheus/exporter.lua``,
f519a0f04ccfd4c13b5d06caf34bcde8c8593980: ``http_status`` counter labelled ``code``,
``http_latency`` histogram labelled ``type``, prefixed by ``plugin_attr.prometheus.metric_prefix``,
default ``apisix_``). Errors: unreachable or 5xx → :class:`TemporaryError`; a refused query or
credentials → :class:`PermanentError` quoting Prometheus. No message carries the token.
"""

from __future__ import annotations

import asyncio
import math
import os
import ssl
import string
from collections.abc import Callable, Mapping
from typing import Any

import httpx

from ..errors import PermanentError, TemporaryError
from ..metrics import InstanceSummary, Summary
from ..metrics_config import PrometheusMetrics
from ..sources import Mark, SeriesPoint
from .controlplane import host_port

QUANTILES = {"p50_ms": 0.5, "p95_ms": 0.95, "p99_ms": 0.99}
MAX_POINTS = 60
"""At most this many points in a series (a chart at phone width)."""


def _duration(seconds: float) -> str:
    """A PromQL range duration: whole milliseconds (``[0-9]+ms``), at least 1 ms."""
    return f"{max(1, round(seconds * 1000))}ms"


def _number(text: Any) -> float:
    try:
        return float(text)
    except (TypeError, ValueError):
        return math.nan


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


class PrometheusSource:
    """``metrics.type: prometheus``. Holds its own http client (closed by :meth:`close`)."""

    def __init__(
        self,
        settings: PrometheusMetrics,
        *,
        now: Callable[[], float],
        environ: Mapping[str, str] | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.settings = settings
        self.now = now
        self.environ = os.environ if environ is None else environ
        self.transport = transport
        self.where = host_port(settings.url)
        self._client: httpx.AsyncClient | None = None
        self._secrets: list[str] = []

    # --- the http client -----------------------------------------------------------------

    def _headers(self) -> dict[str, str]:
        s = self.settings
        headers: dict[str, str] = {}
        for env, header, scheme in (
            (s.bearer_token_env, "Authorization", "Bearer "),
            (s.auth_header_env, s.auth_header, ""),
        ):
            if not env or not header:
                continue
            value = self.environ.get(env, "")
            if not value:
                raise PermanentError(
                    f"Prometheus credentials: environment variable {env} is not set"
                )
            self._secrets.append(value)
            headers[header] = scheme + value
        return headers

    def _verify(self) -> ssl.SSLContext | bool:
        s = self.settings
        if s.insecure_skip_verify:
            return False
        if s.ca_file:
            try:
                return ssl.create_default_context(cafile=s.ca_file)
            except (OSError, ssl.SSLError) as exc:
                raise PermanentError(
                    f"Prometheus ca_file {s.ca_file} cannot be used ({type(exc).__name__})"
                ) from None
        return True

    def client(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(
                base_url=self.settings.url.rstrip("/"),
                headers=self._headers(),
                verify=self._verify(),
                timeout=self.settings.timeout_s,
                transport=self.transport,
            )
        return self._client

    def _scrub(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    # --- queries ---------------------------------------------------------------------------

    def expr(self, name: str, group: str, **values: str) -> str:
        """The query ``name`` for ``group`` (placeholders filled in)."""
        s = self.settings
        selector = string.Template(s.selector).safe_substitute(group=group)
        template = string.Template(getattr(s.queries, name))
        return template.safe_substitute(
            prefix=s.prefix,
            selector=selector,
            instance=s.instance_label,
            group=group,
            **values,
        )

    async def _api(self, path: str, name: str, params: dict[str, str]) -> dict[str, Any]:
        """POST a form to the API (docs/querying/api.md allows POST with a form-encoded body,
        for queries longer than a URL may be) and return its ``data``."""
        try:
            resp = await self.client().post(path, data=params)
        except httpx.HTTPError as exc:
            raise TemporaryError(
                f"Prometheus at {self.where} unreachable ({type(exc).__name__})"
            ) from None
        try:
            body = resp.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            body = {}
        if resp.status_code == 200 and body.get("status") == "success":
            data = body.get("data")
            if isinstance(data, dict):
                return data
            raise TemporaryError(f"Prometheus at {self.where}: answer to {name} has no data")
        detail = ""
        if body.get("status") == "error":
            detail = f": {body.get('errorType', 'error')}: {body.get('error', '')}"
        detail = self._scrub(detail)
        code = resp.status_code
        if code >= 500 or code == 429 or body.get("errorType") in ("timeout", "canceled"):
            raise TemporaryError(f"Prometheus at {self.where} answered HTTP {code}{detail}")
        if code in (401, 403):
            raise PermanentError(
                f"Prometheus at {self.where} refused the credentials (HTTP {code}); check "
                "bearer_token_env / auth_header_env"
            )
        raise PermanentError(
            f"Prometheus at {self.where} refused query '{name}' (HTTP {code}{detail}); "
            f"the query: {params.get('query', '')}"
        )

    async def query(self, name: str, group: str, at: float, **values: str) -> list[dict[str, Any]]:
        """An instant query's vector (``/api/v1/query``, evaluated at ``at``)."""
        data = await self._api(
            "/api/v1/query",
            name,
            {"query": self.expr(name, group, **values), "time": f"{at:.3f}"},
        )
        return self._result(data, "vector", name)

    async def query_range(
        self, name: str, group: str, start: float, end: float, step: float, **values: str
    ) -> list[dict[str, Any]]:
        """A range query's matrix (``/api/v1/query_range``)."""
        data = await self._api(
            "/api/v1/query_range",
            name,
            {
                "query": self.expr(name, group, **values),
                "start": f"{start:.3f}",
                "end": f"{end:.3f}",
                "step": f"{step:.3f}",
            },
        )
        return self._result(data, "matrix", name)

    def _result(self, data: dict[str, Any], kind: str, name: str) -> list[dict[str, Any]]:
        result = data.get("result")
        if data.get("resultType") != kind or not isinstance(result, list):
            raise PermanentError(
                f"Prometheus query '{name}' answered a {data.get('resultType')}, expected a "
                f"{kind} (check the query override)"
            )
        return result

    # --- the port --------------------------------------------------------------------------

    async def mark(self, group: str) -> Mark:
        """A window's start is a moment: Prometheus keeps the history."""
        return {"taken_at": self.now()}

    async def summarize(self, group: str, mark: Mark | None) -> Summary:
        """``increase()`` and quantiles from the mark to now, evaluated at now."""
        end = self.now()
        start = float(mark["taken_at"]) if mark else end
        duration = end - start
        if duration <= 0:
            return _summary({}, {}, {}, 0.0)
        window = _duration(duration)
        label = self.settings.instance_label
        requests, instance_p99, *quantiles = await asyncio.gather(
            self.query("requests", group, end, window=window),
            self.query("instance_latency_quantile", group, end, window=window, quantile="0.99"),
            *(
                self.query("latency_quantile", group, end, window=window, quantile=str(q))
                for q in QUANTILES.values()
            ),
        )
        counts: dict[tuple[str, str], float] = {}
        for row in requests:
            metric = row.get("metric", {})
            key = (metric.get(label, ""), metric.get("code", ""))
            counts[key] = counts.get(key, 0.0) + _value(row)
        p99s = {row.get("metric", {}).get(label, ""): _value(row) for row in instance_p99}
        overall = {
            key: _value(rows[0]) if rows else math.nan
            for key, rows in zip(QUANTILES, quantiles, strict=True)
        }
        return _summary(counts, overall, p99s, duration)

    async def series(self, group: str, start: float, end: float) -> list[SeriesPoint]:
        """Points of one step each (at least the window minimum, at most ``MAX_POINTS``)."""
        if end <= start:
            return []
        step = max(self.settings.min_window_s(), (end - start) / MAX_POINTS)
        first = start + step
        if first > end:
            return []
        window = _duration(step)
        requests, *quantiles = await asyncio.gather(
            self.query_range("requests", group, first, end, step, window=window),
            *(
                self.query_range(
                    "latency_quantile", group, first, end, step, window=window, quantile=str(q)
                )
                for q in QUANTILES.values()
            ),
        )
        # a point is the group's: no per-instance split (it would multiply a record's size)
        times: dict[float, dict[tuple[str, str], float]] = {}
        for row in requests:
            key = ("", row.get("metric", {}).get("code", ""))
            for t, v in row.get("values", []):
                by_key = times.setdefault(float(t), {})
                by_key[key] = by_key.get(key, 0.0) + _number(v)
        by_quantile: dict[float, dict[str, float]] = {}
        for key, rows in zip(QUANTILES, quantiles, strict=True):
            for row in rows[:1]:
                for t, v in row.get("values", []):
                    by_quantile.setdefault(float(t), {})[key] = _number(v)
        points = []
        for t in sorted(set(times) | set(by_quantile)):
            summary = _summary(times.get(t, {}), by_quantile.get(t, {}), {}, step)
            points.append(SeriesPoint(start=t - step, end=t, summary=summary))
        return points

    async def preflight(self, group: str) -> list[str]:
        """Why this group's evidence would be missing (empty: it is there): no target
        selected, targets down, or no status counter exported under the prefix."""
        s = self.settings
        at = self.now()
        selector = string.Template(s.selector).safe_substitute(group=group)
        targets = await self.query("targets", group, at)
        if not targets:
            return [
                f"{group}: Prometheus has no scrape target matching {{{selector}}}: the "
                "gateways are not scraped (service discovery) or the selector is wrong"
            ]
        down = sorted(
            row.get("metric", {}).get(s.instance_label, "?")
            for row in targets
            if _value(row) != 1.0
        )
        if down and len(down) == len(targets):
            return [
                f"{group}: every Prometheus target matching {{{selector}}} is down: "
                + ", ".join(down)
            ]
        problems = [f"{group}: Prometheus targets down: {', '.join(down)}"] if down else []
        exported = await self.query("exported", group, at)
        if not exported:
            problems.append(
                f"{group}: Prometheus query returns nothing for "
                f"{s.prefix}http_status{{{selector}}}: wrong prefix (metrics.prefix), "
                "the prometheus plugin not enabled on the routes, or the targets not scraped"
            )
        return problems

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None


def _value(row: Mapping[str, Any]) -> float:
    value = row.get("value")
    return _number(value[1]) if isinstance(value, list) and len(value) == 2 else math.nan


def _summary(
    counts: Mapping[tuple[str, str], float],
    quantiles: Mapping[str, float],
    instance_p99: Mapping[str, float],
    duration: float,
) -> Summary:
    """A :class:`Summary` from per (instance, code) increases and quantiles in ms."""

    def total(instance: str | None, accept: Callable[[str], bool]) -> int:
        return round(
            sum(
                v
                for (i, code), v in counts.items()
                if math.isfinite(v) and (instance is None or i == instance) and accept(code)
            )
        )

    def every(code: str) -> bool:
        return True

    def is_5xx(code: str) -> bool:
        return code.startswith("5")

    def is_4xx(code: str) -> bool:
        return code.startswith("4")

    def is_404(code: str) -> bool:
        return code == "404"

    requests = total(None, every)
    errors_5xx, errors_4xx, errors_404 = (total(None, f) for f in (is_5xx, is_4xx, is_404))

    def ratio(n: int) -> float:
        return n / requests if requests else 0.0

    instances = tuple(
        InstanceSummary(
            id=i,
            requests=total(i, every),
            errors_5xx=total(i, is_5xx),
            errors_404=total(i, is_404),
            p99_ms=_finite(instance_p99.get(i, math.nan)),
        )
        for i in sorted({i for i, _ in counts} | set(instance_p99))
        if i
    )
    return Summary(
        requests=requests,
        errors_5xx=errors_5xx,
        errors_4xx=errors_4xx,
        ratio_5xx=ratio(errors_5xx),
        ratio_4xx=ratio(errors_4xx),
        p50_ms=_finite(quantiles.get("p50_ms", math.nan)),
        p95_ms=_finite(quantiles.get("p95_ms", math.nan)),
        p99_ms=_finite(quantiles.get("p99_ms", math.nan)),
        duration_s=duration,
        rate_per_s=requests / duration if duration > 0 else 0.0,
        errors_404=errors_404,
        ratio_404=ratio(errors_404),
        instances=instances,
    )


__all__ = ["PrometheusSource"]

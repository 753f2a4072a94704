"""The ``metrics`` section's Prometheus source (kept apart from ``engine.config`` for size)."""

from __future__ import annotations

import string
from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


PROMQL_PLACEHOLDERS = frozenset({"prefix", "selector", "window", "instance", "quantile", "group"})


class PrometheusQueries(Model):
    """PromQL templates (``string.Template``: ``$prefix``, ``$selector``, ``$window``,
    ``$instance``, ``$quantile``); every one may be overridden. The defaults read the real
    APISIX series (apache/apisix ``apisix/plugins/prometheus/exporter.lua``: the counter
    ``http_status`` labelled ``code``, the histogram ``http_latency`` labelled ``type``)."""

    requests: str = "sum by ($instance, code) (increase(${prefix}http_status{$selector}[$window]))"
    """Requests in the window per instance and status code."""
    latency_quantile: str = (
        "histogram_quantile($quantile, sum by (le) "
        '(increase(${prefix}http_latency_bucket{type="request",$selector}[$window])))'
    )
    """One latency quantile (milliseconds) of the group's requests in the window."""
    instance_latency_quantile: str = (
        "histogram_quantile($quantile, sum by (le, $instance) "
        '(increase(${prefix}http_latency_bucket{type="request",$selector}[$window])))'
    )
    targets: str = "up{$selector}"
    """Preflight: the group's scrape targets (1: scraped, 0: down)."""
    exported: str = "count by ($instance) (${prefix}http_status{$selector})"
    """Preflight: instances exporting the status counter."""

    @model_validator(mode="after")
    def _known_placeholders(self) -> PrometheusQueries:
        for name in type(self).model_fields:
            text = getattr(self, name)
            for match in string.Template.pattern.finditer(text):
                key = match.group("named") or match.group("braced")
                if key and key not in PROMQL_PLACEHOLDERS:
                    raise ValueError(
                        f"queries.{name}: unknown placeholder '${key}'; known: "
                        + ", ".join(f"${p}" for p in sorted(PROMQL_PLACEHOLDERS))
                    )
        return self


class PrometheusMetrics(Model):
    """Evidence from a Prometheus server that already scrapes the gateways (PromQL over its
    HTTP API, prometheus/prometheus docs/querying/api.md). Secrets are never here: only the
    names of the environment variables holding them."""

    type: Literal["prometheus"]
    url: str = Field(pattern=r"^https?://")
    """Base URL of the server (``/api/v1/query`` is appended), e.g. http://prometheus:9090."""
    bearer_token_env: str | None = None
    """Environment variable holding a bearer token (``Authorization: Bearer …``)."""
    auth_header: str | None = Field(None, pattern=r"^[A-Za-z0-9-]+$")
    """Another header to authenticate with (e.g. ``X-Scope-OrgID``), its value from
    ``auth_header_env``."""
    auth_header_env: str | None = None
    ca_file: str | None = None
    """A CA bundle to verify the server's certificate with."""
    insecure_skip_verify: bool = False
    timeout_s: float = Field(10.0, gt=0)
    selector: str = Field('group="$group"', min_length=1)
    """Label matchers selecting one group's instances (``$group``: the group's name). The
    default suits targets labelled by group in file-SD (``labels: {group: eu}``) or a
    Kubernetes-SD relabel rule; e.g. ``job="apisix",namespace="$group"`` or
    ``instance=~"10[.]0[.]1[.].*"`` select otherwise."""
    instance_label: str = Field("instance", pattern=r"^[a-zA-Z_][a-zA-Z0-9_]*$")
    """The label telling instances apart (per-instance split and outliers)."""
    prefix: str = Field("apisix_", pattern=r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
    """APISIX's ``plugin_attr.prometheus.metric_prefix`` (default ``apisix_``)."""
    scrape_interval_s: float = Field(15.0, gt=0)
    """How often Prometheus scrapes the gateways: a window needs at least
    ``WINDOW_INTERVALS`` of them."""
    exporter_refresh_s: float = Field(15.0, ge=0)
    """The exporter's cache refresh (APISIX 3.14+ ``refresh_interval``, 0 before): a scrape
    sees new counts only this often, so a window also needs twice this (as for scraping)."""
    queries: PrometheusQueries = Field(default_factory=PrometheusQueries)

    WINDOW_INTERVALS: ClassVar[int] = 4
    """``increase()`` needs two samples of a series inside the window (prometheus/prometheus
    ``promql/functions.go`` ``extrapolatedRate``, v2.42.0); four scrape intervals leave at
    least two even when a scrape fails or the window starts just after one."""

    @model_validator(mode="after")
    def _auth_header_pair(self) -> PrometheusMetrics:
        if bool(self.auth_header) != bool(self.auth_header_env):
            raise ValueError("set both 'auth_header' and 'auth_header_env', or neither")
        return self

    def min_window_s(self) -> float:
        return max(self.WINDOW_INTERVALS * self.scrape_interval_s, 2 * self.exporter_refresh_s)

    def describe_resolution(self) -> str:
        return (
            f"Prometheus scrapes every {self.scrape_interval_s:g} s (metrics.scrape_interval_s) "
            f"and increase() needs two samples, so {self.WINDOW_INTERVALS} intervals; the "
            f"exporter refreshes every {self.exporter_refresh_s:g} s (metrics.exporter_refresh_s)"
        )


__all__ = ["PROMQL_PLACEHOLDERS", "PrometheusMetrics", "PrometheusQueries"]

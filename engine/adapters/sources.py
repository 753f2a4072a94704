"""The metrics sources by the config's ``metrics.type``: adding a source is one entry here,
its config model in ``engine.config`` (``metrics``) and its own module."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import httpx

from ..backends.base import Backend
from ..config import Config
from ..sources import MetricsSource
from .prometheus import PrometheusSource
from .scrape import ScrapeSource

SourceFactory = Callable[..., MetricsSource]
"""``(settings, *, backends, http, now) -> MetricsSource``; settings: the ``metrics`` model."""

SOURCES: dict[str, SourceFactory] = {
    "scrape": lambda settings, *, backends, http, now: ScrapeSource(backends, http, now, settings),
    "prometheus": lambda settings, *, backends, http, now: PrometheusSource(settings, now=now),
}


def build_metrics_source(
    config: Config,
    *,
    backends: Mapping[str, Backend],
    http: httpx.AsyncClient,
    now: Callable[[], float],
) -> MetricsSource:
    """The source the config names (``metrics.type``, default ``scrape``)."""
    settings: Any = config.metrics
    return SOURCES[settings.type](settings, backends=backends, http=http, now=now)


__all__ = ["SOURCES", "build_metrics_source"]

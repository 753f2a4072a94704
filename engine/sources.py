"""The metrics port: where a group's evidence comes from, whatever the source.

The engine measures a group over a window (before its replacement, after it) and judges the
two summaries (``engine.verdict``). It never looks at raw data: a :class:`MetricsSource` marks
the start of a window, answers the window's :class:`~.metrics.Summary` from that mark to now,
and a series of points for charts. The mark is saved in the run record, so a window survives
a restarted bot.

A source may also answer ``async preflight(group) -> list[str]``: why the group's evidence
would be missing (no target, wrong metric prefix, exporter unreachable), checked with the
inventory before anything changes; a run with any such problem is refused with them.

Sources are chosen by the config's ``metrics.type``; the adapters keep the registry
(``engine.adapters.sources``). Two exist: scraping every instance's counters
(``engine.adapters.scrape.ScrapeSource``) and PromQL over a Prometheus server
(``engine.adapters.prometheus.PrometheusSource``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from .metrics import Summary

Mark = dict[str, Any]
"""Where a window starts, as the source needs to know it: JSON, saved in the run record.

Opaque to the engine except ``taken_at`` (the moment, on the source's clock), which every mark
carries (charts and reports place the windows with it)."""


@dataclass(frozen=True)
class SeriesPoint:
    """The group's numbers over ``[start, end)`` (one step of a chart)."""

    start: float
    end: float
    summary: Summary


@runtime_checkable
class MetricsSource(Protocol):
    """A group's evidence over time windows.

    Errors follow the engine's vocabulary: ``TemporaryError`` when the source cannot be read
    now (the engine retries, then calls the verdict inconclusive), ``PermanentError`` when
    repeating will not help. Every call is safe to repeat.
    """

    async def mark(self, group: str) -> Mark:
        """The start of a window beginning now."""
        ...

    async def summarize(self, group: str, mark: Mark | None) -> Summary:
        """The group's summary from ``mark`` to now (None: the start was not measured)."""
        ...

    async def series(self, group: str, start: float, end: float) -> list[SeriesPoint]:
        """Points between ``start`` and ``end``, oldest first (empty: the source keeps none)."""
        ...

    async def close(self) -> None:
        """Release connections (a no-op for sources that hold none)."""
        ...


__all__ = ["Mark", "MetricsSource", "SeriesPoint"]

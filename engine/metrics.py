"""Metric windows: the pure arithmetic behind "is the new version as good?".

A :class:`Summary` is what a metrics source (``engine.sources``) answers for a group over a
window: totals, ratios, latency quantiles. Two summaries -- before and after a group's
replacement -- make a verdict (``engine.verdict``).

For the per-instance scraping source: a :class:`Snapshot` holds, per gateway instance, the
counters scraped from the APISIX prometheus plugin at one moment (see
``upgrade_bot.engine.adapters.scrape``); two snapshots make a :class:`Window` (counter deltas)
and a window makes a :class:`Summary`.

This module does no IO and imports nothing beyond the standard library; summaries round-trip
through plain dicts for the JSON run records.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

INF = math.inf

Buckets = tuple[tuple[float, int], ...]
"""A cumulative histogram: ``(le, count)`` pairs sorted by ``le``, the last one ``+Inf``."""


# --- samples and windows -------------------------------------------------------------------


@dataclass(frozen=True)
class InstanceSample:
    """One instance's counters at one moment (or, inside a :class:`Window`, their deltas).

    ``requests`` is the sum of ``apisix_http_status`` over every label set; ``s2xx`` ..
    ``s5xx`` split it by status class (1xx and malformed codes count only in ``requests``);
    ``s404`` counts the 404s among the 4xx (a gateway without its routes answers
    ``404 Route Not Found``).
    ``buckets``, ``latency_sum`` and ``latency_count`` are the ``type="request"`` series of
    ``apisix_http_latency`` (milliseconds) summed over routes, services, consumers and nodes.
    """

    instance_id: str
    requests: int = 0
    s2xx: int = 0
    s3xx: int = 0
    s4xx: int = 0
    s5xx: int = 0
    buckets: Buckets = ()
    latency_sum: float = 0.0
    latency_count: int = 0
    version: str | None = None
    hostname: str | None = None
    s404: int = 0

    def _counters(self) -> tuple[float, ...]:
        return (
            self.requests,
            self.s2xx,
            self.s3xx,
            self.s4xx,
            self.s5xx,
            self.s404,
            self.latency_sum,
            self.latency_count,
        )


@dataclass(frozen=True)
class Snapshot:
    """Every scraped instance at ``taken_at`` (seconds, the caller's clock)."""

    taken_at: float
    instances: tuple[InstanceSample, ...]

    def get(self, instance_id: str) -> InstanceSample | None:
        """The sample of ``instance_id``, or None when it was not scraped."""
        for sample in self.instances:
            if sample.instance_id == instance_id:
                return sample
        return None


@dataclass(frozen=True)
class Window:
    """What happened between two snapshots, over the instances of the later one.

    ``instances`` holds per-instance deltas. ``appeared`` lists instances absent from the
    earlier snapshot and ``restarted`` those whose counters went down (or whose version
    changed); both are counted from zero, i.e. their whole current counters are in the window.
    """

    duration_s: float
    instances: tuple[InstanceSample, ...]
    requests: int
    s2xx: int
    s3xx: int
    s4xx: int
    s5xx: int
    buckets: Buckets
    latency_sum: float
    latency_count: int
    appeared: tuple[str, ...] = ()
    restarted: tuple[str, ...] = ()
    s404: int = 0


def merge_buckets(histograms: Iterable[Sequence[tuple[float, float]]]) -> Buckets:
    """Add cumulative histograms, bucket by bucket.

    The result has the union of all bounds. A histogram lacking one of those bounds
    contributes its count at its next lower bound (cumulative counts are a step function),
    so histograms with equal layouts -- the normal case -- add exactly.
    """
    normalized = [_normalize(h) for h in histograms]
    normalized = [h for h in normalized if h]
    if not normalized:
        return ()
    bounds = sorted({le for h in normalized for le, _ in h})
    totals = [0] * len(bounds)
    for hist in normalized:
        i = 0
        running = 0
        for j, bound in enumerate(bounds):
            while i < len(hist) and hist[i][0] <= bound:
                running = hist[i][1]
                i += 1
            totals[j] += running
    return tuple(zip(bounds, totals, strict=True))


def _normalize(buckets: Sequence[tuple[float, float]]) -> Buckets:
    """Sort by bound, merge duplicate bounds, make counts integral and monotonic."""
    by_bound: dict[float, int] = {}
    for le, count in buckets:
        bound = float(le)
        if math.isnan(bound) or not math.isfinite(count):
            continue
        by_bound[bound] = by_bound.get(bound, 0) + round(count)
    out: list[tuple[float, int]] = []
    running = 0
    for bound in sorted(by_bound):
        running = max(running, by_bound[bound])  # like Prometheus: force monotonicity
        out.append((bound, running))
    return tuple(out)


def _delta(before: InstanceSample | None, after: InstanceSample) -> InstanceSample | None:
    """``after - before``, or None when ``before`` is missing or from an earlier process."""
    if before is None:
        return None
    if before.version and after.version and before.version != after.version:
        return None  # same instance id, another version: replaced in place, counters reset
    if any(a < b for a, b in zip(after._counters(), before._counters(), strict=True)):
        return None
    if before.buckets and [le for le, _ in before.buckets] != [le for le, _ in after.buckets]:
        return None  # another bucket layout means another process
    before_counts = dict(before.buckets)
    bucket_deltas: list[tuple[float, int]] = []
    for le, count in after.buckets:
        delta = count - before_counts.get(le, 0)
        if delta < 0:
            return None
        bucket_deltas.append((le, delta))
    return InstanceSample(
        instance_id=after.instance_id,
        requests=after.requests - before.requests,
        s2xx=after.s2xx - before.s2xx,
        s3xx=after.s3xx - before.s3xx,
        s4xx=after.s4xx - before.s4xx,
        s5xx=after.s5xx - before.s5xx,
        s404=after.s404 - before.s404,
        buckets=tuple(bucket_deltas),
        latency_sum=after.latency_sum - before.latency_sum,
        latency_count=after.latency_count - before.latency_count,
        version=after.version,
        hostname=after.hostname,
    )


def window(before: Snapshot, after: Snapshot) -> Window:
    """The counter deltas from ``before`` to ``after``, per instance and in total.

    Instances are matched by id. One absent from ``before`` counts from zero; so does one
    whose counters decreased or whose version changed (its process restarted in between).
    Instances only in ``before`` are ignored: they no longer serve. A restart that happened
    after the instance served more than before cannot be told apart from steady counting and
    is missed; the version check catches the upgrade case.
    """
    duration = after.taken_at - before.taken_at
    if duration < 0:
        raise ValueError(
            f"'after' snapshot ({after.taken_at}) precedes 'before' ({before.taken_at})"
        )
    deltas: list[InstanceSample] = []
    appeared: list[str] = []
    restarted: list[str] = []
    for sample in after.instances:
        previous = before.get(sample.instance_id)
        delta = _delta(previous, sample)
        if delta is None:
            (appeared if previous is None else restarted).append(sample.instance_id)
            delta = sample
        deltas.append(delta)
    return Window(
        duration_s=duration,
        instances=tuple(deltas),
        requests=sum(d.requests for d in deltas),
        s2xx=sum(d.s2xx for d in deltas),
        s3xx=sum(d.s3xx for d in deltas),
        s4xx=sum(d.s4xx for d in deltas),
        s5xx=sum(d.s5xx for d in deltas),
        s404=sum(d.s404 for d in deltas),
        buckets=merge_buckets(d.buckets for d in deltas),
        latency_sum=sum(d.latency_sum for d in deltas),
        latency_count=sum(d.latency_count for d in deltas),
        appeared=tuple(appeared),
        restarted=tuple(restarted),
    )


# --- quantiles and summaries ---------------------------------------------------------------


def quantile(q: float, buckets: Sequence[tuple[float, float]]) -> float | None:
    """The ``q`` quantile of a cumulative histogram, as Prometheus ``histogram_quantile``.

    Interpolates linearly inside the bucket holding the rank; the lowest bucket starts at 0.
    A rank in the ``+Inf`` bucket gives the highest finite bound. Returns None without
    observations or without any finite bound. A histogram lacking its ``+Inf`` bucket is read
    as if that bucket equalled the highest one (Prometheus would answer NaN).
    """
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"quantile must be within 0..1, got {q}")
    hist = list(_normalize(buckets))
    if not hist:
        return None
    if hist[-1][0] != INF:
        hist.append((INF, hist[-1][1]))
    observations = hist[-1][1]
    if observations == 0 or len(hist) < 2:
        return None
    rank = q * observations
    b = next((i for i, (_, count) in enumerate(hist[:-1]) if count >= rank), len(hist) - 1)
    if b == len(hist) - 1:
        return hist[-2][0]
    if b == 0 and hist[0][0] <= 0:
        return hist[0][0]
    start, end, count = 0.0, hist[b][0], float(hist[b][1])
    if b > 0:
        start = hist[b - 1][0]
        count -= hist[b - 1][1]
        rank -= hist[b - 1][1]
    if count == 0:  # only at rank 0 with empty leading buckets
        return start
    return start + (end - start) * (rank / count)


@dataclass(frozen=True)
class InstanceSummary:
    """One instance's share of a window (sources that can split by instance)."""

    id: str
    requests: int
    errors_5xx: int
    errors_404: int
    p99_ms: float | None

    @property
    def ratio_5xx(self) -> float:
        return self.errors_5xx / self.requests if self.requests else 0.0

    @property
    def ratio_404(self) -> float:
        return self.errors_404 / self.requests if self.requests else 0.0


@dataclass(frozen=True)
class Summary:
    """A window in the numbers a verdict and a human look at. Latencies in milliseconds."""

    requests: int
    errors_5xx: int
    errors_4xx: int
    ratio_5xx: float
    ratio_4xx: float
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    duration_s: float
    rate_per_s: float
    errors_404: int = 0
    ratio_404: float = 0.0
    instances: tuple[InstanceSummary, ...] = ()
    """Per instance, when the source can split by instance (empty otherwise)."""

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (None for unknown quantiles)."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["instances"] = [{f.name: getattr(i, f.name) for f in fields(i)} for i in self.instances]
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Summary:
        """The inverse of :meth:`to_dict`; unknown keys are ignored, missing ones refused
        (except those added later, which a summary saved before them lacks)."""
        missing = [f.name for f in fields(cls) if f.name not in data and f.name not in _LATER]
        if missing:
            raise ValueError(f"summary lacks {', '.join(missing)}")

        def opt(name: str) -> float | None:
            value = data[name]
            return None if value is None else float(value)

        return cls(
            requests=int(data["requests"]),
            errors_5xx=int(data["errors_5xx"]),
            errors_4xx=int(data["errors_4xx"]),
            ratio_5xx=float(data["ratio_5xx"]),
            ratio_4xx=float(data["ratio_4xx"]),
            p50_ms=opt("p50_ms"),
            p95_ms=opt("p95_ms"),
            p99_ms=opt("p99_ms"),
            duration_s=float(data["duration_s"]),
            rate_per_s=float(data["rate_per_s"]),
            errors_404=int(data.get("errors_404", 0)),
            ratio_404=float(data.get("ratio_404", 0.0)),
            instances=tuple(
                InstanceSummary(
                    id=str(i["id"]),
                    requests=int(i["requests"]),
                    errors_5xx=int(i["errors_5xx"]),
                    errors_404=int(i["errors_404"]),
                    p99_ms=None if i.get("p99_ms") is None else float(i["p99_ms"]),
                )
                for i in data.get("instances") or ()
            ),
        )


_LATER = frozenset({"errors_404", "ratio_404", "instances"})
"""Summary fields added after records were first saved."""


def summarize(w: Window) -> Summary:
    """Totals, 4xx/404/5xx ratios (0 without requests), p50/p95/p99, request rate and the
    per-instance split of ``w``."""
    requests = w.requests
    return Summary(
        requests=requests,
        errors_5xx=w.s5xx,
        errors_4xx=w.s4xx,
        ratio_5xx=w.s5xx / requests if requests > 0 else 0.0,
        ratio_4xx=w.s4xx / requests if requests > 0 else 0.0,
        p50_ms=quantile(0.50, w.buckets),
        p95_ms=quantile(0.95, w.buckets),
        p99_ms=quantile(0.99, w.buckets),
        duration_s=w.duration_s,
        rate_per_s=requests / w.duration_s if w.duration_s > 0 else 0.0,
        errors_404=w.s404,
        ratio_404=w.s404 / requests if requests > 0 else 0.0,
        instances=tuple(
            InstanceSummary(
                id=i.instance_id,
                requests=i.requests,
                errors_5xx=i.s5xx,
                errors_404=i.s404,
                p99_ms=quantile(0.99, i.buckets),
            )
            for i in w.instances
        ),
    )


# --- windows from marks (the pure half of the scrape source) --------------------------------


def snapshot_from_dict(data: Mapping[str, Any]) -> Snapshot:
    """A :class:`Snapshot` from its JSON form (``dataclasses.asdict``), as saved in a record."""
    return Snapshot(
        taken_at=float(data["taken_at"]),
        instances=tuple(
            InstanceSample(
                **{**i, "buckets": tuple((float(le), int(n)) for le, n in i.get("buckets", ()))}
            )
            for i in data.get("instances", ())
        ),
    )


def summary_since(mark: Mapping[str, Any] | None, now: Snapshot) -> Summary:
    """The summary of the window from ``mark`` (a saved snapshot) to ``now``.

    Without a mark (the window's start could not be measured) every instance counts from zero
    over a zero-length window.
    """
    before = snapshot_from_dict(mark) if mark else Snapshot(taken_at=now.taken_at, instances=())
    return summarize(window(before, now))


def window_point(
    kind: str, mark: Mapping[str, Any] | None, summary: dict[str, Any]
) -> dict[str, Any]:
    """A measured window as a point over time (``GroupRun.points``): its start is its mark's
    moment, its end that plus the summary's duration."""
    start = float((mark or {}).get("taken_at") or 0.0)
    return {
        "kind": kind,
        "start": start,
        "end": start + float(summary.get("duration_s") or 0.0),
        "summary": summary,
    }

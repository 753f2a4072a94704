"""Metric windows and verdicts: the pure arithmetic behind "is the new version as good?".

A :class:`Snapshot` holds, per gateway instance, the counters scraped from the APISIX
prometheus plugin at one moment (see ``upgrade_bot.engine.adapters.scrape``). Two snapshots
make a :class:`Window` (counter deltas), a window makes a :class:`Summary` (totals, ratios,
latency quantiles), and two summaries -- before and after a group's replacement -- make a
:class:`Verdict` under the group's :class:`~upgrade_bot.engine.config.Thresholds`.

This module does no IO and imports nothing beyond the standard library; summaries and verdicts
round-trip through plain dicts for the JSON run records.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from enum import Enum
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # type only: config pulls in pydantic, this module stays stdlib-only
    from .config import Thresholds

INF = math.inf

Buckets = tuple[tuple[float, int], ...]
"""A cumulative histogram: ``(le, count)`` pairs sorted by ``le``, the last one ``+Inf``."""


# --- samples and windows -------------------------------------------------------------------


@dataclass(frozen=True)
class InstanceSample:
    """One instance's counters at one moment (or, inside a :class:`Window`, their deltas).

    ``requests`` is the sum of ``apisix_http_status`` over every label set; ``s2xx`` ..
    ``s5xx`` split it by status class (1xx and malformed codes count only in ``requests``).
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

    def _counters(self) -> tuple[float, ...]:
        return (
            self.requests,
            self.s2xx,
            self.s3xx,
            self.s4xx,
            self.s5xx,
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

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (None for unknown quantiles)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Summary:
        """The inverse of :meth:`to_dict`; unknown keys are ignored, missing ones refused."""
        missing = [f.name for f in fields(cls) if f.name not in data]
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
        )


def summarize(w: Window) -> Summary:
    """Totals, 4xx/5xx ratios (0 without requests), p50/p95/p99 and request rate of ``w``."""
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
    )


# --- verdicts ------------------------------------------------------------------------------


@functools.total_ordering
class Phase(Enum):
    """A verdict's outcome, ordered best to worst: PASS < INCONCLUSIVE < FAIL."""

    PASS = "pass"
    INCONCLUSIVE = "inconclusive"
    FAIL = "fail"

    @property
    def rank(self) -> int:
        """0 for PASS, 1 for INCONCLUSIVE, 2 for FAIL."""
        return _PHASE_RANK[self]

    def __lt__(self, other: object) -> bool:
        if not isinstance(other, Phase):
            return NotImplemented
        return self.rank < other.rank


_PHASE_RANK = {Phase.PASS: 0, Phase.INCONCLUSIVE: 1, Phase.FAIL: 2}


def worst(*phases: Phase) -> Phase:
    """The worst of ``phases`` (FAIL beats INCONCLUSIVE beats PASS); needs at least one."""
    if not phases:
        raise ValueError("worst() needs at least one phase")
    return max(phases)


@dataclass(frozen=True)
class Verdict:
    """A phase and the short sentences that explain it (numbers included)."""

    phase: Phase
    reasons: tuple[str, ...] = ()
    limit_5xx_ratio: float | None = None
    """The 5xx ratio the window after may reach (None: not judged)."""
    limit_p99_ms: float | None = None
    """The p99 latency the window after may reach (None: not judged, p99 unknown)."""

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict: ``{"phase": "fail", "reasons": [...], "limits": {...}}``."""
        return {
            "phase": self.phase.value,
            "reasons": list(self.reasons),
            "limits": {"ratio_5xx": self.limit_5xx_ratio, "p99_ms": self.limit_p99_ms},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Verdict:
        """The inverse of :meth:`to_dict`."""
        try:
            phase = Phase(data["phase"])
        except KeyError:
            raise ValueError("verdict lacks phase") from None
        reasons = data.get("reasons") or ()
        if isinstance(reasons, str):
            raise ValueError("verdict reasons must be a list of strings")
        limits = data.get("limits") or {}

        def limit(name: str) -> float | None:
            value = limits.get(name)
            return None if value is None else float(value)

        return cls(
            phase=phase,
            reasons=tuple(str(r) for r in reasons),
            limit_5xx_ratio=limit("ratio_5xx"),
            limit_p99_ms=limit("p99_ms"),
        )


def _pct(ratio: float) -> str:
    pct = ratio * 100
    if pct == 0 or pct >= 1:
        return f"{pct:.1f}%"
    return f"{pct:.2f}%"


def _ms(value: float | None) -> str:
    if value is None:
        return "unknown"
    if abs(value) >= 100:
        return f"{value:.0f} ms"
    text = f"{value:.1f}".rstrip("0").rstrip(".")
    return f"{text} ms"


def judge(before: Summary, after: Summary, t: Thresholds) -> Verdict:
    """Compare the window after a group's replacement with the one before it.

    Rules (``t`` is the group's thresholds):

    * errors: the 5xx ratio after must not exceed
      ``max(t.max_5xx_ratio, t.max_5xx_ratio_factor * ratio_5xx before)``;
    * latency: p99 after must not exceed ``t.p99_factor * p99 before + t.p99_slack_ms``.

    Exactly at a limit passes. Evidence: a window with fewer than ``t.min_requests`` requests
    is too small to judge, and a window too small to judge never PASSes. The errors rule can
    still FAIL when only the *before* window is small -- the after window alone shows the
    new version erring, and a small before window merely weakens the baseline (0 requests
    before means a 0% baseline, so the absolute limit applies). The latency rule FAILs only
    with both windows large enough: p99 of a few requests is their maximum, and there is no
    baseline to compare with. A rule broken on too little evidence is reported among the
    INCONCLUSIVE reasons. Unknown p99 (no latency observations) is INCONCLUSIVE as well.

    Reasons explain the phase: the broken rules (then any doubts) for FAIL, what is missing
    for INCONCLUSIVE (with the rules broken on too little evidence), the checked rules for
    PASS.
    """
    need = t.min_requests
    before_ok = before.requests >= need
    after_ok = after.requests >= need

    failures: list[str] = []
    doubts: list[str] = []
    passes: list[str] = []

    if not before_ok:
        doubts.append(f"only {before.requests} requests before (need {need})")
    if not after_ok:
        doubts.append(f"only {after.requests} requests after (need {need})")

    error_limit = max(t.max_5xx_ratio, t.max_5xx_ratio_factor * before.ratio_5xx)
    errors = (
        f"5xx ratio {_pct(after.ratio_5xx)} after vs {_pct(before.ratio_5xx)} before "
        f"(limit {_pct(error_limit)})"
    )
    if after.ratio_5xx > error_limit:
        if after_ok:
            failures.append(errors)
        else:
            doubts.append(errors + ", too few requests to fail")
    else:
        passes.append(errors)

    latency_limit = None
    if before.p99_ms is None or after.p99_ms is None:
        which = " and ".join(
            name for name, s in (("before", before), ("after", after)) if s.p99_ms is None
        )
        doubts.append(f"p99 unknown {which} (no latency observations)")
    else:
        latency_limit = t.p99_factor * before.p99_ms + t.p99_slack_ms
        latency = (
            f"p99 {_ms(after.p99_ms)} after vs {_ms(before.p99_ms)} before "
            f"(limit {_ms(latency_limit)})"
        )
        if after.p99_ms > latency_limit:
            if before_ok and after_ok:
                failures.append(latency)
            else:
                doubts.append(latency + ", too few requests to fail")
        else:
            passes.append(latency)

    limits = {"limit_5xx_ratio": error_limit, "limit_p99_ms": latency_limit}
    if failures:
        return Verdict(Phase.FAIL, tuple(failures + doubts), **limits)
    if doubts:
        return Verdict(Phase.INCONCLUSIVE, tuple(doubts), **limits)
    return Verdict(Phase.PASS, tuple(passes), **limits)

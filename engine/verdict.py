"""The verdict on a group: is the window after its replacement as good as the window before?

A verdict is data with a phase ranked best to worst (PASS < INCONCLUSIVE < FAIL), like argo's
analysis runs: each rule of :data:`RULES` looks at the two window summaries and answers a
:class:`Finding` (its phase, the sentence that explains it, the limit it applied), and the
verdict is the worst of them. Adding a rule is one function and one entry in :data:`RULES`.

Pure and stdlib-only (the thresholds are a config model, imported for typing only).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Any

from .metrics import Summary
from .units import ms, pct

if TYPE_CHECKING:  # type only: config pulls in pydantic, this module stays stdlib-only
    from .config import Thresholds


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
    limit_404_ratio: float | None = None
    """The 404 ratio the window after may reach (None: not judged)."""

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict: ``{"phase": "fail", "reasons": [...], "limits": {...}}``."""
        return {
            "phase": self.phase.value,
            "reasons": list(self.reasons),
            "limits": {
                "ratio_5xx": self.limit_5xx_ratio,
                "p99_ms": self.limit_p99_ms,
                "ratio_404": self.limit_404_ratio,
            },
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
            limit_404_ratio=limit("ratio_404"),
        )


def inconclusive(reason: str) -> Verdict:
    """A verdict that could not be reached (no baseline, metrics unavailable): a human decides."""
    return Verdict(Phase.INCONCLUSIVE, (reason,))


# --- rules ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Finding:
    """One rule's answer: its phase, the sentences explaining it, and the limits it applied."""

    phase: Phase
    reasons: tuple[str, ...] = ()
    limits: Mapping[str, float | None] = field(default_factory=dict)
    """Keyword arguments of :class:`Verdict` (``limit_5xx_ratio``, ``limit_p99_ms``)."""


Rule = Callable[[Summary, Summary, "Thresholds"], Finding]
"""``(before, after, thresholds) -> Finding``."""

TOO_FEW = ", too few requests to fail"


def evidence_rule(before: Summary, after: Summary, t: Thresholds) -> Finding:
    """A window with fewer than ``t.min_requests`` requests is too small to judge."""
    doubts = tuple(
        f"only {s.requests} requests {name} (need {t.min_requests})"
        for name, s in (("before", before), ("after", after))
        if s.requests < t.min_requests
    )
    return Finding(Phase.INCONCLUSIVE, doubts) if doubts else Finding(Phase.PASS)


def _ratio_finding(
    what: str,
    before_ratio: float,
    after_ratio: float,
    after_requests: int,
    limit: float,
    t: Thresholds,
    limits: Mapping[str, float | None] | None = None,
    *,
    quiet_pass: bool = False,
) -> Finding:
    """``quiet_pass``: a pass says nothing (a rule that matters only when it fails)."""
    reason = (
        f"{what} ratio {pct(after_ratio)} after vs {pct(before_ratio)} before (limit {pct(limit)})"
    )
    if after_ratio <= limit:
        return Finding(Phase.PASS, () if quiet_pass else (reason,), limits or {})
    if after_requests >= t.min_requests:
        return Finding(Phase.FAIL, (reason,), limits or {})
    return Finding(Phase.INCONCLUSIVE, (reason + TOO_FEW,), limits or {})


def errors_rule(before: Summary, after: Summary, t: Thresholds) -> Finding:
    """The 5xx ratio after must not exceed ``max(t.max_5xx_ratio, factor * ratio before)``.

    It FAILs on the after window alone: a small before window merely weakens the baseline
    (0 requests before means a 0% baseline, so the absolute limit applies).
    """
    limit = max(t.max_5xx_ratio, t.max_5xx_ratio_factor * before.ratio_5xx)
    return _ratio_finding(
        "5xx",
        before.ratio_5xx,
        after.ratio_5xx,
        after.requests,
        limit,
        t,
        {"limit_5xx_ratio": limit},
    )


def not_found_rule(before: Summary, after: Summary, t: Thresholds) -> Finding:
    """The 404 ratio after must not exceed ``max(t.max_404_ratio, factor * ratio before)``.

    A new instance that never received its configuration answers ``404 Route Not Found`` to
    everything while its health looks fine; relative to the baseline, so that a fleet whose
    clients normally meet 404s is not failed for them.
    """
    limit = max(t.max_404_ratio, t.max_404_ratio_factor * before.ratio_404)
    return _ratio_finding(
        "404",
        before.ratio_404,
        after.ratio_404,
        after.requests,
        limit,
        t,
        {"limit_404_ratio": limit},
        quiet_pass=True,
    )


def client_errors_rule(before: Summary, after: Summary, t: Thresholds) -> Finding:
    """The ratio of 4xx other than 404 after must not exceed ``max(t.max_4xx_ratio, factor *
    ratio before)``: a release that starts refusing requests (auth, rate limits) shows here."""

    def other_4xx(s: Summary) -> float:
        return (s.errors_4xx - s.errors_404) / s.requests if s.requests else 0.0

    before_ratio, after_ratio = other_4xx(before), other_4xx(after)
    limit = max(t.max_4xx_ratio, t.max_4xx_ratio_factor * before_ratio)
    return _ratio_finding(
        "4xx (other than 404)",
        before_ratio,
        after_ratio,
        after.requests,
        limit,
        t,
        quiet_pass=True,
    )


def latency_rule(before: Summary, after: Summary, t: Thresholds) -> Finding:
    """p99 after must not exceed ``t.p99_factor * p99 before + t.p99_slack_ms``.

    It FAILs only with both windows large enough: p99 of a few requests is their maximum, and
    there is no baseline to compare with. Unknown p99 (no latency observations) is INCONCLUSIVE.
    """
    if before.p99_ms is None or after.p99_ms is None:
        which = " and ".join(
            name for name, s in (("before", before), ("after", after)) if s.p99_ms is None
        )
        return Finding(Phase.INCONCLUSIVE, (f"p99 unknown {which} (no latency observations)",))
    limit = t.p99_factor * before.p99_ms + t.p99_slack_ms
    reason = f"p99 {ms(after.p99_ms)} after vs {ms(before.p99_ms)} before (limit {ms(limit)})"
    limits = {"limit_p99_ms": limit}
    if after.p99_ms <= limit:
        return Finding(Phase.PASS, (reason,), limits)
    if min(before.requests, after.requests) >= t.min_requests:
        return Finding(Phase.FAIL, (reason,), limits)
    return Finding(Phase.INCONCLUSIVE, (reason + TOO_FEW,), limits)


def outlier_rule(before: Summary, after: Summary, t: Thresholds) -> Finding:
    """One instance erroring or slow while its peers are fine fails the group.

    Judged on the window after, among instances with at least ``t.min_instance_requests``
    requests, when the source splits by instance (otherwise it has nothing to say). An
    instance fails when its 5xx (or 404) ratio exceeds both the group's absolute limit and
    ``t.outlier_factor`` * the ratio of its peers together, or when its p99 exceeds
    ``t.p99_factor`` * the median p99 of its peers + ``t.p99_slack_ms``.
    """
    judged = [i for i in after.instances if i.requests >= t.min_instance_requests]
    if len(judged) < 2:
        return Finding(Phase.PASS)
    failures: list[str] = []
    for inst in judged:
        peers = [p for p in judged if p is not inst]
        requests = sum(p.requests for p in peers)
        for what, mine, theirs, floor in (
            ("5xx", inst.ratio_5xx, sum(p.errors_5xx for p in peers) / requests, t.max_5xx_ratio),
            ("404", inst.ratio_404, sum(p.errors_404 for p in peers) / requests, t.max_404_ratio),
        ):
            limit = max(floor, t.outlier_factor * theirs)
            if mine > limit:
                failures.append(
                    f"instance {_name(inst.id)}: {what} ratio {pct(mine)} vs {pct(theirs)} on "
                    f"its {len(peers)} peers (limit {pct(limit)})"
                )
        peer_p99 = sorted(p.p99_ms for p in peers if p.p99_ms is not None)
        if inst.p99_ms is not None and peer_p99:
            median = peer_p99[len(peer_p99) // 2]
            limit = t.p99_factor * median + t.p99_slack_ms
            if inst.p99_ms > limit:
                failures.append(
                    f"instance {_name(inst.id)}: p99 {ms(inst.p99_ms)} vs {ms(median)} on its "
                    f"{len(peers)} peers (limit {ms(limit)})"
                )
    return Finding(Phase.FAIL, tuple(failures)) if failures else Finding(Phase.PASS)


def _name(instance_id: str) -> str:
    """``prod-eu/1@http://…`` (a scraped instance) → ``prod-eu/1``."""
    return instance_id.split("@", 1)[0]


RULES: tuple[Rule, ...] = (
    evidence_rule,
    errors_rule,
    not_found_rule,
    client_errors_rule,
    latency_rule,
    outlier_rule,
)
"""Every rule, in the order their reasons are reported."""


def judge(
    before: Summary, after: Summary, t: Thresholds, rules: tuple[Rule, ...] = RULES
) -> Verdict:
    """Compare the window after a group's replacement with the one before it.

    The phase is the worst of the rules' findings (exactly at a limit passes). Reasons explain
    the phase: for FAIL the failing rules' reasons, then any doubts; for INCONCLUSIVE the
    doubts (a rule broken on too little evidence among them); for PASS the checked rules.
    """
    findings = [rule(before, after, t) for rule in rules]
    phase = worst(*(f.phase for f in findings))
    shown = (Phase.FAIL, Phase.INCONCLUSIVE) if phase is Phase.FAIL else (phase,)
    reasons = tuple(r for p in shown for f in findings if f.phase is p for r in f.reasons)
    limits: dict[str, Any] = {
        "limit_5xx_ratio": None,
        "limit_p99_ms": None,
        "limit_404_ratio": None,
    }
    for f in findings:
        limits.update(f.limits)
    return Verdict(phase, reasons, **limits)


__all__ = [
    "RULES",
    "Finding",
    "Phase",
    "Rule",
    "Verdict",
    "client_errors_rule",
    "errors_rule",
    "evidence_rule",
    "inconclusive",
    "judge",
    "latency_rule",
    "not_found_rule",
    "outlier_rule",
    "worst",
]

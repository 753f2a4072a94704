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


def errors_rule(before: Summary, after: Summary, t: Thresholds) -> Finding:
    """The 5xx ratio after must not exceed ``max(t.max_5xx_ratio, factor * ratio before)``.

    It FAILs on the after window alone: a small before window merely weakens the baseline
    (0 requests before means a 0% baseline, so the absolute limit applies).
    """
    limit = max(t.max_5xx_ratio, t.max_5xx_ratio_factor * before.ratio_5xx)
    reason = (
        f"5xx ratio {pct(after.ratio_5xx)} after vs {pct(before.ratio_5xx)} before "
        f"(limit {pct(limit)})"
    )
    limits = {"limit_5xx_ratio": limit}
    if after.ratio_5xx <= limit:
        return Finding(Phase.PASS, (reason,), limits)
    if after.requests >= t.min_requests:
        return Finding(Phase.FAIL, (reason,), limits)
    return Finding(Phase.INCONCLUSIVE, (reason + TOO_FEW,), limits)


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


RULES: tuple[Rule, ...] = (evidence_rule, errors_rule, latency_rule)
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
    limits: dict[str, Any] = {"limit_5xx_ratio": None, "limit_p99_ms": None}
    for f in findings:
        limits.update(f.limits)
    return Verdict(phase, reasons, **limits)


__all__ = [
    "RULES",
    "Finding",
    "Phase",
    "Rule",
    "Verdict",
    "errors_rule",
    "evidence_rule",
    "inconclusive",
    "judge",
    "latency_rule",
    "worst",
]

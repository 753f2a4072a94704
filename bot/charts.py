"""A small PNG per group, for people who would rather look than read: the 5xx ratio and the p99
latency of the window before the change and of the window after it, each against the limit the
verdict applied, with the moments instances were replaced marked in between.

Sized for a phone (about 640 x 440 px). Pure: a run in, PNG bytes out. Drawn with matplotlib's
object API (no pyplot, no global state), so that charts can be drawn in a worker thread.
"""

from __future__ import annotations

import io
from typing import Any

from upgrade_bot.engine import GroupRun, Run

COLORS = {"pass": "#2e7d32", "fail": "#c62828", "inconclusive": "#ef6c00"}
BEFORE_COLOR = "#546e7a"
LIMIT_COLOR = "#212121"
REPLACED_COLOR = "#1565c0"


def chartable(g: GroupRun) -> bool:
    """Whether the group has both windows measured (a chart would show something)."""
    return bool(g.before and g.after and g.verdict and g.baseline_snapshot and g.settle_snapshot)


def filename(run: Run, group: str) -> str:
    return f"{run.id}-{group}.png"


def title(run: Run, g: GroupRun) -> str:
    phase = str((g.verdict or {}).get("phase", "")).upper()
    versions = sorted({s.previous_version for s in g.slots if s.previous_version})
    before = "/".join(versions) or "?"
    return f"{g.name} · {before} → {run.target_version} · {phase}"


def group_chart(run: Run, group: str) -> bytes | None:
    """The group's chart as PNG bytes, or None while its windows are not both measured."""
    g = run.group(group)
    if not chartable(g):
        return None
    assert g.before and g.after and g.verdict and g.baseline_snapshot and g.settle_snapshot
    origin = float(g.baseline_snapshot["taken_at"])
    before = _span(origin, g.baseline_snapshot, g.before)
    after = _span(origin, g.settle_snapshot, g.after)
    replaced = [t - origin for t in g.replaced_at]
    phase = str(g.verdict.get("phase", ""))
    limits = g.verdict.get("limits") or {}

    # matplotlib takes ~2 s to import: load it when a chart is drawn, not with every CLI
    # command that happens to import the bot.
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.4), dpi=100)
    errors, latency = fig.subplots(2, 1, sharex=True)
    _panel(
        errors,
        "5xx %",
        before,
        after,
        g.before["ratio_5xx"] * 100,
        g.after["ratio_5xx"] * 100,
        None if limits.get("ratio_5xx") is None else limits["ratio_5xx"] * 100,
        phase,
    )
    _panel(
        latency,
        "p99 ms",
        before,
        after,
        g.before.get("p99_ms"),
        g.after.get("p99_ms"),
        limits.get("p99_ms"),
        phase,
    )
    for axes in (errors, latency):
        for i, t in enumerate(replaced):
            axes.axvline(
                t,
                color=REPLACED_COLOR,
                linewidth=0.8,
                linestyle=":",
                label="instance replaced" if i == 0 else None,
            )
    latency.set_xlabel("seconds since the group's baseline started")
    errors.legend(loc="upper left", fontsize=7, frameon=False, ncol=4)
    fig.suptitle(title(run, g), fontsize=10, color=COLORS.get(phase, "black"))
    fig.tight_layout()
    out = io.BytesIO()
    fig.savefig(out, format="png")
    return out.getvalue()


def _span(origin: float, snapshot: dict[str, Any], summary: dict[str, Any]) -> tuple[float, float]:
    start = float(snapshot["taken_at"]) - origin
    return start, start + float(summary.get("duration_s") or 0.0)


def _panel(
    axes: Any,
    label: str,
    before: tuple[float, float],
    after: tuple[float, float],
    value_before: float | None,
    value_after: float | None,
    limit: float | None,
    phase: str,
) -> None:
    axes.set_ylabel(label, fontsize=8)
    axes.tick_params(labelsize=7)
    axes.axvspan(before[1], after[0], color="#eceff1", zorder=0, label="replacing")
    if value_before is not None:
        axes.hlines(value_before, *before, color=BEFORE_COLOR, linewidth=3, label="before")
    if value_after is not None:
        axes.hlines(
            value_after, *after, color=COLORS.get(phase, "black"), linewidth=3, label="after"
        )
    if limit is not None:
        axes.hlines(limit, *after, color=LIMIT_COLOR, linewidth=1, linestyle="--", label="limit")
    values = [v for v in (value_before, value_after, limit) if v is not None]
    top = max(values, default=1.0) or 1.0
    axes.set_ylim(0, top * 1.25)
